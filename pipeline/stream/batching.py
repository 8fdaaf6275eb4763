"""Micro-batch assembly: new events + stored history -> one JaggedBatch for test-then-train.

When events e1..ek of user u arrive in a micro-batch, u's sequence is u's stored history
(events no later than e1, inside the TTL, last <= N) followed by e1..ek in time order, and
``is_target`` is True exactly on e1..ek (when their item has a vocabulary row and something
precedes them). The loss covers only those targets; afterwards the store is updated, so
every accepted event is a target at most once and never again.

The model accepts at most N = ``max_len`` events per sequence. When a user brings many
events at once, they are split into chunks of at most ``max_targets`` targets; each chunk
becomes its own sequence whose context is the last events before it (stored history and
earlier chunks), so every event is still a target exactly once and still sees up to
``max_len - max_targets`` predecessors.

With a positives rule (``pipeline.events.positives``) only the positive new events are
targets; the others are context, as every stored event is.

``assemble`` is the pure array function; ``BatchBuilder`` ties it to a ``SequenceStore``
and an ``ItemVocabulary`` (plan -> vocabulary -> history -> assemble; ``commit`` after the
optimizer step). With ranking on it also builds the step's ranking sequences from the same
histories (``pipeline.stream.ranking``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.jagged import JaggedBatch
from pipeline.events import EventBatch
from pipeline.events.positives import PositiveRule
from pipeline.state.grouping import compact_groups, group_order
from pipeline.state.store import Histories, IngestPlan, NewEvents, SequenceStore
from pipeline.state.vocab import ItemVocabulary, Observation
from pipeline.stream.ranking import CandidateBatch, assemble_candidates, with_retrieval


@dataclass(frozen=True)
class MicroBatch:
    """A jagged training batch plus where its targets came from.

    Attributes:
        batch: item rows, timestamps, actions, offsets and ``is_target``.
        target_event: int64 [M], for each target (in flat batch order) the index of its
            event among the new events given to ``assemble``.
        context_only: number of new events that are not targets because nothing precedes
            them (a user's first event).
        unknown_item: number of new events whose item has no row (not admitted yet).
        not_positive: number of new events with an item row that the positives rule
            leaves as context.
    """

    batch: JaggedBatch
    target_event: np.ndarray
    context_only: int
    unknown_item: int
    not_positive: int = 0

    @property
    def num_targets(self) -> int:
        return int(self.target_event.size)


def assemble(
    history: Histories,
    history_rows: np.ndarray,
    new: NewEvents,
    max_len: int,
    max_targets: int,
    positive: np.ndarray | None = None,
) -> MicroBatch:
    """Build the micro-batch from per-user histories and new events.

    Args:
        history: U stored histories (sequence u belongs to user u).
        history_rows: int64 item rows of ``history.item_refs`` (0 = unknown).
        new: the n new events (``new.seq``: user index 0..U-1 of each).
        max_len: N, the longest sequence the model takes.
        max_targets: most new events per sequence (1 <= max_targets < max_len).
        positive: bool [n], which new events may be targets (None: all of them).
    """
    if not 1 <= max_targets < max_len:
        raise ValueError(f"need 1 <= max_targets < max_len, got {max_targets}, {max_len}")
    n_users = history.offsets.size - 1
    order = group_order(new.seq, n_users, new.timestamps)  # new events by user, time, arrival
    k = np.bincount(new.seq, minlength=n_users)
    h = history.lengths()

    # Chunks of at most max_targets new events; each becomes one window of the batch.
    chunks = -(-k // max_targets)
    ch_user = np.repeat(np.arange(n_users), chunks)
    ch_index = np.arange(ch_user.size) - np.repeat(np.cumsum(chunks) - chunks, chunks)
    first_new = ch_index * max_targets  # index of the chunk's first target among the new events
    h_ch = h[ch_user]
    n_targets = np.minimum(first_new + max_targets, k[ch_user]) - first_new
    # Window [start, end) in the user's combined sequence (stored history, then new events).
    end = h_ch + first_new + n_targets
    start = np.maximum(0, end - max_len)

    # Each window is three runs that are contiguous in [history..., new events by user/time]:
    # stored history, earlier chunks' new events (context), and this chunk's targets.
    n_hist = int(history.offsets[-1])
    new_base = n_hist + (np.cumsum(k) - k)[ch_user]
    ctx_from = np.maximum(start, h_ch)
    run_len = np.stack(
        [np.maximum(h_ch - start, 0), h_ch + first_new - ctx_from, n_targets], axis=1
    ).ravel()
    run_src = np.stack(
        [history.offsets[ch_user] + start, new_base + ctx_from - h_ch, new_base + first_new],
        axis=1,
    ).ravel()
    run_out = np.cumsum(run_len) - run_len
    src = np.repeat(run_src - run_out, run_len) + np.arange(int(run_len.sum()))
    is_new = np.repeat(np.tile(np.array([False, False, True]), ch_user.size), run_len)
    offsets = np.zeros(ch_user.size + 1, dtype=np.int64)
    np.cumsum(end - start, out=offsets[1:])

    out_rows = np.concatenate([history_rows, new.rows[order]]).take(src)
    is_target = is_new & (out_rows > 0)
    not_positive = 0
    if positive is not None:
        new_positive = np.concatenate([np.zeros(n_hist, bool), positive[order]]).take(src)
        not_positive = int((is_target & ~new_positive).sum())
        is_target &= new_positive
    # A window's first event has nothing before it: context only, never a target.
    first = offsets[:-1]
    context_only = int(is_target[first].sum())
    is_target[first] = False
    batch = JaggedBatch.from_numpy(
        item_ids=out_rows,
        timestamps=np.concatenate([history.timestamps, new.timestamps[order]]).take(src),
        offsets=offsets,
        action_types=np.concatenate([history.actions, new.actions[order]]).take(src),
        is_target=is_target,
        values=np.concatenate([history.values, new.values[order]]).take(src),
    )
    return MicroBatch(
        batch=batch,
        target_event=order.take(src[is_target] - n_hist),
        context_only=context_only,
        unknown_item=int((new.rows == 0).sum()),
        not_positive=not_positive,
    )


@dataclass(frozen=True)
class PreparedBatch:
    """One decoded event batch, vetted by the store and mapped by the vocabulary.

    Attributes:
        events: the decoded events as given.
        plan: the store's accept/reject verdict per event.
        accepted: int64 indices of the accepted events.
        rows: int64 item row of each accepted event (0 = not admitted).
        assigned_rows: rows the vocabulary handed to new keys (re-initialise them).
        micro: the training batch over the accepted events (``target_event`` indexes
            ``accepted``).
        ranking: with ranking on, the batch to train on instead of ``micro.batch``: the same
            windows with the ranking candidates in place (``candidate_event`` indexes
            ``accepted``; ``pipeline.stream.ranking.with_retrieval``), or for a ranking-only
            builder the candidate sequences alone (``assemble_candidates``); None when off.
    """

    events: EventBatch
    plan: IngestPlan
    accepted: np.ndarray
    rows: np.ndarray
    assigned_rows: np.ndarray
    micro: MicroBatch
    ranking: CandidateBatch | None = None

    @property
    def num_accepted(self) -> int:
        return int(self.accepted.size)


class BatchBuilder:
    """Runs store + vocabulary + assembly for each decoded batch (see module docstring);
    ``positives``: which new events are targets (None: all); ``ranking_only``: the ranking
    batch holds the candidate sequences only, no retrieval windows (``model.kind=dlrm``)."""

    def __init__(
        self,
        store: SequenceStore,
        vocab: ItemVocabulary,
        max_targets: int,
        positives: PositiveRule | None = None,
        ranking_only: bool = False,
    ) -> None:
        self.store = store
        self.ranking_only = ranking_only
        self.vocab = vocab
        self.max_targets = max_targets
        self.positives = None if positives is None or positives.is_all else positives

    def build(self, events: EventBatch, ranking: bool = False) -> PreparedBatch:
        """Plan, admit items and assemble (with ``ranking``, the ranking candidates too); the
        store is not modified until ``commit``."""
        plan = self.store.plan(events.user_id, events.timestamp, events.event_id)
        accepted = np.flatnonzero(plan.accepted)
        ts = events.timestamp[accepted]
        obs = self.observe(events.item_id[accepted], ts)
        # Distinct users of the accepted events, in plan order, and each event's index among them.
        users, seq = compact_groups(plan.user_index[accepted], len(plan.user_keys))
        cutoff = np.full(users.size, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(cutoff, seq, ts)
        history = self.store.history(plan.slots[users], cutoff)
        actions, values = events.action[accepted], events.value[accepted]
        positive = None if self.positives is None else self.positives.mask(actions, values)
        history_rows = self.vocab.resolve(history.item_refs)
        new = NewEvents(seq, obs.rows, ts, actions, values)
        max_len = self.store.max_len
        micro = assemble(history, history_rows, new, max_len, self.max_targets, positive)
        candidates = None
        if ranking and self.ranking_only:
            candidates = assemble_candidates(history, history_rows, new, max_len)
        elif ranking:
            candidates = with_retrieval(
                micro.batch, history, history_rows, new, max_len, self.max_targets
            )
        return PreparedBatch(events, plan, accepted, obs.rows, obs.assigned, micro, candidates)

    def commit(self, prepared: PreparedBatch) -> np.ndarray:
        """Store the accepted events, then expire items by event time; returns freed rows."""
        refs = np.zeros(len(prepared.events), dtype=np.int64)
        refs[prepared.accepted] = self.vocab.refs(prepared.rows)
        self.store.commit(prepared.plan, refs, prepared.events.action, prepared.events.value)
        return self.vocab.expire(self.expiry_time())

    def observe(self, items: np.ndarray, timestamps: np.ndarray) -> Observation:
        """The vocabulary's verdict on the accepted events' items (a trainer group
        overrides it: every rank observes the whole group's items, ``pipeline.stream.distributed``)."""
        return self.vocab.observe(items, timestamps)

    def expiry_time(self) -> int:
        """The event time that items expire against: the store's watermark."""
        return self.store.watermark
