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

    @property
    def freed(self) -> list[int]:
        """The freed slots (a copy), the next one taken last: with ``used_end``, the state."""
        return list(self._freed)

    @classmethod
    def restore(cls, capacity: int, freed: list[int], used_end: int) -> SlotPool:
        """The pool whose ``freed`` and ``used_end`` are these (O(freed), not O(capacity))."""
        if not 0 <= used_end <= capacity or any(not 0 <= s < used_end for s in freed):
            raise ValueError(
                f"free slots {freed[:5]}... / used_end {used_end} do not fit {capacity}"
            )
        pool = cls(capacity, start=used_end)
        pool._freed = list(freed)
        return pool

    @classmethod
    def from_list(cls, capacity: int, free: list[int]) -> SlotPool:
        """The pool that hands out ``free`` popped from its end (the list of every free slot
        of older snapshots; the never used range is not recovered: all count as freed)."""
        pool = cls(capacity, start=capacity)
        pool._freed = list(free)
        return pool
