"""A seeded synthetic event stream with known structure: the embedded default data.

Structure the models can learn, and a popularity baseline cannot:

* Items fall into clusters. Inside a cluster every item has a fixed successor (a random
  cycle), and each user walks these cycles with a personal stride (1, 2 or 3 steps), so the
  next item follows from the last one *and* the user's history.
* With probability ``1 - pattern_strength`` a user jumps to an item drawn from one of its
  preferred clusters by power-law (Zipf) popularity.
* ``drift_at`` (a fraction of the time span) redraws the successor cycles, strides and
  preferred clusters: an abrupt preference change.
* ``churn`` replaces that fraction of the catalogue with fresh item keys at each of
  ``churn_phases`` evenly spaced times, so item ids appear and disappear.

Every user's events are spread over the span with exponential gaps; the log is returned in
global event-time order. Same config, same output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.lake.datasets import EventLog


@dataclass(frozen=True)
class SyntheticConfig:
    num_users: int = 500
    num_items: int = 1000
    events_per_user: int = 60
    num_clusters: int = 20
    clusters_per_user: int = 2
    pattern_strength: float = 0.85
    zipf_exponent: float = 1.1
    max_stride: int = 3
    drift_at: float | None = None
    churn: float = 0.0
    churn_phases: int = 4
    start_time: int = 1_600_000_000
    span_seconds: int = 90 * 24 * 3600
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_items < self.num_clusters * 2:
            raise ValueError(
                f"num_items={self.num_items} too small for {self.num_clusters} clusters"
            )
        if not 0.0 <= self.pattern_strength <= 1.0:
            raise ValueError(f"pattern_strength must be in [0, 1], got {self.pattern_strength}")
        if self.drift_at is not None and not 0.0 < self.drift_at < 1.0:
            raise ValueError(f"drift_at must be in (0, 1), got {self.drift_at}")
        if not 0.0 <= self.churn < 1.0:
            raise ValueError(f"churn must be in [0, 1), got {self.churn}")
        if self.events_per_user < 3 or self.num_users < 1:
            raise ValueError("need num_users >= 1 and events_per_user >= 3")

    @property
    def drift_time(self) -> int | None:
        if self.drift_at is None:
            return None
        return self.start_time + int(self.drift_at * self.span_seconds)


@dataclass(frozen=True)
class _Regime:
    """Everything that the drift redraws."""

    successor: np.ndarray  # [num_items] next item in the same cluster's cycle
    stride: np.ndarray  # [num_users]
    preferred: np.ndarray  # [num_users, clusters_per_user]


def _draw_regime(cfg: SyntheticConfig, rng: np.random.Generator, clusters: np.ndarray) -> _Regime:
    successor = np.empty(cfg.num_items, dtype=np.int64)
    for c in range(cfg.num_clusters):
        members = rng.permutation(np.flatnonzero(clusters == c))
        successor[members] = np.roll(members, -1)
    stride = rng.integers(1, cfg.max_stride + 1, size=cfg.num_users)
    preferred = np.stack(
        [
            rng.choice(cfg.num_clusters, size=cfg.clusters_per_user, replace=False)
            for _ in range(cfg.num_users)
        ]
    )
    return _Regime(successor, stride, preferred)


def generate_events(cfg: SyntheticConfig) -> EventLog:
    """The whole synthetic log, sorted by event time (int64 user and item keys)."""
    rng = np.random.default_rng(cfg.seed)
    # Round-robin then shuffled: every cluster gets at least two items.
    clusters = rng.permutation(np.arange(cfg.num_items) % cfg.num_clusters)
    popularity = 1.0 / np.arange(1, cfg.num_items + 1) ** cfg.zipf_exponent
    popularity = popularity[rng.permutation(cfg.num_items)]  # popular items in every cluster
    regimes = [_draw_regime(cfg, rng, clusters)]
    if cfg.drift_at is not None:
        regimes.append(_draw_regime(cfg, rng, clusters))

    lengths = np.maximum(3, rng.poisson(cfg.events_per_user, size=cfg.num_users))
    steps = int(lengths.max())
    # Per-user timelines: a random start in the first tenth, exponential gaps to fill the span.
    starts = rng.uniform(0, 0.1 * cfg.span_seconds, size=cfg.num_users)
    mean_gap = 0.9 * cfg.span_seconds / lengths
    gaps = rng.exponential(1.0, size=(cfg.num_users, steps)) * mean_gap[:, None]
    times = cfg.start_time + (starts[:, None] + np.cumsum(gaps, axis=1)).astype(np.int64)

    cluster_items = [np.flatnonzero(clusters == c) for c in range(cfg.num_clusters)]
    cluster_probs = [popularity[m] / popularity[m].sum() for m in cluster_items]

    def jump(users: np.ndarray, regime: _Regime) -> np.ndarray:
        pick = rng.integers(0, cfg.clusters_per_user, size=users.size)
        chosen = regime.preferred[users, pick]
        out = np.empty(users.size, dtype=np.int64)
        for c in np.unique(chosen):
            sel = chosen == c
            out[sel] = rng.choice(cluster_items[c], size=int(sel.sum()), p=cluster_probs[c])
        return out

    users_all = np.arange(cfg.num_users)
    items = np.zeros((cfg.num_users, steps), dtype=np.int64)
    drift_time = cfg.drift_time
    for s in range(steps):
        after = (
            times[:, s] >= drift_time
            if drift_time is not None
            else np.zeros(cfg.num_users, dtype=bool)
        )
        step_items = np.empty(cfg.num_users, dtype=np.int64)
        follow = rng.random(cfg.num_users) < cfg.pattern_strength if s > 0 else None
        for r, regime in enumerate(regimes):
            group = users_all[after == bool(r)]
            if group.size == 0:
                continue
            if follow is None:
                step_items[group] = jump(group, regime)
                continue
            walk = group[follow[group]]
            cur = items[walk, s - 1]
            for _ in range(int(regime.stride.max())):
                move = regime.stride[walk] > _
                cur = np.where(move, regime.successor[cur], cur)
            step_items[walk] = cur
            leap = group[~follow[group]]
            step_items[leap] = jump(leap, regime)
        items[:, s] = step_items

    valid = np.arange(steps)[None, :] < lengths[:, None]
    user_col = np.broadcast_to(users_all[:, None], (cfg.num_users, steps))[valid]
    time_col = times[valid]
    item_col = _churned_keys(cfg, rng, items[valid], time_col)
    order = np.argsort(time_col, kind="stable")
    return EventLog(
        user=user_col[order].astype(np.int64),
        item=item_col[order],
        timestamp=time_col[order],
        action=np.zeros(order.size, dtype=np.int64),
    )


def _churned_keys(
    cfg: SyntheticConfig, rng: np.random.Generator, items: np.ndarray, times: np.ndarray
) -> np.ndarray:
    """Item keys after churn: a replaced item gets a fresh key from that phase on."""
    keys = items.copy()
    if cfg.churn <= 0:
        return keys
    # Phase p starts p/(phases+1) into the span; each replacement adds num_items to the key.
    bounds = cfg.start_time + (
        np.arange(1, cfg.churn_phases + 1) * cfg.span_seconds // (cfg.churn_phases + 1)
    )
    n_replace = int(cfg.churn * cfg.num_items)
    for bound in bounds:
        replaced = rng.choice(cfg.num_items, size=n_replace, replace=False)
        later = times >= bound
        bump = np.isin(items, replaced) & later
        keys[bump] += cfg.num_items
    return keys
