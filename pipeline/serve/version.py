"""A loaded version ready to answer, and the scoring of a batch of requests with it.

``ServedVersion.build`` takes a verified registry version (``load_version``) and checks what
the checksums cannot: every parameter is finite and one query scores to finite numbers, so
a crafted version that loads is still refused before it serves. It maps the server's item
references (``pipeline.serve.histories.item_refs``) to the version's rows.

A batch of requests becomes one ``RowHistories`` (each user's stored events, then the
events the request brought, in time order) scored in one pass by ``pipeline.backfill.topk``:
``recommend`` with the largest k asked (each request keeps its own k and exclusion),
``rank`` with every candidate of every request as a target token. The query time is the
batch's request time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.backfill.topk import (
    RowHistories,
    candidate_probabilities,
    recommend_rows,
    task_names,
)
from pipeline.events import EventBatch
from pipeline.events.batch import concat_keys, key_column
from pipeline.serve.histories import ServeHistories, item_refs
from pipeline.state.keyindex import Key, KeyIndex
from pipeline.state.store import Histories
from pipeline.stream.publishing import PublishedModel


class RequestError(Exception):
    """A request this version cannot answer; ``status`` is its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ServedVersion:
    """One registry version and the maps serving needs."""

    published: PublishedModel
    rows_by_ref: KeyIndex  # item reference -> row (live rows only)
    keys: np.ndarray  # row -> canonical item key (int64, or object of int and str)
    created_at: float  # publication time, Unix seconds
    watermark: int | None  # the version's event-time watermark
    item_table: torch.Tensor  # the model's normalised item table, computed once

    @property
    def version(self) -> int:
        return self.published.version

    @property
    def tasks(self) -> list[str]:
        return task_names(self.published)

    @classmethod
    def build(
        cls, published: PublishedModel, created_at: float, watermark: int | None
    ) -> ServedVersion:
        """Maps of a loaded version; ``ValueError`` when it cannot serve (non-finite
        parameters, an empty catalogue, scores that are not finite)."""
        for name, tensor in published.model.state_dict().items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"parameter {name} holds NaN or infinite values")
        live = published.live.numpy()
        if not live.size:
            raise ValueError("the version's catalogue is empty")
        if published.row_keys.dtype == np.int64:
            keys = published.row_keys
        else:  # row_keys spells every key as text; the canonical keys keep ints as ints
            keys = np.empty(published.row_keys.size, dtype=object)
            keys[live] = [published.vocab.key_of(int(row)) for row in live.tolist()]
        rows_by_ref = KeyIndex()
        rows_by_ref.insert(item_refs(keys[live]), live)
        with torch.no_grad():
            item_table = published.model.item_embeddings()
        served = cls(published, rows_by_ref, keys, created_at, watermark, item_table)
        probe = RowHistories(
            live[:1], np.zeros(1, np.int64), np.zeros(1, np.int64),
            np.full(1, np.nan, np.float32), np.array([0, 1], np.int64),
        )  # fmt: skip
        found = recommend_rows(
            published, probe, 1, keep_history=True, query_time=0, item_table=item_table
        )
        if not np.isfinite(found.scores).all():
            raise ValueError("a query scores to NaN or infinite values")
        return served


@dataclass(frozen=True)
class Recommendation:
    version: int
    items: list[Key]
    scores: list[float]
    history_length: int


@dataclass(frozen=True)
class Ranking:
    version: int
    tasks: list[str]
    probabilities: list[list[float] | None]  # per candidate; None: it cannot be ranked
    history_length: int


@dataclass(frozen=True)
class RecommendQuery:
    user: Key
    k: int
    exclude_seen: bool
    history: EventBatch | None  # events the request brought (validated), or None


@dataclass(frozen=True)
class RankQuery:
    user: Key
    candidates: list[Key]
    history: EventBatch | None


