"""Test-then-train on one micro-batch of events, and the accounting of a decoded poll.

``Step.train_on`` takes one micro-batch through the trainer's state:

1. the store vets each event (late / duplicate), the vocabulary maps items to rows
   (admitting new keys; reused rows get fresh embeddings *and* zeroed Adam moments);
2. each user's stored history plus the new events becomes a jagged sequence whose targets
   are exactly the new events (``pipeline.stream.batching``);
3. the model ranks every target against the live catalogue *before* training on it
   (progressive HR@K / NDCG@K / MRR), then takes one sampled-softmax optimizer step; with
   ranking tasks the same step first scores the ranking candidates (``pipeline.stream.ranking``:
   progressive NE / AUC / log loss per task) and adds their weighted BCE to the loss;
4. the store is updated and items past their event-time TTL are freed.

With ``scoring=False`` step 3 is skipped and every count stays the same: a backfill bootstrap
folds a lake into a state so. The public methods after ``train_on`` are the hooks a trainer
group overrides (``pipeline.stream.distributed.trainer``): the batch builder (the group's
vocabulary decisions), the re-initialisation of reassigned rows (a seed the ranks share),
the exchange of gradients between backward and the optimizer step, and the step of a
micro-batch without targets.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from model.base import Targets, select_targets
from model.dlrm import DLRM
from model.jagged import JaggedBatch
from model.losses import sampled_softmax_loss
from model.ranking_heads import labels_from_events, ranking_loss, task_from_dict, task_weights
from pipeline.events import EventBatch
from pipeline.events.positives import parse_positives
from pipeline.events.reject import DecodeResult
from pipeline.stream.batching import BatchBuilder, PreparedBatch
from pipeline.stream.config import TrainerConfig
from pipeline.stream.deadletter import DeadLetterSink
from pipeline.stream.observability import TrainerMetrics
from pipeline.stream.progressive import ranks_over_catalogue
from pipeline.stream.ranking import hashed_user_rows, retrieval_targets
from pipeline.stream.state import TrainerState, item_weight, reset_item_rows


@dataclass(frozen=True)
class StepResult:
    """One micro-batch: its targets' test ranks (before training) and their event times."""

    events: int  # accepted events applied
    ranks: np.ndarray  # int64 [M], 1-based rank over the live catalogue
    target_times: np.ndarray  # int64 [M], event time of each target
    loss: float


