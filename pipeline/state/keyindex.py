"""Key -> int64 map that looks up and inserts whole batches of keys at once.

The sequence store (user -> slot) and the item vocabulary (item -> row) look up every distinct
key of every micro-batch. With a dict that is one Python call per key, which dominated batch
assembly. Here int keys (the common case: canonical ids are int64 whenever they can be, see
``pipeline/events/schema.py``) live in a numpy open-addressing table with linear probing, so a
batch is a few vectorised probe rounds; other keys (str) stay in a dict.

Deleted int keys leave tombstones, which keep later probe chains intact; the table is rebuilt
(tombstones dropped, resized) once live keys plus tombstones would fill half of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Key = int | str

_EMPTY, _FULL, _DELETED = 0, 1, 2
_MIN_BITS = 10
# Fibonacci hashing: multiply by 2^64 / golden ratio and keep the top bits, so sequential ids
# spread over the whole table.
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


def split_keys(keys: np.ndarray | Sequence[Key]) -> tuple[np.ndarray, np.ndarray, list[Key]]:
    """(bool mask of the int keys, those keys as int64, the other keys in order).

    Keys are Python ``int``/``str`` (or an integer array), as ``EventBatch`` key columns hold.
    """
    arr = keys if isinstance(keys, np.ndarray) else np.asarray(keys, dtype=object)
    if arr.dtype.kind in "iu":
        return np.ones(arr.size, dtype=bool), arr.astype(np.int64, copy=False).reshape(-1), []
    values = arr.tolist()
    is_int = np.fromiter((type(k) is int for k in values), dtype=bool, count=len(values))
    if is_int.all():
        return is_int, np.array(values, dtype=np.int64), []
    flags = is_int.tolist()
    ints = [k for k, i in zip(values, flags, strict=True) if i]
    others = [k for k, i in zip(values, flags, strict=True) if not i]
    return is_int, np.array(ints, dtype=np.int64), others


class KeyIndex:
    """A map from int or str keys to int64 values, queried and updated per batch of keys."""

    def __init__(self) -> None:
        self._other: dict[Key, int] = {}
        self._live = 0  # int keys stored
        self._reset(_MIN_BITS)

    def _reset(self, bits: int) -> None:
        self._bits = bits
        self._mask = (1 << bits) - 1
        self._state = np.zeros(1 << bits, dtype=np.uint8)
        self._keys = np.zeros(1 << bits, dtype=np.int64)
        self._values = np.zeros(1 << bits, dtype=np.int64)
        self._occupied = 0  # full + deleted slots

    def __len__(self) -> int:
        return self._live + len(self._other)

    # ------------------------------------------------------------------ queries
    def lookup(self, keys: np.ndarray | Sequence[Key], default: int = -1) -> np.ndarray:
        """int64 value of each key (``default`` where absent)."""
        is_int, ints, others = split_keys(keys)
        out = np.full(is_int.size, default, dtype=np.int64)
        if ints.size:
            pos = self._find(ints)
            out[is_int] = np.where(pos >= 0, self._values[pos], default)
        if others:
            get = self._other.get
            out[~is_int] = np.fromiter((get(k, default) for k in others), np.int64, len(others))
        return out

    def get(self, key: Key, default: int | None = None) -> int | None:
        """One key's value, or ``default``."""
        if type(key) is not int:
            return self._other.get(key, default)
        pos = int(self._find(np.array([key], dtype=np.int64))[0])
        return int(self._values[pos]) if pos >= 0 else default

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None  # type: ignore[arg-type]

    def items(self) -> list[tuple[Key, int]]:
        """All (key, value) pairs in value order (independent of the table's layout, so
        snapshots of equal maps are equal)."""
        full = np.flatnonzero(self._state == _FULL)
        pairs = [
            *zip(self._keys[full].tolist(), self._values[full].tolist(), strict=True),
            *self._other.items(),
        ]
        return sorted(pairs, key=lambda pair: pair[1])

    # ------------------------------------------------------------------ updates
    def insert(self, keys: np.ndarray | Sequence[Key], values: np.ndarray) -> None:
        """Add distinct keys that are not in the map yet."""
        values = np.asarray(values, dtype=np.int64)
        is_int, ints, others = split_keys(keys)
        if ints.size:
            self._insert_ints(ints, values[is_int])
        if others:
            self._other.update(zip(others, values[~is_int].tolist(), strict=True))

    def remove(self, keys: np.ndarray | Sequence[Key]) -> None:
        """Delete keys (absent ones are ignored)."""
        _, ints, others = split_keys(keys)
        if ints.size:
            pos = self._find(ints)
            pos = np.unique(pos[pos >= 0])
            self._state[pos] = _DELETED
            self._live -= int(pos.size)
        for key in others:
            self._other.pop(key, None)

    # ---------------------------------------------------------------- internals
    def _home(self, keys: np.ndarray) -> np.ndarray:
        hashed = keys.view(np.uint64) * _MULTIPLIER  # wraps modulo 2^64, as intended
        return (hashed >> np.uint64(64 - self._bits)).astype(np.int64)

    def _find(self, keys: np.ndarray) -> np.ndarray:
        """Table position of each int key, -1 where absent."""
        out = np.full(keys.size, -1, dtype=np.int64)
        pos = self._home(keys)
        active = np.arange(keys.size)
        # At most half the table is occupied, so every chain ends at an empty slot.
        while active.size:
            state = self._state[pos]
            hit = (state == _FULL) & (self._keys[pos] == keys[active])
            out[active[hit]] = pos[hit]
            more = ~hit & (state != _EMPTY)
            active = active[more]
            pos = (pos[more] + 1) & self._mask
        return out

    def _insert_ints(self, keys: np.ndarray, values: np.ndarray) -> None:
        if 2 * (self._occupied + keys.size) > self._mask + 1:
            self._rebuild(self._live + keys.size)
        pos = self._home(keys)
        active = np.arange(keys.size)
        while active.size:
            free = self._state[pos] != _FULL
            # One key per free slot wins this round; the rest move on along their chains.
            slots, first = np.unique(pos[free], return_index=True)
            winners = active[free][first]
            self._occupied += int((self._state[slots] == _EMPTY).sum())
            self._state[slots] = _FULL
            self._keys[slots] = keys[winners]
            self._values[slots] = values[winners]
            placed = np.zeros(active.size, dtype=bool)
            placed[np.flatnonzero(free)[first]] = True
            active = active[~placed]
            pos = (pos[~placed] + 1) & self._mask
        self._live += keys.size

    def _rebuild(self, live: int) -> None:
        full = self._state == _FULL
        keys, values = self._keys[full], self._values[full]
        bits = max(_MIN_BITS, int(4 * live).bit_length())  # load <= 1/4 right after
        self._reset(bits)
        self._live = 0
        if keys.size:
            self._insert_ints(keys, values)
