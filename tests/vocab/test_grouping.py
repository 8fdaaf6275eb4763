"""Batch grouping helpers against their plain numpy definitions."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.state.grouping import compact_groups, factorize, group_order


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


@pytest.mark.parametrize(
    "keys",
    [
        np.random.default_rng(0).integers(0, 20_000, 8192),  # dense ids: the bitmap path
        np.random.default_rng(1).integers(-(2**62), 2**62, 4096),  # sparse: the sorting path
        np.array([2**63 - 1, -(2**63), 0, 2**63 - 1]),  # a span beyond int64
        np.random.default_rng(2).integers(0, 70_000, 300).astype(np.uint32),
        np.array([-7]),
        np.zeros(0, dtype=np.int64),
    ],
)
def test_factorize_ints_matches_np_unique(keys):
    uniq, inverse = factorize(keys)
    want_uniq, want_inverse = np.unique(keys.astype(np.int64), return_inverse=True)
    assert uniq.dtype == inverse.dtype == np.int64
    assert np.array_equal(uniq, want_uniq)
    assert np.array_equal(inverse, want_inverse.reshape(-1))
