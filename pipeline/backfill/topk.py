"""A loaded version's top-K of users' histories, and its ranking heads' probabilities of
candidates: the scoring of ``backfill recommend`` (``pipeline.backfill.recommend``) and of
``genrec serve`` (``pipeline.serve``), without Beam.

Histories come as item rows of the version (0: an item it does not know, skipped), jagged:
user b owns ``offsets[b]:offsets[b+1]``, in event-time order. A user's context is the last
``max_len`` known events; the scores are the model's state after it against the whole item
table (``pipeline.offline.training.next_item_scores``), the top K taken over the live
catalogue by ``model.retrieval.top_k``, a user's history items excluded unless kept.
Candidates are ranked as target tokens after the user's last ``max_len - 1`` known events,
each attending to the history and itself (``pipeline.stream.ranking.assemble_candidates``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.jagged import JaggedBatch
from model.retrieval import top_k
from pipeline.offline.training import next_item_scores, window_indices
from pipeline.runtime.errors import ConfigError
from pipeline.state.store import Histories, NewEvents
from pipeline.stream.publishing import PublishedModel
from pipeline.stream.ranking import assemble_candidates


@dataclass(frozen=True)
class RowHistories:
    """Users' histories as the version's item rows (0: unknown item), jagged by ``offsets``."""

    rows: np.ndarray  # int64
    timestamps: np.ndarray  # int64
    actions: np.ndarray  # int64
    values: np.ndarray  # float32, NaN where an event has none
    offsets: np.ndarray  # int64 [B+1]

    def __len__(self) -> int:
        return self.offsets.size - 1


@dataclass(frozen=True)
class TopK:
    """Each user's recommended rows and scores, jagged: user b owns ``offsets[b]:offsets[b+1]``
    (best first; empty when no history item is known or nothing is left to recommend)."""

    rows: np.ndarray  # int64
    scores: np.ndarray  # float32
    offsets: np.ndarray  # int64 [B+1]


def rerank_index(published: PublishedModel, task: str | None) -> int:
    """The column of ranking task ``task`` (None: the first) in the version's head; a
    ``ConfigError`` naming ``--rerank-task`` when the version has no such task."""
    names = task_names(published)
    if not names:
        raise ConfigError(
            f"--rerank: version {published.version} has no ranking heads; publish one trained "
            "with model.ranking_tasks, or drop --rerank"
        )
    if task is None:
        return 0
    if task not in names:
        raise ConfigError(
            f"--rerank-task: version {published.version} has no task {task!r}; its tasks: "
            f"{', '.join(names)}"
        )
    return names.index(task)


def task_names(published: PublishedModel) -> list[str]:
    """The version's ranking tasks, in the head's column order (empty: no ranking heads)."""
    return [doc["name"] for doc in published.model.cfg.ranking_tasks]


def recommend_rows(
    published: PublishedModel,
    users: RowHistories,
    k: int,
    keep_history: bool | np.ndarray = False,
    query_time: int | None = None,
    rerank: int | None = None,
    item_table: torch.Tensor | None = None,
) -> TopK:
    """Top ``k`` live rows for each user of ``users`` (see the module docstring); a user's
    history items are excluded unless ``keep_history`` (one flag, or one per user); with
    ``rerank`` (a task's column) re-ordered by that task's probability. ``query_time`` is
    the time asked at (None: each user's last event time); ``item_table``: the model's
    ``item_embeddings()``, kept by a caller that scores many batches."""
    known = users.rows > 0
    owner = np.repeat(np.arange(len(users)), np.diff(users.offsets))
    counts = np.bincount(owner[known], minlength=len(users))
    scored = np.flatnonzero(counts > 0)  # users with a context (the others get nothing)
    if not scored.size:  # the model cannot encode an empty batch
        return TopK(
            np.empty(0, np.int64), np.empty(0, np.float32), np.zeros(len(users) + 1, np.int64)
        )
    # Users without a context hold no known event, so the known events are the scored
    # users' whole known histories, in order: their offsets are these.
    history = users.rows[known]
    offsets = np.concatenate([[0], np.cumsum(counts[scored])]).astype(np.int64)
    context, window = window_indices(offsets, np.arange(scored.size), published.model.max_len)
    queries = JaggedBatch.from_numpy(
        history[context],
        users.timestamps[known][context],
        window,
        action_types=users.actions[known][context],
        values=users.values[known][context],
        query_time=None if query_time is None else np.full(scored.size, query_time, np.int64),
    )
    with torch.no_grad():
        scores = next_item_scores(published.model, queries, item_table)
    excluded = ~np.broadcast_to(np.asarray(keep_history, dtype=bool), (len(users),))[scored]
    kept = np.where(excluded, counts[scored], 0)
    exclude_items = history[np.repeat(excluded, counts[scored])]
    best, best_rows = top_k(
        scores,
        k,
        exclude_items=torch.from_numpy(exclude_items) if exclude_items.size else None,
        exclude_offsets=torch.from_numpy(np.concatenate([[0], np.cumsum(kept)]).astype(np.int64)),
        candidate_rows=published.live,
    )
    found = _jagged(best, best_rows, scored, len(users))
    if rerank is None:
        return found
    return rerank_top_k(published, queries, scored, found, rerank, query_time)


def rerank_top_k(
    published: PublishedModel,
    contexts: JaggedBatch,
    scored: np.ndarray,
    found: TopK,
    task: int,
    query_time: int | None,
) -> TopK:
    """``found`` re-ordered per user by the probability of ranking task ``task``.

    ``contexts`` holds the ``scored`` users' histories (one sequence each, in order); a
    user's candidates are its top-K rows, asked at ``query_time`` (None: its last event's
    time), each attending to the history (its last ``max_len - 1`` events) and itself.
    """
    users = found.offsets.size - 1
    lengths = np.zeros(users, np.int64)
    lengths[scored] = contexts.lengths().numpy()
    history = Histories(
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        item_refs=contexts.item_ids.numpy(),
        timestamps=contexts.timestamps.numpy(),
        actions=contexts.action_types.numpy(),
        values=contexts.values.numpy()
        if contexts.values is not None
        else np.full(contexts.total, np.nan, np.float32),
    )
    owner = np.repeat(np.arange(users), np.diff(found.offsets))
    if query_time is None:  # each user's last event time (a found user has a history)
        asked = history.timestamps[history.offsets[1:][owner] - 1]
    else:
        asked = np.full(owner.size, query_time, np.int64)
    probs, ranked = candidate_probabilities(published, history, owner, found.rows, asked)
    if ranked.size != found.rows.size:
        raise ValueError("a top-K row has no history or no embedding row: cannot rank it")
    column = probs[:, task]
    # candidates come grouped by user; within a user, best probability first
    order = np.lexsort((-column, owner[ranked]))
    return TopK(found.rows[ranked][order], column[order].astype(np.float32), found.offsets)


def candidate_probabilities(
    published: PublishedModel,
    history: Histories,
    owner: np.ndarray,
    rows: np.ndarray,
    asked: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Every ranking task's probability of each candidate, in one pass of the model.

    ``history``: the users' histories (``item_refs`` holding the version's rows); candidate
    i is row ``rows[i]`` for user ``owner[i]``, asked at time ``asked[i]``. Returns the
    probabilities [C, tasks] (float32) of the candidates that could be ranked (a known row,
    a user with a history) and their indices among the given candidates, in that order.
    """
    # a candidate's action and value are never inputs
    candidates = NewEvents(
        owner, rows, asked, np.zeros(owner.size, np.int64), np.full(owner.size, np.nan, np.float32)
    )
    ranking = assemble_candidates(history, history.item_refs, candidates, published.model.max_len)
    if not ranking.candidate_event.size:  # the model cannot encode an empty batch
        return np.empty((0, len(task_names(published))), np.float32), ranking.candidate_event
    model = published.model
    with torch.no_grad():
        logits = model.rank(ranking.batch, model.encode(ranking.batch))
    return torch.sigmoid(logits).numpy(), ranking.candidate_event


def _jagged(best: torch.Tensor, rows: torch.Tensor, scored: np.ndarray, users: int) -> TopK:
    """``top_k``'s [M, k] results of the ``scored`` users as a ``TopK`` of all ``users``."""
    allowed = torch.isfinite(best)  # a -inf tail: fewer than k rows were allowed
    per_user = np.zeros(users, dtype=np.int64)
    per_user[scored] = allowed.sum(dim=1).numpy()
    return TopK(
        rows[allowed].numpy(),
        best[allowed].numpy(),
        np.concatenate([[0], np.cumsum(per_user)]).astype(np.int64),
    )
