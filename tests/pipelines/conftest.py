"""Small, hand-made watch logs with known defects, written as real files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

T0 = datetime(2026, 3, 1, tzinfo=UTC)
DEFECTS = {"missing_user_id": 2, "missing_video_id": 1, "bad_timestamp": 0, "negative_watch_seconds": 2}


def write_log(directory: Path, users: int = 40, per_user: int = 30, seed: int = 0) -> dict[str, int]:
    """Events, searches and users Parquet files with planted bad rows; returns the planted defect counts."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    user_ids, video_ids, ts, secs = [], [], [], []
    for u in range(users):
        minutes = np.sort(rng.integers(0, 14 * 24 * 60, per_user))
        for m in minutes:
            user_ids.append(f"user{u}")
            video_ids.append(f"vid{int(rng.zipf(1.5)) % 200}")
            ts.append(T0 + timedelta(minutes=int(m)))
            secs.append(float(rng.integers(1, 600)))
    events = pa.table(
        {
            "user_id": user_ids,
            "video_id": video_ids,
            "ts": pa.array(ts, pa.timestamp("us", "UTC")),
            "watch_seconds": secs,
        }
    )
    # Planted defects: 3 exact duplicates, 2 null users, 1 empty video id, 2 negative watch times.
    dups = events.slice(5, 3)
    bad = pa.table(
        {
            "user_id": [None, None, "user1", "user2", "user3"],
            "video_id": ["vid1", "vid2", "", "vid3", "vid4"],
            "ts": pa.array([T0] * 5, pa.timestamp("us", "UTC")),
            "watch_seconds": [1.0, 1.0, 1.0, -5.0, -1.0],
        }
    )
    pq.write_table(pa.concat_tables([events, dups, bad]), directory / "events.parquet")
    searches = pa.table(
        {
            "user_id": [f"user{u % users}" for u in range(100)],
            "ts": pa.array(
                [T0 + timedelta(hours=int(h)) for h in rng.integers(0, 300, 100)], pa.timestamp("us", "UTC")
            ),
            "query": [rng.choice(["funny cats", "jazz piano", "chess opening", "news"]) for _ in range(100)],
        }
    )
    pq.write_table(searches, directory / "searches.parquet")
    user_rows = pa.table(
        {
            "user_id": [f"user{u}" for u in range(users)] + ["user0"],
            "country": [["US", "DE", "FR"][u % 3] for u in range(users)] + ["US"],
            "device": [["tv", "phone"][u % 2] for u in range(users)] + ["tv"],
            "gender": [["M", "F", None][u % 3] for u in range(users)] + ["M"],
            "age": [float(18 + u) for u in range(users)] + [99.0],
            "logged_in": [u % 4 != 0 for u in range(users)] + [True],
        }
    )
    pq.write_table(user_rows, directory / "users.parquet")
    return {"duplicate": 3, "missing_user_id": 2, "missing_video_id": 1, "negative_watch_seconds": 2}


@pytest.fixture()
def log_dir(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """A directory holding events/searches/users Parquet files and the defects planted in them."""
    planted = write_log(tmp_path / "log")
    return tmp_path / "log", planted
