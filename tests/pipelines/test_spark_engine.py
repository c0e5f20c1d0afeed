"""The Spark engine against the local engine: same examples, vocabularies, quarantine and report on messy input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("pyspark", reason="the spark engine needs pyspark (pip install '.[spark]')")

from pyspark.sql import SparkSession

from pipelines.local import read_examples
from pipelines.pipeline import REPORT_FILE, run_pipeline
from pipelines.sources import resolve_inputs
from pipelines.spark import spark_session
from recsys.config import PipelineConfig
from recsys.features import NUMERIC_STATS_FILE, VOCAB_FILES
from recsys.schemas import EXAMPLES, QUARANTINE, SPLITS, TIMESTAMP

pytestmark = [
    pytest.mark.spark,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
    pytest.mark.skipif(
        shutil.which("java") is None and not os.environ.get("JAVA_HOME"),
        reason="the spark engine needs Java: no `java` on PATH and no JAVA_HOME",
    ),
]

START = datetime(2024, 3, 1, tzinfo=UTC)
DAYS = 30
N_USERS = 60
SPARK_ARGS = ("--engine", "spark", "--workers", "2", "--quiet")
WORDS = ["Cat", "videos", "funny", "DOGS", "how-to", "cook", "pasta!", "música", "news", "lo-fi", "beats"]


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    """One local Spark session for the whole module (run_spark reuses the active session)."""
    with spark_session(workers=2) as session:
        yield session


def _iso(moment: datetime, style: int) -> str:
    if style == 0:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    if style == 1:
        return moment.strftime("%Y-%m-%d %H:%M:%S")  # naive: taken as UTC
    return str(int(moment.timestamp()))  # epoch seconds as text


def _messy_inputs(directory: Path) -> Path:
    """events/searches/users Parquet with duplicates, bad rows, ties and repeated watches; text timestamps."""
    rng = np.random.default_rng(7)
    directory.mkdir()
    users = [f"u{i:03d}" for i in range(N_USERS)]
    per_user = rng.integers(10, 90, N_USERS)
    rows: list[dict[str, object]] = []
    for user, n in zip(users, per_user, strict=True):
        seconds = np.sort(rng.integers(0, DAYS * 86_400, n))
        seconds[1::9] = seconds[0::9][: len(seconds[1::9])]  # timestamp ties within a user
        videos = rng.zipf(1.3, n) % 150  # popular videos are watched again and again
        for s, v in zip(seconds, videos, strict=True):
            watch = None if rng.random() < 0.05 else round(float(rng.exponential(200.0)), 3)
            rows.append(
                {
                    "user_id": user,
                    "video_id": f"v{v:04d}",
                    "ts": _iso(START + timedelta(seconds=int(s)), int(rng.integers(0, 3))),
                    "watch_seconds": watch,
                }
            )
    rows += [dict(rows[i]) for i in rng.choice(len(rows), 40, replace=False)]  # exact duplicates
    same_time = [dict(rows[i], watch_seconds=1.5) for i in rng.choice(len(rows), 5, replace=False)]
    bad = [
        {"user_id": None, "video_id": "v0001", "ts": "2024-03-05T00:00:00Z", "watch_seconds": 3.0},
        {"user_id": "  ", "video_id": "v0001", "ts": "2024-03-05T00:00:00Z", "watch_seconds": 3.0},
        {"user_id": "u001", "video_id": None, "ts": "2024-03-05T00:00:00Z", "watch_seconds": 3.0},
        {"user_id": "u001", "video_id": "v0002", "ts": "not a time", "watch_seconds": 3.0},
        {"user_id": "u002", "video_id": "v0002", "ts": "2024-13-45T99:00:00", "watch_seconds": 3.0},
        {"user_id": "u002", "video_id": "v0003", "ts": None, "watch_seconds": 3.0},
        {"user_id": "u003", "video_id": "v0003", "ts": "2024-03-06T00:00:00Z", "watch_seconds": -4.0},
        {"user_id": "u003", "video_id": "v0004", "ts": "2024-03-07T00:00:00Z", "watch_seconds": float("nan")},
    ]
    rows += same_time + bad
    order = rng.permutation(len(rows))
    events = pa.Table.from_pylist([rows[i] for i in order])
    pq.write_table(events, directory / "events.parquet", row_group_size=1000)

    searches: list[dict[str, object]] = []
    for _ in range(600):
        user = users[int(rng.integers(0, N_USERS))]
        words = rng.choice(WORDS, int(rng.integers(1, 4)))
        moment = START + timedelta(seconds=int(rng.integers(0, DAYS * 86_400)))
        searches.append({"user_id": user, "ts": moment, "query": " ".join(words)})
    searches += [dict(searches[i]) for i in range(0, 30, 3)]  # exact duplicates
    searches += [
        {"user_id": "u004", "ts": START, "query": None},
        {"user_id": None, "ts": START, "query": "cat"},
        {"user_id": "u999", "ts": START, "query": "a user who never watches"},
    ]
    search_table = pa.Table.from_pylist(
        searches, schema=pa.schema([("user_id", pa.string()), ("ts", TIMESTAMP), ("query", pa.string())])
    )
    pq.write_table(search_table, directory / "searches.parquet")

    people = []
    for i, user in enumerate(users[:-5]):  # the last five users have no user row
        people.append(
            {
                "user_id": user,
                "country": None if i % 11 == 0 else ["US", "DE", "BR", "IN", "NA"][i % 5],
                "device": ["ios", "android", "web"][i % 3],
                "gender": ["f", "m", None][i % 3],
                "age": None if i % 7 == 0 else float(18 + (i * 7) % 50),
                "logged_in": i % 4 != 0,
            }
        )
    people.append(dict(people[3], country="FR"))  # a repeated user id with other attributes
    people.append(dict(people[8]))  # and an exact repeat
    people.append({"user_id": None, "country": "US", "device": "ios", "gender": "f", "age": 30.0, "logged_in": True})
    pq.write_table(pa.Table.from_pylist(people), directory / "users.parquet")
    return directory


def _generated_inputs(directory: Path, n_users: int = 40, n_events: int = 2_000) -> Path:
    """A directory shaped like `recsys generate` output: typed Parquet events, searches, users, videos."""
    rng = np.random.default_rng(3)
    directory.mkdir()
    start_us = int(START.timestamp() * 1_000_000)
    ts = pa.array(start_us + rng.integers(0, DAYS * 86_400 * 1_000_000, n_events)).cast(TIMESTAMP)
    user_ids = [f"user-{i}" for i in rng.integers(0, n_users, n_events)]
    video_ids = [f"video-{i}" for i in rng.zipf(1.2, n_events) % 300]
    pq.write_table(
        pa.table({"user_id": user_ids, "video_id": video_ids, "ts": ts, "watch_seconds": rng.random(n_events)}),
        directory / "events.parquet",
    )
    s_ts = pa.array(start_us + rng.integers(0, DAYS * 86_400 * 1_000_000, 300)).cast(TIMESTAMP)
    queries = [" ".join(rng.choice(WORDS, 2)) for _ in range(300)]
    pq.write_table(
        pa.table({"user_id": [f"user-{i}" for i in rng.integers(0, n_users, 300)], "ts": s_ts, "query": queries}),
        directory / "searches.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "user_id": [f"user-{i}" for i in range(n_users)],
                "country": rng.choice(["US", "DE", "JP"], n_users),
                "device": rng.choice(["ios", "web"], n_users),
                "gender": rng.choice(["f", "m"], n_users),
                "age": rng.integers(15, 70, n_users).astype(float),
                "logged_in": rng.random(n_users) < 0.8,
            }
        ),
        directory / "users.parquet",
    )
    pq.write_table(
        pa.table({"video_id": [f"video-{i}" for i in range(300)], "title": [f"t{i}" for i in range(300)]}),
        directory / "videos.parquet",
    )
    return directory


def _sorted(table: pa.Table) -> pa.Table:
    keys = [("user_id", "ascending"), ("label_ts", "ascending"), ("label", "ascending")]
    return table.sort_by(keys).combine_chunks()


def _quarantine(directory: Path) -> pa.Table:
    files = sorted((directory / "quarantine").glob("*.parquet"))
    for f in files:
        assert pq.read_schema(f) == QUARANTINE, f
    return pa.concat_tables([QUARANTINE.empty_table(), *(pq.read_table(f) for f in files)])


@pytest.mark.parametrize("split", ["time", "leave_last_out"])
def test_spark_engine_matches_local_engine(spark: SparkSession, tmp_path: Path, split: str) -> None:
    inputs = resolve_inputs(_messy_inputs(tmp_path / "in"))
    local = run_pipeline(inputs, tmp_path / "local", PipelineConfig(workers=2, split=split), progress=False)
    distributed = run_pipeline(
        inputs, tmp_path / "spark", PipelineConfig(engine="spark", workers=2, split=split), progress=False
    )
    assert distributed["engine"] == "spark"

    # The input really is messy: every kind of bad row was seen, and examples exist in every split.
    assert local["quarantined"]["events"].keys() >= {
        "missing_user_id",
        "missing_video_id",
        "bad_timestamp",
        "missing_timestamp",
        "negative_watch_seconds",
        "bad_watch_seconds",
        "duplicate",
    }
    assert local["quarantined"]["users"] == {"missing_user_id": 1, "duplicate_user_id": 2}
    assert all(local["examples"][split] > 0 for split in SPLITS)

    for key in ("rows_in", "quarantined", "quarantined_total", "examples", "split", "vocab_sizes"):
        assert distributed[key] == local[key], key

    for split in SPLITS:
        files = sorted((tmp_path / "spark" / split).glob("*.parquet"))
        assert files and all(pq.read_schema(f) == EXAMPLES for f in files)
        ours, theirs = (
            _sorted(read_examples(tmp_path / "spark", split)),
            _sorted(read_examples(tmp_path / "local", split)),
        )
        assert ours.num_rows == theirs.num_rows == local["examples"][split]
        assert ours.equals(theirs), split

    for name in VOCAB_FILES.values():
        assert pq.read_table(tmp_path / "spark" / "vocab" / name).equals(
            pq.read_table(tmp_path / "local" / "vocab" / name)
        ), name
    numeric = NUMERIC_STATS_FILE
    assert (tmp_path / "spark" / "vocab" / numeric).read_text() == (tmp_path / "local" / "vocab" / numeric).read_text()

    ours_q, theirs_q = _quarantine(tmp_path / "spark"), _quarantine(tmp_path / "local")
    assert Counter(zip(*ours_q.to_pydict().values(), strict=True)) == Counter(
        zip(*theirs_q.to_pydict().values(), strict=True)
    )
    assert json.loads((tmp_path / "spark" / REPORT_FILE).read_text())["examples"] == local["examples"]


def test_cli_pipeline_with_spark_engine(tmp_path: Path) -> None:
    events = _generated_inputs(tmp_path / "generated")
    out = tmp_path / "examples"
    done = subprocess.run(
        [sys.executable, "-m", "recsys", "pipeline", "--events", str(events), "--out", str(out), *SPARK_ARGS],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "examples train" in done.stdout
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["engine"] == "spark"
    assert report["rows_in"] == {"events": 2_000, "searches": 300, "users": 40}
    assert report["examples"]["train"] > 0
    assert sum(pq.read_metadata(f).num_rows for f in (out / "train").glob("*.parquet")) == report["examples"]["train"]
    assert (out / "vocab" / VOCAB_FILES["videos"]).is_file()