def user_histories(
    served: ServedVersion,
    histories: ServeHistories,
    queries: list[RecommendQuery] | list[RankQuery],
) -> tuple[RowHistories, np.ndarray]:
    """Each query's user's events (stored, then the request's, in time order) as the
    version's rows, and each user's number of events."""
    stored = histories.lookup([q.user for q in queries])
    sent = any(q.history is not None and len(q.history) for q in queries)
    owners = [np.repeat(np.arange(len(queries)), stored.lengths())]
    rows = [served.rows_by_ref.lookup(stored.item_refs, default=0)]
    timestamps, actions, values = (
        [stored.timestamps],
        [stored.actions.astype(np.int64)],
        [stored.values],
    )
    for index, query in enumerate(queries):
        if query.history is not None and len(query.history):
            events = query.history
            owners.append(np.full(len(events), index, np.int64))
            rows.append(served.published.vocab.lookup(events.item_id))
            timestamps.append(events.timestamp)
            actions.append(events.action)
            values.append(events.value)
    owner = np.concatenate(owners)
    time_order = np.concatenate(timestamps)
    order = np.lexsort((time_order, owner)) if sent else np.arange(owner.size)
    lengths = np.bincount(owner, minlength=len(queries))
    return (
        RowHistories(
            np.concatenate(rows)[order],
            time_order[order],
            np.concatenate(actions)[order],
            np.concatenate(values)[order].astype(np.float32),
            np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        ),
        lengths,
    )


def unknown_user(query: RecommendQuery | RankQuery) -> RequestError:
    return RequestError(
        404,
        f"user {query.user!r} has no history here (no event stored, none in the request): "
        "send its recent events as 'history'",
    )


def recommend(
    served: ServedVersion,
    histories: ServeHistories,
    queries: list[RecommendQuery],
    now: int,
) -> list[Recommendation | RequestError]:
    """Top-K of each query, asked at ``now`` (one model pass for the batch)."""
    users, lengths = user_histories(served, histories, queries)
    keep = np.array([not q.exclude_seen for q in queries], dtype=bool)
    found = recommend_rows(
        served.published, users, max(q.k for q in queries), keep, query_time=now,
        item_table=served.item_table,
    )  # fmt: skip
    out: list[Recommendation | RequestError] = []
    for index, query in enumerate(queries):
        if not lengths[index]:
            out.append(unknown_user(query))
            continue
        span = slice(
            found.offsets[index], min(found.offsets[index + 1], found.offsets[index] + query.k)
        )
        out.append(
            Recommendation(
                served.version,
                served.keys[found.rows[span]].tolist(),
                found.scores[span].tolist(),
                int(lengths[index]),
            )
        )
    return out


def rank(
    served: ServedVersion,
    histories: ServeHistories,
    queries: list[RankQuery],
    now: int,
) -> list[Ranking | RequestError]:
    """Every task's probability of each query's candidates, asked at ``now``: all
    candidates of the batch in one model pass."""
    tasks = served.tasks
    if not tasks:
        error = RequestError(
            409,
            f"version {served.version} has no ranking heads; /rank needs a version trained "
            "with model.ranking_tasks",
        )
        return [error] * len(queries)
    users, lengths = user_histories(served, histories, queries)
    known = users.rows > 0
    owner_of_event = np.repeat(np.arange(len(queries)), np.diff(users.offsets))
    known_lengths = np.bincount(owner_of_event[known], minlength=len(queries))
    history = Histories(
        offsets=np.concatenate([[0], np.cumsum(known_lengths)]).astype(np.int64),
        item_refs=users.rows[known],
        timestamps=users.timestamps[known],
        actions=users.actions[known],
        values=users.values[known],
    )
    counts = [len(q.candidates) for q in queries]
    owner = np.repeat(np.arange(len(queries)), counts)
    keys = concat_keys([key_column(q.candidates) for q in queries])
    rows = served.published.vocab.lookup(keys)
    probs, ranked = candidate_probabilities(
        served.published, history, owner, rows, np.full(owner.size, now, np.int64)
    )
    per_candidate: list[list[float] | None] = [None] * owner.size
    for position, candidate in enumerate(ranked.tolist()):
        per_candidate[candidate] = probs[position].tolist()
    out: list[Ranking | RequestError] = []
    start = 0
    for index, query in enumerate(queries):
        end = start + counts[index]
        if not lengths[index]:
            out.append(unknown_user(query))
        else:
            out.append(
                Ranking(served.version, tasks, per_candidate[start:end], int(lengths[index]))
            )
        start = end
    return out
