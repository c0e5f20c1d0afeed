"""History stores: the circuit breaker's states, and the Redis store against a real redis-server."""

from __future__ import annotations

import asyncio
import time

import pytest

from serving.history import CircuitBreaker, MemoryStore, RedisStore, StoreUnavailable
from tests.serving.conftest import RedisServer, free_port


def test_breaker_opens_after_failures_and_probes_once_after_the_reset() -> None:
    breaker = CircuitBreaker(failures=2, reset_seconds=0.05)
    assert breaker.allow()
    breaker.failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    time.sleep(0.06)
    assert breaker.state == "half-open"
    assert breaker.allow() and not breaker.allow(), "only one probe at a time"
    breaker.failure()  # the probe failed: open again
    assert breaker.state == "open"
    time.sleep(0.06)
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow()


def test_memory_store_caps_each_list() -> None:
    store = MemoryStore(cap=3, max_users=2)

    async def main() -> None:
        await store.append({"a": (["v1", "v2"], ["t1"]), "b": (["x"], [])})
        await store.append({"a": (["v3", "v4"], ["t2", "t3", "t4"])})
        found = await store.read("a")
        assert found.watches == ["v2", "v3", "v4"] and found.tokens == ["t2", "t3", "t4"]
        await store.append({"c": (["y"], [])})  # evicts b, the least recently written
        assert (await store.read("b")).watches == []
        store.cap = 2  # a reload to a bundle that reads fewer: reads return the newest that many at once
        assert (await store.read("a")).watches == ["v3", "v4"]
        store.token_cap = 1  # the token list has its own cap
        found = await store.read("a")
        assert found.watches == ["v3", "v4"] and found.tokens == ["t4"]
        await store.append({"a": (["v5"], ["t5", "t6"])})
        assert (await store.read("a")).tokens == ["t6"]

    asyncio.run(main())


def test_redis_store_caps_expires_and_fails_fast_when_down(redis_server: RedisServer) -> None:
    store = RedisStore(
        redis_server.url, password=redis_server.password, cap=4, token_cap=3, ttl_seconds=100, prefix="t"
    )

    async def main() -> None:
        await store.append({"u1": ([f"v{i}" for i in range(6)], ["a", "b", "c", "d", "e"]), "u2": (["w"], [])})
        found = await store.read("u1")
        assert found.watches == ["v2", "v3", "v4", "v5"] and found.tokens == ["c", "d", "e"]
        assert await store.client.llen("t:s:u1") == 3, "each list is trimmed to its own cap in Redis"
        assert (await store.read("nobody")).watches == []
        store.cap = 2  # a reload to a bundle that reads fewer: reads return the newest that many at once
        assert (await store.read("u1")).watches == ["v4", "v5"]
        ttl = await store.client.ttl("t:w:u1")
        assert 0 < ttl <= 100
        assert await store.ping()
        await store.close()

    asyncio.run(main())

    wrong = RedisStore(redis_server.url, password="not-the-password", timeout_seconds=0.05)

    async def unauthorised() -> None:
        with pytest.raises(StoreUnavailable):
            await wrong.read("u1")
        await wrong.close()

    asyncio.run(unauthorised())

    dead = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout_seconds=0.05, breaker=CircuitBreaker(2, 60))

    async def down() -> float:
        for _ in range(2):
            with pytest.raises(StoreUnavailable):
                await dead.read("u1")
        t0 = time.perf_counter()
        with pytest.raises(StoreUnavailable, match="circuit is open"):
            await dead.read("u1")
        await dead.close()
        return time.perf_counter() - t0

    assert asyncio.run(down()) < 0.01, "an open circuit must answer without touching the network"


def test_one_stall_counts_as_one_failure() -> None:
    """Calls that were in flight together and failed together (a pause) do not open the circuit on their own."""
    breaker = CircuitBreaker(failures=2, reset_seconds=60)
    started = time.monotonic()
    for _ in range(5):  # five reads that began before the first failure was seen
        breaker.failure(started)
    assert breaker.state == "closed"
    breaker.failure(time.monotonic())  # a later call fails too: a second, separate failure
    assert breaker.state == "open"
