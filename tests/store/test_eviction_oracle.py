"""Eviction through the recency index picks exactly what a full scan would (oracle tests).

The store and the vocabulary choose whom to evict from a lazy heap (pipeline/state/recency.py). Here
a brute-force scan over every stored user / row, made just before each decision, predicts
the victims: the oldest last-activity times outside the protected set, ties by the lower
slot / row, and for TTL every id older than the floor. Random streams with out-of-order
events, repeats, a small user cap and a TTL drive both through many evictions.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.state.recency import RecencyIndex
from pipeline.state.store import SequenceStore
from pipeline.state.vocab import ItemVocabulary


class ScanCheckedStore(SequenceStore):
    """A store whose every TTL expiry and LRU eviction is compared with a full scan."""

    decisions = 0

    def _removed_by(self, call) -> np.ndarray:
        removed: list[np.ndarray] = []
        remove = SequenceStore._remove

        def spy(slots: np.ndarray) -> None:
            removed.append(np.asarray(slots).copy())
            remove(self, slots)

        self._remove = spy  # type: ignore[method-assign]
        try:
            call()
        finally:
            del self._remove
        return np.sort(np.concatenate(removed)) if removed else np.empty(0, np.int64)

    def _expire_users(self, protect: np.ndarray) -> None:
        floor = self.ttl_floor()
        occupied = self._occupied()
        expected = np.setdiff1d(occupied[self.last_ts[occupied] < floor], protect)
        got = self._removed_by(lambda: SequenceStore._expire_users(self, protect))
        assert got.tolist() == expected.tolist()
        ScanCheckedStore.decisions += int(expected.size > 0)

    def _make_room(self, new_users: int, protect: np.ndarray) -> None:
        excess = self.num_users + new_users - self.max_users
        candidates = np.setdiff1d(self._occupied(), protect)
        order = np.argsort(self.last_ts[candidates], kind="stable")  # ties: lower slot
        expected = np.sort(candidates[order[: max(excess, 0)]])
        got = self._removed_by(lambda: SequenceStore._make_room(self, new_users, protect))
        assert got.tolist() == expected.tolist()
        ScanCheckedStore.decisions += int(expected.size > 0)


@pytest.mark.parametrize("seed", range(6))
def test_store_evicts_exactly_the_least_recently_active_users(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ttl = None if seed % 2 else 60
    store = ScanCheckedStore(max_len=5, max_users=25, ttl_s=ttl, tolerance_s=30)
    ScanCheckedStore.decisions = 0
    clock = 0
    for _ in range(120):
        n = int(rng.integers(1, 12))
        clock += int(rng.integers(0, 40))
        # coarse times make ties; a few events arrive out of order
        ts = clock + rng.integers(-40, 10, n) // 10 * 10
        users = rng.integers(0, 80, n)
        plan = store.plan(users.astype(np.int64), ts.astype(np.int64), None)
        store.commit(plan, np.arange(1, n + 1), np.zeros(n, np.int64), np.zeros(n, np.float32))
        assert store.num_users <= 25
    assert ScanCheckedStore.decisions > 20
    if ttl is None:
        assert store.counters["users_evicted_lru"] > 0
    else:
        assert store.counters["users_expired_ttl"] > 0
    # a restored store keeps choosing the same way
    restored = SequenceStore.restore(store.snapshot())
    assert sorted(restored.users()) == sorted(store.users())


def test_vocabulary_evicts_exactly_the_rows_seen_longest_ago() -> None:
    rng = np.random.default_rng(7)
    vocab = ItemVocabulary(capacity=16, ttl_s=60)
    checked = 0
    for step in range(400):
        now = step * 10
        n = int(rng.integers(1, 8))
        keys = rng.integers(0, 60, n)
        ts = now - rng.integers(0, 30, n)
        used = np.flatnonzero(vocab._used).astype(np.int64)
        expected_ttl = np.sort(used[vocab._last_seen[used] < now - 60])
        assert vocab.expire(now).tolist() == expected_ttl.tolist()
        # capacity eviction: the rows of this batch's known keys are protected
        known = vocab.lookup(keys)
        protect = np.unique(known[known > 0])
        used = np.flatnonzero(vocab._used).astype(np.int64)
        last_seen = vocab._last_seen.copy()
        new_keys = np.setdiff1d(np.unique(keys), [vocab.key_of(r) for r in protect])
        missing = new_keys.size - (vocab.capacity - 1 - used.size)
        # the protected rows' times are refreshed before the choice
        for key, t in zip(keys.tolist(), ts.tolist(), strict=True):
            row = vocab.lookup(np.array([key]))[0]
            if row > 0:
                last_seen[row] = max(last_seen[row], t)
        candidates = np.setdiff1d(used, protect)
        order = np.argsort(last_seen[candidates], kind="stable")
        expected = set(candidates[order[: max(missing, 0)]].tolist())
        before = {int(r): vocab.key_of(int(r)) for r in used}
        vocab.observe(keys, ts)
        evicted = {r for r, k in before.items() if vocab.key_of(r) != k}
        assert evicted == expected
        checked += int(bool(expected))
    assert checked > 20 and vocab.counters["evicted_capacity"] > 0
    assert vocab.counters["evicted_ttl"] > 0


def test_recency_index_skips_stale_entries_and_keeps_protected_ones() -> None:
    times = {1: 5, 2: 3, 3: 9}
    index = RecencyIndex()
    index.touch(np.array([1, 2, 3]), np.array([5, 3, 9]), 3, lambda i, t: times.get(i) == t)
    times[2] = 7  # touched again: its entry at 3 is stale
    index.touch(np.array([2]), np.array([7]), 3, lambda i, t: times.get(i) == t)

    def current(i: int, t: int) -> bool:
        return times.get(i) == t

    assert index.older_than(8, current, protect=np.array([1])).tolist() == [2]
    assert index.oldest(5, current, protect=np.array([], np.int64)).tolist() == [1, 3]
    assert len(index) == 0  # taken entries and the stale one are gone
