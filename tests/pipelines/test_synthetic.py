"""The synthetic watch-log generator: contracts, exact sizes, determinism, and the structure it plants."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipelines import synthetic
from recsys.config import GeneratorConfig
from recsys.errors import InputError, RecsysError
from recsys.schemas import SEARCH_EVENTS, USERS, VIDEOS, WATCH_EVENTS

SMALL = GeneratorConfig(users=1500, videos=4000, events=80_000, topics=20, seed=7, days=30.0, chunk_events=15_000)
TABLES = ("events", "searches", "users", "videos", "truth/video_topics", "truth/user_interests")


def _read(out: Path, name: str) -> pa.Table:
    return pq.read_table(out / f"{name}.parquet")


def _index(ids: pa.Array) -> np.ndarray:
    """u0000042 / v0000042 -> 41."""
    return pc.cast(pc.utf8_slice_codeunits(ids, 1), pa.int64()).to_numpy() - 1


def _seconds(ts: pa.Array) -> np.ndarray:
    return pc.cast(ts, pa.int64()).to_numpy() // 1_000_000 - int(synthetic.START.timestamp())


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("synthetic") / "log"
    summary = synthetic.generate(SMALL, out, progress=False)
    return out, summary


@pytest.fixture(scope="module")
def topics(small: tuple[Path, dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per event: user index, video topic, seconds; per video: topic; in (user, ts) order."""
    out, _ = small
    events = _read(out, "events")
    video_topic = _read(out, "truth/video_topics").column("topic").to_numpy()
    user = _index(events.column("user_id"))
    return {
        "user": user,
        "topic": video_topic[_index(events.column("video_id"))],
        "ts": _seconds(events.column("ts")),
        "video_topic": video_topic,
    }


def test_files_and_schemas(small: tuple[Path, dict[str, Any]]) -> None:
    out, summary = small
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["events.parquet", "searches.parquet", "users.parquet", "videos.parquet", "truth", "manifest.json"]
    )
    assert _read(out, "events").schema == WATCH_EVENTS
    assert _read(out, "searches").schema == SEARCH_EVENTS
    assert _read(out, "users").schema == USERS
    assert _read(out, "videos").schema == VIDEOS
    assert _read(out, "truth/video_topics").schema.types == [pa.string(), pa.int32(), pa.float64()]
    assert _read(out, "truth/user_interests").schema.names == ["user_id", "topic", "weight"]
    assert json.loads((out / "manifest.json").read_text()) == summary
    assert summary["config"] == SMALL.model_dump()
    assert summary["version"] == synthetic.GENERATOR_VERSION


def test_exact_counts_and_ids(small: tuple[Path, dict[str, Any]]) -> None:
    out, summary = small
    events = _read(out, "events")
    assert events.num_rows == SMALL.events == summary["counts"]["events"]
    assert _read(out, "searches").num_rows == summary["counts"]["searches"] > 0
    users = _read(out, "users")
    assert users.column("user_id").to_pylist()[:2] == ["u0000001", "u0000002"]
    assert users.num_rows == SMALL.users
    assert _read(out, "videos").num_rows == SMALL.videos
    per_user = np.bincount(_index(events.column("user_id")), minlength=SMALL.users)
    assert per_user.min() >= 1  # every user watches
    assert per_user.max() > 10 * np.median(per_user)  # heavy-tailed activity
    null_share = events.column("watch_seconds").null_count / events.num_rows
    assert 0.01 < null_share < 0.03
    assert pc.min(events.column("watch_seconds")).as_py() >= 0


def test_side_tables_look_plausible(small: tuple[Path, dict[str, Any]]) -> None:
    out, _ = small
    users = _read(out, "users")
    countries = users.column("country").value_counts().to_pylist()
    shares = sorted((c["counts"] / users.num_rows for c in countries), reverse=True)
    assert 10 <= len(shares) <= 20 and shares[0] > 3 * shares[9]  # skewed
    assert set(users.column("device").to_pylist()) <= set(synthetic.DEVICES)
    assert set(users.column("gender").drop_null().to_pylist()) == {"M", "F"}
    assert 0 < users.column("gender").null_count < users.num_rows // 4
    age = users.column("age")
    assert 0 < age.null_count < users.num_rows // 10
    assert pc.min(age).as_py() >= 13 and pc.max(age).as_py() <= 80
    titles = _read(out, "videos").column("title").to_pylist()
    words = json.loads((out / "truth/topic_words.json").read_text())
    video_topic = _read(out, "truth/video_topics").column("topic").to_pylist()
    assert all(set(words[str(t)]) & set(title.split()) for t, title in zip(video_topic, titles, strict=True))


