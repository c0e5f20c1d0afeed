"""Micro-batching: concurrent requests are gathered into one call of a batch function on a worker thread.

The first request of a batch waits at most ``max_wait`` for others (up to ``max_batch``); while one batch runs on
the worker thread the next one fills, so under load batches form without any waiting at all. The batch function
runs off the event loop (TensorFlow and FAISS release the GIL), so HTTP parsing and Redis I/O go on meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")

__all__ = ["MicroBatcher"]


class MicroBatcher(Generic[In, Out]):
    """Gather items submitted from coroutines into lists for ``fn`` (one list in, one result per item out)."""

    def __init__(
        self,
        fn: Callable[[list[In]], list[Out]],
        *,
        max_batch: int = 64,
        max_wait_us: int = 1000,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        """Not started until ``start`` is awaited inside the running loop."""
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait = max_wait_us / 1e6
        self.on_batch = on_batch
        self._queue: asyncio.Queue[tuple[In, asyncio.Future[Out]]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch")
        self._arriving = 0  # requests being prepared (e.g. reading Redis) that have not submitted yet

    @contextlib.contextmanager
    def arriving(self) -> Iterator[Arrival[In, Out]]:
        """Announce a request that will submit shortly: a filling batch waits for it (up to max_wait), and for
        nobody else. With nobody on the way a lone request goes at once instead of paying max_wait for company
        that is not coming, so light load gets batch-1 latency and heavy load still gets full batches.
        """
        arrival = Arrival(self)
        self._arriving += 1
        try:
            yield arrival
        finally:
            if not arrival.submitted:
                self._arriving -= 1

    def start(self) -> None:
        """Start the collector task on the running loop."""
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="micro-batcher")

    async def stop(self) -> None:
        """Stop collecting and fail whatever is still queued."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._queue is not None and not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(RuntimeError("the service is shutting down"))
        self._executor.shutdown(wait=True)

    async def submit(self, item: In) -> Out:
        """Queue one item and wait for its result (exceptions of the batch are raised here)."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return await future

    def _expecting(self) -> bool:
        """Whether announced requests are still on their way to the queue."""
        return self._arriving > 0

    async def run(self, fn: Callable[[], Out]) -> Out:
        """Run a one-off function on the batch thread (serialised with batches: FAISS and TF stay single-user)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def _collect(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0 or not self._expecting():
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            live = [(item, fut) for item, fut in batch if not fut.done()]  # a cancelled request is dropped
            if not live:
                continue
            if self.on_batch is not None:
                self.on_batch(len(live))
            try:
                results = await loop.run_in_executor(self._executor, self.fn, [item for item, _ in live])
            except Exception as exc:  # the batch failed: every caller in it gets the error
                log.exception("batch of %d failed", len(live))
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), result in zip(live, results, strict=True):
                if not fut.done():
                    fut.set_result(result)


class Arrival(Generic[In, Out]):
    """One announced request; submitting it ends the announcement."""

    def __init__(self, batcher: MicroBatcher[In, Out]) -> None:
        """Made by MicroBatcher.arriving."""
        self.batcher = batcher
        self.submitted = False

    async def submit(self, item: In) -> Out:
        """Queue the item (no longer 'on its way') and wait for its result."""
        if not self.submitted:
            self.submitted = True
            self.batcher._arriving -= 1
        return await self.batcher.submit(item)
