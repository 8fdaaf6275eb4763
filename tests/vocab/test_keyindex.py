"""KeyIndex (batched key -> value map) against a plain dict, through growth and tombstones."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.state.keyindex import KeyIndex, split_keys


def _objects(*keys: int | str) -> np.ndarray:
    arr = np.empty(len(keys), dtype=object)
    arr[:] = keys
    return arr


def test_split_keys_keeps_positions():
    is_int, ints, others = split_keys(_objects("a", 5, "b", -7))
    assert is_int.tolist() == [False, True, False, True]
    assert ints.tolist() == [5, -7]
    assert others == ["a", "b"]
    is_int, ints, others = split_keys(np.array([3, 1], dtype=np.int64))
    assert is_int.all() and ints.tolist() == [3, 1] and others == []


def test_mixed_keys_and_defaults():
    index = KeyIndex()
    index.insert(_objects(5, "5x", 2**62, -(2**63)), np.array([10, 11, 12, 13]))
    assert len(index) == 4
    assert index.lookup(_objects("5x", 5, 6, "nope", -(2**63)), default=-1).tolist() == [
        11,
        10,
        -1,
        -1,
        13,
    ]
    assert index.lookup(np.array([2**62, 0], dtype=np.int64), default=0).tolist() == [12, 0]
    assert index.get(5) == 10 and index.get("5x") == 11 and index.get(6) is None
    assert 5 in index and "5x" in index and "5" not in index
    index.remove(_objects(5, "5x", "absent", 99))
    assert len(index) == 2 and 5 not in index and "5x" not in index
    assert index.items() == [(2**62, 12), (-(2**63), 13)]


@pytest.mark.parametrize("seed", range(4))
def test_random_batches_match_a_dict(seed):
    rng = np.random.default_rng(seed)
    index, oracle = KeyIndex(), {}
    next_value = 0
    universe = np.concatenate(
        [np.arange(3000), rng.integers(-(2**62), 2**62, 3000), np.arange(3000) * 1024]
    )
    for _ in range(60):
        batch = np.unique(rng.choice(universe, size=int(rng.integers(1, 400))))
        found = index.lookup(batch, default=-1)
        assert found.tolist() == [oracle.get(k, -1) for k in batch.tolist()]
        new = batch[found < 0]
        values = np.arange(next_value, next_value + new.size)
        next_value += new.size
        if rng.random() < 0.3:  # the same keys as Python objects, with some str keys mixed in
            keys = _objects(*new.tolist(), *[f"s{v}" for v in values.tolist()])
            values = np.concatenate([values, values + 10**9])
        else:
            keys = new
        index.insert(keys, values)
        oracle.update(zip(keys.tolist(), values.tolist(), strict=True))
        if oracle and rng.random() < 0.5:  # delete a random share, leaving tombstones
            known = list(oracle)
            drop = [known[i] for i in rng.choice(len(known), size=len(known) // 3, replace=False)]
            index.remove(_objects(*drop))
            for key in drop:
                del oracle[key]
        assert len(index) == len(oracle)
    assert sorted(index.items(), key=lambda kv: kv[1]) == sorted(
        oracle.items(), key=lambda kv: kv[1]
    )
    probe = _objects(*list(oracle)[:500], "missing", 123456789)
    assert index.lookup(probe, default=-5).tolist() == [oracle.get(k, -5) for k in probe]
