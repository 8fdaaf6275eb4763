"""The synthetic generator: deterministic, time-ordered, with the structure it promises."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.lake.datasets import build_sequences
from pipeline.lake.synthetic import SyntheticConfig, generate_events

SMALL = SyntheticConfig(num_users=60, num_items=200, events_per_user=30, num_clusters=8)


def test_deterministic_and_time_ordered() -> None:
    a, b = generate_events(SMALL), generate_events(SMALL)
    for col in ("user", "item", "timestamp"):
        np.testing.assert_array_equal(getattr(a, col), getattr(b, col))
    assert np.all(np.diff(a.timestamp) >= 0)
    c = generate_events(SyntheticConfig(**{**SMALL.__dict__, "seed": 1}))
    assert not np.array_equal(a.item, c.item)


def _transitions(cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(previous item, next item, time of the next event) for every consecutive pair."""
    ds = build_sequences(generate_events(cfg))
    same_user = np.ones(ds.num_events - 1, dtype=bool)
    same_user[ds.offsets[1:-1] - 1] = False
    return ds.item_ids[:-1][same_user], ds.item_ids[1:][same_user], ds.timestamps[1:][same_user]


def _best_successor(prev: np.ndarray, nxt: np.ndarray) -> dict[int, int]:
    pairs, counts = np.unique(np.stack([prev, nxt]), axis=1, return_counts=True)
    best: dict[int, tuple[int, int]] = {}
    for (a, b), c in zip(pairs.T.tolist(), counts.tolist(), strict=True):
        if c > best.get(a, (0, 0))[0]:
            best[a] = (c, b)
    return {a: b for a, (_, b) in best.items()}


def _agreement(succ: dict[int, int], prev: np.ndarray, nxt: np.ndarray) -> float:
    return float(
        np.mean([succ.get(a) == b for a, b in zip(prev.tolist(), nxt.tolist(), strict=True)])
    )


def test_sequential_pattern_is_strong() -> None:
    # With pattern_strength 0.85 and strides 1..3, one successor per item explains a lot.
    prev, nxt, _ = _transitions(SMALL)
    assert _agreement(_best_successor(prev, nxt), prev, nxt) > 0.3


def test_popularity_is_power_law() -> None:
    ev = generate_events(SyntheticConfig(num_users=200, num_items=500, pattern_strength=0.0))
    counts = np.sort(np.bincount(ev.item))[::-1]
    assert counts[:25].sum() > 3 * counts[-250:].sum()


def test_drift_changes_transitions() -> None:
    cfg = SyntheticConfig(**{**SMALL.__dict__, "events_per_user": 80, "drift_at": 0.5})
    prev, nxt, t = _transitions(cfg)
    before = t < cfg.drift_time
    half = np.flatnonzero(before)[::2]  # fit on half of the pre-drift pairs
    held = np.setdiff1d(np.flatnonzero(before), half)
    succ = _best_successor(prev[half], nxt[half])
    pre_fit = _agreement(succ, prev[held], nxt[held])
    post_fit = _agreement(succ, prev[~before], nxt[~before])
    assert pre_fit > 0.2
    assert post_fit < pre_fit / 3


def test_churn_introduces_and_retires_keys() -> None:
    cfg = SyntheticConfig(**{**SMALL.__dict__, "churn": 0.2, "churn_phases": 2})
    ev = generate_events(cfg)
    fresh = ev.item >= cfg.num_items
    assert fresh.any()
    first_fresh_time = ev.timestamp[fresh].min()
    assert first_fresh_time > ev.timestamp.min()


def test_rejects_bad_config() -> None:
    with pytest.raises(ValueError, match="pattern_strength"):
        SyntheticConfig(pattern_strength=1.5)
    with pytest.raises(ValueError, match="drift_at"):
        SyntheticConfig(drift_at=1.0)


def test_smallest_catalogue_fills_every_cluster() -> None:
    cfg = SyntheticConfig(num_users=40, num_items=40, num_clusters=20, events_per_user=10)
    ev = generate_events(cfg)
    assert len(np.unique(ev.item)) > cfg.num_clusters
