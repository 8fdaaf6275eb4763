"""Online ranking: each step's new events as candidates after their user's stored history.

With ranking tasks configured (``model.ranking_tasks``), every user of a step gets one
ranking sequence: the user's stored history (before this step's events, its last
``max_len - 1`` events) followed by the user's new events as candidate tokens
(``JaggedBatch.num_targets``). Each candidate attends to that history and itself only, so
candidates of the same user in one step do not see each other (with small steps a user
usually brings one event). Their labels come from each event's own action and value
(``model.ranking_heads.labels_from_events``); the model never sees them as inputs.

**One encoder call, shared rows** (``with_retrieval``). A user with exactly one new event
has a retrieval window that *is* its ranking sequence: the last ``max_len - 1`` stored
events, then the event. Making that event a candidate changes nothing retrieval reads: the
history rows never see a candidate, the candidate keeps position ``n_hist``, and the
window's ``query_time`` is the event's time, which is what the last history row's query
time was; the event's own output, the only one that changes, predicts nothing in its
window. So the retrieval batch carries those candidates in place, and only users with
several new events get a ranking sequence of their own, appended to the same batch; their
candidates are asked at the time of the first of them (one request for the burst). The
retrieval targets are then ``is_target`` rows including candidate rows (``retrieval_targets``).

A new event is a candidate when its item has a vocabulary row and its user has a stored
history (a candidate needs a history row); retrieval's positives rule does not apply:
every impression is a ranking example.

The progressive ranking metrics (``model.ranking_metrics.ProgressiveMetrics``: NE, AUC, log
loss, accuracy per task) are plain sums and histograms, so a trainer group sums them over
its ranks (``ProgressiveMetrics.sums`` / ``merged``) and a checkpoint saves them (``snapshot``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from model.base import Targets, select_targets
from model.jagged import JaggedBatch
from model.ranking_metrics import ProgressiveMetrics
from pipeline.state.grouping import group_order, hash_event_ids
from pipeline.state.store import Histories, NewEvents
from pipeline.state.vocab import pack_arrays, unpack_arrays

REPORTED = ("ne", "auc", "log_loss", "accuracy", "count")


@dataclass(frozen=True)
class CandidateBatch:
    """The step's ranking sequences.

    Attributes:
        batch: history rows, then candidate rows (``num_targets``) per sequence; candidates
            carry their own action and value (the labels). From ``with_retrieval``: the
            retrieval batch with candidates in place, then the other ranking sequences.
        candidate_event: int64 [C], each candidate's index among the new events given
            (in candidate row order).
        no_history: new events with an item row that are no candidate (no stored history).
    """

    batch: JaggedBatch
    candidate_event: np.ndarray
    no_history: int

    @property
    def num_candidates(self) -> int:
        return int(self.candidate_event.size)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(start, start + length)`` for each pair."""
    before = np.cumsum(lengths) - lengths
    return np.repeat(starts - before, lengths) + np.arange(int(lengths.sum()))


def assemble_candidates(
    history: Histories, history_rows: np.ndarray, new: NewEvents, max_len: int
) -> CandidateBatch:
    """The ranking sequences of U users' stored ``history`` and n ``new`` events (module
    docstring).

    Args:
        history, history_rows, new: as ``pipeline.stream.batching.assemble`` takes them.
        max_len: N; a sequence spans its history plus one position for its candidates.
    """
    n_users = history.offsets.size - 1
    h = history.lengths()
    keep = np.minimum(h, max_len - 1)
    order = group_order(new.seq, n_users, new.timestamps)  # by user, then time
    known = new.rows[order] > 0
    cand = order[known & (keep[new.seq[order]] > 0)]
    per_user = np.bincount(new.seq[cand], minlength=n_users)
    users = np.flatnonzero(per_user)
    n_hist, n_cand = keep[users], per_user[users]
    offsets = np.zeros(users.size + 1, dtype=np.int64)
    np.cumsum(n_hist + n_cand, out=offsets[1:])
    hist_src = _ranges(history.offsets[users] + h[users] - n_hist, n_hist)
    hist_out = _ranges(offsets[:-1], n_hist)
    cand_out = _ranges(offsets[:-1] + n_hist, n_cand)

    def column(stored: np.ndarray, new: np.ndarray, dtype: type) -> np.ndarray:
        out = np.empty(int(offsets[-1]), dtype=dtype)
        out[hist_out] = stored[hist_src]
        out[cand_out] = new[cand]
        return out

    batch = JaggedBatch.from_numpy(
        item_ids=column(history_rows, new.rows, np.int64),
        timestamps=column(history.timestamps, new.timestamps, np.int64),
        offsets=offsets,
        action_types=column(history.actions, new.actions, np.int64),
        values=column(history.values, new.values, np.float32),
        num_targets=n_cand,
    )
    return CandidateBatch(batch, cand, int(known.sum()) - int(cand.size))


