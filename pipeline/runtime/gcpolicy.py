"""Garbage-collector settings for long streaming loops (``genrec train``, the ingest benchmark).

Two settings, both for the duration of the loop only:

- ``gc.freeze()``: what exists when the loop starts (torch, the model, restored state) lives
  as long as the run; frozen, it is not rescanned by every full collection (~0.1 s each with
  torch loaded). It is unfrozen afterwards so that exit-time cleanup sees it (triton's
  bindings report objects still frozen at exit as leaks).
- a young-generation threshold of ``STREAMING_GEN0_THRESHOLD`` allocations instead of
  CPython's 700: kafka-python and the decoders allocate several container objects per
  message, so at 700 a young collection runs every ~100 messages and rescans every record
  still in flight. With 50,000, most per-message objects are freed before any collection
  sees them. Reference cycles are rare on this path; the cost is at most a few MB of
  cyclic garbage waiting for the next collection. ``bench/kafka_ingest.py --default-gc``
  measures the difference.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

STREAMING_GEN0_THRESHOLD = 50_000


@contextmanager
def streaming_gc(gen0_threshold: int = STREAMING_GEN0_THRESHOLD) -> Iterator[None]:
    """Freeze existing objects and raise the young-generation threshold inside the block."""
    previous = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(gen0_threshold, *previous[1:])
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()
