"""Batch grouping helpers against their plain numpy definitions."""

from __future__ import annotations

import numpy as np
import pytest

from model.grouping import compact_groups, group_order


@pytest.mark.parametrize("n_groups", [1, 7, 70_000])
@pytest.mark.parametrize("sorted_times", [True, False])
def test_group_order_is_a_stable_sort_by_group_then_time(n_groups, sorted_times):
    rng = np.random.default_rng(n_groups)
    groups = rng.integers(0, n_groups, 5000)
    times = rng.integers(0, 50, 5000)
    if sorted_times:
        times = np.sort(times)
    expected = np.lexsort((np.arange(groups.size), times, groups))
    assert np.array_equal(group_order(groups, n_groups, times), expected)
    assert np.array_equal(group_order(groups, n_groups), np.argsort(groups, kind="stable"))


def test_group_order_of_nothing():
    empty = np.zeros(0, dtype=np.int64)
    assert group_order(empty, 0, empty).size == 0


def test_compact_groups():
    present, position = compact_groups(np.array([5, 2, 5, 9]), 12)
    assert present.tolist() == [2, 5, 9]
    assert position.tolist() == [1, 0, 1, 2]
