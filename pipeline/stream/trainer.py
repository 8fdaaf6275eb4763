"""The online trainer: poll -> decode -> store/vocabulary -> batch -> test -> train -> checkpoint.

One loop iteration gathers records until a micro-batch worth of events is there, decodes
them (rejects go to the dead-letter sink, counted by reason) and processes the events in
micro-batches of ``train.batch_events``:

1. the store vets each event (late / duplicate), the vocabulary maps items to rows
   (admitting new keys; reused rows get fresh embeddings *and* zeroed Adam moments);
2. each user's stored history plus the new events becomes a jagged sequence whose targets
   are exactly the new events (``pipeline.stream.batching``);
3. the model ranks every target against the live catalogue *before* training on it
   (progressive HR@K / NDCG@K / MRR), then takes one sampled-softmax optimizer step;
4. the store is updated and items past their event-time TTL are freed.

A checkpoint is taken only between polls, when every polled record is fully applied, so
the saved source positions describe exactly the saved state: after a crash the trainer
loads the newest checkpoint, seeks the source there and every event affects the model
exactly once. Versions are published to the registry on their own schedule, right after a
checkpoint, with the positions and event-time watermark of that state: no version is ever
ahead of the newest checkpoint, so versions' positions never go backwards after a crash.

A trainer that starts from a backfill bootstrap (``pipeline.backfill.bootstrap``) carries its
cut-off T in every checkpoint: the backfill accounted for every event with event time < T,
so such events are skipped here (counted ``before_cutoff``), and so are rejected records
whose record timestamp is < T; a source that can start at a time (Kafka,
``offsets_for_times``) is started at T on partitions it has no position for.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.base import select_targets
from model.hstu import HSTU, HSTUConfig
from model.losses import sampled_softmax_loss
from model.optim import RowSparseAdam, is_row_sparse_state
from pipeline.events import EventBatch, decode_records
from pipeline.events.records import Records, SourceRecord
from pipeline.events.reject import DecodeResult
from pipeline.runtime import threads
from pipeline.sources.base import FiniteSource, Source, TimeSeekable, gather
from pipeline.state.store import SequenceStore
from pipeline.state.vocab import ItemVocabulary
from pipeline.stream import rowdelta
from pipeline.stream.batching import BatchBuilder
from pipeline.stream.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    seq_of,
    state_from_bytes,
    state_to_bytes,
    tensor_writer,
)
from pipeline.stream.config import TrainerConfig
from pipeline.stream.deadletter import DeadLetterSink
from pipeline.stream.observability import MetricsLog, TrainerMetrics, progress_line
from pipeline.stream.progressive import ProgressiveMetrics, ranks_over_catalogue
from pipeline.stream.publishing import ConcurrentPublishError

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
VOCAB_FILE = "vocab.npz"
# Settings a checkpoint must agree with: they fix tensor shapes and stored data layout.
_SHAPE_KEYS = ("model", "store.max_len", "vocab.capacity")


@dataclass(frozen=True)
class _Chain:
    """The newest checkpoint of this state, which the next delta builds on."""

    seq: int
    deltas: int  # since the full checkpoint at its root
    full_bytes: int
    delta_bytes: int  # written by those deltas together
    row_tensors: frozenset[str]  # rowdelta.present() of the root: a delta must have the same


@dataclass(frozen=True)
class StepResult:
    """One micro-batch: its targets' test ranks (before training) and their event times."""

    events: int  # accepted events applied
    ranks: np.ndarray  # int64 [M], 1-based rank over the live catalogue
    target_times: np.ndarray  # int64 [M], event time of each target
    loss: float


def reset_item_rows(
    reinit: Callable[[torch.Tensor], None],
    optimizer: torch.optim.Optimizer | RowSparseAdam,
    weight: torch.Tensor,
    rows: np.ndarray,
) -> None:
    """Re-initialise embedding ``rows`` and zero their optimizer state (Adam moments).

    A row handed to a new item must not inherit the old item's vector nor its momentum.
    Every per-parameter state tensor shaped like ``weight`` (exp_avg, exp_avg_sq,
    max_exp_avg_sq) gets those rows zeroed; scalars such as ``step`` are shared by all rows
    and stay.
    """
    if rows.size == 0:
        return
    index = torch.as_tensor(rows, dtype=torch.int64, device=weight.device)
    reinit(index)
    if isinstance(optimizer, RowSparseAdam):
        optimizer.mark_changed(index)
    state = optimizer.state.get(weight, {})
    with torch.no_grad():
        for value in state.values():
            if torch.is_tensor(value) and value.shape == weight.shape:
                value[index] = 0


