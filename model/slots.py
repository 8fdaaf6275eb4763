"""Free-slot bookkeeping for fixed-capacity tables (the store's user rows, the vocabulary's rows).

Freed slots are reused first, last freed first; after them come the never used slots in
increasing order. The never used ones are a range, not a list, so a table of millions of rows
costs nothing here until rows are freed.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


class SlotPool:
    """The free slots among ``[start, capacity)``; all of them are free at first."""

    def __init__(self, capacity: int, start: int = 0) -> None:
        self.capacity = capacity
        self._freed: list[int] = []  # reused from the end
        self._unused = start  # slots [_unused, capacity) were never handed out

    def __len__(self) -> int:
        return len(self._freed) + self.capacity - self._unused

    @property
    def used_end(self) -> int:
        """Every slot ever handed out is below this."""
        return self._unused

    def take(self, n: int) -> np.ndarray:
        """``n`` free slots (int64), freed ones first; ``n`` must be at most ``len(self)``."""
        if n > len(self):
            raise ValueError(f"asked for {n} slots, {len(self)} are free")
        reused = min(n, len(self._freed))
        taken = self._freed[len(self._freed) - reused :][::-1]
        del self._freed[len(self._freed) - reused :]
        fresh = np.arange(self._unused, self._unused + n - reused, dtype=np.int64)
        self._unused += n - reused
        return np.concatenate([np.array(taken, dtype=np.int64), fresh])

    def give(self, slots: Iterable[int]) -> None:
        """Return slots; the last one given is the first taken again."""
        self._freed.extend(slots)

    def as_list(self) -> list[int]:
        """Every free slot in the order a list popped from its end would hand them out."""
        return [*range(self.capacity - 1, self._unused - 1, -1), *self._freed]

    @classmethod
    def from_list(cls, capacity: int, free: list[int]) -> SlotPool:
        """Inverse of ``as_list`` (the never used range is not recovered: all are 'freed')."""
        pool = cls(capacity, start=capacity)
        pool._freed = list(free)
        return pool
