"""Dynamic, collisionless item vocabulary: arbitrary keys -> embedding rows.

Items appear and disappear in a live stream, so the embedding table is a pool of rows:

* **Collisionless**: each admitted key owns exactly one row (an exact ``KeyIndex``, no
  hashing tricks);
  row 0 is reserved for padding / unknown items and is never assigned.
* **Admission**: a key gets a row on its ``admission_threshold``-th occurrence. Before
  that it maps to row 0, so the model never wastes a row (or a training target) on a key
  seen once. Pending counts are bounded (``max_pending``).
* **Event-time TTL**: a row whose key was last seen more than ``ttl_s`` seconds of *event
  time* before ``now`` is freed by ``expire(now)``; replays and backfills therefore age keys
  exactly like the live stream did.
* **Capacity**: when no row is free, the least recently seen rows that the current batch
  does not use are evicted (counted in ``counters["evicted_capacity"]``).
* **Reuse**: every row handed to a key is reported in ``Observation.assigned`` so the
  trainer re-initialises its embedding *and* its optimizer state (a reused row must not
  inherit the previous item's Adam moments).
* **References**: ``refs(rows)`` packs (generation, row) into one int64; ``resolve(refs)``
  turns a stale reference (the row was freed or reassigned since) into row 0. The sequence
  store keeps references, so histories never point at another item's row.

The live catalogue (``live_rows()``) is what evaluation ranks over and what negatives are
drawn from. Snapshots are ``numpy.savez`` archives read with ``allow_pickle=False``.

Keys are Python ``int`` or ``str`` (an ``EventBatch`` key column: int64 or object).
This module imports only numpy (and torch nowhere), so ``model/`` stays light.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.state.grouping import factorize, group_order
from pipeline.state.keyindex import Key, KeyIndex
from pipeline.state.memory import lazy_zeros
from pipeline.state.recency import RecencyIndex
from pipeline.state.slots import SlotPool

_ROW_BITS = 32
_ROW_MASK = (1 << _ROW_BITS) - 1
_NO_ROWS = np.empty(0, dtype=np.int64)


def pack_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    """Named arrays as one ``numpy.savez``-format archive (the trainer state's snapshots)."""
    buf = io.BytesIO()
    write_arrays(arrays, buf)
    return buf.getvalue()


def write_arrays(arrays: dict[str, np.ndarray], handle: Any) -> None:
    """``pack_arrays`` into a file, which may be write-only (then a zip with data
    descriptors: no copy of the archive in memory); ``unpack_arrays`` reads both."""
    with zipfile.ZipFile(handle, mode="w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def unpack_arrays(data: bytes, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Inverse of ``pack_arrays``; never unpickles (``allow_pickle=False``).

    Nothing is allocated before its size is checked: the members' decompressed sizes (as the
    archive declares them; a member never yields more) must add up to at most ``max_bytes``
    (None: no limit), and each member's array must fit in the member (a header declaring a
    bigger shape is refused before numpy allocates it). ``ValueError`` says what is wrong.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
            total = sum(member.file_size for member in members)
            if max_bytes is not None and total > max_bytes:
                raise ValueError(
                    f"its arrays decompress to {total} bytes, over the limit of {max_bytes}"
                )
            for member in members:
                _check_member(archive, member)
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise ValueError(f"not a numpy .npz archive ({err})") from None
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {name: z[name] for name in z.files}


def _check_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> None:
    """The array a member's .npy header declares fits in the member's decompressed size."""
    with archive.open(member) as stream:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"member {member.filename!r}: .npy format {version} is not 1.0/2.0")
    if dtype.hasobject:
        raise ValueError(f"member {member.filename!r} holds Python objects (pickled data)")
    size = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if size > member.file_size:
        raise ValueError(
            f"member {member.filename!r} declares a {shape} {dtype} array ({size} bytes) in "
            f"{member.file_size} bytes"
        )


def keys_to_arrays(keys: Sequence[Key]) -> dict[str, np.ndarray]:
    """Split keys into an int64 array and a unicode array (+ positions) for pickle-free npz."""
    is_int = np.fromiter((type(k) is int for k in keys), dtype=bool, count=len(keys))
    positions = np.arange(len(keys), dtype=np.int64)
    int_keys = np.array([k for k, i in zip(keys, is_int, strict=True) if i], dtype=np.int64)
    str_keys = np.array([k for k, i in zip(keys, is_int, strict=True) if not i], dtype=np.str_)
    return {
        "int_keys": int_keys,
        "int_pos": positions[is_int],
        "str_keys": str_keys if str_keys.size else np.empty(0, dtype="<U1"),
        "str_pos": positions[~is_int],
    }


