"""Micro-batching: concurrent requests share model calls of at most ``max_batch``, each
gets its own result or error, and a full queue refuses at once."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from pipeline.serve.batcher import MicroBatcher, Overloaded


def test_concurrent_requests_are_scored_in_bounded_batches() -> None:
    sizes: list[int] = []

    def score(queries: list[int]) -> list[int | Exception]:
        sizes.append(len(queries))
        return [ValueError(f"odd {q}") if q % 7 == 0 else q * 10 for q in queries]

    async def run() -> list[int | BaseException]:
        with ThreadPoolExecutor(1) as executor:
            batcher = MicroBatcher(score, executor, max_batch=8, max_wait_s=0.05, max_queue=100)
            batcher.start()
            results = await asyncio.gather(
                *(batcher.submit(q) for q in range(1, 41)), return_exceptions=True
            )
            await batcher.stop()
            return results

    results = asyncio.run(run())
    for q, result in zip(range(1, 41), results, strict=True):
        if q % 7 == 0:
            assert isinstance(result, ValueError) and str(result) == f"odd {q}"
        else:
            assert result == q * 10
    assert sum(sizes) == 40 and max(sizes) == 8 and len(sizes) <= 6


def test_a_full_queue_refuses_at_once() -> None:
    release = threading.Event()

    def score(queries: list[int]) -> list[int]:
        release.wait(10)
        return queries

    async def run() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = MicroBatcher(score, executor, max_batch=1, max_wait_s=0.0, max_queue=2)
            batcher.start()
            scoring = asyncio.ensure_future(batcher.submit(1))
            await asyncio.sleep(0.1)  # the first is being scored: the queue is empty
            waiting = [asyncio.ensure_future(batcher.submit(q)) for q in (2, 3)]
            await asyncio.sleep(0.05)
            with pytest.raises(Overloaded, match="2 requests are waiting already"):
                await batcher.submit(4)
            release.set()
            assert await asyncio.gather(scoring, *waiting) == [1, 2, 3]
            await batcher.stop()

    asyncio.run(run())
