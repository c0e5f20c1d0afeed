"""The micro-batcher gathers concurrent submissions into one call, keeps order, and spreads a failure."""

from __future__ import annotations

import asyncio
import threading

import pytest

from serving.batcher import MicroBatcher


def test_concurrent_submissions_share_one_call_and_keep_their_results() -> None:
    calls: list[list[int]] = []
    threads: set[str] = set()

    def double(items: list[int]) -> list[int]:
        calls.append(list(items))
        threads.add(threading.current_thread().name)
        return [2 * i for i in items]

    async def main() -> list[int]:
        batcher: MicroBatcher[int, int] = MicroBatcher(double, max_batch=8, max_wait_us=50_000)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(i) for i in range(20)))
        finally:
            await batcher.stop()

    results = asyncio.run(main())
    assert results == [2 * i for i in range(20)]
    assert all(len(c) <= 8 for c in calls)
    assert len(calls) < 20, f"no batching happened: {calls}"
    assert threading.main_thread().name not in threads, "the batch function must run off the event loop"


def test_a_failing_batch_fails_each_caller_and_the_batcher_goes_on() -> None:
    def picky(items: list[int]) -> list[int]:
        if 13 in items:
            raise ValueError("unlucky")
        return items

    async def main() -> tuple[BaseException | int, int]:
        batcher: MicroBatcher[int, int] = MicroBatcher(picky, max_batch=1, max_wait_us=0)
        batcher.start()
        try:
            bad = (await asyncio.gather(batcher.submit(13), return_exceptions=True))[0]
            good = await batcher.submit(7)
            return bad, good
        finally:
            await batcher.stop()

    bad, good = asyncio.run(main())
    assert isinstance(bad, ValueError) and good == 7


def test_submit_before_start_is_an_error() -> None:
    batcher: MicroBatcher[int, int] = MicroBatcher(lambda x: x)
    with pytest.raises(RuntimeError, match="start"):
        asyncio.run(batcher.submit(1))


def test_a_lone_request_does_not_wait_and_announced_ones_are_waited_for() -> None:
    calls: list[list[int]] = []

    def record(items: list[int]) -> list[int]:
        calls.append(list(items))
        return items

    async def main() -> tuple[float, list[int]]:
        batcher: MicroBatcher[int, int] = MicroBatcher(record, max_batch=8, max_wait_us=500_000)
        batcher.start()
        try:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with batcher.arriving() as arrival:
                await arrival.submit(1)
            lone = loop.time() - t0

            async def late(item: int, delay: float) -> int:
                with batcher.arriving() as arrival:
                    await asyncio.sleep(delay)  # e.g. reading the history store
                    return await arrival.submit(item)

            together = await asyncio.gather(late(2, 0.0), late(3, 0.05))
            return lone, together
        finally:
            await batcher.stop()

    lone, together = asyncio.run(main())
    assert lone < 0.25, f"a lone request waited {lone:.3f}s for company that was not coming"
    assert together == [2, 3]
    assert calls[-1] == [2, 3], f"the announced late request should join the batch: {calls}"