def test_timestamps_within_window(small: tuple[Path, dict[str, Any]], topics: dict[str, np.ndarray]) -> None:
    out, summary = small
    end = SMALL.days * 86_400
    ts = topics["ts"]
    assert ts.min() >= 0 and ts.max() <= end
    searches = _seconds(_read(out, "searches").column("ts"))
    assert searches.min() >= 0 and searches.max() <= end
    assert summary["time_range"]["end"] == (synthetic.START + timedelta(days=SMALL.days)).isoformat().replace(
        "+00:00", "Z"
    )
    # Rows come out grouped by user, in time order within a user.
    user = topics["user"]
    assert np.all(np.diff(user) >= 0)
    assert np.all((np.diff(ts) >= 0) | (np.diff(user) > 0))
    # A video is never watched before it was uploaded; some uploads fall inside the window.
    upload = _seconds(_read(out, "videos").column("upload_ts"))
    first = np.full(SMALL.videos, np.iinfo(np.int64).max)
    np.minimum.at(first, _index(_read(out, "events").column("video_id")), ts)
    assert np.all(upload <= first)
    assert 0.02 < np.mean(upload >= 0) < 0.3


def test_popularity_is_zipf_like(small: tuple[Path, dict[str, Any]]) -> None:
    out, _ = small
    ids = _read(out, "events").column("video_id")
    counts = np.sort(ids.value_counts().field("counts").to_numpy())[::-1]
    top = SMALL.videos // 100
    assert counts[:top].sum() / SMALL.events > 0.2  # the top 1% of videos get > 20x their share
    rank = np.arange(1, len(counts) + 1)
    head = slice(4, 400)  # ranks 5..400: past the noisy top, before counts get small
    slope = np.polyfit(np.log(rank[head]), np.log(counts[head]), 1)[0]
    assert slope == pytest.approx(-SMALL.zipf_exponent, abs=0.2)


def test_users_watch_their_planted_topics(small: tuple[Path, dict[str, Any]], topics: dict[str, np.ndarray]) -> None:
    out, _ = small
    interests = _read(out, "truth/user_interests")
    assert pc.min(interests.column("weight")).as_py() > 0
    planted = np.zeros((SMALL.users, SMALL.topics), dtype=bool)
    planted[_index(interests.column("user_id")), interests.column("topic").to_numpy()] = True
    assert planted.sum(axis=1).min() >= 1 and planted.sum(axis=1).max() <= synthetic.INTEREST_TOPICS
    user, topic = topics["user"], topics["topic"]
    hit = planted[user, topic].mean()
    # What the same users would score if their watches followed the global topic distribution.
    share = np.bincount(topic, minlength=SMALL.topics) / len(topic)
    chance = (planted[user] * share).sum(axis=1).mean()
    assert hit > 0.8
    assert hit > 3 * chance


def test_demographics_carry_signal(small: tuple[Path, dict[str, Any]]) -> None:
    out, _ = small
    users = _read(out, "users")
    interests = _read(out, "truth/user_interests")
    top = np.zeros(SMALL.users, dtype=np.int64)  # rows are by user then weight descending: first is the top
    idx = _index(interests.column("user_id"))
    first = np.r_[True, idx[1:] != idx[:-1]]
    top[idx[first]] = interests.column("topic").to_numpy()[first]
    country = pc.index_in(users.column("country"), value_set=pa.array(synthetic.COUNTRIES)).to_numpy()

    def spread(c: np.ndarray) -> float:  # mean distance between each country's top-topic mix and the whole
        table = np.zeros((len(synthetic.COUNTRIES), SMALL.topics))
        np.add.at(table, (c, top), 1.0)
        big = table.sum(axis=1) >= 50
        mix = table[big] / table[big].sum(axis=1, keepdims=True)
        return float(np.abs(mix - table.sum(axis=0) / table.sum()).sum(axis=1).mean())

    shuffled = np.random.default_rng(0).permutation(country)
    assert spread(country) > 1.5 * spread(shuffled)


