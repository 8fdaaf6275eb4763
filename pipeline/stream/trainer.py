"""The online trainer: poll -> decode -> store/vocabulary -> batch -> test -> train -> checkpoint.

One loop iteration gathers records until a micro-batch worth of events is there, decodes
them (rejects go to the dead-letter sink, counted by reason) and processes the events in
micro-batches of ``train.batch_events``, test-then-train (``pipeline.stream.step``) on the
trainer's state (``pipeline.stream.state``).

A checkpoint is taken only between polls, when every polled record is fully applied, so
the saved source positions describe exactly the saved state: after a crash the trainer
loads the newest checkpoint, seeks the source there and every event affects the model
exactly once. Versions are published to the registry on their own schedule, right after a
checkpoint, with the positions and event-time watermark of that state: no version is ever
ahead of the newest checkpoint, so versions' positions never go backwards after a crash.
How checkpoints and versions are written and read: ``pipeline.stream.persistence``.

A trainer that starts from a backfill bootstrap (``pipeline.backfill.bootstrap``) carries its
cut-off T in every checkpoint: the backfill accounted for every event with event time < T,
so such events are skipped here (counted ``before_cutoff``), and so are rejected records
whose record timestamp is < T; a source that can start at a time (Kafka,
``offsets_for_times``) is started at T on partitions it has no position for.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.events import decode_records
from pipeline.events.records import Records, SourceRecord
from pipeline.events.reject import DecodeResult
from pipeline.runtime import threads
from pipeline.sources.base import FiniteSource, Source, gather
from pipeline.stream import reporting
from pipeline.stream.checkpoint import CheckpointStore
from pipeline.stream.config import TrainerConfig
from pipeline.stream.deadletter import DeadLetterSink
from pipeline.stream.observability import MetricsLog, TrainerMetrics, progress_line
from pipeline.stream.persistence import Persistence
from pipeline.stream.state import new_state
from pipeline.stream.step import Step, StepResult

log = logging.getLogger(__name__)


@dataclass
class Schedule:
    """What changed since the last checkpoint and publish, and when they were: what makes
    the next ones due."""

    since_checkpoint: int = 0  # events read since the last checkpoint
    unsaved_records: bool = False  # records read since (positions moved)
    since_publish: int = 0  # events read since the last publish
    last_checkpoint: float = field(default_factory=time.monotonic)
    last_publish: float = field(default_factory=time.monotonic)

    def polled(self, n_records: int, n_events: int) -> None:
        """After a poll of ``n_records`` records holding ``n_events`` events."""
        if n_records:
            # positions moved, even if no event was valid; a group's rank also comes here
            # every round without records, which must not make an idle group checkpoint
            self.unsaved_records = True
        self.since_checkpoint += n_events
        self.since_publish += n_events

    def checkpointed(self) -> None:
        """After a checkpoint: nothing is unsaved, its clock restarts."""
        self.since_checkpoint = 0
        self.unsaved_records = False
        self.last_checkpoint = time.monotonic()

    def published(self) -> None:
        """After a publish (a group's other ranks: rank 0's): its clock restarts."""
        self.since_publish = 0
        self.last_publish = time.monotonic()


class OnlineTrainer:
    """Test-then-train loop over a ``Source``; see the module docstring.

    It holds a ``TrainerState`` (``state``, replaced by ``restore``), the ``Step`` that trains
    on it (``step``), the ``Persistence`` that saves and publishes it (``persistence``) and the
    checkpoint/publish ``Schedule`` (``schedule``). A trainer group
    (``pipeline.stream.distributed.trainer``) replaces the step with its own and overrides
    ``loop``, ``finish``, ``run_start_at``, ``restore``, ``checkpoint``, ``process_decoded``,
    ``published_positions`` and ``summary_extra``.

    Args:
        cfg: the configuration.
        source: where records come from.
        dead_letters: where rejected input goes.
        checkpoints: checkpoint store (None: never checkpoint, e.g. benchmarks).
        registry: where versions are published (None: never publish).
        metrics: Prometheus metrics (None: a private, unserved set).
    """

    def __init__(
        self,
        cfg: TrainerConfig,
        source: Source,
        dead_letters: DeadLetterSink,
        checkpoints: CheckpointStore | None = None,
        registry: Any | None = None,
        metrics: TrainerMetrics | None = None,
    ) -> None:
        self.cfg = cfg
        self.source = source
        self.dead_letters = dead_letters
        self.metrics = metrics or TrainerMetrics(port=0)
        threads.set_torch_threads(cfg.train.threads)
        self.state = new_state(cfg)
        self.step = Step(cfg, self.metrics)
        self.persistence = Persistence(
            cfg, source, dead_letters, checkpoints, registry, self.metrics
        )
        self.schedule = Schedule()
        # events per record, learnt from the polls: how many records make a micro-batch
        self.events_per_record: float | None = None
        self._metrics_log: MetricsLog | None = None
        self._run_total: int | None = None  # events this run reads at most (progress total)
        # when this run's first record arrived: events/s of the stream, not of the wait for it
        self._first_record_at: float | None = None
        # events_seen when this run began (``run``): train.max_events counts from there
        self.run_start: int | None = None

    def restore(self) -> bool:
        """Load the newest checkpoint that restores and seek the source to its positions
        (``Persistence.restore``); False when there is none."""
        restored = self.persistence.restore(self.state)
        if restored is not None:
            self.state = restored
        return restored is not None

    # ---------------------------------------------------------------- loop
    def run(self, stop: threading.Event | None = None) -> dict[str, Any]:
        """Train until the source is exhausted, a bound is hit or ``stop`` is set."""
        stop = stop or threading.Event()
        self._metrics_log = MetricsLog(self.cfg.metrics_log_path)
        started = time.monotonic()
        start_events = self.state.counters["events_seen"]
        self.run_start = self.run_start_at(start_events)
        self._run_total = self._events_ahead()
        if self.source.exhausted():
            log.warning(
                "nothing to train: the %s source has no events left at %s (%s events seen "
                "before); start over with --no-resume or a new --checkpoint-dir, or give a "
                "longer stream",
                self.cfg.source.kind,
                self.source.positions(),
                f"{start_events:,}",
            )
        if self.persistence.registry is not None and self.cfg.registry.enabled:
            self.persistence.follow_latest(self.state)
        try:
            self.loop(stop, started, start_events)
            self.finish()
            summary = self.summary(started, start_events)  # a trainer group's ranks all take part
            if self.persistence.fatal is not None:
                raise self.persistence.fatal
            return summary
        finally:
            self._metrics_log.close()
            self._metrics_log = None

    def loop(self, stop: threading.Event, started: float, start_events: int) -> None:
        """Poll, train, log, checkpoint and publish until a reason to stop."""
        cfg = self.cfg
        assert self._metrics_log is not None
        last_log = started
        logged_targets = self.state.counters["targets"]
        while not stop.is_set() and self.persistence.fatal is None:
            if self._bound_reached(started):
                break
            records = self.gather()
            if not records:
                if self.source.exhausted():
                    break
                # A quiet stream still gets its time-based checkpoint and publish, so
                # the tail of a burst is saved (and committed) without waiting for more.
                self._maybe_publish_and_checkpoint()
                continue
            self.process_records(records)
            now = time.monotonic()
            if now - last_log >= cfg.observability.log_every_s:
                self.log_progress(started, start_events)
                last_log = now
                logged_targets = self.state.counters["targets"]
            elif self.state.counters["targets"] - logged_targets >= cfg.eval.window:
                # A metrics-log point per window of targets, so short runs plot too.
                self._metrics_log.write(self.snapshot(started, start_events))
                logged_targets = self.state.counters["targets"]
            self._maybe_publish_and_checkpoint()

    def _events_ahead(self) -> int | None:
        """Events this run reads at most: ``train.max_events``, or fewer when a finite
        source has fewer left (None: unbounded). The progress line's total."""
        bound = self.cfg.train.max_events
        left = self.source.remaining_events() if isinstance(self.source, FiniteSource) else None
        if left is None:
            return bound
        left += self.run_events()  # a restarted group rank's run began before this process
        return left if bound is None else min(bound, left)

    def _bound_reached(self, started: float) -> bool:
        """True once ``train.max_events`` more events were read in this run or ``duration_s``
        passed."""
        train = self.cfg.train
        if train.max_events is not None and self.run_events() >= train.max_events:
            return True
        return train.duration_s is not None and time.monotonic() - started >= train.duration_s

    def run_start_at(self, start_events: int) -> int:
        """Where this run's ``train.max_events`` count begins: here, when ``run`` starts (a
        trainer group restarted by torchrun continues its launch's count)."""
        return start_events

    def run_events(self) -> int:
        """Input events read in this run (what ``train.max_events`` bounds)."""
        assert self.run_start is not None  # set when ``run`` starts
        return self.state.counters["events_seen"] - self.run_start

    def gather(self) -> Records:
        """Poll until about one micro-batch of events (or the bound) is reached."""
        cfg = self.cfg
        target = cfg.train.batch_events
        timeout = cfg.source.poll_timeout_s
        if cfg.train.max_events is not None:
            target = min(target, cfg.train.max_events - self.run_events())
            if self.events_per_record is not None and self.events_per_record > 1:
                # Records of many events (Arrow) are never split, and their sizes vary (a
                # producer splits its batches by partition), so a poll of several may go far
                # past the bound: a bounded run takes one per poll and ends less than one
                # record past max_events.
                return gather(self.source, 1, 1.0, 1, timeout)
        return gather(
            self.source, target, self.events_per_record, cfg.source.poll_max_records, timeout
        )

    def process_records(self, records: Sequence[SourceRecord]) -> list[StepResult]:
        """Decode records and train on their events, micro-batch by micro-batch."""
        return self.process_decoded(self.decode(records), len(records))

    def decode(self, records: Sequence[SourceRecord]) -> DecodeResult:
        """Decode and validate a poll, without what a backfill already accounted for."""
        result = decode_records(records)
        if records:
            # An Arrow record holds many events: learn how many, to poll the right amount
            # (before the cut-off drops any: skipped events still say what a record holds).
            n_events = len(result.events) + len(result.rejects)
            self.events_per_record = max(1.0, n_events / len(records))
        if self.state.cutoff is not None:
            result, skipped = after_cutoff(result, Records.of(records), self.state.cutoff)
            if skipped:
                self.state.counters["before_cutoff"] += skipped
        return result

    def process_decoded(self, result: DecodeResult, n_records: int) -> list[StepResult]:
        """Count and dead-letter a decoded poll of ``n_records`` records, then train on its
        events micro-batch by micro-batch."""
        threads.step()  # the default thread count follows the cores other processes leave
        self.schedule.polled(n_records, len(result.events) + len(result.rejects))
        if n_records and self._first_record_at is None:
            self._first_record_at = time.monotonic()
        return self.step.apply_poll(self.state, result, n_records, self.dead_letters)

    # ---------------------------------------------- checkpoints and registry
    def _maybe_publish_and_checkpoint(self) -> None:
        now = time.monotonic()
        ck, reg, due = self.cfg.checkpoint, self.cfg.registry, self.schedule
        # Time-based saves only when something changed since the last one: an idle
        # stream must not write identical checkpoints and versions every period.
        publish_due = (
            self.persistence.registry is not None
            and reg.enabled
            and due.since_publish > 0
            and (due.since_publish >= reg.every_events or now - due.last_publish >= reg.every_s)
        )
        # Checkpoint first, then publish that same state: a crash in between can then only
        # replay from a checkpoint at or past every published version's positions, so the
        # versions' positions never go backwards (``Persistence.follow_latest`` relinks the
        # parent).
        if self.persistence.checkpoints is not None and (
            publish_due
            or due.since_checkpoint >= ck.every_events
            or (due.unsaved_records and now - due.last_checkpoint >= ck.every_s)
        ):
            self.checkpoint()
        if publish_due:
            self.publish()
        self.metrics.checkpoint_age.set(time.monotonic() - due.last_checkpoint)

    def finish(self) -> None:
        """After the loop: a last checkpoint, and a last version when one is due."""
        reg = self.cfg.registry
        unpublished = self.schedule.since_publish > 0 or self.state.last_published is None
        publishing = (
            self.persistence.registry is not None and reg.enabled and self.persistence.fatal is None
        )
        if self.persistence.checkpoints is not None:
            self.checkpoint()
        if publishing and reg.publish_on_exit and unpublished:
            self.publish()

    def checkpoint(self, *, full: bool = False) -> Path:
        """Save the state and the source's positions (``Persistence.checkpoint``); returns
        the checkpoint's path."""
        path = self.persistence.checkpoint(self.state, full=full)
        self.schedule.checkpointed()
        return path

    def publish(self) -> int | None:
        """Publish the state as a new version (``Persistence.publish``). None when another
        writer moved ``latest``: then the run stops after a final checkpoint and ``run``
        raises the ``ConcurrentPublishError``."""
        version = self.persistence.publish(self.state, self.published_positions())
        if version is not None:
            self.schedule.published()
            log.info("published version %d", version)
        return version

    def published_positions(self) -> dict[str, int]:
        """The source positions a published version records (a group: every rank's)."""
        return self.source.positions()

    # ------------------------------------------------------------ reporting
    def snapshot(self, started: float, start_events: int) -> dict[str, Any]:
        """Where the run stands (``reporting.snapshot``), ``start_events`` the events seen
        when it started at ``started``; also sets the Prometheus gauges."""
        elapsed = max(1e-9, time.monotonic() - started)
        done = self.state.counters["events_seen"] - start_events  # by this process
        # by this run (a restarted group rank's began earlier); outside ``run``: this process's
        run_events = done if self.run_start is None else self.run_events()
        snap = reporting.snapshot(self.state, elapsed, done, run_events, self.dead_letters.stats())
        reporting.set_gauges(self.metrics, self.state, snap)
        return snap

    def summary_extra(self) -> dict[str, Any]:
        """More entries for the summary (a trainer group adds the group's totals)."""
        return {}

    def log_progress(self, started: float, start_events: int) -> None:
        """The progress line, and a point of the metrics log."""
        snap = self.snapshot(started, start_events)
        log.info(progress_line(snap, self._run_total))
        if self._metrics_log is not None:
            self._metrics_log.write(snap)

    def summary(self, started: float, start_events: int) -> dict[str, Any]:
        """Final metrics, counters and published versions (also written to run_dir)."""
        snap = self.snapshot(started, start_events)
        first = self._first_record_at
        out = reporting.summary(
            self.state,
            snap,
            stream_s=0.0 if first is None else time.monotonic() - first,
            published=self.persistence.published,
            resumed_from=self.persistence.resumed_from,
            extra=self.summary_extra(),
        )
        if self._metrics_log is not None:
            self._metrics_log.write(snap)
        reporting.write_summary(self.cfg.run_dir, out)
        return out


def after_cutoff(result: DecodeResult, records: Records, cutoff: int) -> tuple[DecodeResult, int]:
    """Drop what the backfill accounted for: events before ``cutoff``, and rejects of
    records stamped before it (a record without a timestamp is kept); and how many went."""
    keep = result.events.timestamp >= cutoff
    rejects = result.rejects
    if rejects:
        stamp = dict(
            zip(
                zip(records.partitions, records.offsets, strict=True),
                records.times,
                strict=True,
            )
        )
        cutoff_ms = cutoff * 1000
        rejects = [
            r
            for r in rejects
            if (t := stamp.get((r.partition, r.offset))) is None or t >= cutoff_ms
        ]
    skipped = int((~keep).sum()) + len(result.rejects) - len(rejects)
    if not skipped:
        return result, 0
    return DecodeResult(result.events.take(keep), rejects), skipped
