"""Redis faults against a real `recsys serve`: a killed Redis and a hung one (SIGSTOP).

While the history store is gone the service keeps answering, fast and marked degraded (popularity for a user
known only by id, the tower for a request that brings its own history), stays ready, refuses writes with a
503, and returns to normal answers by itself once Redis is back (circuit breaker probe).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import httpx
import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families

from recsys.bundle import resolve_bundle
from tests.serving.conftest import Api, RedisServer, Trained, running_redis, start_api, stop_api

pytestmark = pytest.mark.slow

K = 20
REQUESTS = 50  # per outage
SLOW_S = 1.0  # no answer may take longer while Redis is down
RECOVERY_S = 5.0  # normal answers again within this after Redis is back
ENV = {"RECSYS_SERVE__REDIS_TIMEOUT_MS": "50", "RECSYS_SERVE__BREAKER_RESET_SECONDS": "0.5"}


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the module (the tests stop and restart it; each leaves it running)."""
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def api(trained: Trained, redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The service with short Redis timeouts and a short breaker reset."""
    service = start_api(trained.bundles, redis, tmp_path_factory.mktemp("faults"), env=ENV)
    yield service
    stop_api(service)


@pytest.fixture
def healthy(api: Api, redis: RedisServer) -> Iterator[Api]:
    """The service with Redis up and answering undegraded before the test; Redis running again after it."""
    _wait_undegraded(api)
    yield api
    if redis.process is None:
        redis.start()
    else:
        redis.process.send_signal(signal.SIGCONT)


@pytest.fixture(scope="module")
def videos(trained: Trained) -> list[str]:
    """The bundle's video ids by index (row 0 is OOV); the vocabulary is ordered by watch count."""
    table = pq.read_table(resolve_bundle(trained.bundles) / "videos.parquet", columns=["video_id"])
    return [str(v) for v in table["video_id"].to_pylist()]


def _metric(api: Api, name: str, **labels: str) -> float:
    text = httpx.get(f"{api.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def _ask(client: httpx.Client, body: dict) -> tuple[dict, float]:
    t0 = time.perf_counter()
    answer = client.post("/v1/candidates", json=body)
    seconds = time.perf_counter() - t0
    assert answer.status_code == 200, answer.text
    return answer.json(), seconds


def _wait_undegraded(api: Api) -> float:
    """Seconds until a stored-user request is answered undegraded (fails after RECOVERY_S)."""
    t0 = time.monotonic()
    with api.client() as client:
        while True:
            body, _ = _ask(client, {"user_id": "probe", "k": 1})
            if not body["degraded"]:
                return time.monotonic() - t0
            assert time.monotonic() - t0 < RECOVERY_S, f"still degraded {RECOVERY_S}s after Redis came back"
            time.sleep(0.1)


def _store(client: httpx.Client, user: str, watches: list[str], query: str = "") -> None:
    searches = [{"user_id": user, "query": query}] if query else []
    answer = client.post(
        "/v1/events", json={"events": [{"user_id": user, "video_id": v} for v in watches], "searches": searches}
    )
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"stored_events": len(watches), "stored_searches": len(searches), "users": 1}


def _check_healthy(client: httpx.Client, users: dict[str, list[str]]) -> None:
    """Each user's stored history reads back exactly (no mixed-up replies) and drives undegraded tower answers."""
    for user, watches in users.items():
        stored = client.get(f"/v1/users/{user}/history")
        assert stored.status_code == 200, stored.text
        assert [h["video_id"] for h in stored.json()["history"]] == watches, (user, stored.json())
        assert stored.json()["degraded"] is False
        body, _ = _ask(client, {"user_id": user, "k": K})
        assert body["degraded"] is False and body["source"] == "tower", body
        returned = [c["video_id"] for c in body["candidates"]]
        assert len(returned) == K and not set(returned) & set(watches), "stored history was not used"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["store"] == "redis: up", ready.text


def _outage(api: Api, client: httpx.Client, videos: list[str], user: str) -> None:
    """REQUESTS mixed requests while the store is down: all 200, degraded, fast; ready; writes refused."""
    degraded_before = _metric(api, "recsys_degraded_total", reason="store_unavailable")
    own_history = videos[100:103]
    slowest = 0.0
    for i in range(REQUESTS):
        with_history = i % 2 == 1
        request = {"user_id": user, "k": K, **({"history": own_history} if with_history else {})}
        body, seconds = _ask(client, request)
        slowest = max(slowest, seconds)
        assert body["degraded"] is True, (i, body)
        returned = [c["video_id"] for c in body["candidates"]]
        assert len(returned) == K
        if with_history:
            assert body["source"] == "tower", body
            assert not set(returned) & set(own_history)
        else:
            # Popularity: the most watched videos, best first (the vocabulary is ordered by count).
            assert body["source"] == "popularity", body
            assert returned == videos[1 : K + 1]
            scores = [c["score"] for c in body["candidates"]]
            assert scores == sorted(scores, reverse=True)
    print(f"{REQUESTS} degraded answers, slowest {slowest:.3f}s")
    assert slowest < SLOW_S, f"slowest degraded answer took {slowest:.2f}s"

    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready" and ready.json()["store"] == "redis: down", ready.text
    assert "history store" in ready.json()["detail"] and "degraded" in ready.json()["detail"], ready.text

    t0 = time.perf_counter()
    write = client.post("/v1/events", json={"events": [{"user_id": user, "video_id": videos[7]}]})
    assert time.perf_counter() - t0 < SLOW_S
    assert write.status_code == 503, write.text
    assert "nothing stored" in write.json()["detail"] and write.headers.get("retry-after") == "1"

    stored = client.get(f"/v1/users/{user}/history")
    assert stored.status_code == 200 and stored.json()["degraded"] is True and stored.json()["history"] == []

    assert _metric(api, "recsys_degraded_total", reason="store_unavailable") == degraded_before + REQUESTS
    assert _metric(api, "recsys_store_up") == 0.0


def test_killed_redis(healthy: Api, redis: RedisServer, videos: list[str]) -> None:
    """Kill Redis: degraded answers; restart it (empty: not persisted): normal answers again by themselves."""
    api = healthy
    alice, bob = videos[10:16], videos[40:44]
    with api.client() as client:
        _store(client, "alice", alice, "cooking pasta")
        _store(client, "bob", bob)
        _check_healthy(client, {"alice": alice, "bob": bob})
        cold, _ = _ask(client, {"user_id": "nobody-yet", "k": K})
        known, _ = _ask(client, {"user_id": "alice", "k": K})
        assert cold["degraded"] is False and cold["candidates"] != known["candidates"]

        redis.stop()
        _outage(api, client, videos, "alice")

        redis.start()
        recovery = _wait_undegraded(api)
        print(f"undegraded again {recovery:.2f}s after Redis came back")
        assert recovery < RECOVERY_S
        lost = client.get("/v1/users/alice/history")
        assert lost.status_code == 200 and lost.json()["history"] == [], "Redis does not persist: history is gone"
        _store(client, "alice", alice[:3])
        _store(client, "bob", bob[:2])
        _check_healthy(client, {"alice": alice[:3], "bob": bob[:2]})
        assert _metric(api, "recsys_store_up") == 1.0


def test_hung_redis(healthy: Api, redis: RedisServer, videos: list[str]) -> None:
    """Freeze Redis (SIGSTOP: connections accepted, never answered): timeouts keep answers fast; SIGCONT heals."""
    api = healthy
    carol, dave = videos[20:25], videos[60:62]
    with api.client() as client:
        _store(client, "carol", carol)
        _store(client, "dave", dave)
        _check_healthy(client, {"carol": carol, "dave": dave})

        assert redis.process is not None
        redis.process.send_signal(signal.SIGSTOP)
        try:
            _outage(api, client, videos, "carol")
        finally:
            redis.process.send_signal(signal.SIGCONT)

        recovery = _wait_undegraded(api)
        print(f"undegraded again {recovery:.2f}s after Redis came back")
        assert recovery < RECOVERY_S
        # Nothing was lost this time, and no reply that arrived late was handed to the wrong request.
        _check_healthy(client, {"carol": carol, "dave": dave})
        for _ in range(10):
            _check_healthy(client, {"dave": dave})
