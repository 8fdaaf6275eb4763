"""A seeded synthetic stream drawn from a fixed random "teacher" sequence model.

Unlike ``pipeline.lake.synthetic`` (a handful of hand-made rules a small model learns at
once), the teacher is a random model whose structure a student learns gradually, so a
scaling study (``genrec scaling``) sees quality grow with compute when data is not the
limit. The teacher has, fixed by ``seed``:

* ``num_items`` unit item vectors in ``latent_dim`` dimensions and a Zipf popularity prior;
* a random rotation W ("what tends to follow what");
* per user a unit taste vector.

A user's state starts at the taste; after event x the state is
``s <- normalize(memory * s + (1 - memory) * W e_x)``, and the next item is drawn from
``softmax(sharpness * normalize(s + taste_weight * taste) . E^T + log popularity)``.
``sharpness`` sets how predictable the stream is (0: popularity only), ``memory`` how far
back the history matters, ``latent_dim`` and ``num_items`` how much there is to learn;
``num_users`` and ``events_per_user`` how much data there is. Events are an hour apart on
average (exponential gaps) per user; the log is in time order. Same config, same output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.lake.datasets import EventLog

MEAN_GAP_SECONDS = 3600.0


@dataclass(frozen=True)
class TeacherConfig:
    num_users: int = 2000
    num_items: int = 3000
    events_per_user: int = 60
    latent_dim: int = 32
    sharpness: float = 12.0
    memory: float = 0.5
    taste_weight: float = 0.5
    zipf_exponent: float = 0.8
    start_time: int = 1_600_000_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_users < 1 or self.num_items < 2 or self.events_per_user < 3:
            raise ValueError(
                "teacher data needs num_users >= 1, num_items >= 2 and events_per_user >= 3"
            )
        if self.latent_dim < 1 or self.sharpness < 0 or self.taste_weight < 0:
            raise ValueError(
                "teacher data needs latent_dim >= 1, sharpness >= 0, taste_weight >= 0"
            )
        if not 0.0 <= self.memory < 1.0:
            raise ValueError(f"teacher memory must be in [0, 1), got {self.memory}")


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _draw(cfg: TeacherConfig) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    """[U, E] item draws of every user, the [U] rank (1 = best) of each user's last draw
    under the teacher's own scores for it, and the generator (for the timestamps)."""
    rng = np.random.default_rng(cfg.seed)
    d = cfg.latent_dim
    items = _unit_rows(rng.standard_normal((cfg.num_items, d)))
    rotation, _ = np.linalg.qr(rng.standard_normal((d, d)))
    log_popularity = -cfg.zipf_exponent * np.log(rng.permutation(cfg.num_items) + 1.0)
    taste = _unit_rows(rng.standard_normal((cfg.num_users, d)))
    state = taste.copy()
    chosen = np.empty((cfg.num_users, cfg.events_per_user), dtype=np.int64)
    last_ranks = np.empty(cfg.num_users, dtype=np.int64)
    for t in range(cfg.events_per_user):
        query = _unit_rows(state + cfg.taste_weight * taste)
        logits = cfg.sharpness * query @ items.T + log_popularity
        gumbel = -np.log(-np.log(rng.random(logits.shape)))  # Gumbel-max: a softmax draw
        chosen[:, t] = np.argmax(logits + gumbel, axis=1)
        if t == cfg.events_per_user - 1:
            target = np.take_along_axis(logits, chosen[:, t : t + 1], axis=1)
            last_ranks = (logits > target).sum(axis=1) + 1
        step = items[chosen[:, t]] @ rotation.T
        state = _unit_rows(cfg.memory * state + (1.0 - cfg.memory) * step)
    return chosen, last_ranks, rng


def generate_teacher(cfg: TeacherConfig) -> EventLog:
    """The event log of ``cfg``: ``events_per_user`` events for each user, in time order."""
    chosen, _, rng = _draw(cfg)
    gaps = rng.exponential(MEAN_GAP_SECONDS, chosen.shape)
    times = cfg.start_time + np.cumsum(gaps, axis=1).astype(np.int64)
    users = np.repeat(np.arange(cfg.num_users, dtype=np.int64), cfg.events_per_user)
    order = np.argsort(times.ravel(), kind="stable")
    return EventLog(
        user=users[order],
        item=chosen.ravel()[order],
        timestamp=times.ravel()[order],
        action=np.zeros(users.size, dtype=np.int64),
    )


def teacher_ceiling(cfg: TeacherConfig, ks: tuple[int, ...] = (10, 100)) -> dict[str, float]:
    """HR@K and NDCG@K of the teacher ranking every item by its own scores for each user's
    last event (the test target; all-items protocol): what a student that had learnt the
    teacher exactly would reach, in expectation, the ceiling of a scaling curve."""
    _, ranks, _ = _draw(cfg)
    metrics = {}
    for k in ks:
        hit = ranks <= k
        metrics[f"hr@{k}"] = float(hit.mean())
        metrics[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0).mean())
    return metrics


def write_teacher_lake(cfg: TeacherConfig, path: str | Path) -> int:
    """Write ``cfg``'s log as a Parquet lake file (user_id, item_id, timestamp), which
    ``genrec train-offline --data`` reads; the number of events."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    event_log = generate_teacher(cfg)
    table = pa.table(
        {
            "user_id": event_log.user,
            "item_id": event_log.item,
            "timestamp": event_log.timestamp,
        }
    )
    pq.write_table(table, str(path))
    return len(event_log)