def build_model(cfg: TrainerConfig) -> HSTU:
    """The HSTU encoder described by ``cfg`` (item table = vocabulary capacity)."""
    m = cfg.model
    return HSTU(
        HSTUConfig(
            num_rows=cfg.vocab.capacity,
            embedding_dim=m.embedding_dim,
            num_layers=m.num_layers,
            num_heads=m.num_heads,
            max_len=cfg.store.max_len,
            dropout=m.dropout,
            input_dropout=m.input_dropout,
            attention_backend=m.attention_backend,
            layer_norm=m.layer_norm,
        )
    )


def shape_config(cfg: TrainerConfig) -> dict[str, Any]:
    dumped = cfg.model_dump(mode="json")
    out = {}
    for key in _SHAPE_KEYS:
        value: Any = dumped
        for part in key.split("."):
            value = value[part]
        out[key] = value
    return out


# Model settings added after checkpoints existed, with the value those checkpoints were
# written with, so that an older checkpoint of the same shapes still restores.
_LEGACY_MODEL_SETTINGS = {"layer_norm": "affine", "init": "genrec"}


def _with_legacy_defaults(saved: Any) -> Any:
    if isinstance(saved, dict) and isinstance(saved.get("model"), dict):
        return {**saved, "model": {**_LEGACY_MODEL_SETTINGS, **saved["model"]}}
    return saved


def _setting_differences(saved: Any, wanted: dict[str, Any]) -> str:
    """``"model.layer_norm: checkpoint 'affine', this run 'plain'; ..."`` for dict settings."""
    if not isinstance(saved, dict):
        return ""
    flat_saved, flat_wanted = _flatten(saved), _flatten(wanted)
    return "; ".join(
        f"{key}: checkpoint {flat_saved.get(key)!r}, this run {flat_wanted.get(key)!r}"
        for key in sorted(set(flat_saved) | set(flat_wanted))
        if flat_saved.get(key) != flat_wanted.get(key)
    )


def _flatten(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out.update(_flatten(value, name) if isinstance(value, dict) else {name: value})
    return out


class RestoreRefusedError(ValueError):
    """A checkpoint that is intact but belongs to other settings or another source."""


def source_identity(cfg: TrainerConfig) -> str:
    """What a checkpoint's positions refer to: the source kind and what it reads."""
    src = cfg.source
    if src.kind == "file":
        return f"file:{Path(src.path or '').resolve()}"
    if src.kind == "kafka":
        return f"kafka:{src.kafka.topic}"
    return "synthetic"


def _int_counter(value: Any, name: str) -> Counter[str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, int) for k, v in value.items()
    ):
        raise TypeError(f"meta {name!r} is not a mapping of names to counts: {value!r:.200}")
    return Counter(dict(value))


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or "no details"
    return f"{type(err).__name__}: {text}"[:500]


