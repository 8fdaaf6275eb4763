"""Test-then-train on one micro-batch of events, and the accounting of a decoded poll.

``Step.train_on`` takes one micro-batch through the trainer's state:

1. the store vets each event (late / duplicate), the vocabulary maps items to rows
   (admitting new keys; reused rows get fresh embeddings *and* zeroed Adam moments);
2. each user's stored history plus the new events becomes a jagged sequence whose targets
   are exactly the new events (``pipeline.stream.batching``);
3. the model ranks every target against the live catalogue *before* training on it
   (progressive HR@K / NDCG@K / MRR), then takes one sampled-softmax optimizer step;
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
from typing import Any

import numpy as np
import torch

from model.base import select_targets
from model.losses import sampled_softmax_loss
from pipeline.events import EventBatch
from pipeline.events.positives import parse_positives
from pipeline.events.reject import DecodeResult
from pipeline.stream.batching import BatchBuilder
from pipeline.stream.config import TrainerConfig
from pipeline.stream.deadletter import DeadLetterSink
from pipeline.stream.observability import TrainerMetrics
from pipeline.stream.progressive import ranks_over_catalogue
from pipeline.stream.state import TrainerState, reset_item_rows


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
        prepared = builder.build(events)
        if prepared.assigned_rows.size:
            self.reset_rows(state, prepared.assigned_rows)
        micro = prepared.micro
        ranks = np.empty(0, dtype=np.int64)
        built = time.perf_counter()
        if micro.num_targets and scoring:
            ranks = self._test_then_train(state, micro.batch)
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
        c["targets"] += micro.num_targets
        c["context_only"] += micro.context_only
        c["unknown_item"] += micro.unknown_item
        if micro.not_positive:  # only counted under a rule: other runs' counters stay as they were
            c["not_positive"] += micro.not_positive
        c["steps"] += 1
        self.metrics.trained.inc(prepared.num_accepted)
        self.metrics.targets.inc(micro.num_targets)
        targets = prepared.accepted[micro.target_event]
        audit = self.cfg.observability.targets_log
        if audit is not None and events.event_id is not None:
            with open(audit, "a", encoding="utf-8") as file:  # appended as scored
                file.writelines(f"{e}\n" for e in events.event_id[targets].tolist())
        target_times = events.timestamp[targets]
        return StepResult(prepared.num_accepted, ranks, target_times, state.last_loss)

    def _test_then_train(self, state: TrainerState, batch: Any) -> np.ndarray:
        """Rank every target (test), then take one optimizer step on them (train)."""
        clock = time.perf_counter()
        batch = batch.to(self.device)
        model, learn = state.model, self.cfg.train.learn
        live = torch.from_numpy(state.vocab.live_rows()).to(self.device)
        if self.separate_eval or not learn:
            # Dropout would perturb the test scores: score in eval mode, without gradients.
            model.eval()
            with torch.no_grad():
                states = model.encode(batch)
                targets = select_targets(batch, states)
                ranks = ranks_over_catalogue(
                    targets.queries, targets.items, model.item_rows(), live
                )
            model.train()
            clock = state.lap("evaluate", clock)
        if learn:
            states = model.encode(batch)
            targets = select_targets(batch, states)
            # rows are normalised as they are looked up: O(rows touched), not O(capacity)
            table = model.item_rows()
            if not self.separate_eval:
                clock = state.lap("forward_backward", clock)
                with torch.no_grad():
                    ranks = ranks_over_catalogue(
                        targets.queries.detach(), targets.items, table, live
                    )
                clock = state.lap("evaluate", clock)
            loss = sampled_softmax_loss(
                targets.queries,
                targets.items,
                table,
                num_negatives=self.cfg.train.num_negatives,
                temperature=self.cfg.train.temperature,
                candidate_rows=live,
                generator=state.generator,
                per_position=self.cfg.train.per_position_negatives,
            )
            state.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clock = state.lap("forward_backward", clock)
            self.reduce_gradients(state, int(targets.items.numel()))
            state.optimizer.step()
            clock = state.lap("optimizer", clock)
            state.last_loss = float(loss.detach())
            self.metrics.loss.set(state.last_loss)
        out = ranks.cpu().numpy()
        state.progressive.update(out)
        return out

    # ------------------------------------------------------------------ hooks
    def make_builder(self, state: TrainerState) -> BatchBuilder:
        """Store + vocabulary + assembly over the state's store and vocabulary."""
        return BatchBuilder(state.store, state.vocab, self.cfg.max_targets, self.positives)

    def reset_rows(self, state: TrainerState, rows: np.ndarray) -> None:
        """Fresh embeddings (from torch's global generator) and optimizer state for rows
        handed to new items."""
        model = state.model
        reset_item_rows(model.reset_item_rows, state.optimizer, model.item_emb.weight, rows)

    def reduce_gradients(self, state: TrainerState, targets: int) -> int:
        """Between backward and the optimizer step (a trainer group sums every rank's
        gradients here); one process has nothing to do. Returns the step's targets."""
        return targets

    def step_without_targets(self, state: TrainerState) -> None:
        """For a micro-batch without targets (a trainer group's rank still takes part in the
        group's step); one process has nothing to do."""