def hashed_user_rows(user_keys: np.ndarray, num_user_rows: int) -> np.ndarray:
    """DLRM's user row of each key (``model.kind=dlrm``): the 64-bit FNV-1a hash of the
    key's text (``str(key)``) modulo ``num_user_rows``, int64. Stable across processes and
    restarts, unlike Python's salted ``hash()``; users that collide share a row."""
    text = np.array([str(key) for key in user_keys.tolist()], dtype=object)
    hashed = hash_event_ids(text, text.size).view(np.uint64)
    return (hashed % np.uint64(num_user_rows)).astype(np.int64)


def new_metrics(tasks: Sequence[str]) -> ProgressiveMetrics | None:
    """Progressive ranking metrics for these task names (None without tasks)."""
    return ProgressiveMetrics(tasks) if tasks else None


def merged(tasks: Sequence[str], parts: Sequence[dict[str, np.ndarray]]) -> ProgressiveMetrics:
    """Metrics over the examples of every part (``ProgressiveMetrics.sums`` of several
    ranks), summed."""
    out = ProgressiveMetrics(tasks)
    for part in parts:
        out.add_sums(part)
    return out


def snapshot(metrics: ProgressiveMetrics) -> bytes:
    return pack_arrays(metrics.sums())


def restore(tasks: Sequence[str], data: bytes | None) -> ProgressiveMetrics | None:
    """Metrics saved by ``snapshot`` (fresh ones when ``data`` is None: a checkpoint from
    before ranking was configured); None without tasks."""
    if not tasks:
        return None
    if data is None:
        return ProgressiveMetrics(tasks)
    arrays = unpack_arrays(data)
    shape = (len(tasks), ProgressiveMetrics(tasks).num_bins)
    if arrays["pos_hist"].shape != shape:
        raise ValueError(
            f"saved ranking metrics cover {arrays['pos_hist'].shape[0]} tasks, the model "
            f"has {len(tasks)}: model.ranking_tasks must be what the checkpoint was written with"
        )
    return merged(tasks, [arrays])


def figures(metrics: ProgressiveMetrics | None) -> dict[str, float]:
    """``{task}/{ne,auc,log_loss,accuracy,count}``, the progressive figures reported."""
    if metrics is None:
        return {}
    result = metrics.result()
    return {f"{t}/{m}": result[f"{t}/{m}"] for t in metrics.tasks for m in REPORTED}


def with_retrieval(
    retrieval: JaggedBatch,
    history: Histories,
    history_rows: np.ndarray,
    new: NewEvents,
    max_len: int,
    max_targets: int,
) -> CandidateBatch:
    """The retrieval batch (``pipeline.stream.batching.assemble`` of the same arguments)
    with every user's new events as candidates (module docstring: shared rows)."""
    n_users = history.offsets.size - 1
    seq = new.seq
    per_user = np.bincount(seq, minlength=n_users)
    event_of = np.zeros(n_users, np.int64)
    event_of[seq] = np.arange(seq.size)  # a user's event, where it has exactly one
    single = (per_user == 1) & (history.lengths() > 0) & (new.rows[event_of] > 0)
    # assemble's windows: ceil(k / max_targets) per user, in user order
    windows = -(-per_user // max_targets)
    in_place = np.repeat(single, windows)
    own = np.flatnonzero(per_user[seq] > 1)  # events of users with a sequence of their own
    extra = assemble_candidates(history, history_rows, new.take(own), max_len)
    tail = extra.batch
    ends = retrieval.offsets[1:] - 1
    first_candidate = tail.offsets[1:] - tail.num_targets
    assert retrieval.is_target is not None and retrieval.values is not None
    assert tail.values is not None and tail.num_targets is not None
    batch = JaggedBatch(
        item_ids=torch.cat([retrieval.item_ids, tail.item_ids]),
        timestamps=torch.cat([retrieval.timestamps, tail.timestamps]),
        action_types=torch.cat([retrieval.action_types, tail.action_types]),
        offsets=torch.cat([retrieval.offsets, tail.offsets[1:] + retrieval.total]),
        is_target=torch.cat([retrieval.is_target, torch.zeros(tail.total, dtype=torch.bool)]),
        # a window's last row is its newest event: as its query time, the same as none
        query_time=torch.cat([retrieval.timestamps[ends], tail.timestamps[first_candidate]]),
        values=torch.cat([retrieval.values, tail.values]),
        num_targets=torch.cat([torch.from_numpy(in_place.astype(np.int64)), tail.num_targets]),
    )
    known = new.rows > 0
    return CandidateBatch(
        batch,
        np.concatenate(
            [event_of[np.repeat(np.arange(n_users), windows)[in_place]], own[extra.candidate_event]]
        ),
        int((known & (history.lengths()[seq] == 0)).sum()),
    )


def retrieval_targets(batch: JaggedBatch, states: torch.Tensor) -> Targets:
    """The retrieval targets of a ``with_retrieval`` batch: its ``is_target`` rows, candidate
    rows included (``JaggedBatch.target_mask`` drops those)."""
    assert batch.is_target is not None
    return select_targets(batch, states, mask=batch.is_target)
