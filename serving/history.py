"""Per-user watch and search history: capped Redis lists behind a circuit breaker, or an in-process store.

Keys: ``{prefix}:w:{user_id}`` (video ids) and ``{prefix}:s:{user_id}`` (search tokens), oldest first, trimmed to
the newest ``cap`` watches and ``token_cap`` tokens, and expiring after ``ttl`` seconds without a write. One
pipeline per request, both for reads and for writes.

A store call either succeeds within its timeout or raises ``StoreUnavailable``; the circuit breaker turns a run of
failures into immediate ``StoreUnavailable`` for a short while, so a dead Redis costs requests nothing, and lets
one probe through afterwards so the service recovers by itself when Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

__all__ = ["CircuitBreaker", "History", "HistoryStore", "MemoryStore", "RedisStore", "StoreUnavailable", "Writes"]


class StoreUnavailable(Exception):
    """The history store could not be reached (timeout, connection refused, circuit open)."""


@dataclass(frozen=True)
class History:
    """A user's stored watches and search tokens, oldest first."""

    watches: list[str]
    tokens: list[str]


EMPTY = History([], [])

# user id -> (watched video ids, search tokens) to append, each oldest first.
Writes = dict[str, tuple[list[str], list[str]]]


class HistoryStore(Protocol):
    """What the service needs from a history store."""

    kind: str
    cap: int  # watches kept per user; the service sets it to what the serving bundle's tower reads
    token_cap: int  # search tokens kept per user, likewise

    async def read(self, user_id: str) -> History:
        """The user's history (empty for an unknown user); StoreUnavailable when it cannot be read."""
        ...

    async def append(self, writes: Writes) -> None:
        """Append watches and tokens for several users in one round trip; StoreUnavailable on failure."""
        ...

    async def ping(self) -> bool:
        """Whether the store answers now."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class CircuitBreaker:
    """Closed -> open after `failures` consecutive errors; open skips calls for `reset_seconds`, then one probe."""

    def __init__(self, failures: int, reset_seconds: float) -> None:
        """A closed breaker."""
        self.failures = failures
        self.reset_seconds = reset_seconds
        self._consecutive = 0
        self._opened_at: float | None = None
        self._probing = False
        self._last_failure = -math.inf

    @property
    def state(self) -> str:
        """closed | open | half-open."""
        if self._opened_at is None:
            return "closed"
        return "half-open" if time.monotonic() - self._opened_at >= self.reset_seconds else "open"

    def allow(self) -> bool:
        """Whether a call may go to the store now (in half-open state only one probe at a time)."""
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self._probing:
            self._probing = True
            return True
        return False

    def success(self) -> None:
        """A call succeeded: close the circuit."""
        if self._opened_at is not None:
            log.warning("history store reachable again: circuit closed")
        self._consecutive, self._opened_at, self._probing = 0, None, False

    def failure(self, started: float | None = None) -> None:
        """A call failed: count it, and (re)open the circuit at the threshold or after a failed probe.

        ``started`` (time.monotonic() when the call began) lets one stall count once: calls that were already
        in flight when the last failure was seen fail together (a pause, a slow reply), and are one event,
        not several consecutive ones.
        """
        if started is not None and started <= self._last_failure and not self._probing:
            return
        self._last_failure = time.monotonic()
        self._consecutive += 1
        if self._probing or self._consecutive >= self.failures:
            if self._opened_at is None:
                log.warning("history store unreachable (%d failures): circuit open", self._consecutive)
            self._opened_at = time.monotonic()
        self._probing = False


class RedisStore:
    """Capped per-user lists in Redis, with short timeouts and a circuit breaker."""

    kind = "redis"

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        prefix: str = "recsys",
        cap: int = 50,
        token_cap: int | None = None,
        ttl_seconds: int = 30 * 86_400,
        timeout_seconds: float = 0.05,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        """A client for `url` (no connection is made until the first call); token_cap defaults to cap."""
        import redis.asyncio as aioredis

        self.prefix, self.cap, self.ttl = prefix, cap, ttl_seconds
        self.token_cap = cap if token_cap is None else token_cap
        self.timeout = timeout_seconds
        self.breaker = breaker or CircuitBreaker(3, 2.0)
        self.client = aioredis.Redis.from_url(
            url,
            password=password,
            decode_responses=True,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            retry_on_timeout=False,
            health_check_interval=0,
        )

    def _keys(self, user_id: str) -> tuple[str, str]:
        return f"{self.prefix}:w:{user_id}", f"{self.prefix}:s:{user_id}"

    async def _guarded(self, call):
        """Run one Redis round trip under the breaker and a hard deadline."""
        import redis.exceptions

        if not self.breaker.allow():
            raise StoreUnavailable("history store circuit is open")
        started = time.monotonic()
        try:
            # Four socket timeouts cover connect + command + a reconnect; wait_for also bounds a hung call.
            result = await asyncio.wait_for(call(), timeout=self.timeout * 4)
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            self.breaker.failure(started)
            raise StoreUnavailable(f"history store error: {type(exc).__name__}: {exc}") from exc
        self.breaker.success()
        return result

    async def read(self, user_id: str) -> History:
        """LRANGE the newest ``cap`` watches and ``token_cap`` tokens in one pipeline (a reload may lower them)."""
        watch_key, search_key = self._keys(user_id)

        async def call() -> list[list[str]]:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.lrange(watch_key, -self.cap, -1)
                pipe.lrange(search_key, -self.token_cap, -1)
                return list(await pipe.execute())

        watches, tokens = await self._guarded(call)
        return History(watches, tokens)

    async def append(self, writes: Writes) -> None:
        """RPUSH, LTRIM to its cap and EXPIRE for every touched list, in one pipeline (one transaction)."""

        async def call() -> None:
            caps = (self.cap, self.token_cap)
            async with self.client.pipeline(transaction=True) as pipe:
                for user_id, (watches, tokens) in writes.items():
                    for key, values, cap in zip(self._keys(user_id), (watches, tokens), caps, strict=True):
                        if values:
                            pipe.rpush(key, *values[-cap:])
                            pipe.ltrim(key, -cap, -1)
                            pipe.expire(key, self.ttl)
                await pipe.execute()

        if writes:
            await self._guarded(call)

    async def ping(self) -> bool:
        """PING under the breaker."""
        try:
            return bool(await self._guarded(self.client.ping))
        except StoreUnavailable:
            return False

    async def close(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()


class MemoryStore:
    """An in-process history store for one worker (demos, tests of the API without Redis): same caps, LRU users."""

    kind = "memory"

    def __init__(self, cap: int = 50, max_users: int = 100_000, token_cap: int | None = None) -> None:
        """An empty store keeping at most `max_users` users (least recently written dropped first)."""
        self.cap, self.max_users = cap, max_users
        self.token_cap = cap if token_cap is None else token_cap
        self._users: OrderedDict[str, History] = OrderedDict()

    async def read(self, user_id: str) -> History:
        """The newest ``cap`` watches and ``token_cap`` tokens (copies)."""
        found = self._users.get(user_id, EMPTY)
        return History(found.watches[-self.cap :], found.tokens[-self.token_cap :])

    async def append(self, writes: Writes) -> None:
        """Append and cap, evicting the least recently written users past max_users."""
        for user_id, (watches, tokens) in writes.items():
            old = self._users.pop(user_id, EMPTY)
            self._users[user_id] = History(
                (old.watches + watches)[-self.cap :], (old.tokens + tokens)[-self.token_cap :]
            )
        while len(self._users) > self.max_users:
            self._users.popitem(last=False)

    async def ping(self) -> bool:
        """Always reachable."""
        return True

    async def close(self) -> None:
        """Nothing to release."""
