"""Micro-batching: concurrent requests scored together in one model call.

A request waits in a bounded queue (``max_queue``; a full queue refuses it at once with
``Overloaded``); the batcher's task takes the first waiting request, gathers more for at
most ``max_wait_s`` or until ``max_batch`` are in, and scores them with one call of
``score`` on the scoring executor (one thread: batches run one after another, so requests
that arrive while a batch is scored form the next). ``score`` returns one result per
request, a result or an exception for that request alone; an exception raised by ``score``
itself fails every request of the batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

Q = TypeVar("Q")
R = TypeVar("R")


class Overloaded(Exception):
    """The queue is full: the request is refused before it waits."""


class MicroBatcher(Generic[Q, R]):
    def __init__(
        self,
        score: Callable[[list[Q]], Sequence[R | Exception]],
        executor: Executor,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
    ) -> None:
        self.score = score
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.queue: asyncio.Queue[tuple[Q, asyncio.Future[R]]] = asyncio.Queue(max_queue)
        self.arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Run the batching loop on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def submit(self, query: Q) -> R:
        """The result of ``query``, scored in a batch; ``Overloaded`` when the queue is full."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((query, future))
        except asyncio.QueueFull:
            raise Overloaded(f"{self.queue.maxsize} requests are waiting already") from None
        self.arrived.set()
        return await future

    async def _gather(self) -> list[tuple[Q, asyncio.Future[R]]]:
        batch = [await self.queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch:
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            left = deadline - loop.time()
            if len(batch) >= self.max_batch or left <= 0:
                break
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), left)
            except TimeoutError:
                break
        return [item for item in batch if not item[1].done()]  # not given up by its client

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            queries = [query for query, _ in batch]
            try:
                results = await loop.run_in_executor(self.executor, self.score, queries)
            except Exception as err:  # the whole batch failed: each request says why
                results = [err] * len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