class Step:
    """Applies decoded events to a ``TrainerState``; see the module docstring.

    Args:
        cfg: the configuration.
        metrics: the Prometheus metrics the step counts into.
    """

    def __init__(self, cfg: TrainerConfig, metrics: TrainerMetrics) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.device = torch.device(cfg.train.device)
        # Dropout would perturb the test scores: then the test is a separate eval pass.
        self.separate_eval = cfg.model.dropout > 0 or cfg.model.input_dropout > 0
        self.positives = parse_positives(cfg.train.positives, setting="train.positives")
        self.tasks = [task_from_dict(doc) for doc in cfg.model.ranking_tasks]
        self.task_weights = task_weights(self.tasks)
        # DLRM ranks the candidates only: no retrieval targets are scored or trained
        self.ranking_only = cfg.model.kind == "dlrm"
        self.retrieval_weight = cfg.train.retrieval_weight if cfg.model.ranking_tasks else 1.0

    @property
    def ranking(self) -> bool:
        """Ranking tasks are configured: each step also trains the ranking head."""
        return bool(self.tasks)

    def apply_poll(
        self,
        state: TrainerState,
        result: DecodeResult,
        n_records: int,
        dead_letters: DeadLetterSink,
        *,
        scoring: bool = True,
    ) -> list[StepResult]:
        """Count and dead-letter a decoded poll of ``n_records`` records, then apply its
        events micro-batch by micro-batch (``train.batch_events``)."""
        for reject in result.rejects:
            dead_letters.send(reject)
        decode_rejects = Counter(str(r.reason) for r in result.rejects)
        c = state.counters
        c["records"] += n_records
        c["events_seen"] += len(result.events) + len(result.rejects)
        c["events_valid"] += len(result.events)
        state.rejected.update(decode_rejects)
        self.metrics.add_rejects(decode_rejects)
        self.metrics.events.inc(len(result.events))
        size = self.cfg.train.batch_events
        return [
            self.train_on(state, result.events.take(slice(lo, lo + size)), scoring=scoring)
            for lo in range(0, len(result.events), size)
        ]

    def train_on(
        self, state: TrainerState, events: EventBatch, *, scoring: bool = True
    ) -> StepResult:
        """One micro-batch: vet, map, assemble, score (test), train, store."""
        started = time.perf_counter()
        builder = self.make_builder(state)
        # a bootstrap (no scoring) trains nothing: no candidates to build
        prepared = builder.build(events, ranking=self.ranking and scoring)
        if prepared.assigned_rows.size:
            self.reset_rows(state, prepared.assigned_rows)
        micro, ranking = prepared.micro, prepared.ranking
        candidates = 0 if ranking is None else ranking.num_candidates
        target_event = np.empty(0, np.int64) if self.ranking_only else micro.target_event
        ranks = np.empty(0, dtype=np.int64)
        built = time.perf_counter()
        if (target_event.size or candidates) and scoring:
            # with ranking on, one batch holds the retrieval windows and the candidates
            batch = micro.batch if ranking is None else ranking.batch
            users = self.user_rows(state, prepared) if self.ranking_only and candidates else None
            ranks = self._test_then_train(
                state, batch, bool(target_event.size), candidates > 0, users
            )
        elif scoring:
            self.step_without_targets(state)
        trained = time.perf_counter()
        builder.commit(prepared)
        state.step_seconds["store_batch"] += (built - started) + (time.perf_counter() - trained)
        store_rejects = prepared.plan.reject_counts()
        state.rejected.update(store_rejects)
        self.metrics.add_rejects(store_rejects)
        c = state.counters
        c["events_trained"] += prepared.num_accepted
        c["targets"] += target_event.size
        c["context_only"] += micro.context_only
        c["unknown_item"] += micro.unknown_item
        if micro.not_positive:  # only counted under a rule: other runs' counters stay as they were
            c["not_positive"] += micro.not_positive
        if ranking is not None:
            c["candidates"] += candidates
            c["candidates_no_history"] += ranking.no_history
        c["steps"] += 1
        self.metrics.trained.inc(prepared.num_accepted)
        self.metrics.targets.inc(target_event.size)
        targets = prepared.accepted[target_event]
        audit = self.cfg.observability.targets_log
        if audit is not None and events.event_id is not None:
            with open(audit, "a", encoding="utf-8") as file:  # appended as scored
                file.writelines(f"{e}\n" for e in events.event_id[targets].tolist())
        target_times = events.timestamp[targets]
        return StepResult(prepared.num_accepted, ranks, target_times, state.last_loss)

    def _test_then_train(
        self,
        state: TrainerState,
        batch: JaggedBatch,
        targeted: bool,
        ranked: bool,
        users: torch.Tensor | None = None,
    ) -> np.ndarray:
        """Score every retrieval target (when ``targeted``) and ranking candidate (when
        ``ranked``) of ``batch`` (test), then take one optimizer step on the sum of their
        losses (train). ``users``: DLRM's user row of each sequence (``user_rows``)."""
        clock = time.perf_counter()
        batch = batch.to(self.device)
        users = None if users is None else users.to(self.device)
        labels = None
        if ranked:
            rows = batch.candidate_mask()
            values = batch.values
            assert values is not None  # the ranking batch always carries them
            labels = labels_from_events(batch.action_types[rows], values[rows], self.tasks)
        model, learn = state.model, self.cfg.train.learn
        live = torch.from_numpy(state.vocab.live_rows()).to(self.device)
        if self.separate_eval or not learn:
            # Dropout would perturb the test scores: score in eval mode, without gradients.
            model.eval()
            with torch.no_grad():
                targets, logits = self._forward(state, batch, targeted, ranked, users)
                ranks = self._test(state, targets, logits, labels, live)
            model.train()
            clock = state.lap("evaluate", clock)
        if learn:
            targets, logits = self._forward(state, batch, targeted, ranked, users)
            if not self.separate_eval:
                clock = state.lap("forward_backward", clock)
                with torch.no_grad():
                    ranks = self._test(state, targets, logits, labels, live)
                clock = state.lap("evaluate", clock)
            loss = torch.zeros((), device=self.device)
            if targets is not None:
                # at weight 0 too: a step whose only examples are targets still needs a graph
                loss = loss + self.retrieval_weight * sampled_softmax_loss(
                    targets.queries,
                    targets.items,
                    model.item_rows(),  # rows normalised as looked up: O(rows touched)
                    num_negatives=self.cfg.train.num_negatives,
                    temperature=self.cfg.train.temperature,
                    candidate_rows=live,
                    generator=state.generator,
                    per_position=self.cfg.train.per_position_negatives,
                )
            if logits is not None and labels is not None:
                loss = loss + ranking_loss(logits, labels, self.task_weights)
            state.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clock = state.lap("forward_backward", clock)
            # a group weighs each rank's gradient by its examples: targets and candidates
            examples = (0 if targets is None else int(targets.items.numel())) + (
                0 if labels is None else int(labels.shape[0])
            )
            self.reduce_gradients(state, examples)
            state.optimizer.step()
            clock = state.lap("optimizer", clock)
            state.last_loss = float(loss.detach())
            self.metrics.loss.set(state.last_loss)
        out = ranks.cpu().numpy()
        state.progressive.update(out)
        return out

    def _forward(
        self,
        state: TrainerState,
        batch: JaggedBatch,
        targeted: bool,
        ranked: bool,
        users: torch.Tensor | None,
    ) -> tuple[Targets | None, torch.Tensor | None]:
        """One encoder call: the retrieval targets with their query states, and the
        candidates' ranking logits (DLRM: the logits only)."""
        model = state.model
        if isinstance(model, DLRM):
            assert users is not None and not targeted
            return None, model(batch, users)
        states = model.encode(batch)
        targets = None
        if targeted:
            # candidate rows may be targets too (pipeline.stream.ranking, shared rows)
            targets = (
                select_targets(batch, states) if not ranked else retrieval_targets(batch, states)
            )
        logits = model.rank(batch, states) if ranked else None
        return targets, logits

    def _test(
        self,
        state: TrainerState,
        targets: Targets | None,
        logits: torch.Tensor | None,
        labels: torch.Tensor | None,
        live: torch.Tensor,
    ) -> torch.Tensor:
        """The targets' ranks over the live catalogue; the candidates' probabilities go to
        the progressive ranking metrics."""
        if logits is not None and labels is not None and state.ranking is not None:
            state.ranking.update(labels.cpu().numpy(), torch.sigmoid(logits).cpu().numpy())
        if targets is None:
            return torch.empty(0, dtype=torch.int64)
        return ranks_over_catalogue(
            targets.queries.detach(), targets.items, state.model.item_rows(), live
        )

    # ------------------------------------------------------------------ hooks
    def make_builder(self, state: TrainerState) -> BatchBuilder:
        """Store + vocabulary + assembly over the state's store and vocabulary."""
        return BatchBuilder(
            state.store, state.vocab, self.cfg.max_targets, self.positives, self.ranking_only
        )

    def user_rows(self, state: TrainerState, prepared: PreparedBatch) -> torch.Tensor:
        """DLRM's user row of each candidate sequence: its user's key, hashed
        (``pipeline.stream.ranking.hashed_user_rows``)."""
        assert prepared.ranking is not None and isinstance(state.model, DLRM)
        ranking = prepared.ranking
        assert ranking.batch.num_targets is not None
        counts = ranking.batch.num_targets.numpy()
        first = np.cumsum(counts) - counts  # each sequence's first candidate
        keys = prepared.events.user_id[prepared.accepted[ranking.candidate_event[first]]]
        return torch.from_numpy(hashed_user_rows(keys, state.model.cfg.num_user_rows))

    def reset_rows(self, state: TrainerState, rows: np.ndarray) -> None:
        """Fresh embeddings (from torch's global generator) and optimizer state for rows
        handed to new items."""
        model = state.model
        reset_item_rows(model.reset_item_rows, state.optimizer, item_weight(model), rows)

    def reduce_gradients(self, state: TrainerState, targets: int) -> int:
        """Between backward and the optimizer step (a trainer group sums every rank's
        gradients here); one process has nothing to do. Returns the step's targets."""
        return targets

    def step_without_targets(self, state: TrainerState) -> None:
        """For a micro-batch without targets (a trainer group's rank still takes part in the
        group's step); one process has nothing to do."""
