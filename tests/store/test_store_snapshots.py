"""Store snapshots are slot-exact, and deltas on them compose to the very same store."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.state.store import SequenceStore
from pipeline.state.vocab import pack_arrays, unpack_arrays


class RandomStream:
    """Batches with coarse times (eviction ties), out-of-order events and repeats."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.clock = 0

    def feed(self, *stores: SequenceStore, batches: int) -> None:
        for _ in range(batches):
            n = int(self.rng.integers(1, 12))
            self.clock += int(self.rng.integers(0, 40))
            ts = (self.clock + self.rng.integers(-40, 10, n) // 10 * 10).astype(np.int64)
            users = self.rng.integers(0, 80, n).astype(np.int64)
            ids = self.rng.integers(1, 400, n).astype(str).astype(object)
            refs = self.rng.integers(1, 50, n)
            for store in stores:
                plan = store.plan(users, ts, ids)
                store.commit(plan, refs, np.zeros(n, np.int64), np.ones(n, np.float32))


def make_store(ttl: int | None) -> SequenceStore:
    return SequenceStore(max_len=5, max_users=25, ttl_s=ttl, tolerance_s=30)


@pytest.mark.parametrize("ttl", [None, 60])
def test_a_restored_store_goes_on_exactly_as_the_original(ttl: int | None) -> None:
    stream = RandomStream(1)
    original = make_store(ttl)
    stream.feed(original, batches=80)
    restored = SequenceStore.restore(original.snapshot())
    assert restored.snapshot() == original.snapshot()
    assert [restored.slot_of(u) for u in original.users()] == [
        original.slot_of(u) for u in original.users()
    ]
    # the same evictions (ties by slot) and the same slots for new users from here on
    stream.feed(original, restored, batches=80)
    assert restored.snapshot() == original.snapshot()
    evicted = original.counters["users_evicted_lru"] + original.counters["users_expired_ttl"]
    assert evicted > 20


@pytest.mark.parametrize("seed", range(4))
def test_a_chain_of_deltas_composes_to_the_store(seed: int) -> None:
    stream = RandomStream(seed)
    store = make_store(None if seed % 2 else 60)
    stream.feed(store, batches=30)
    base = store.snapshot()
    store.clear_changed()
    deltas = []
    for _ in range(3):
        stream.feed(store, batches=int(stream.rng.integers(0, 20)))
        deltas.append(store.delta_snapshot())
        store.clear_changed()
    composed = SequenceStore.restore(base)
    for delta in deltas:
        composed.apply_delta(delta)
    assert composed.snapshot() == store.snapshot()
    for user in store.users():
        got, want = composed.user_history(user), store.user_history(user)
        assert all(np.array_equal(got[c], want[c]) for c in want)


def test_a_delta_holds_only_the_users_written_since() -> None:
    store = SequenceStore(max_len=8, max_users=10_000)
    users = np.arange(5000, dtype=np.int64)
    plan = store.plan(users, np.full(5000, 100, np.int64))
    store.commit(plan, np.ones(5000, np.int64), np.zeros(5000), np.zeros(5000, np.float32))
    store.clear_changed()
    plan = store.plan(np.array([3, 4], np.int64), np.array([200, 201], np.int64))
    store.commit(plan, np.ones(2, np.int64), np.zeros(2), np.zeros(2, np.float32))
    delta = unpack_arrays(store.delta_snapshot())
    assert delta["slots"].tolist() == [store.slot_of(3), store.slot_of(4)]
    assert len(store.delta_snapshot()) < len(store.snapshot()) / 20


def test_snapshots_without_slots_still_restore() -> None:
    store = make_store(None)
    RandomStream(3).feed(store, batches=40)
    legacy = {
        k: v
        for k, v in unpack_arrays(store.snapshot()).items()
        if k not in ("slots", "cleared", "freed", "used_end")
    }
    restored = SequenceStore.restore(pack_arrays(legacy))
    assert sorted(restored.users()) == sorted(store.users())
    for user in store.users():
        assert restored.user_history(user)["ts"].tolist() == store.user_history(user)["ts"].tolist()


def test_a_delta_of_other_settings_or_slots_out_of_range_is_refused() -> None:
    store = make_store(None)
    RandomStream(4).feed(store, batches=10)
    other = SequenceStore(max_len=6, max_users=25, tolerance_s=30)
    with pytest.raises(ValueError, match="other settings"):
        other.apply_delta(store.delta_snapshot())
    bad = unpack_arrays(store.snapshot())
    bad["used_end"] = np.array([26], np.int64)
    with pytest.raises(ValueError, match="max_users=25"):
        SequenceStore.restore(pack_arrays(bad))
    for slots in ([-1], [0, 0], [30]):
        delta = unpack_arrays(store.delta_snapshot())
        delta["cleared"] = np.array(slots, np.int64)
        with pytest.raises(ValueError, match="slot twice or outside"):
            SequenceStore.restore(store.snapshot()).apply_delta(pack_arrays(delta))


def test_a_delta_frees_the_slots_of_users_expired_since() -> None:
    store = SequenceStore(max_len=4, max_users=10, ttl_s=10)
    plan = store.plan(np.array([1, 2, 3], np.int64), np.array([0, 0, 5], np.int64))
    store.commit(plan, np.ones(3, np.int64), np.zeros(3), np.zeros(3, np.float32))
    base = store.snapshot()
    store.clear_changed()
    plan = store.plan(np.array([3], np.int64), np.array([12], np.int64))  # 1 and 2 expire
    store.commit(plan, np.ones(1, np.int64), np.zeros(1), np.zeros(1, np.float32))
    assert sorted(store.users()) == [3]
    composed = SequenceStore.restore(base)
    composed.apply_delta(store.delta_snapshot())
    assert sorted(composed.users()) == [3] and composed.snapshot() == store.snapshot()