def test_search_words_predict_the_next_watch(small: tuple[Path, dict[str, Any]], topics: dict[str, np.ndarray]) -> None:
    out, _ = small
    words = json.loads((out / "truth/topic_words.json").read_text())
    word_topic = {w: int(t) for t, ws in words.items() for w in ws}
    assert len(word_topic) == SMALL.topics * synthetic.WORDS_PER_TOPIC  # topic words are distinct
    searches = _read(out, "searches")
    s_user = _index(searches.column("user_id"))
    s_ts = _seconds(searches.column("ts"))
    # The first watch of the same user at or after the search (events are in (user, ts) order).
    key = topics["user"] * 10**8 + topics["ts"]
    nxt = np.searchsorted(key, s_user * 10**8 + s_ts)
    ok = nxt < len(key)
    ok[ok] = topics["user"][nxt[ok]] == s_user[ok]
    assert ok.mean() > 0.99
    next_topic = topics["topic"][nxt[ok]]
    queries = searches.column("query").to_pylist()
    query_topics = [
        {word_topic[w] for w in q.split() if w in word_topic} for q, keep in zip(queries, ok, strict=True) if keep
    ]
    assert all(len(t) == 1 for t in query_topics)  # 1-3 words of one topic (plus maybe a generic word)
    hit = np.mean([t in q for t, q in zip(next_topic, query_topics, strict=True)])
    shuffled = np.random.default_rng(0).permutation(next_topic)
    chance = np.mean([t in q for t, q in zip(shuffled, query_topics, strict=True)])
    assert hit > 0.8 and hit > 4 * chance
    lengths = np.array([len(q.split()) for q in queries])
    assert lengths.min() >= 1 and lengths.max() <= 4
    assert abs(len(queries) / small[1]["counts"]["sessions"] - SMALL.search_probability) < 0.03


def _tables(out: Path) -> dict[str, pa.Table]:
    return {name: _read(out, name) for name in TABLES}


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    cfg = GeneratorConfig(users=300, videos=1000, events=12_000, topics=8, seed=3, chunk_events=5000)
    a = synthetic.generate(cfg, tmp_path / "a", progress=False)
    b = synthetic.generate(cfg, tmp_path / "b", progress=False)
    assert a == b
    ta, tb = _tables(tmp_path / "a"), _tables(tmp_path / "b")
    for name in TABLES:
        assert ta[name].equals(tb[name]), name
    words = "truth/topic_words.json"
    assert (tmp_path / "a" / words).read_text() == (tmp_path / "b" / words).read_text()
    synthetic.generate(cfg.model_copy(update={"seed": 4}), tmp_path / "c", progress=False)
    tc = _tables(tmp_path / "c")
    assert not ta["events"].equals(tc["events"])
    assert not ta["truth/user_interests"].equals(tc["truth/user_interests"])


def test_heavy_users_are_split_across_chunks(tmp_path: Path) -> None:
    # Each of 3 users has thousands of events, far more than one chunk holds.
    cfg = GeneratorConfig(users=3, videos=500, events=20_000, topics=5, days=2.0, chunk_events=1000)
    summary = synthetic.generate(cfg, tmp_path / "out", progress=False)
    events = _read(tmp_path / "out", "events")
    assert events.num_rows == summary["counts"]["events"] == 20_000
    user, ts = _index(events.column("user_id")), _seconds(events.column("ts"))
    assert np.all(np.diff(user) >= 0) and np.all((np.diff(ts) >= 0) | (np.diff(user) > 0))
    assert ts.min() >= 0 and ts.max() <= cfg.days * 86_400


def test_refuses_a_non_empty_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    cfg = GeneratorConfig(users=10, videos=20, events=100, topics=2)
    with pytest.raises(InputError):
        synthetic.generate(cfg, out, progress=False)
    assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) == 1
    (out / "keep.txt").unlink()  # an empty directory is fine
    assert synthetic.generate(cfg, out, progress=False)["counts"]["events"] == 100


def test_refuses_fewer_events_than_users(tmp_path: Path) -> None:
    with pytest.raises(RecsysError, match="at least users"):
        synthetic.generate(GeneratorConfig(users=50, videos=20, events=10), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_failure_leaves_no_partial_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = pq.ParquetWriter

    class Failing(real):  # type: ignore[misc, valid-type]
        writes = 0

        def write_table(self, table: pa.Table, *args: Any, **kwargs: Any) -> None:
            Failing.writes += 1
            if Failing.writes == 3:
                raise OSError("disk full")
            super().write_table(table, *args, **kwargs)

    monkeypatch.setattr(synthetic.pq, "ParquetWriter", Failing)
    cfg = GeneratorConfig(users=200, videos=300, events=10_000, topics=4, chunk_events=2000)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        synthetic.generate(cfg, out, progress=False)
    assert Failing.writes == 3
    assert list(tmp_path.iterdir()) == []  # neither out nor its temporary sibling
