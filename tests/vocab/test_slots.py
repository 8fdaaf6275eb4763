"""SlotPool: freed slots first (last freed first), then never used ones in increasing order."""

from __future__ import annotations

import pytest

from pipeline.state.slots import SlotPool


def test_take_order_and_round_trip_through_its_state():
    pool = SlotPool(6, start=1)
    assert len(pool) == 5
    assert pool.take(2).tolist() == [1, 2]
    pool.give([2, 1])  # 1 was given last: it comes back first
    assert pool.take(3).tolist() == [1, 2, 3]
    assert pool.used_end == 4 and len(pool) == 2
    pool.give([3])
    assert (pool.freed, pool.used_end) == ([3], 4)
    copy = SlotPool.restore(6, pool.freed, pool.used_end)
    # the list of every free slot of older snapshots hands out the same sequence
    legacy = SlotPool.from_list(6, [5, 4, 3])
    assert copy.take(3).tolist() == legacy.take(3).tolist() == pool.take(3).tolist() == [3, 4, 5]
    with pytest.raises(ValueError, match="do not fit 6"):
        SlotPool.restore(6, [5], 4)
    with pytest.raises(ValueError, match="asked for 1 slots, 0 are free"):
        pool.take(1)


def test_capacity_can_grow():
    pool = SlotPool(1)
    assert pool.take(1).tolist() == [0]
    pool.capacity = 3
    assert pool.take(2).tolist() == [1, 2]