class OnlineTrainer:
    """Test-then-train loop over a ``Source``; see the module docstring.

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
        self.checkpoints = checkpoints
        self.registry = registry
        self.metrics = metrics or TrainerMetrics(port=0)
        threads.set_torch_threads(cfg.train.threads)
        torch.manual_seed(cfg.train.seed)
        self.device = torch.device(cfg.train.device)
        self.model, self.optimizer = self._new_model()
        self.generator = torch.Generator().manual_seed(cfg.train.seed)
        self.store = SequenceStore(
            cfg.store.max_len, cfg.store.max_users, cfg.store.ttl_s, cfg.store.tolerance_s
        )
        self.vocab = ItemVocabulary(
            cfg.vocab.capacity, cfg.vocab.admission_threshold, cfg.vocab.ttl_s
        )
        self.builder = self._make_builder()
        self.progressive = ProgressiveMetrics(cfg.eval.k, cfg.eval.window)
        self.counters: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.last_loss = math.nan
        self.published: list[int] = []
        self.last_published: int | None = None
        self.resumed_from: str | None = None
        self._separate_eval = cfg.model.dropout > 0 or cfg.model.input_dropout > 0
        self._events_per_record: float | None = None
        self._since_checkpoint = 0
        self._unsaved_records = False
        self._since_publish = 0
        self._last_checkpoint = time.monotonic()
        self._last_publish = time.monotonic()
        self._metrics_log: MetricsLog | None = None
        self._run_total: int | None = None  # events this run reads at most (progress total)
        # when this run's first record arrived: events/s of the stream, not of the wait for it
        self._first_record_at: float | None = None
        # What this trainer last saw ``latest`` point to: a publish fails instead of forking
        # the lineage when another writer moved it meanwhile.
        self._expected_latest: int | None = None
        self._fatal: ConcurrentPublishError | None = None
        self._restored_positions: dict[str, int] | None = None
        # events_seen when this run began (``run``): train.max_events counts from there
        self.run_start: int | None = None
        # Event time (seconds) below which a backfill accounted for everything; see the
        # module docstring.
        self.cutoff: int | None = None
        # False: the model does not rank targets (a backfill's state fold; counts unchanged).
        self.scoring = True
        self._chain: _Chain | None = None
        # Wall seconds per part of the step (bench/scale.py): store + batch assembly,
        # evaluation (ranking), forward + backward, optimizer; CPU clock, unsynchronised on CUDA.
        self.step_seconds: Counter[str] = Counter()

    def _make_builder(self) -> BatchBuilder:
        """Store + vocabulary + assembly over this trainer's store and vocabulary."""
        return BatchBuilder(self.store, self.vocab, self.cfg.max_targets)

    # ------------------------------------------------------------- restore
    def _new_model(self) -> tuple[HSTU, torch.optim.Optimizer | RowSparseAdam]:
        model = build_model(self.cfg)
        if self.cfg.model.init == "reference":
            model.reference_init()
        model = model.to(self.device)
        t = self.cfg.train
        betas = (0.9, t.adam_beta2)
        if t.sparse_embeddings:
            model.item_emb.sparse = True  # lookups give the table a sparse gradient
            return model, RowSparseAdam(model, t.lr, betas, t.weight_decay)
        optimizer = torch.optim.Adam(
            model.parameters(), lr=t.lr, betas=betas, weight_decay=t.weight_decay
        )
        return model, optimizer

    def restore(self) -> bool:
        """Load the newest checkpoint that restores and seek the source to its positions.

        A checkpoint that verifies but cannot be applied (bad content behind matching
        hashes, missing metadata) is skipped with a warning naming it, and the next older
        one is tried. A checkpoint of other settings or of another source is the user's
        mistake, not damage: that stops with what to do. ``CheckpointError`` when
        checkpoints exist but none restores.
        """
        if self.checkpoints is None:
            return False
        problems = []
        for ckpt in self.checkpoints.loadable():
            self._check_compatible(ckpt)
            try:
                self._apply(ckpt)
            except RestoreRefusedError:
                raise
            except Exception as err:  # any bad content: say which checkpoint, try an older one
                problem = f"{ckpt.path}: {_one_line(err)}"
                problems.append(problem)
                log.warning("cannot restore %s; falling back to an older checkpoint", problem)
                continue
            if problems:
                log.warning(
                    "restored %s after skipping %d newer checkpoint(s)", ckpt.path, len(problems)
                )
            return True
        if problems or self.checkpoints.sequences():
            raise CheckpointError(
                f"no checkpoint in {self.checkpoints.directory} can be restored"
                + (f" ({'; '.join(problems)})" if problems else " (all are damaged; see above)")
                + ": move the directory aside to keep it for inspection, or start fresh with "
                "--no-resume"
            )
        return False

    def _check_compatible(self, ckpt: Checkpoint) -> None:
        """Refuse (``ValueError``) a checkpoint of other shapes or of another source."""
        saved = _with_legacy_defaults(ckpt.meta.get("shape_config"))
        wanted = shape_config(self.cfg)
        if saved != wanted:
            diff = _setting_differences(saved, wanted)
            raise RestoreRefusedError(
                f"checkpoint {ckpt.path} was written with other model/store/vocab settings "
                f"({diff or saved}); set them as the checkpoint has them (--set KEY=VALUE) "
                "or use another checkpoint.dir"
            )
        saved_source = ckpt.meta.get("source")
        if saved_source is not None and saved_source != source_identity(self.cfg):
            raise RestoreRefusedError(
                f"checkpoint {ckpt.path} holds the state of source {saved_source!r}, but this "
                f"run reads {source_identity(self.cfg)!r}; its positions mean nothing here. "
                "Give this run its own state (set run_name, or --checkpoint-dir and --run-dir), "
                "or pass --no-resume to start from scratch over these checkpoints"
            )

    def _apply(self, ckpt: Checkpoint) -> None:
        """Rebuild every piece of state from ``ckpt``; ``self`` changes only on success."""
        meta = ckpt.meta
        model, optimizer = self._new_model()
        nets = _load_nets(ckpt)
        model.load_state_dict(nets["model"])
        optimizer_state = nets["optimizer"]
        written_sparse = is_row_sparse_state(optimizer_state)
        if written_sparse != self.cfg.train.sparse_embeddings:
            raise RestoreRefusedError(
                f"checkpoint {ckpt.path} holds the optimizer state of train.sparse_embeddings="
                f"{str(written_sparse).lower()}; resume it with --set "
                f"train.sparse_embeddings={str(written_sparse).lower()}"
            )
        optimizer.load_state_dict(optimizer_state)
        store = checkpoint_store(ckpt)
        vocab = ItemVocabulary.restore(ckpt.state["vocab"])
        # The blobs carry their own sizes: they must fit the model and the settings.
        if vocab.capacity != self.cfg.vocab.capacity or store.max_len != self.cfg.store.max_len:
            raise ValueError(
                f"vocabulary capacity {vocab.capacity} / store max_len {store.max_len} do not "
                f"match the settings ({self.cfg.vocab.capacity} / {self.cfg.store.max_len})"
            )
        progressive = ProgressiveMetrics.restore(ckpt.state["progressive"])
        counters = _int_counter(meta["counters"], "counters")
        rejected = _int_counter(meta["rejected"], "rejected")
        positions = meta["source_positions"]
        last_published = meta.get("last_published")
        if last_published is not None and not isinstance(last_published, int):
            raise TypeError(f"last_published is {last_published!r}, not a version number")
        cutoff = meta.get("cutoff")
        if cutoff is not None and type(cutoff) is not int:
            raise TypeError(f"cutoff is {cutoff!r}, not Unix seconds")
        try:
            self.source.seek(positions)
        except ValueError as err:
            raise RestoreRefusedError(
                f"checkpoint {ckpt.path} has source positions {positions} that this source "
                f"({source_identity(self.cfg)!r}) cannot resume from ({err}). Was it written by "
                "another source? Give this run its own state (set run_name, or --checkpoint-dir "
                "and --run-dir), or pass --no-resume to start from scratch"
            ) from err
        self.model, self.optimizer = model, optimizer
        self.store, self.vocab, self.progressive = store, vocab, progressive
        self.builder = self._make_builder()
        self.counters, self.rejected = counters, rejected
        self.last_published = last_published
        self.cutoff = cutoff
        if cutoff is not None and isinstance(self.source, TimeSeekable):
            self.source.start_at(cutoff)  # partitions without a position start at T
        self._restored_positions = dict(positions)
        self._chain = _Chain(
            seq=ckpt.seq,
            deltas=len(ckpt.parents),
            full_bytes=_size(ckpt.root),
            delta_bytes=sum(_size(c) for c in ckpt.deltas),
            row_tensors=rowdelta.present(nets),
        )
        self.resumed_from = str(ckpt.path)
        log.info(
            "resumed from %s: %d events trained, positions %s",
            ckpt.path,
            self.counters["events_trained"],
            positions,
        )

    # ---------------------------------------------------------------- loop
    def run(self, stop: threading.Event | None = None) -> dict[str, Any]:
        """Train until the source is exhausted, a bound is hit or ``stop`` is set."""
        stop = stop or threading.Event()
        self._metrics_log = MetricsLog(self.cfg.metrics_log_path)
        started = time.monotonic()
        start_events = self.counters["events_seen"]
        self.run_start = self._run_start(start_events)
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
        if self.registry is not None and self.cfg.registry.enabled:
            self._expected_latest = self.registry.latest_version()
            self._adopt_published()
        try:
            self._loop(stop, started, start_events)
            self._finish()
            summary = self.summary(started, start_events)  # a trainer group's ranks all take part
            if self._fatal is not None:
                raise self._fatal
            return summary
        finally:
            self._metrics_log.close()
            self._metrics_log = None

    def _loop(self, stop: threading.Event, started: float, start_events: int) -> None:
        """Poll, train, log, checkpoint and publish until a reason to stop."""
        cfg = self.cfg
        assert self._metrics_log is not None
        last_log = started
        logged_targets = self.counters["targets"]
        while not stop.is_set() and self._fatal is None:
            if self._bound_reached(started):
                break
            records = self._gather()
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
                self._log_progress(started, start_events)
                last_log = now
                logged_targets = self.counters["targets"]
            elif self.counters["targets"] - logged_targets >= cfg.eval.window:
                # A metrics-log point per window of targets, so short runs plot too.
                self._metrics_log.write(self.snapshot(started, start_events))
                logged_targets = self.counters["targets"]
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

    def _run_start(self, start_events: int) -> int:
        """Where this run's ``train.max_events`` count begins: here, when ``run`` starts (a
        trainer group restarted by torchrun continues its launch's count)."""
        return start_events

    def run_events(self) -> int:
        """Input events read in this run (what ``train.max_events`` bounds)."""
        assert self.run_start is not None  # set when ``run`` starts
        return self.counters["events_seen"] - self.run_start

    def _gather(self) -> Records:
        """Poll until about one micro-batch of events (or the bound) is reached."""
        cfg = self.cfg
        target = cfg.train.batch_events
        timeout = cfg.source.poll_timeout_s
        if cfg.train.max_events is not None:
            target = min(target, cfg.train.max_events - self.run_events())
            if self._events_per_record is not None and self._events_per_record > 1:
                # Records of many events (Arrow) are never split, and their sizes vary (a
                # producer splits its batches by partition), so a poll of several may go far
                # past the bound: a bounded run takes one per poll and ends less than one
                # record past max_events.
                return gather(self.source, 1, 1.0, 1, timeout)
        return gather(
            self.source, target, self._events_per_record, cfg.source.poll_max_records, timeout
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
            self._events_per_record = max(1.0, n_events / len(records))
        if self.cutoff is not None:
            result = self._after_cutoff(result, Records.of(records))
        return result

    def _after_cutoff(self, result: DecodeResult, records: Records) -> DecodeResult:
        """Drop what the backfill accounted for: events before the cut-off, and rejects of
        records stamped before it (a record without a timestamp is kept)."""
        assert self.cutoff is not None
        keep = result.events.timestamp >= self.cutoff
        rejects = result.rejects
        if rejects:
            stamp = dict(
                zip(
                    zip(records.partitions, records.offsets, strict=True),
                    records.times,
                    strict=True,
                )
            )
            cutoff_ms = self.cutoff * 1000
            rejects = [
                r
                for r in rejects
                if (t := stamp.get((r.partition, r.offset))) is None or t >= cutoff_ms
            ]
        skipped = int((~keep).sum()) + len(result.rejects) - len(rejects)
        if not skipped:
            return result
        self.counters["before_cutoff"] += skipped
        return DecodeResult(result.events.take(keep), rejects)

    def process_decoded(self, result: DecodeResult, n_records: int) -> list[StepResult]:
        """Count and dead-letter a decoded poll of ``n_records`` records, then train on its
        events micro-batch by micro-batch."""
        threads.step()  # the default thread count follows the cores other processes leave
        for reject in result.rejects:
            self.dead_letters.send(reject)
        decode_rejects = Counter(str(r.reason) for r in result.rejects)
        n_events = len(result.events) + len(result.rejects)
        self.counters["records"] += n_records
        if n_records:
            # positions moved, even if no event was valid; a group's rank also comes here
            # every round without records, which must not make an idle group checkpoint
            self._unsaved_records = True
            if self._first_record_at is None:
                self._first_record_at = time.monotonic()
        self.counters["events_seen"] += n_events
        self.counters["events_valid"] += len(result.events)
        self._since_checkpoint += n_events
        self._since_publish += n_events
        self.rejected.update(decode_rejects)
        self.metrics.add_rejects(decode_rejects)
        self.metrics.events.inc(len(result.events))
        size = self.cfg.train.batch_events
        return [
            self.train_on(result.events.take(slice(lo, lo + size)))
            for lo in range(0, len(result.events), size)
        ]

    def train_on(self, events: EventBatch) -> StepResult:
        """One micro-batch: vet, map, assemble, score (test), train, store."""
        started = time.perf_counter()
        prepared = self.builder.build(events)
        if prepared.assigned_rows.size:
            self._reset_rows(prepared.assigned_rows)
        micro = prepared.micro
        ranks = np.empty(0, dtype=np.int64)
        built = time.perf_counter()
        if micro.num_targets and self.scoring:
            ranks = self._test_then_train(micro.batch)
        elif self.scoring:
            self._step_without_targets()
        trained = time.perf_counter()
        self.builder.commit(prepared)
        self.step_seconds["store_batch"] += (built - started) + (time.perf_counter() - trained)
        store_rejects = prepared.plan.reject_counts()
        self.rejected.update(store_rejects)
        self.metrics.add_rejects(store_rejects)
        c = self.counters
        c["events_trained"] += prepared.num_accepted
        c["targets"] += micro.num_targets
        c["context_only"] += micro.context_only
        c["unknown_item"] += micro.unknown_item
        c["steps"] += 1
        self.metrics.trained.inc(prepared.num_accepted)
        self.metrics.targets.inc(micro.num_targets)
        targets = prepared.accepted[micro.target_event]
        audit = self.cfg.observability.targets_log
        if audit is not None and events.event_id is not None:
            with open(audit, "a", encoding="utf-8") as file:  # appended as scored
                file.writelines(f"{e}\n" for e in events.event_id[targets].tolist())
        target_times = events.timestamp[targets]
        return StepResult(prepared.num_accepted, ranks, target_times, self.last_loss)

    def _test_then_train(self, batch: Any) -> np.ndarray:
        """Rank every target (test), then take one optimizer step on them (train)."""
        clock = time.perf_counter()
        batch = batch.to(self.device)
        learn = self.cfg.train.learn
        live = torch.from_numpy(self.vocab.live_rows()).to(self.device)
        if self._separate_eval or not learn:
            # Dropout would perturb the test scores: score in eval mode, without gradients.
            self.model.eval()
            with torch.no_grad():
                states = self.model.encode(batch)
                targets = select_targets(batch, states)
                ranks = ranks_over_catalogue(
                    targets.queries, targets.items, self.model.item_rows(), live
                )
            self.model.train()
            clock = self._lap("evaluate", clock)
        if learn:
            states = self.model.encode(batch)
            targets = select_targets(batch, states)
            # rows are normalised as they are looked up: O(rows touched), not O(capacity)
            table = self.model.item_rows()
            if not self._separate_eval:
                clock = self._lap("forward_backward", clock)
                with torch.no_grad():
                    ranks = ranks_over_catalogue(
                        targets.queries.detach(), targets.items, table, live
                    )
                clock = self._lap("evaluate", clock)
            loss = sampled_softmax_loss(
                targets.queries,
                targets.items,
                table,
                num_negatives=self.cfg.train.num_negatives,
                temperature=self.cfg.train.temperature,
                candidate_rows=live,
                generator=self.generator,
                per_position=self.cfg.train.per_position_negatives,
            )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clock = self._lap("forward_backward", clock)
            self._reduce_gradients(int(targets.items.numel()))
            self.optimizer.step()
            clock = self._lap("optimizer", clock)
            self.last_loss = float(loss.detach())
            self.metrics.loss.set(self.last_loss)
        out = ranks.cpu().numpy()
        self.progressive.update(out)
        return out

    def _reset_rows(self, rows: np.ndarray) -> None:
        """Fresh embeddings and optimizer state for rows handed to new items."""
        reset_item_rows(
            self.model.reset_item_rows, self.optimizer, self.model.item_emb.weight, rows
        )

    def _reduce_gradients(self, targets: int) -> None:
        """Hook between backward and the optimizer step (a trainer group sums every rank's
        gradients here); one process has nothing to do."""

    def _step_without_targets(self) -> None:
        """Hook for a micro-batch without targets (a trainer group's rank still takes part
        in the group's step); one process has nothing to do."""

    def _lap(self, part: str, since: float) -> float:
        now = time.perf_counter()
        self.step_seconds[part] += now - since
        return now

    # ---------------------------------------------- checkpoints and registry
    def _adopt_published(self) -> None:
        """Take ``latest`` as this state's version when it was published from exactly the
        restored checkpoint (the process died after that publish, before the next
        checkpoint could record it), so the next version names it as its parent."""
        latest = self._expected_latest
        if self._restored_positions is None or latest in (None, self.last_published):
            return
        assert self.registry is not None and latest is not None
        try:
            manifest = self.registry.show(latest)
        except Exception as err:  # an unreadable version is simply not ours to adopt
            log.warning("cannot read latest version %s: %s", latest, err)
            return
        if manifest.source_positions == self._restored_positions:
            log.info("version %d was published from this checkpoint's state: its parent", latest)
            self.last_published = latest

    def _maybe_publish_and_checkpoint(self) -> None:
        now = time.monotonic()
        ck, reg = self.cfg.checkpoint, self.cfg.registry
        # Time-based saves only when something changed since the last one: an idle
        # stream must not write identical checkpoints and versions every period.
        publish_due = (
            self.registry is not None
            and reg.enabled
            and self._since_publish > 0
            and (self._since_publish >= reg.every_events or now - self._last_publish >= reg.every_s)
        )
        # Checkpoint first, then publish that same state: a crash in between can then only
        # replay from a checkpoint at or past every published version's positions, so the
        # versions' positions never go backwards (``_adopt_published`` relinks the parent).
        if self.checkpoints is not None and (
            publish_due
            or self._since_checkpoint >= ck.every_events
            or (self._unsaved_records and now - self._last_checkpoint >= ck.every_s)
        ):
            self.checkpoint()
        if publish_due:
            self.publish()
        self.metrics.checkpoint_age.set(time.monotonic() - self._last_checkpoint)

    def _finish(self) -> None:
        reg = self.cfg.registry
        unpublished = self._since_publish > 0 or self.last_published is None
        publishing = self.registry is not None and reg.enabled and self._fatal is None
        if self.checkpoints is not None:
            self.checkpoint()
        if publishing and reg.publish_on_exit and unpublished:
            self.publish()

    def checkpoint(self, *, full: bool = False) -> Path:
        """Save model, optimizer, vocabulary, store, metrics and positions atomically.

        A delta on the previous checkpoint (``pipeline.stream.rowdelta``: only the item rows changed
        since) unless ``full``, the chain has ``checkpoint.full_every - 1`` deltas, its deltas
        together outgrow half the full checkpoint, or the item table is trained densely.
        """
        assert self.checkpoints is not None
        self.dead_letters.flush()  # dead letters of these events are durable first
        positions = self.source.positions()
        nets = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        parent = None if full else self._delta_parent(nets)
        if parent is None:
            # Streamed to disk: a full table or store is never serialised in memory.
            state: dict[str, Any] = {name: tensor_writer(part) for name, part in nets.items()}
            state["store"] = self.store.write_snapshot
        else:
            assert isinstance(self.optimizer, RowSparseAdam)
            rest, changed = rowdelta.split(nets, self.optimizer.changed_rows())
            state = {name: state_to_bytes(part) for name, part in rest.items()}
            state["item_rows"] = state_to_bytes(changed)
            state["store_delta"] = self.store.delta_snapshot()  # users written since
        state |= {
            "vocab": self.vocab.snapshot(),
            "progressive": self.progressive.snapshot(),
        }
        meta = {
            **self._stream_meta(positions),
            **self._model_meta(),
            "delta": parent is not None,
        }
        path = self.checkpoints.save(state, meta, parent=parent)
        size = sum(f.stat().st_size for f in path.iterdir())
        chain = self._chain
        if parent is None or chain is None:
            chain = _Chain(seq_of(path), 0, size, 0, rowdelta.present(nets))
        else:
            chain = _Chain(
                seq_of(path), chain.deltas + 1, chain.full_bytes, chain.delta_bytes + size,
                chain.row_tensors,
            )  # fmt: skip
        self._chain = chain
        self._saved(positions)
        log.debug("checkpoint %s at %s", path, positions)
        return path

    def _stream_meta(self, positions: dict[str, int]) -> dict[str, Any]:
        """What a checkpoint records of the stream this process read: where it is, what it
        counted, its event time and which source it was."""
        return {
            "source_positions": positions,
            "counters": dict(self.counters),
            "rejected": dict(self.rejected),
            "watermark": self.store.watermark,
            "source": source_identity(self.cfg),
        }

    def _model_meta(self) -> dict[str, Any]:
        """What a checkpoint records of the model: its settings, lineage and cut-off."""
        return {
            "last_published": self.last_published,
            "shape_config": shape_config(self.cfg),
            "config": self.cfg.model_dump(mode="json"),
            "cutoff": self.cutoff,
        }

    def _saved(self, positions: dict[str, int]) -> None:
        """After a checkpoint of ``positions``: nothing is changed since, offsets are
        committed (lag monitoring only), the checkpoint clocks restart."""
        if isinstance(self.optimizer, RowSparseAdam):
            self.optimizer.clear_changed()
        self.store.clear_changed()
        self.source.commit(positions)
        self._since_checkpoint = 0
        self._unsaved_records = False
        self._last_checkpoint = time.monotonic()
        self.metrics.checkpoint_time.set(time.time())

    def _delta_parent(self, nets: Mapping[str, Any]) -> int | None:
        """The checkpoint the next one can be a delta on, or None: it must be full."""
        chain = self._chain
        if (
            chain is None  # nothing of this state saved yet
            or not isinstance(self.optimizer, RowSparseAdam)  # dense Adam moves every row
            or chain.deltas + 1 >= self.cfg.checkpoint.full_every
            or chain.delta_bytes * 2 > chain.full_bytes  # restore would read too much
            or rowdelta.present(nets) != chain.row_tensors  # e.g. Adam state appeared
        ):
            return None
        return chain.seq

    def publish(self) -> int | None:
        """Publish weights, vocabulary and config with positions, watermark and metrics.

        Returns the new version, or None when another writer moved ``latest`` since this
        trainer last looked: then nothing is published, the run stops after a final
        checkpoint and ``run`` raises the ``ConcurrentPublishError``.
        """
        assert self.registry is not None
        hstu = asdict(self.model.cfg)
        try:
            manifest = self.registry.publish(
                {
                    MODEL_FILE: state_to_bytes(self.model.state_dict()),
                    VOCAB_FILE: self.vocab.snapshot(),
                },
                parent=self.last_published,
                source_positions=self.published_positions(),
                watermark=None if self.store.watermark < 0 else self.store.watermark,
                metrics=self.registry_metrics(),
                config={
                    "model": "hstu",
                    "hstu": hstu,
                    "trainer": self.cfg.model_dump(mode="json"),
                },
                expect_latest=self._expected_latest,
            )
        except ConcurrentPublishError as err:
            log.error("%s; stopping after a final checkpoint", err)
            self._fatal = err
            return None
        self._expected_latest = manifest.version
        self.last_published = manifest.version
        self.published.append(manifest.version)
        self._since_publish = 0
        self._last_publish = time.monotonic()
        self.metrics.published.set(manifest.version)
        log.info("published version %d", manifest.version)
        return manifest.version

    def published_positions(self) -> dict[str, int]:
        """The source positions a published version records (a group: every rank's)."""
        return self.source.positions()

    def registry_metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, value in self.progressive.windowed().items():
            out[f"{name}_window"] = value
        for name, value in self.progressive.cumulative().items():
            out[f"{name}_cumulative"] = value
        out["events_trained"] = float(self.counters["events_trained"])
        out["targets"] = float(self.counters["targets"])
        out["loss"] = self.last_loss
        return {k: float(v) for k, v in out.items() if math.isfinite(v)}

    # ------------------------------------------------------------ reporting
    def snapshot(self, started: float, start_events: int) -> dict[str, Any]:
        elapsed = max(1e-9, time.monotonic() - started)
        self.metrics.store_users.set(self.store.num_users)
        self.metrics.store_events.set(self.store.num_events)
        self.metrics.vocab_size.set(len(self.vocab))
        window = self.progressive.windowed()
        self.metrics.set_window(window)
        done = self.counters["events_seen"] - start_events  # by this process
        rate = done / elapsed
        self.metrics.rate.set(rate)
        if self.store.watermark > 0:
            self.metrics.watermark.set(self.store.watermark)
        dead_letters = self.dead_letters.stats()
        for kind, n in dead_letters.items():
            self.metrics.dead_letters.labels(kind=kind).set(n)
        return {
            "time": time.time(),
            "elapsed_s": elapsed,
            "events_seen": self.counters["events_seen"],
            # by this run (a restarted group rank's began earlier); outside ``run``: this process's
            "run_events": done if self.run_start is None else self.run_events(),
            "events_trained": self.counters["events_trained"],
            "targets": self.counters["targets"],
            "events_per_s": rate,
            "loss": self.last_loss,
            "window": window,
            "cumulative": self.progressive.cumulative(),
            "rejected": dict(self.rejected),
            "dead_letters": dead_letters,
            "store_users": self.store.num_users,
            "vocab_size": len(self.vocab),
            "watermark": self.store.watermark,
            "published_version": self.last_published,
        }

    def _summary_extra(self) -> dict[str, Any]:
        """More entries for the summary (a trainer group adds the group's totals)."""
        return {}

    def _log_progress(self, started: float, start_events: int) -> None:
        snap = self.snapshot(started, start_events)
        log.info(progress_line(snap, self._run_total))
        if self._metrics_log is not None:
            self._metrics_log.write(snap)

    def summary(self, started: float, start_events: int) -> dict[str, Any]:
        """Final metrics, counters and published versions (also written to run_dir)."""
        snap = self.snapshot(started, start_events)
        out = {
            "events_seen": snap["events_seen"],  # since the first checkpoint
            "run_events": snap["run_events"],  # read by this run (what max_events bounds)
            "events_valid": self.counters["events_valid"],
            "events_trained": self.counters["events_trained"],
            "targets": self.counters["targets"],
            "steps": self.counters["steps"],  # micro-batches (optimizer steps when learning)
            "context_only": self.counters["context_only"],
            "unknown_item": self.counters["unknown_item"],
            "rejected": dict(self.rejected),
            "dead_letters": snap["dead_letters"],
            "progressive_window": snap["window"],
            "progressive_cumulative": snap["cumulative"],
            "events_per_s": snap["events_per_s"],
            "elapsed_s": snap["elapsed_s"],
            # seconds from this run's first record to the end (0: none came)
            "stream_s": 0.0
            if self._first_record_at is None
            else time.monotonic() - self._first_record_at,
            "published_versions": list(self.published),
            "resumed_from": self.resumed_from,
            "store_users": snap["store_users"],
            "vocab_size": snap["vocab_size"],
            **self._summary_extra(),
        }
        if self._metrics_log is not None:
            self._metrics_log.write(snap)
        run_dir = Path(self.cfg.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "summary.json").write_text(json.dumps(_jsonable(out), indent=2) + "\n")
        return out


def _load_nets(ckpt: Checkpoint) -> dict[str, Any]:
    """{"model": ..., "optimizer": ...} state dicts of ``ckpt``, its delta chain composed."""

    def nets(c: Checkpoint) -> dict[str, Any]:
        return {n: state_from_bytes(c.state[n], f"{c.path}/{n}") for n in ("model", "optimizer")}

    if not ckpt.parents:
        return nets(ckpt)
    deltas = []
    for c in ckpt.deltas:
        if "item_rows" not in c.state:
            raise ValueError(f"{c.path} is a delta checkpoint without item_rows")
        deltas.append((nets(c), state_from_bytes(c.state["item_rows"], f"{c.path}/item_rows")))
    return rowdelta.compose(nets(ckpt.root), deltas)


def checkpoint_store(ckpt: Checkpoint) -> SequenceStore:
    """The sequence store ``ckpt`` holds: its full checkpoint's, then each delta's users."""
    store = SequenceStore.restore(ckpt.root.state["store"])
    for c in ckpt.deltas:
        if "store_delta" not in c.state:
            raise ValueError(f"{c.path} is a delta checkpoint without store_delta")
        store.apply_delta(c.state["store_delta"])
    return store


def _size(ckpt: Checkpoint) -> int:
    return sum(len(blob) for blob in ckpt.state.values())


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value