def keys_from_arrays(arrays: dict[str, np.ndarray], n: int) -> list[Key]:
    """Inverse of ``keys_to_arrays``."""
    out: list[Key] = [0] * n
    for pos, key in zip(arrays["int_pos"].tolist(), arrays["int_keys"].tolist(), strict=True):
        out[pos] = key
    for pos, key in zip(arrays["str_pos"].tolist(), arrays["str_keys"].tolist(), strict=True):
        out[pos] = str(key)
    return out


def _group_max(values: np.ndarray, inverse: np.ndarray, groups: int) -> np.ndarray:
    out = np.full(groups, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(out, inverse, values)
    return out


@dataclass(frozen=True)
class Observation:
    """What ``observe`` did to one batch of occurrences.

    Attributes:
        rows: int64 [n], the row of each occurrence (0: not admitted yet / no room).
        assigned: int64, rows handed to new keys in this call; re-initialise their
            embeddings and optimizer state before using them.
        admitted: number of keys admitted by this call.
    """

    rows: np.ndarray
    assigned: np.ndarray
    admitted: int


class ItemVocabulary:
    """Collisionless key -> row map with admission, event-time TTL and row reuse.

    Args:
        capacity: rows in the embedding table, including the reserved row 0.
        admission_threshold: occurrences a key needs before it gets a row (>= 1).
        ttl_s: free a row when its key was not seen for this many event-time seconds
            (None: never by time).
        max_pending: most not-yet-admitted keys whose counts are remembered.
    """

    def __init__(
        self,
        capacity: int,
        admission_threshold: int = 1,
        ttl_s: int | None = None,
        max_pending: int = 1_000_000,
    ) -> None:
        if capacity < 2:
            raise ValueError(
                f"vocabulary capacity must be >= 2 (row 0 is reserved), got {capacity}"
            )
        if admission_threshold < 1:
            raise ValueError(f"admission_threshold must be >= 1, got {admission_threshold}")
        if ttl_s is not None and ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive or None, got {ttl_s}")
        self.capacity = capacity
        self.admission_threshold = admission_threshold
        self.ttl_s = ttl_s
        self.max_pending = max_pending
        self._key_to_row = KeyIndex()
        self._row_key = np.empty(capacity, dtype=object)  # owner key per row (None: free)
        # Rows are handed out lowest first, so these fill from the front: lazily backed.
        self._used = lazy_zeros(capacity, bool)
        self._last_seen = lazy_zeros(capacity, np.int64)
        self._generation = lazy_zeros(capacity, np.int64)
        self._free = SlotPool(capacity, start=1)  # lowest rows are handed out first
        self._pending: dict[Key, tuple[int, int]] = {}  # key -> (count, last seen)
        self._recency = RecencyIndex()  # rows by last-seen time, for TTL and capacity eviction
        self._live_cache: np.ndarray | None = None
        self.counters: dict[str, int] = {
            "admitted": 0,
            "evicted_ttl": 0,
            "evicted_capacity": 0,
            "not_admitted_full": 0,
        }

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        """Number of keys that currently own a row."""
        return len(self._key_to_row)

    def __contains__(self, key: object) -> bool:
        return key in self._key_to_row

    def lookup(self, keys: np.ndarray | Sequence[Key]) -> np.ndarray:
        """int64 rows of ``keys`` (0 for keys without a row); no side effects."""
        uniq, inverse = factorize(keys)
        return self._key_to_row.lookup(uniq, default=0)[inverse]

    def key_of(self, row: int) -> Key | None:
        """The key that owns ``row``, or None."""
        return self._row_key[row]

    def live_rows(self) -> np.ndarray:
        """Sorted int64 rows currently assigned: the catalogue to rank and sample over."""
        if self._live_cache is None:
            # rows past used_end were never handed out: O(rows used), not O(capacity)
            end = self._free.used_end
            self._live_cache = np.flatnonzero(self._used[:end]).astype(np.int64)
        return self._live_cache

    def refs(self, rows: np.ndarray) -> np.ndarray:
        """Stable int64 references (generation, row) to the current owners of ``rows``."""
        rows = np.asarray(rows, dtype=np.int64)
        return np.where(rows > 0, (self._generation[rows] << _ROW_BITS) | rows, 0)

    def resolve(self, refs: np.ndarray) -> np.ndarray:
        """Rows of references; 0 where the row was freed or reassigned since."""
        refs = np.asarray(refs, dtype=np.int64)
        rows = refs & _ROW_MASK
        # Freeing and assigning a row both bump its generation, so a matching generation means
        # the row still belongs to the referenced key (row 0 keeps generation 0 and maps to 0).
        return np.where(self._generation[rows] == (refs >> _ROW_BITS), rows, 0)

    # ----------------------------------------------------------------- updates
    def observe(self, keys: np.ndarray | Sequence[Key], timestamps: np.ndarray) -> Observation:
        """Count occurrences, admit keys that reach the threshold, refresh last-seen times.

        Occurrences are processed in order: with threshold k, a key's k-th occurrence (over
        all calls) is the first that maps to its row.
        """
        timestamps = np.asarray(timestamps, dtype=np.int64)
        uniq, inverse = factorize(keys)
        n_uniq = len(uniq)
        rows_u = self._key_to_row.lookup(uniq, default=0)
        max_ts = _group_max(timestamps, inverse, n_uniq)
        counts = np.bincount(inverse, minlength=n_uniq)

        # Rank of each occurrence among the occurrences of its key in this batch.
        order = group_order(inverse, n_uniq)
        starts = np.cumsum(counts) - counts
        rank = np.empty(len(inverse), dtype=np.int64)
        rank[order] = np.arange(len(inverse)) - np.repeat(starts, counts)

        new_u = np.flatnonzero(rows_u == 0)
        # Counts of earlier occurrences of keys that were not admitted yet (the pending dict is
        # empty when every key is admitted at once: threshold 1).
        prev = np.zeros(new_u.size, dtype=np.int64)
        if self._pending:
            get = self._pending.get
            prev[:] = [get(k, (0, 0))[0] for k in uniq[new_u].tolist()]
        reaches = prev + counts[new_u] >= self.admission_threshold
        admit_u = new_u[reaches]
        # Rows already in use by this batch must not be evicted to make room.
        in_use = rows_u[rows_u > 0]
        if in_use.size:
            self._last_seen[in_use] = np.maximum(self._last_seen[in_use], max_ts[rows_u > 0])
            self._touch(in_use)
        assigned = self._take_rows(admit_u.size, protect=in_use)
        if assigned.size < admit_u.size:
            self.counters["not_admitted_full"] += int(admit_u.size - assigned.size)
            admit_u = admit_u[: assigned.size]
        if assigned.size:
            if self._pending:
                for key in uniq[admit_u].tolist():
                    self._pending.pop(key, None)
            self._row_key[assigned] = uniq[admit_u]
            self._key_to_row.insert(uniq[admit_u], assigned)
            self._used[assigned] = True
            self._generation[assigned] += 1
            self._last_seen[assigned] = max_ts[admit_u]
            self._touch(assigned)
            rows_u[admit_u] = assigned
            self._live_cache = None
            self.counters["admitted"] += int(assigned.size)
        # Remember counts of keys still waiting for admission.
        waiting = np.setdiff1d(new_u, admit_u, assume_unique=True)
        for key, c, t in zip(
            uniq[waiting].tolist(),
            (prev[np.searchsorted(new_u, waiting)] + counts[waiting]).tolist(),
            max_ts[waiting].tolist(),
            strict=True,
        ):
            self._pending[key] = (c, t)
        if len(self._pending) > self.max_pending:
            self._prune_pending()

        rows = rows_u[inverse]
        # Occurrences before the threshold (of keys admitted now) still map to row 0.
        newly = np.zeros(n_uniq, dtype=bool)
        newly[admit_u] = True
        prev_full = np.zeros(n_uniq, dtype=np.int64)
        prev_full[new_u] = prev
        early = newly[inverse] & (prev_full[inverse] + rank + 1 < self.admission_threshold)
        rows[early] = 0
        return Observation(rows=rows, assigned=assigned, admitted=int(assigned.size))

    def expire(self, now: int) -> np.ndarray:
        """Free rows whose key was last seen before ``now - ttl_s`` (event time)."""
        if self.ttl_s is None:
            return np.empty(0, dtype=np.int64)
        stale = np.sort(self._recency.older_than(now - self.ttl_s, self._is_current, _NO_ROWS))
        if stale.size:
            self._free_rows(stale)
            self.counters["evicted_ttl"] += int(stale.size)
        return stale

    def _take_rows(self, n: int, protect: np.ndarray) -> np.ndarray:
        if n == 0:
            return np.empty(0, dtype=np.int64)
        missing = n - len(self._free)
        if missing > 0:
            # the rows seen longest ago (then the lowest), outside protect: O(evicted)
            victims = self._recency.oldest(missing, self._is_current, protect)
            if victims.size:
                self._free_rows(victims)
                self.counters["evicted_capacity"] += int(victims.size)
        return self._free.take(min(n, len(self._free)))

    def _touch(self, rows: np.ndarray) -> None:
        self._recency.touch(rows, self._last_seen[rows], len(self), self._is_current)

    def _is_current(self, row: int, last_seen: int) -> bool:
        return bool(self._used[row]) and int(self._last_seen[row]) == last_seen

    def _free_rows(self, rows: np.ndarray) -> None:
        keys = self._row_key[rows]  # a copy (fancy indexing)
        self._row_key[rows] = None
        self._key_to_row.remove(keys)
        self._used[rows] = False
        self._generation[rows] += 1  # references to the old owner go stale
        self._free.give(sorted(rows.tolist(), reverse=True))
        self._live_cache = None

    def _prune_pending(self) -> None:
        # Keep the most recently seen half: rarely seen old keys are the least likely to
        # reach the threshold.
        keep = self.max_pending // 2
        ranked = sorted(self._pending.items(), key=lambda kv: kv[1][1], reverse=True)
        self._pending = dict(ranked[:keep])

    # ---------------------------------------------------------------- snapshot
    def snapshot(self) -> bytes:
        """The whole state as a ``numpy.savez`` archive (no pickled objects).

        O(rows ever handed out), not O(capacity): rows past ``used_end`` were never used, so
        their last-seen times and generations are zero and are not written.
        """
        end = self._free.used_end
        rows = self.live_rows()
        row_keys = self._row_key[rows].tolist()
        pending_keys = list(self._pending)
        pending = np.array(list(self._pending.values()), dtype=np.int64).reshape(-1, 2)
        arrays: dict[str, Any] = {
            "params": np.array(
                [
                    self.capacity,
                    self.admission_threshold,
                    -1 if self.ttl_s is None else self.ttl_s,
                    self.max_pending,
                ],
                dtype=np.int64,
            ),
            "rows": rows,
            "last_seen": self._last_seen[:end],
            "generation": self._generation[:end],
            "freed": np.array(self._free.freed, dtype=np.int64),
            "pending": pending,
            "counter_names": np.array(list(self.counters), dtype=np.str_),
            "counter_values": np.array(list(self.counters.values()), dtype=np.int64),
        }
        for name, arr in keys_to_arrays(row_keys).items():
            arrays[f"row_{name}"] = arr
        for name, arr in keys_to_arrays(pending_keys).items():
            arrays[f"pending_{name}"] = arr
        return pack_arrays(arrays)

    @classmethod
    def restore(cls, data: bytes) -> ItemVocabulary:
        """Rebuild a vocabulary from ``snapshot()`` bytes."""
        return cls.from_arrays(unpack_arrays(data))

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> ItemVocabulary:
        """Rebuild a vocabulary from the arrays of a ``snapshot()``."""
        capacity, threshold, ttl, max_pending = a["params"].tolist()
        vocab = cls(capacity, threshold, None if ttl < 0 else ttl, max_pending)
        rows = a["rows"]
        keys = keys_from_arrays({k[4:]: v for k, v in a.items() if k.startswith("row_")}, rows.size)
        key_array = np.empty(len(keys), dtype=object)
        key_array[:] = keys
        vocab._row_key[rows] = key_array
        vocab._key_to_row.insert(key_array, rows)
        vocab._used[rows] = True
        end = a["last_seen"].size  # capacity in snapshots written before "freed"
        vocab._last_seen[:end] = a["last_seen"]
        vocab._touch(rows.astype(np.int64))
        vocab._generation[:end] = a["generation"]
        if "freed" in a:
            vocab._free = SlotPool.restore(capacity, a["freed"].tolist(), end)
        else:
            vocab._free = SlotPool.from_list(capacity, a["free"].tolist())
        pkeys = keys_from_arrays(
            {k[8:]: v for k, v in a.items() if k.startswith("pending_")}, a["pending"].shape[0]
        )
        vocab._pending = {
            k: (int(c), int(t)) for k, (c, t) in zip(pkeys, a["pending"].tolist(), strict=True)
        }
        vocab.counters.update(
            zip(a["counter_names"].tolist(), a["counter_values"].tolist(), strict=True)
        )
        return vocab
