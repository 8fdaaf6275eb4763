"""A seeded synthetic stream of impressions with actions: data for ranking heads.

Every event is an impression of an item to a user, labelled by what the user did: ``click``
(action code 2) or ``view`` (code 1, shown but not clicked). A click carries a rating in
``value`` (1..5); a view has none (NaN). The click probability comes from a latent preference
that is **partly sequential**, so the label of an impression depends on which items the user
clicked just before, not only on who the user and the item are:

* every item has a taste vector ``v_i`` (``dim`` dimensions, unit scale) and a bias; every
  user a long-term taste ``u`` and a short-term taste ``s``, which starts at ``u`` plus noise;
* the preference is ``z = long_term_weight * u + (1 - long_term_weight) * s`` and
  ``P(click) = sigmoid(sharpness * z . v_i + bias_i + click_bias)``;
* after a click, ``s`` drifts toward the clicked item: ``s <- memory * s + (1 - memory) * v_i``
  (views leave it unchanged), so recently clicked items predict the next labels;
* with probability ``shift_prob`` per event, ``s`` jumps to a random item's vector (a new
  interest that is not observed directly, only through the clicks that follow it);
* impressions are drawn from the whole catalogue by Zipf popularity (``zipf_exponent``),
  independently of the user (a logging policy that does not personalise);
* the rating of a click is ``clip(round(3 + 1.5 * logit + noise), 1, 5)``, noise N(0, 0.5),
  so ``rating >= 4`` marks the clicks the user liked most.

Timestamps are spread as in ``pipeline.lake.synthetic``: a random start in the first tenth of
the span, exponential gaps; the log is in global event-time order, user and item keys int64.
Same config, same output. ``simulate_actions`` also returns the ground truth (click
probability per event, the latent vectors), for tests and oracle figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.events.schema import ACTION_CODES
from pipeline.lake.datasets import EventLog

VIEW = ACTION_CODES["view"]
CLICK = ACTION_CODES["click"]


@dataclass(frozen=True)
class ActionStreamConfig:
    num_users: int = 500
    num_items: int = 1000
    events_per_user: int = 60
    dim: int = 8
    long_term_weight: float = 0.3
    memory: float = 0.6
    shift_prob: float = 0.1
    sharpness: float = 5.0
    click_bias: float = -1.5
    zipf_exponent: float = 0.8
    start_time: int = 1_600_000_000
    span_seconds: int = 90 * 24 * 3600
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_users < 1 or self.num_items < 2 or self.events_per_user < 3:
            raise ValueError("need num_users >= 1, num_items >= 2 and events_per_user >= 3")
        for name in ("long_term_weight", "memory", "shift_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")


@dataclass(frozen=True)
class ActionStream:
    """The event log plus the truth behind it (rows of ``click_prob`` follow ``log``)."""

    log: EventLog
    click_prob: np.ndarray  # [E] P(click) of each event, from the full latent preference
    long_term_prob: np.ndarray  # [E] P(click) from the long-term taste u alone (s = u)
    item_vectors: np.ndarray  # [num_items, dim]
    user_vectors: np.ndarray  # [num_users, dim]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def simulate_actions(cfg: ActionStreamConfig) -> ActionStream:
    """The whole stream and its ground truth, sorted by event time."""
    rng = np.random.default_rng(cfg.seed)
    items = rng.normal(size=(cfg.num_items, cfg.dim)) / np.sqrt(cfg.dim)
    item_bias = rng.normal(scale=0.5, size=cfg.num_items)
    users = rng.normal(size=(cfg.num_users, cfg.dim)) / np.sqrt(cfg.dim)
    short = users + rng.normal(scale=0.5, size=users.shape) / np.sqrt(cfg.dim)
    popularity = 1.0 / np.arange(1, cfg.num_items + 1) ** cfg.zipf_exponent
    popularity = popularity[rng.permutation(cfg.num_items)] / popularity.sum()

    lengths = np.maximum(3, rng.poisson(cfg.events_per_user, size=cfg.num_users))
    steps = int(lengths.max())
    starts = rng.uniform(0, 0.1 * cfg.span_seconds, size=cfg.num_users)
    mean_gap = 0.9 * cfg.span_seconds / lengths
    gaps = rng.exponential(1.0, size=(cfg.num_users, steps)) * mean_gap[:, None]
    times = cfg.start_time + (starts[:, None] + np.cumsum(gaps, axis=1)).astype(np.int64)

    shown = rng.choice(cfg.num_items, size=(cfg.num_users, steps), p=popularity)
    prob = np.empty((cfg.num_users, steps))
    long_prob = np.empty((cfg.num_users, steps))
    clicked = np.empty((cfg.num_users, steps), dtype=bool)
    w = cfg.long_term_weight
    for s in range(steps):
        shift = rng.random(cfg.num_users) < cfg.shift_prob
        short[shift] = items[rng.integers(0, cfg.num_items, int(shift.sum()))]
        v = items[shown[:, s]]
        pref = w * users + (1.0 - w) * short
        base = item_bias[shown[:, s]] + cfg.click_bias
        prob[:, s] = _sigmoid(cfg.sharpness * (pref * v).sum(axis=1) + base)
        long_prob[:, s] = _sigmoid(cfg.sharpness * (users * v).sum(axis=1) + base)
        clicked[:, s] = rng.random(cfg.num_users) < prob[:, s]
        c = clicked[:, s]
        short[c] = cfg.memory * short[c] + (1.0 - cfg.memory) * v[c]

    sure = np.clip(prob, 1e-12, 1.0 - 1e-12)  # a sharp preference rounds some to 0 or 1
    logit = np.log(sure) - np.log1p(-sure)
    noise = rng.normal(scale=0.5, size=prob.shape)
    rating = np.clip(np.round(3.0 + 1.5 * logit + noise), 1, 5)

    valid = np.arange(steps)[None, :] < lengths[:, None]
    user_col = np.broadcast_to(np.arange(cfg.num_users)[:, None], valid.shape)[valid]
    time_col = times[valid]
    order = np.argsort(time_col, kind="stable")
    click_col = clicked[valid][order]
    log = EventLog(
        user=user_col[order].astype(np.int64),
        item=shown[valid][order].astype(np.int64),
        timestamp=time_col[order],
        action=np.where(click_col, CLICK, VIEW).astype(np.int64),
        value=np.where(click_col, rating[valid][order], np.nan),
    )
    return ActionStream(log, prob[valid][order], long_prob[valid][order], items, users)


def generate_action_events(cfg: ActionStreamConfig) -> EventLog:
    """The synthetic impression log, sorted by event time (see the module docstring)."""
    return simulate_actions(cfg).log
