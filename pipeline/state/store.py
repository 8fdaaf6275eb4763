"""Per-user sequence store: the recent history every new event is appended to.

Layout: one slot per user in 2-D numpy arrays ``[slots, max_len]`` (item reference,
timestamp, action, value, event-id hash), plus a length, a head and a last-event time per
slot. Each row is a ring buffer in event-time order starting at its head, so the common case
(a user's new events are no older than their stored ones) appends in place without moving
the stored events; out-of-order inserts and TTL trimming rebuild the affected rows. Every
operation works on a whole micro-batch with numpy (``pipeline.state.grouping`` groups by user, a
``pipeline.state.keyindex.KeyIndex`` maps users to slots); there is no per-event Python object.

Semantics:

* **Cap**: a user keeps their last ``max_len`` events.
* **Event-time TTL**: events older than ``watermark - ttl_s`` are not returned and are
  dropped; users with nothing left are removed. The watermark is the largest event time the
  store has accepted, so replays age data exactly like the live stream.
* **User cap**: at most ``max_users`` users; when a batch brings new users beyond that, the
  least recently active users (by last event time) not in the batch are evicted.
* **Out of order**: an event up to ``tolerance_s`` older than the user's latest event is
  inserted in time order; an older one is rejected as ``late``.
* **Duplicates**: an event whose ``event_id`` matches one of the user's stored events, or an
  earlier event of the same batch, is rejected as ``duplicate``. Memory stays bounded because
  only the ids of stored events are kept (a 64-bit hash each); events without an id are never
  treated as duplicates.

Items are stored as opaque int64 references (``ItemVocabulary.refs``), so the store never
needs to know item keys. Snapshots are ``numpy.savez`` archives read with
``allow_pickle=False``.

Use per batch: ``plan = store.plan(users, timestamps, event_ids)`` (what to accept),
``store.history(plan, cutoff)`` (the stored prefix to put before the new events), then
``store.commit(plan, ...)`` once the batch is trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.state.grouping import compact_groups, factorize, group_order, hash_event_ids
from pipeline.state.keyindex import Key, KeyIndex
from pipeline.state.memory import lazy_zeros
from pipeline.state.recency import RecencyIndex
from pipeline.state.slots import SlotPool
from pipeline.state.vocab import (
    keys_from_arrays,
    keys_to_arrays,
    pack_arrays,
    unpack_arrays,
    write_arrays,
)

REJECT_LATE = "late"
REJECT_DUPLICATE = "duplicate"
_INT64_MIN = np.iinfo(np.int64).min
# Address space reserved for the first users at once (pipeline.state.memory.lazy_zeros: pages are only
# backed by memory once written), so the store rarely grows by copying.
_RESERVE_BYTES = 256 << 20


@dataclass(frozen=True)
class IngestPlan:
    """The store's verdict on one batch, before anything is written.

    Attributes:
        user_keys: distinct users of the batch (int64 array, or an object array of int/str).
        user_index: int64 [n], index into ``user_keys`` per event.
        slots: int64 [len(user_keys)], the user's slot or -1 for a user not stored yet.
        accepted: bool [n], events to keep (train on, then store).
        reasons: [n] reject reason per event ("" when accepted).
        event_hash: int64 [n], event-id hashes (0: no id).
        timestamps: int64 [n].
    """

    user_keys: np.ndarray
    user_index: np.ndarray
    slots: np.ndarray
    accepted: np.ndarray
    reasons: np.ndarray
    event_hash: np.ndarray
    timestamps: np.ndarray

    def reject_counts(self) -> dict[str, int]:
        names, counts = np.unique(self.reasons[~self.accepted], return_counts=True)
        return {str(k): int(v) for k, v in zip(names.tolist(), counts.tolist(), strict=True)}


@dataclass(frozen=True)
class Histories:
    """Stored events of some users as a jagged block (one sequence per requested user)."""

    offsets: np.ndarray  # int64 [U+1]
    item_refs: np.ndarray  # int64
    timestamps: np.ndarray  # int64
    actions: np.ndarray  # int32, as stored
    values: np.ndarray  # float32, NaN where an event had none

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclass(frozen=True)
class NewEvents:
    """A step's new events, each belonging to one sequence of a ``Histories`` (its user's)."""

    seq: np.ndarray  # int64 [n] the event's sequence (user) index in the Histories
    rows: np.ndarray  # int64 [n] item rows (0 = unknown)
    timestamps: np.ndarray  # int64 [n]
    actions: np.ndarray  # int64 [n] action codes
    values: np.ndarray  # float32 [n], NaN where an event has none

    def take(self, index: np.ndarray) -> NewEvents:
        """The events at ``index``, in that order."""
        return NewEvents(
            self.seq[index], self.rows[index], self.timestamps[index], self.actions[index],
            self.values[index],
        )  # fmt: skip


class SequenceStore:
    """Bounded per-user event histories (see the module docstring for the semantics).

    Args:
        max_len: events kept per user (N).
        max_users: most users kept; least recently active ones are evicted beyond it.
        ttl_s: event-time TTL in seconds (None: keep forever).
        tolerance_s: how much older than a user's latest event a new event may be.

    A batch is planned, its users' stored events read, then committed:

    >>> import numpy as np
    >>> store = SequenceStore(max_len=3)
    >>> ids = np.array(["a1", "a2", "b1"], dtype=object)
    >>> plan = store.plan(["ann", "ann", "bob"], np.array([100, 110, 105]), ids)
    >>> plan.accepted.tolist()
    [True, True, True]
    >>> store.commit(plan, item_refs=np.array([7, 8, 9]), actions=np.zeros(3), values=np.ones(3))
    >>> store.num_users, store.user_history("ann")["refs"].tolist()
    (2, [7, 8])

    In the next batch, an event older than ann's latest (50) is late and a repeated event id
    ("a2") a duplicate; ``history`` gives what each user of the batch had before it:

    >>> ids = np.array(["a3", "a4", "a0", "a2"], dtype=object)
    >>> plan = store.plan(["ann"] * 4, np.array([120, 130, 50, 140]), ids)
    >>> plan.accepted.tolist(), plan.reject_counts()
    ([True, True, False, False], {'duplicate': 1, 'late': 1})
    >>> store.history(plan.slots, cutoff=np.array([120])).item_refs.tolist()
    [7, 8]
    >>> refs = np.array([1, 2, 3, 4])
    >>> store.commit(plan, item_refs=refs, actions=np.zeros(4), values=np.ones(4))
    >>> store.user_history("ann")["refs"].tolist()  # the last max_len events
    [8, 1, 2]
    """

    _COLUMNS = ("refs", "ts", "action", "value", "ehash")

    def __init__(
        self,
        max_len: int,
        max_users: int = 1_000_000,
        ttl_s: int | None = None,
        tolerance_s: int = 0,
    ) -> None:
        if max_len < 1 or max_users < 1:
            raise ValueError(f"need max_len >= 1 and max_users >= 1, got {max_len}, {max_users}")
        if ttl_s is not None and ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive or None, got {ttl_s}")
        if tolerance_s < 0:
            raise ValueError(f"tolerance_s must be >= 0, got {tolerance_s}")
        self.max_len = max_len
        self.max_users = max_users
        self.ttl_s = ttl_s
        self.tolerance_s = tolerance_s
        self.watermark = _INT64_MIN  # largest accepted event time
        self._slot_of = KeyIndex()
        self._slots = SlotPool(0)
        self._recency = RecencyIndex()  # users by last event time, for TTL and LRU eviction
        self._alloc(0)
        self._grow(1)  # never empty, so batch code can index slot 0 for unknown users
        self.counters: dict[str, int] = {
            "events_stored": 0,
            REJECT_LATE: 0,
            REJECT_DUPLICATE: 0,
            "users_evicted_lru": 0,
            "users_expired_ttl": 0,
        }

    # ---------------------------------------------------------------- storage
    def _alloc(self, slots: int) -> None:
        self.refs = np.zeros((slots, self.max_len), dtype=np.int64)
        self.ts = np.zeros((slots, self.max_len), dtype=np.int64)
        self.action = np.zeros((slots, self.max_len), dtype=np.int32)
        self.value = np.zeros((slots, self.max_len), dtype=np.float32)
        self.ehash = np.zeros((slots, self.max_len), dtype=np.int64)
        self.length = np.zeros(slots, dtype=np.int64)
        self.head = np.zeros(slots, dtype=np.int64)  # column of the oldest event
        self.last_ts = np.full(slots, _INT64_MIN, dtype=np.int64)
        self._key_of = np.empty(slots, dtype=object)  # user key per slot (None: free)
        self._changed = np.zeros(slots, dtype=bool)  # written or freed since clear_changed()

    def _grow(self, needed: int) -> None:
        old = self.length.size
        if needed <= old:
            return
        row_bytes = self.max_len * sum(getattr(self, c).itemsize for c in self._COLUMNS)
        new = min(max(needed, 2 * old, _RESERVE_BYTES // row_bytes), self.max_users)
        for name in (*self._COLUMNS, "length", "head", "last_ts", "_key_of", "_changed"):
            arr = getattr(self, name)
            # A slot's memory is touched when it is first written, not when it is reserved.
            # (np.empty of objects is all None.)
            make = np.empty if arr.dtype == object else lazy_zeros
            grown = make((new, *arr.shape[1:]), dtype=arr.dtype)
            if name == "last_ts":
                grown[old:] = _INT64_MIN
            grown[:old] = arr
            setattr(self, name, grown)
        self._slots.capacity = new

    def _ring_cols(self, slots: np.ndarray, logical: np.ndarray) -> np.ndarray:
        """Physical columns of logical positions (0 = oldest) in the rows of ``slots``."""
        return (self.head[slots] + logical) % self.max_len

    def _rows_in_order(self, slots: np.ndarray) -> np.ndarray:
        """[len(slots), max_len] physical columns of each whole row, oldest first."""
        return self._ring_cols(slots[:, None], np.arange(self.max_len)[None, :])

    @property
    def num_users(self) -> int:
        return len(self._slot_of)

    def users(self) -> list[Key]:
        """The stored users (in slot order)."""
        return [key for key, _ in self._slot_of.items()]

    def slot_of(self, user: Key) -> int | None:
        """The slot holding ``user``'s row, or None."""
        return self._slot_of.get(user)

    @property
    def num_events(self) -> int:
        return int(self.length[: self._slots.used_end].sum())

    def ttl_floor(self) -> int:
        """Oldest event time still inside the TTL."""
        if self.ttl_s is None or self.watermark == _INT64_MIN:
            return _INT64_MIN
        return self.watermark - self.ttl_s

    def user_history(self, user: Key) -> dict[str, np.ndarray]:
        """One user's stored events (copies), for tests and debugging."""
        slot = self.slot_of(user)
        if slot is None:
            return {c: getattr(self, c)[:0, 0].copy() for c in self._COLUMNS}
        cols = self._ring_cols(np.int64(slot), np.arange(int(self.length[slot])))
        return {c: getattr(self, c)[slot, cols] for c in self._COLUMNS}

    # ------------------------------------------------------------------ plan
    def plan(
        self,
        users: np.ndarray | Sequence[Key],
        timestamps: np.ndarray,
        event_ids: np.ndarray | None = None,
    ) -> IngestPlan:
        """Decide which events of a batch to accept (late / duplicate); writes nothing."""
        timestamps = np.asarray(timestamps, dtype=np.int64)
        n = timestamps.size
        user_keys, inverse = factorize(users)
        slots = self._slot_of.lookup(user_keys, default=-1)
        ehash = hash_event_ids(event_ids, n)
        reasons = np.full(n, "", dtype="<U9")

        # Late: older than the newest earlier event of the user (stored or in this batch).
        ev_slot = slots[inverse]
        known = ev_slot >= 0
        stored_last = np.full(n, _INT64_MIN, dtype=np.int64)
        stored_last[known] = self.last_ts[ev_slot[known]]
        batch_prev = _previous_running_max(inverse, len(user_keys), timestamps)
        reference = np.maximum(stored_last, batch_prev)
        late = (reference != _INT64_MIN) & (timestamps < reference - self.tolerance_s)
        reasons[late] = REJECT_LATE

        # Duplicates: same event id as a stored event of the user, or an earlier batch event.
        has_id = ehash != 0
        dup = np.zeros(n, dtype=bool)
        check = np.flatnonzero(has_id & known & ~late)
        if check.size:
            s = ev_slot[check]
            age = (np.arange(self.max_len)[None, :] - self.head[s][:, None]) % self.max_len
            in_row = age < self.length[s][:, None]
            dup[check] = ((self.ehash[s] == ehash[check][:, None]) & in_row).any(axis=1)
        ids = np.flatnonzero(has_id & ~late & ~dup)
        if ids.size:
            pairs = np.stack([inverse[ids], ehash[ids]], axis=1)
            _, first = np.unique(pairs, axis=0, return_index=True)
            repeat = np.ones(ids.size, dtype=bool)
            repeat[first] = False
            dup[ids[repeat]] = True
        reasons[dup] = REJECT_DUPLICATE
        return IngestPlan(user_keys, inverse, slots, ~(late | dup), reasons, ehash, timestamps)

    # --------------------------------------------------------------- history
    def history(self, slots: np.ndarray, cutoff: np.ndarray) -> Histories:
        """Per requested slot, its stored events with ``ttl_floor() <= t <= cutoff``.

        Slot -1 (a user not stored yet) yields an empty sequence. ``cutoff`` is the time of
        the user's first new event, so an out-of-order event never sees later events as its
        past.
        """
        slots = np.asarray(slots, dtype=np.int64)
        known = slots >= 0
        safe = np.where(known, slots, 0)  # slot 0 always exists (see __init__)
        cutoff = np.asarray(cutoff, dtype=np.int64)
        floor = self.ttl_floor()
        hi = np.where(known, self.length[safe], 0)
        lo = np.zeros(slots.size, dtype=np.int64)
        # Usually the new events are the newest and nothing is past the TTL, so whole rows
        # are returned; only the other rows are scanned for their [lo, hi) range.
        scan = np.flatnonzero(
            (hi > 0) & ((cutoff < self.last_ts[safe]) | (self.ts[safe, self.head[safe]] < floor))
        )
        if scan.size:
            s = safe[scan]
            ts = self.ts[s[:, None], self._rows_in_order(s)]
            in_row = np.arange(self.max_len)[None, :] < hi[scan][:, None]
            hi[scan] = (in_row & (ts <= cutoff[scan][:, None])).sum(axis=1)
            lo[scan] = np.minimum((in_row & (ts < floor)).sum(axis=1), hi[scan])
        lengths = hi - lo
        offsets = np.zeros(slots.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # Ring columns head+lo, head+lo+1, ... of each row, wrapped once: head + hi < 2 max_len.
        # One flat index serves every column (1-D take is much faster than 2-D indexing).
        cols = np.repeat(self.head[safe] + lo - offsets[:-1], lengths) + np.arange(
            int(offsets[-1]), dtype=np.int64
        )
        cols = np.where(cols >= self.max_len, cols - self.max_len, cols)
        flat = np.repeat(safe * self.max_len, lengths) + cols
        return Histories(
            offsets=offsets,
            item_refs=self.refs.ravel().take(flat),
            timestamps=self.ts.ravel().take(flat),
            actions=self.action.ravel().take(flat),
            values=self.value.ravel().take(flat),
        )

    # ---------------------------------------------------------------- commit
    def commit(
        self,
        plan: IngestPlan,
        item_refs: np.ndarray,
        actions: np.ndarray,
        values: np.ndarray,
    ) -> None:
        """Write the accepted events of ``plan`` (columns aligned with the plan's events)."""
        acc = np.flatnonzero(plan.accepted)
        self.counters[REJECT_LATE] += int((plan.reasons == REJECT_LATE).sum())
        self.counters[REJECT_DUPLICATE] += int((plan.reasons == REJECT_DUPLICATE).sum())
        if acc.size == 0:
            return
        ts_new = plan.timestamps[acc]
        self.watermark = max(self.watermark, int(ts_new.max()))
        users_in_batch, seg_new = compact_groups(plan.user_index[acc], len(plan.user_keys))
        slots = plan.slots.copy()
        new_users = users_in_batch[slots[users_in_batch] < 0]
        self._expire_users(protect=slots[users_in_batch[slots[users_in_batch] >= 0]])
        if new_users.size:
            self._make_room(new_users.size, protect=slots[slots >= 0])
            self._grow(self.num_users + new_users.size)
            new_slots = self._slots.take(new_users.size)
            new_keys = plan.user_keys[new_users]
            self._slot_of.insert(new_keys, new_slots)
            self._key_of[new_slots] = new_keys
            slots[new_users] = new_slots
        self._changed[slots[users_in_batch]] = True
        self._merge(
            slots[users_in_batch],
            seg_new,
            {
                "refs": np.asarray(item_refs, dtype=np.int64)[acc],
                "ts": ts_new,
                "action": np.asarray(actions)[acc].astype(np.int32),
                "value": np.asarray(values, dtype=np.float32)[acc],
                "ehash": plan.event_hash[acc],
            },
        )
        self.counters["events_stored"] += int(acc.size)

    def _merge(self, slots: np.ndarray, seg_new: np.ndarray, new: dict[str, np.ndarray]) -> None:
        """Merge new events into the rows of ``slots``: time order, last max_len, TTL.

        Rows whose new events are all no older than the stored ones (and that need no TTL
        trimming) take the in-place ring append; the rest are rebuilt by ``_rebuild``.
        """
        order = group_order(seg_new, slots.size, new["ts"])  # arrival order among equal times
        seg = seg_new[order]
        counts = np.bincount(seg, minlength=slots.size)
        starts = np.cumsum(counts) - counts
        first_ts = new["ts"][order][np.minimum(starts, max(seg.size - 1, 0))]
        length = self.length[slots]
        floor = self.ttl_floor()
        fast = (counts > 0) & (first_ts >= floor)
        fast &= (length == 0) | (first_ts >= self.last_ts[slots])
        if floor != _INT64_MIN:
            fast &= (length == 0) | (self.ts[slots, self.head[slots]] >= floor)
        pick = fast[seg]
        if pick.any():
            self._append(slots[fast], counts[fast], {c: v[order[pick]] for c, v in new.items()})
        if not fast.all():
            slow = np.flatnonzero(~fast)
            keep = ~fast[seg_new]
            remap = np.full(slots.size, -1, dtype=np.int64)
            remap[slow] = np.arange(slow.size)
            self._rebuild(slots[slow], remap[seg_new[keep]], {c: v[keep] for c, v in new.items()})

    def _append(self, slots: np.ndarray, counts: np.ndarray, new: dict[str, np.ndarray]) -> None:
        """Ring-append ``counts[i]`` time-sorted new events (grouped by row) to ``slots[i]``."""
        length = self.length[slots]
        pos = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        # Only the last max_len new events of a row survive; writing just those keeps the
        # target columns distinct (no repeated fancy-index writes).
        live = pos >= np.repeat(counts - self.max_len, counts)
        seg = np.repeat(np.arange(slots.size), counts)[live]
        rows = slots[seg]
        flat = rows * self.max_len + self._ring_cols(rows, length[seg] + pos[live])
        for c, v in new.items():
            # The columns are C-contiguous (made by _grow), so ravel() is a view to write into;
            # a 1-D write is several times faster than 2-D fancy indexing.
            getattr(self, c).ravel()[flat] = v[live]
        overflow = np.maximum(length + counts - self.max_len, 0)
        self.head[slots] = (self.head[slots] + overflow) % self.max_len
        self.length[slots] = length + counts - overflow
        self.last_ts[slots] = new["ts"][np.cumsum(counts) - 1]
        self._touch(slots)

    def _rebuild(self, slots: np.ndarray, seg_new: np.ndarray, new: dict[str, np.ndarray]) -> None:
        """Sort stored + new events of each row, apply TTL and the cap, rewrite from column 0."""
        old_len = self.length[slots]
        seg_old = np.repeat(np.arange(slots.size), old_len)
        row_old = slots[seg_old]
        col_old = self._ring_cols(
            row_old, np.arange(seg_old.size) - np.repeat(np.cumsum(old_len) - old_len, old_len)
        )
        seg = np.concatenate([seg_old, seg_new])
        cols = {c: np.concatenate([getattr(self, c)[row_old, col_old], new[c]]) for c in new}
        # Sort by (user, time, stored-before-new, arrival) with one int64 key; a stable sort
        # keeps arrival order. The stored part is already sorted, so timsort mostly merges runs.
        ts = cols["ts"]
        t0 = int(ts.min())
        span = 2 * (int(ts.max()) - t0 + 1)
        newer = np.concatenate([np.zeros(seg_old.size, np.int64), np.ones(seg_new.size, np.int64)])
        if span * (slots.size + 1) < 2**62:
            order = np.argsort(seg * span + (ts - t0) * 2 + newer, kind="stable")
        else:  # the combined key would overflow int64
            order = np.lexsort((newer, ts, seg))
        seg = seg[order]
        cols = {c: v[order] for c, v in cols.items()}
        keep = cols["ts"] >= self.ttl_floor()
        seg = seg[keep]
        cols = {c: v[keep] for c, v in cols.items()}
        counts = np.bincount(seg, minlength=slots.size)
        starts = np.cumsum(counts) - counts
        pos = np.arange(seg.size) - np.repeat(starts, counts)
        kept = np.minimum(counts, self.max_len)
        tail = pos >= np.repeat(counts - kept, counts)
        dst_row = slots[seg[tail]]
        dst_col = pos[tail] - np.repeat(counts - kept, counts)[tail]
        for c, v in cols.items():
            getattr(self, c)[dst_row, dst_col] = v[tail]
        self.head[slots] = 0
        self.length[slots] = kept
        last = np.full(slots.size, _INT64_MIN, dtype=np.int64)
        nonempty = kept > 0
        last[nonempty] = self.ts[slots[nonempty], kept[nonempty] - 1]
        self.last_ts[slots] = last
        self._touch(slots[nonempty])
        empty = slots[~nonempty]
        if empty.size:
            self._remove(empty)
            self.counters["users_expired_ttl"] += int(empty.size)

    def _touch(self, slots: np.ndarray) -> None:
        """Index ``slots`` at their new ``last_ts`` (amortised O(1) per slot)."""
        self._recency.touch(slots, self.last_ts[slots], self.num_users, self._is_current)

    def _is_current(self, slot: int, last_ts: int) -> bool:
        return self._key_of[slot] is not None and int(self.last_ts[slot]) == last_ts

    def _expire_users(self, protect: np.ndarray) -> None:
        """Remove every user whose last event is older than the TTL floor, except ``protect``:
        O(expired) through the recency index, not a scan of all users."""
        floor = self.ttl_floor()
        if floor == _INT64_MIN or not len(self._slot_of):
            return
        stale = self._recency.older_than(floor, self._is_current, protect)
        if stale.size:
            self._remove(stale)
            self.counters["users_expired_ttl"] += int(stale.size)

    def _make_room(self, new_users: int, protect: np.ndarray) -> None:
        """Evict the least recently active users (oldest last event, then lowest slot), none
        in ``protect``, so that ``new_users`` fit: O(evicted) through the recency index."""
        excess = self.num_users + new_users - self.max_users
        if excess <= 0:
            return
        victims = self._recency.oldest(excess, self._is_current, protect)
        if victims.size < excess:
            # still stored: keep them indexed
            self._recency.touch(victims, self.last_ts[victims], self.num_users, self._is_current)
            raise ValueError(
                f"one batch brings {new_users} new users but max_users={self.max_users}; "
                "raise store.max_users or use smaller batches"
            )
        self._remove(victims)
        self.counters["users_evicted_lru"] += int(victims.size)

    def _remove(self, slots: np.ndarray) -> None:
        slots = slots[np.not_equal(self._key_of[slots], None)]  # (distinct) occupied slots
        self._slot_of.remove(self._key_of[slots])
        self._key_of[slots] = None
        self._slots.give(slots.tolist())
        self._changed[slots] = True
        self.length[slots] = 0
        self.head[slots] = 0
        self.last_ts[slots] = _INT64_MIN

    # -------------------------------------------------------------- snapshot
    def snapshot(self) -> bytes:
        """Users and their events as a compact ``numpy.savez`` archive (no pickle).

        Slot-exact: users keep their slots and the free-slot pool its order through a
        restore, so that eviction ties (broken by slot) and new users' slots come out as
        without it; users are written in slot order, so equal states give equal bytes.
        """
        return pack_arrays(self._full_archive())

    def write_snapshot(self, handle: Any) -> None:
        """``snapshot()`` streamed into a write-only file: a store of millions of users is
        not held in memory a second time (or a third, by ``BytesIO.getvalue``)."""
        write_arrays(self._full_archive(), handle)

    def _full_archive(self) -> dict[str, Any]:
        return self._archive(self._occupied(), np.zeros(0, np.int64))

    def _occupied(self) -> np.ndarray:
        """The slots holding a user, ascending (a scan of the slots ever handed out)."""
        end = self._slots.used_end
        return np.flatnonzero(np.not_equal(self._key_of[:end], None)).astype(np.int64)

    def delta_snapshot(self) -> bytes:
        """What changed since ``clear_changed``: the users of written slots (whole rows) and
        the slots freed, with the pool, watermark and counters; ``apply_delta`` of it on a
        restored ``snapshot()`` of that time gives this store. O(changed slots + freed)."""
        end = self._slots.used_end
        changed = np.flatnonzero(self._changed[:end]).astype(np.int64)
        held = np.not_equal(self._key_of[changed], None)
        return pack_arrays(self._archive(changed[held], changed[~held]))

    def clear_changed(self) -> None:
        """Start a new delta (after a checkpoint)."""
        self._changed[:] = False

    def _archive(self, slots: np.ndarray, cleared: np.ndarray) -> dict[str, Any]:
        keys = self._key_of[slots].tolist()
        lengths = self.length[slots]
        rows = np.repeat(slots, lengths)
        cols = self._ring_cols(
            rows, np.arange(rows.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        )
        arrays: dict[str, Any] = {
            "params": np.array(
                [
                    self.max_len,
                    self.max_users,
                    -1 if self.ttl_s is None else self.ttl_s,
                    self.tolerance_s,
                    self.watermark,
                ],
                dtype=np.int64,
            ),
            "slots": slots,
            "cleared": cleared,
            "freed": np.array(self._slots.freed, dtype=np.int64),
            "used_end": np.array([self._slots.used_end], dtype=np.int64),
            "lengths": lengths,
            "counter_names": np.array(list(self.counters), dtype=np.str_),
            "counter_values": np.array(list(self.counters.values()), dtype=np.int64),
        }
        for c in self._COLUMNS:
            arrays[f"col_{c}"] = getattr(self, c)[rows, cols]
        for name, arr in keys_to_arrays(keys).items():
            arrays[f"user_{name}"] = arr
        return arrays

    @classmethod
    def restore(cls, data: bytes) -> SequenceStore:
        """Rebuild a store from ``snapshot()`` bytes (also those of older versions, which
        did not record slots: their users get slots 0, 1, ... in snapshot order)."""
        a = unpack_arrays(data)
        max_len, max_users, ttl, tolerance = a["params"].tolist()[:4]
        store = cls(max_len, max_users, None if ttl < 0 else ttl, tolerance)
        if "slots" not in a:
            n = a["lengths"].size
            store._grow(n)
            a = {**a, "slots": store._slots.take(n)}
        store._apply(a)
        return store

    def apply_delta(self, data: bytes) -> None:
        """Apply a ``delta_snapshot()`` taken after the state this store holds."""
        a = unpack_arrays(data)
        params = a["params"].tolist()
        mine = [self.max_len, self.max_users, -1 if self.ttl_s is None else self.ttl_s]
        if params[:3] != mine or "cleared" not in a:
            raise ValueError(f"a store delta of other settings ({params[:3]}, not {mine})")
        self._apply(a)

    def _apply(self, a: dict[str, np.ndarray]) -> None:
        """Write the archive's users into their slots, free its cleared slots, take its pool,
        watermark and counters; the recency index is rebuilt."""
        slots, lengths = a["slots"].astype(np.int64), a["lengths"]
        n = lengths.size
        if slots.size != n:
            raise ValueError("a store snapshot whose slots and lengths disagree")
        if n and int(lengths.max()) > self.max_len:
            raise ValueError(f"a store snapshot with rows longer than max_len={self.max_len}")
        used_end = int(a["used_end"][0]) if "used_end" in a else self._slots.used_end
        if used_end > self.max_users:
            raise ValueError(
                f"a store snapshot with slots up to {used_end} for max_users={self.max_users}"
            )
        self._grow(max(used_end, int(slots.max()) + 1 if n else 0, 1))
        # users leaving these slots (freed, or replaced by another user)
        touched = np.concatenate([slots, a.get("cleared", np.zeros(0, np.int64))]).astype(np.int64)
        if touched.size and (
            int(touched.min()) < 0
            or int(touched.max()) >= used_end
            or np.unique(touched).size != touched.size
        ):
            raise ValueError("a store snapshot naming a slot twice or outside its slot range")
        self._remove(touched)
        keys = keys_from_arrays({k[5:]: v for k, v in a.items() if k.startswith("user_")}, n)
        key_array = np.empty(n, dtype=object)
        key_array[:] = keys
        self._key_of[slots] = key_array
        self._slot_of.insert(key_array, slots)
        rows = np.repeat(slots, lengths)
        cols = np.arange(rows.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        for c in self._COLUMNS:
            getattr(self, c)[rows, cols] = a[f"col_{c}"]
        self.head[slots] = 0
        self.length[slots] = lengths
        nonempty = lengths > 0
        self.last_ts[slots[nonempty]] = self.ts[slots[nonempty], lengths[nonempty] - 1]
        if "freed" in a:
            self._slots = SlotPool.restore(self.length.size, a["freed"].tolist(), used_end)
        self.watermark = int(a["params"][4])
        self.counters.update(
            zip(a["counter_names"].tolist(), a["counter_values"].tolist(), strict=True)
        )
        self._recency = RecencyIndex()
        occupied = self._occupied()
        self._touch(occupied[self.length[occupied] > 0])
        self._changed[:] = False


def _previous_running_max(group: np.ndarray, n_groups: int, values: np.ndarray) -> np.ndarray:
    """Per element, the max of the earlier elements of its group (INT64_MIN if none)."""
    n = values.size
    out = np.full(n, _INT64_MIN, dtype=np.int64)
    if n < 2:
        return out
    order = group_order(group, n_groups)
    g = group[order]
    v = values[order]
    # Offset each group above the previous one so one global running max never crosses
    # a group boundary.
    span = int(v.max()) - int(v.min()) + 1
    shifted = g * span + (v - v.min())
    running = np.maximum.accumulate(shifted)
    prev = np.empty(n, dtype=np.int64)
    prev[0] = -1
    prev[1:] = running[:-1]
    same = np.zeros(n, dtype=bool)
    same[1:] = g[1:] == g[:-1]
    result = np.where(same, prev - g * span + v.min(), _INT64_MIN)
    out[order] = result
    return out
