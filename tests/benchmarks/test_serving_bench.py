"""The serving benchmark: its HTTP client pieces (fast) and one tiny end-to-end run (slow; real server and Redis)."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks.serving_load import (
    K,
    _check,
    _read_response,
    bundle_dir,
    cached_bundle,
    main,
    parse_args,
    seed_histories,
)

HEADLINE = ("rps_c16", "p50_ms_c16", "p99_ms_c16", "rps_c1", "p50_ms_c1", "p99_ms_c1", "raw_qps", "raw_qps_b1")


def _answer(ids: list[str], **fields: object) -> bytes:
    doc = {"model_version": "m", "degraded": False, "source": "tower", "unknown_history": 0} | fields
    doc["candidates"] = [{"video_id": v, "score": 1.0} for v in ids]
    return json.dumps(doc).encode()


def test_check_accepts_only_full_tower_answers_without_watched_videos() -> None:
    ids = [f"v{i}" for i in range(3)]
    assert _check(200, _answer(ids), 3, frozenset({"x"})) is None
    assert _check(503, b"{}", 3, frozenset()) is not None
    assert "candidates" in (_check(200, _answer(ids[:2]), 3, frozenset()) or "")
    assert "watched" in (_check(200, _answer(ids), 3, frozenset({"v1"})) or "")
    assert "degraded" in (_check(200, _answer(ids, degraded=True, source="popularity"), 3, frozenset()) or "")


def test_read_response_takes_exactly_one_keep_alive_response() -> None:
    async def run() -> tuple[tuple[int, bytes], bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\nContent-Length: 4\r\n\r\n")
        reader.feed_data(b'{"a"}HTTP/1.1 200 OK\r\n')  # the next response's bytes stay in the stream
        first = await _read_response(reader)
        return first, await reader.readuntil(b"\r\n")

    (status, body), rest = asyncio.run(run())
    assert (status, body) == (202, b'{"a"')
    assert rest == b"}HTTP/1.1 200 OK\r\n"


def test_seeded_histories_stay_in_a_few_topics_and_favour_popular_videos() -> None:
    rng = np.random.default_rng(0)
    topic = rng.integers(0, 20, size=2001).astype(np.int32)  # video index -> topic (row 0 is OOV)
    histories = seed_histories(topic, 50, 15, seed=3)
    assert len(histories) == 50
    assert seed_histories(topic, 50, 15, seed=3) == histories  # reproducible
    for watches in histories.values():
        rows = [int(w[1:]) + 1 for w in watches]  # "v{i}" is video index i + 1
        assert len(watches) == len(set(watches)) == 15
        assert all(1 <= r <= 2000 for r in rows)
        assert 1 <= len({int(topic[r]) for r in rows}) <= 3
    every = np.array([int(w[1:]) + 1 for h in histories.values() for w in h])
    assert np.mean(every <= 200) > 0.3  # Zipf within topics: the most popular tenth gets far more than a tenth


@pytest.mark.slow
def test_serving_benchmark_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The server inherits the environment. A busy CI box can stall its event loop past the default 50 ms Redis
    # timeout (a degraded answer, counted as a failure); this test is about the harness, not that timeout.
    monkeypatch.setenv("RECSYS_SERVE__REDIS_TIMEOUT_MS", "2000")
    out, work = tmp_path / "serving.json", tmp_path / "work"
    argv = ["--videos", "5000", "--dim", "32", "--requests", "200", "--warmup", "20", "--users", "100",
            "--history", "10", "--workers", "1", "--repeats", "2",
            "--workdir", str(work), "--json", str(out)]  # fmt: skip
    status = main(argv)
    result = json.loads(out.read_text())
    assert status == 0, {name: level["error_samples"] for name, level in result["levels"].items()}

    for key in HEADLINE:
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert result["http_over_raw"] == pytest.approx(result["rps_c16"] / result["raw_qps"], rel=0.01)
    assert result["failures"] == 0
    for name in ("c1", "c16"):
        level = result["levels"][name]
        assert level["failures"] == 0 and level["errors"] == {}
        assert level["requests"] == 2 * 200 and level["wall_s"] > 0, "two runs, pooled"
        assert level["batches"] >= 1 and level["mean_batch"] >= 1
        assert 0 < level["p90_ms"] <= level["max_ms"]
        assert set(level["cpu_s"]) == {"server", "server_event_loop", "redis", "loadgen"}
        runs = level["runs"]
        assert len(runs) == 2 and all(run["rps"] > 0 and run["p50_ms"] <= run["p99_ms"] for run in runs)
        assert result[f"p99_ms_{name}_runs"] == [run["p99_ms"] for run in runs]
        # Pooled percentiles lie within the runs' own (a pooled p99 is no better than the best run's).
        low, high = min(run["p99_ms"] for run in runs), max(run["p99_ms"] for run in runs)
        assert low - 0.002 <= result[f"p99_ms_{name}"] <= high + 0.002  # 0.002: the figures' rounding
    assert result["p50_ms_c16"] <= result["p99_ms_c16"]
    # The open-loop levels (default --rates 100,200,300): every arrival answered right, latency from its schedule.
    open_loop = result["levels"]["r300"]
    assert open_loop["failures"] == 0 and open_loop["requests"] == 200 and open_loop["rate"] == 300
    assert open_loop["achieved_rps"] > 0 and 0 < result["p50_ms_r300"] <= result["p99_ms_r300"] <= open_loop["max_ms"]
    assert result["raw"]["b16"]["queries"] == 192 and result["raw"]["b1"]["queries"] == 200
    assert result["raw_fewer_than_k"] == 0
    stats = result["raw"]["user_vectors"]
    assert stats["mean_norm"] > 0.5  # the constructed tower gives topical vectors, not a random tower's near-zero ones
    assert stats["mean_cosine_between_users"] < 0.5
    assert 0 <= stats["candidates_in_history_topics"] <= 1  # ~0 here: 5 videos a topic, all watched and hidden

    cfg = result["config"]
    assert cfg["store"] == ("redis" if shutil.which("redis-server") else "memory")
    assert (cfg["videos"], cfg["dim"], cfg["k"], cfg["workers"], cfg["requests"]) == (5000, 32, K, 1, 200)
    assert cfg["index_spec"] == "Flat"  # the default below 50k videos
    assert cfg["max_batch"] >= 1 and cfg["max_wait_us"] >= 0 and cfg["redis_timeout_ms"] == 2000
    assert [t["value"] for t in result["targets"]] == [
        result["p99_ms_c16"],
        result["rps_c16"],
        result["http_over_raw"],
    ]
    assert all(isinstance(t["holds"], bool) for t in result["targets"])
    assert result["machine"]["nproc"] >= 1 and len(result["machine"]["load_average_after"]) == 3
    assert "python -m benchmarks.serving_load" in result["command"] and "--videos 5000" in result["command"]

    # The bundle is cached by size and settings: found again for the same ones, not for another seed.
    assert cached_bundle(bundle_dir(work.resolve(), 5000, 32), 5000, 32, 0) is not None
    assert cached_bundle(bundle_dir(work.resolve(), 5000, 32), 5000, 32, 1) is None


def test_rates_parse_to_numbers_and_refuse_nonsense() -> None:
    base = ["--json", "x.json"]
    assert parse_args(base).rates == [100.0, 200.0, 300.0]
    assert parse_args([*base, "--rates", ""]).rates == []
    assert parse_args([*base, "--rates", "100,250.5"]).rates == [100.0, 250.5]
    for bad in ("0", "-5", "fast", "nan"):
        with pytest.raises(SystemExit):
            parse_args([*base, "--rates", bad])
