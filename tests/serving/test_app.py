"""The service object: how much history it keeps follows the bundle it serves."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from recsys.config import ServeConfig
from serving import app as app_module
from serving.app import Service
from serving.engine import Engine
from serving.history import MemoryStore, Writes
from tests.serving.conftest import Trained

pytestmark = pytest.mark.slow


def _stored_after_posting(service: Service, n: int) -> tuple[list[str], list[str]]:
    """Start the service, post n watches and n search tokens for one user, read them back, stop."""

    async def run() -> tuple[list[str], list[str]]:
        await service.start()
        try:
            await service.store.append(Writes({"u": ([f"v{i}" for i in range(n)], [f"t{i}" for i in range(n)])}))
            found = await service.store.read("u")
            return found.watches, found.tokens
        finally:
            await service.stop()

    return asyncio.run(run())


def test_the_stored_history_is_as_long_as_the_served_tower_reads(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bundle whose tower reads 73 watches (the test bundle reads the pipeline's default 50, which was also the
    # store's fixed cap before: patching the loaded tower's length is what tells the two apart).
    load = Engine.load

    def longer(*args: Any, **kwargs: Any) -> Engine:
        engine = load(*args, **kwargs)
        engine.recommender.max_history = 73
        engine.recommender.max_search_tokens = 31
        return engine

    monkeypatch.setattr(app_module.Engine, "load", longer)
    service = Service(ServeConfig(bundles=trained.bundles, store="memory"), store=MemoryStore())
    watches, tokens = _stored_after_posting(service, 100)
    assert (service.store.cap, service.store.token_cap) == (73, 31)
    assert watches == [f"v{i}" for i in range(27, 100)], "the newest 73 watches, oldest first"
    # Each list has its own cap: a longer token list must not lengthen the watch history kept (and hidden), nor
    # the reverse.
    assert tokens == [f"t{i}" for i in range(69, 100)], "the newest 31 search tokens"


def test_a_configured_cap_wins(trained: Trained) -> None:
    service = Service(ServeConfig(bundles=trained.bundles, store="memory", history_cap=7), store=MemoryStore())
    watches, tokens = _stored_after_posting(service, 20)
    assert watches == [f"v{i}" for i in range(13, 20)] and tokens == [f"t{i}" for i in range(13, 20)]
