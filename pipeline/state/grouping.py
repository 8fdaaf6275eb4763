"""Grouping helpers for whole batches: distinct keys, group order, dense group ids.

Batch assembly groups every micro-batch by user and by item several times; these do it with a
few numpy passes. Group ids are dense (``0..n_groups-1``), so a counting sort beats a
comparison sort: numpy's stable sort is a radix sort for 16-bit integers.
``hash_event_ids`` is the stable hash of string keys: event ids for the store's duplicate
check, user keys for the backfill's shards.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.state.keyindex import Key

# factorize ranks int keys through a [max - min + 1] bitmap instead of sorting them when that
# span is at most this many slots per key plus a constant (a few µs of memset).
_DENSE_SPAN_PER_KEY = 8
_DENSE_SPAN_MIN = 1 << 16


def factorize(keys: np.ndarray | Sequence[Key]) -> tuple[np.ndarray, np.ndarray]:
    """Distinct keys and, per input, the index of its key (int64).

    int columns give sorted int64 keys (``np.unique``); object columns (str or mixed keys) an
    object array in first-seen order (a dict: mixed int/str keys have no order).
    """
    arr = np.asarray(keys) if not isinstance(keys, np.ndarray) else keys
    if arr.dtype.kind in "iu":
        ints = arr.astype(np.int64, copy=False).reshape(-1)
        if ints.size:
            low = int(ints.min())
            span = int(ints.max()) - low + 1
            if span <= _DENSE_SPAN_PER_KEY * ints.size + _DENSE_SPAN_MIN:
                # Ids from a compact range (the usual case): mark and rank beat sorting.
                shifted = ints - low
                present = np.zeros(span, dtype=bool)
                present[shifted] = True
                rank = np.cumsum(present, dtype=np.int64) - 1
                return np.flatnonzero(present).astype(np.int64) + low, rank[shifted]
        uniq, inverse = np.unique(ints, return_inverse=True)
        return uniq, inverse.astype(np.int64, copy=False).reshape(-1)
    index: dict[Key, int] = {}
    values = arr.tolist()
    inverse = np.fromiter(
        (index.setdefault(k, len(index)) for k in values), dtype=np.int64, count=len(values)
    )
    distinct = np.empty(len(index), dtype=object)
    distinct[:] = list(index)
    return distinct, inverse


def group_order(groups: np.ndarray, n_groups: int, times: np.ndarray | None = None) -> np.ndarray:
    """Stable permutation that sorts by group, then by ``times`` if given; ties keep input order.

    Events usually arrive in time order, so sorting by group alone is tried first and the
    (slower) two-key sort runs only when some group's times are out of order.
    """
    narrow = np.uint16 if n_groups <= 1 << 16 else np.int64
    order = np.argsort(groups.astype(narrow, copy=False), kind="stable")
    if times is not None and order.size > 1:
        t, g = times[order], groups[order]
        if ((t[1:] < t[:-1]) & (g[1:] == g[:-1])).any():
            order = np.lexsort((times, groups))
    return order


def compact_groups(index: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """The group ids that occur in ``index`` (sorted) and each element's position among them."""
    present = np.bincount(index, minlength=n_groups) > 0
    return np.flatnonzero(present), (np.cumsum(present) - 1)[index]


_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def hash_event_ids(event_ids: np.ndarray | None, n: int) -> np.ndarray:
    """Stable 64-bit FNV-1a hashes of event ids (0 = no id), vectorised over the batch.

    Python's ``hash`` is salted per process, so it cannot survive a checkpoint.
    """
    if event_ids is None:
        return np.zeros(n, dtype=np.int64)
    present = np.array([e is not None for e in event_ids.tolist()], dtype=bool)
    out = np.zeros(n, dtype=np.int64)
    if not present.any():
        return out
    raw = np.array([e.encode("utf-8") for e in event_ids[present].tolist()], dtype=np.bytes_)
    width = raw.dtype.itemsize
    chars = raw.view(np.uint8).reshape(-1, width)
    lengths = np.char.str_len(raw)
    h = np.full(chars.shape[0], _FNV_OFFSET, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(width):
            live = lengths > j
            mixed = (h ^ chars[:, j].astype(np.uint64)) * _FNV_PRIME
            h = np.where(live, mixed, h)
    hashed = h.view(np.int64)
    out[present] = np.where(hashed == 0, 1, hashed)  # 0 means "no id"
    return out
