"""SlotPool: freed slots first (last freed first), then never used ones in increasing order."""

from __future__ import annotations

import pytest

from model.slots import SlotPool


def test_take_order_and_round_trip_through_a_list():
    pool = SlotPool(6, start=1)
    assert len(pool) == 5
    assert pool.take(2).tolist() == [1, 2]
    pool.give([2, 1])  # 1 was given last: it comes back first
    assert pool.take(3).tolist() == [1, 2, 3]
    assert pool.used_end == 4 and len(pool) == 2
    # as_list pops like the old list of free rows; from_list hands out the same sequence
    assert pool.as_list() == [5, 4]
    pool.give([3])
    copy = SlotPool.from_list(6, pool.as_list())
    assert copy.take(3).tolist() == pool.take(3).tolist() == [3, 4, 5]
    with pytest.raises(ValueError, match="asked for 1 slots, 0 are free"):
        pool.take(1)


def test_capacity_can_grow():
    pool = SlotPool(1)
    assert pool.take(1).tolist() == [0]
    pool.capacity = 3
    assert pool.take(2).tolist() == [1, 2]
