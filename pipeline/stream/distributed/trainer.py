"""A trainer group: N ranks under torchrun share one Kafka topic and one model.

Each rank owns a fixed share of the topic's partitions (partition p of every topic where
``p % world == rank``; ``SharedSource.assign_share``), hence the histories of those
partitions' users. Kafka's dynamic group assignment is not used: it moves partitions when a
member joins, leaves or stalls, and a rank's checkpointed store and positions would then
describe users it no longer owns. A static share keeps every checkpoint's meaning fixed.

The ranks run in lockstep, one round at a time:

1. each rank polls its partitions and decodes (rejects and counters are its own);
2. the ranks exchange small flags (an all-gather): how many micro-batches each has, stop
   requests, events since the last checkpoint. Everyone takes the largest number of
   micro-batches; a rank with fewer (or none: an idle partition) takes empty steps, so no
   rank stalls or leaves the others behind;
3. per micro-batch, the vocabulary decision is the group's: every rank gathers the accepted
   events' items and times of all ranks and observes them in rank order, so admissions,
   row assignments and evictions are the same everywhere; reassigned rows are
   re-initialised from a seed the ranks share. Each rank keeps its own slice of the rows;
4. test-then-train on the rank's own targets, then gradients are summed over the ranks,
   weighted by each rank's target count (the global mean over all targets of the step): the
   dense parameters through one all-reduce, the item table's sparse rows through an
   all-gather of (rows, values). Every rank applies the same gradient to the same
   weights, so the item table is replicated (not sharded): at this model's sizes a row
   exchange costs O(rows touched), and every rank can rank the whole catalogue locally;
5. checkpoint and publish decisions follow from the exchanged flags, so every rank takes
   them at the same round (``pipeline.stream.distributed.checkpoints``: one part per rank, the
   shared part by rank 0, a marker after a barrier). Rank 0 alone publishes.

The group's watermark (the largest accepted event time of any rank) ages every rank's store
and the shared vocabulary, as one process's watermark would.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from pipeline.events import EventBatch
from pipeline.events.batch import concat_keys
from pipeline.events.records import Records
from pipeline.sources.base import SharedSource, Source
from pipeline.state.vocab import Observation
from pipeline.stream import ranking
from pipeline.stream.batching import BatchBuilder
from pipeline.stream.checkpoint import CheckpointError, seq_of, tensor_writer
from pipeline.stream.config import TrainerConfig
from pipeline.stream.deadletter import DeadLetterSink
from pipeline.stream.distributed.checkpoints import SHARED, GroupCheckpoints, group_meta
from pipeline.stream.distributed.group import Group
from pipeline.stream.observability import TrainerMetrics
from pipeline.stream.persistence import (
    RestoreRefusedError,
    check_compatible,
    metric_blobs,
    model_meta,
    state_dicts,
    stream_meta,
)
from pipeline.stream.state import TrainerState
from pipeline.stream.step import Step, StepResult
from pipeline.stream.trainer import OnlineTrainer

log = logging.getLogger(__name__)

_NO_TIME = np.iinfo(np.int64).min


def torchrun_run() -> tuple[str | None, int]:
    """torchrun's id of this launch (the same across its restarts of the group) and how many
    restarts came before this start (0 outside torchrun)."""
    return os.environ.get("TORCHELASTIC_RUN_ID"), int(
        os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    )


def weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    """A digest of a state dict's bytes (every parameter and buffer): equal on every rank of
    one model."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class _GroupBatchBuilder(BatchBuilder):
    """``BatchBuilder`` whose vocabulary decisions are the group's (module docstring, 3)."""

    def __init__(self, state: TrainerState, step: GroupStep) -> None:
        super().__init__(
            state.store, state.vocab, step.cfg.max_targets, step.positives, step.ranking_only
        )
        self.state = state
        self.step = step

    def observe(self, items: np.ndarray, timestamps: np.ndarray) -> Observation:
        step, group = self.step, self.step.group
        clock = time.perf_counter()
        gathered = group.all_gather((items, timestamps))
        self.state.lap("communicate_vocabulary", clock)
        sizes = [len(ts) for _, ts in gathered]
        lo = sum(sizes[: group.rank])
        all_ts = np.concatenate([ts for _, ts in gathered]).astype(np.int64, copy=False)
        # This rank's store ages by the group's event time, as one trainer's store would.
        self.store.watermark = max(self.store.watermark, step.group_watermark)
        obs = self.vocab.observe(concat_keys([k for k, _ in gathered]), all_ts)
        if all_ts.size:
            step.group_watermark = max(step.group_watermark, int(all_ts.max()))
        return Observation(obs.rows[lo : lo + len(timestamps)], obs.assigned, obs.admitted)

    def expiry_time(self) -> int:
        self.store.watermark = max(self.store.watermark, self.step.group_watermark)
        return self.store.watermark


class GroupStep(Step):
    """A rank's step: the group's vocabulary decisions, shared re-initialisation of
    reassigned rows, and gradients summed over the ranks (module docstring, 3 and 4).

    Attributes:
        group: the joined process group.
        group_watermark: the largest accepted event time of any rank.
    """

    def __init__(self, cfg: TrainerConfig, metrics: TrainerMetrics, group: Group) -> None:
        super().__init__(cfg, metrics)
        self.group = group
        self.group_watermark = _NO_TIME

    def make_builder(self, state: TrainerState) -> BatchBuilder:
        return _GroupBatchBuilder(state, self)

    def reset_rows(self, state: TrainerState, rows: np.ndarray) -> None:
        """Every rank re-initialises the same rows to the same values: a seed they share."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            # every rank has taken the same steps (counters["steps"], empty ones included)
            torch.manual_seed(self.cfg.train.seed * 7919 + state.counters["steps"])
            super().reset_rows(state, rows)

    def step_without_targets(self, state: TrainerState) -> None:
        if not self.cfg.train.learn:
            return
        state.optimizer.zero_grad(set_to_none=True)
        if self.reduce_gradients(state, 0):
            state.optimizer.step()

    def reduce_gradients(self, state: TrainerState, targets: int) -> int:
        """Sum every rank's gradient weighted by its targets; returns the group's targets
        (0: nobody had any, take no step)."""
        clock = time.perf_counter()
        model = state.model
        table = model.item_emb.weight
        sparse_table = bool(model.item_emb.sparse)
        dense = [p for p in model.parameters() if not (sparse_table and p is table)]
        flat = torch.cat(
            [
                (p.grad * targets if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                for p in dense
            ]
            + [torch.tensor([float(targets)], device=table.device)]
        )
        self.group.sum_(flat)
        total = float(flat[-1])
        if total > 0:
            at = 0
            for p in dense:
                p.grad = (flat[at : at + p.numel()] / total).view_as(p).clone()
                at += p.numel()
            if sparse_table:
                table.grad = _sum_table_rows(self.group, table, targets, total)
        state.lap("communicate_gradients", clock)
        return int(total)


def _sum_table_rows(group: Group, table: torch.Tensor, targets: int, total: float) -> torch.Tensor:
    """The item table's sparse gradient summed over the ranks (rows, values gathered)."""
    grad = table.grad
    if grad is None:
        rows = torch.empty(0, dtype=torch.int64)
        values = torch.empty(0, table.shape[1])
    else:
        grad = grad.coalesce()
        rows, values = grad.indices()[0].cpu(), (grad.values() * targets).cpu()
    gathered = group.all_gather((rows, values))
    summed = torch.sparse_coo_tensor(
        torch.cat([r for r, _ in gathered]).unsqueeze(0),
        torch.cat([v for _, v in gathered]),
        table.shape,
        check_invariants=False,  # rows come from coalesced gradients of this table
    ).coalesce()
    return (summed / total).to(table.device)


class GroupTrainer(OnlineTrainer):
    """One rank of a trainer group; see the module docstring.

    Its step is a ``GroupStep``; it overrides the loop (rounds in lockstep), the end of a
    run, restore and checkpoint (``pipeline.stream.distributed.checkpoints``), and publishes
    through the base trainer's persistence on rank 0.

    Args:
        cfg: this rank's configuration (``rank_config``).
        source: a ``SharedSource`` (Kafka); this rank's share is assigned here.
        dead_letters: this rank's dead-letter sink.
        group: the joined process group.
        checkpoints: the group's checkpoints seen from this rank (None: never checkpoint).
        registry: where rank 0 publishes (ignored on the other ranks).
        metrics: this rank's Prometheus metrics.
    """

    def __init__(
        self,
        cfg: TrainerConfig,
        source: Source,
        dead_letters: DeadLetterSink,
        group: Group,
        checkpoints: GroupCheckpoints | None = None,
        registry: Any | None = None,
        metrics: TrainerMetrics | None = None,
    ) -> None:
        if not isinstance(source, SharedSource):
            raise ValueError(
                f"source.kind={cfg.source.kind} cannot be split between ranks; a trainer group "
                "needs a partitioned source (--source kafka)"
            )
        self.group = group
        super().__init__(
            cfg,
            source,
            dead_letters,
            checkpoints=None,
            registry=registry if group.rank == 0 else None,
            metrics=metrics,
        )
        self.group_step = GroupStep(cfg, self.metrics, group)
        self.step = self.group_step
        self.group_checkpoints = checkpoints
        self._round_steps = 0  # micro-batches every rank takes this round
        self._next_n = 1 if checkpoints is None else checkpoints.next_n()
        self._group_positions: dict[str, int] = {}
        self._continued_start: int | None = None  # restore: this launch's run_start
        # The weights start equal (same seed; then rank 0's are broadcast); negatives and
        # dropout differ per rank, like the data.
        seed = cfg.train.seed + 1_000_003 * group.rank
        torch.manual_seed(seed)
        self.state.generator = torch.Generator().manual_seed(seed)
        self.owned = source.assign_share(group.rank, group.world)
        log.info(
            "rank %d of %d (pid %d) owns partitions %s",
            group.rank,
            group.world,
            os.getpid(),
            self.owned,
        )

    # ------------------------------------------------------------- restore
    def restore(self) -> bool:
        """Load the newest group checkpoint whose parts all load, on every rank; False when
        there is none (a fresh group). A checkpoint of other settings stops every rank."""
        if self.group_checkpoints is None:
            return False
        markers = {m.n: m for m in self.group_checkpoints.markers()}
        candidates = self.group.broadcast(sorted(markers, reverse=True))
        problems = []
        for n in candidates:
            status = ("ok", "")
            try:
                if n not in markers:
                    raise CheckpointError(f"group checkpoint {n} has no readable marker here")
                ckpt = self.group_checkpoints.load(markers[n])
                check_compatible(self.cfg, ckpt)
                self.state = self.persistence.apply(ckpt, self.state)
                run_start = self._continued_run_start(ckpt.meta.get("run"))
                watermark = ckpt.meta["group"].get("watermark")
                if type(watermark) is not int:
                    raise TypeError(f"{ckpt.path}: the group's watermark is not an integer")
            except RestoreRefusedError as err:
                status = ("refused", str(err))
            except Exception as err:  # any damage: every rank moves on to an older one
                status = ("failed", f"group checkpoint {n}: {err}")
            statuses = self.group.all_gather(status)
            refused = [text for kind, text in statuses if kind == "refused"]
            if refused:
                raise RestoreRefusedError(refused[0])
            failed = [text for kind, text in statuses if kind == "failed"]
            if not failed:
                self.group_step.group_watermark = watermark
                self._continued_start = run_start
                self._next_n = n + 1
                positions = self.group.all_gather(self.persistence.restored_positions or {})
                self._group_positions = {k: v for p in positions for k, v in p.items()}
                if self.group.rank == 0:  # compared with the registry's latest version
                    self.persistence.restored_positions = dict(self._group_positions)
                log.info("rank %d resumed group checkpoint %d", self.group.rank, n)
                return True
            problems += failed
            log.warning("cannot restore group checkpoint %d (%s); trying an older one", n, failed)
        if candidates:
            raise CheckpointError(
                f"no group checkpoint in {self.group_checkpoints.directory} restores "
                f"({'; '.join(problems)}): move the directory aside, or start fresh with "
                "--no-resume"
            )
        return False

    def _continued_run_start(self, saved: Any) -> int | None:
        """Where this run's ``train.max_events`` count began, when torchrun restarted the
        group and the checkpoint is from this same launch (its run id); None: this start
        begins the run. Without it a restarted bounded group would count from zero again and
        wait for events that never come."""
        run_id, restarts = torchrun_run()
        if restarts == 0 or not isinstance(saved, dict) or saved.get("id") != run_id:
            return None
        start = saved.get("start_events")
        if type(start) is not int or not 0 <= start <= self.state.counters["events_seen"]:
            raise TypeError(f"run.start_events is {start!r}, not a count of events seen")
        return start

    def run_start_at(self, start_events: int) -> int:
        return start_events if self._continued_start is None else self._continued_start

    def start_weights_equal(self) -> None:
        """Rank 0's fresh weights on every rank (a restored group loaded the same ones)."""
        self.group.broadcast_tensors_(list(self.state.model.state_dict().values()))

    # ---------------------------------------------------------------- loop
    def loop(self, stop: threading.Event, started: float, start_events: int) -> None:
        """Rounds in lockstep with the other ranks until any rank is asked to stop or the
        group reaches a bound (``run`` then takes a last group checkpoint and publishes)."""
        last_log = started
        while True:
            records = self.gather()
            result = self.decode(records)
            flags = self._exchange_flags(stop, records, result, started)
            self._round_steps = max(f["steps"] for f in flags)
            self.process_decoded(result, len(records))
            now = time.monotonic()
            if now - last_log >= self.cfg.observability.log_every_s:
                self.log_progress(started, start_events)
                last_log = now
            if self._stop_now(flags):
                return
            self._checkpoint_and_publish(flags)

    def _exchange_flags(
        self,
        stop: threading.Event,
        records: Records,
        result: Any,
        started: float,
    ) -> list[dict[str, Any]]:
        """Every rank's flags for this round (one all-gather)."""
        now = time.monotonic()
        n_events = len(result.events) + len(result.rejects)
        ck, reg, train = self.cfg.checkpoint, self.cfg.registry, self.cfg.train
        due = self.schedule
        mine = {
            "steps": math.ceil(len(result.events) / train.batch_events),
            "stop": stop.is_set()
            or self.persistence.fatal is not None
            or (train.duration_s is not None and now - started >= train.duration_s),
            "events": self.run_events() + n_events,
            "since_checkpoint": due.since_checkpoint + n_events,
            "unsaved": due.unsaved_records or bool(records),
            "checkpoint_clock": now - due.last_checkpoint >= ck.every_s,
            "since_publish": due.since_publish + n_events,
            "publish_clock": now - due.last_publish >= reg.every_s,
            "exhausted": self.source.exhausted() and not records,
        }
        clock = time.perf_counter()
        flags = self.group.all_gather(mine)
        self.state.lap("communicate_flags", clock)
        return flags

    def _stop_now(self, flags: list[dict[str, Any]]) -> bool:
        max_events = self.cfg.train.max_events
        return (
            any(f["stop"] for f in flags)
            or all(f["exhausted"] for f in flags)
            or (max_events is not None and sum(f["events"] for f in flags) >= max_events)
        )

    def _checkpoint_and_publish(self, flags: list[dict[str, Any]]) -> None:
        ck, reg = self.cfg.checkpoint, self.cfg.registry
        lead = flags[0]  # rank 0's clock times checkpoints and publishing for everyone
        publish_due = reg.enabled and (
            sum(f["since_publish"] for f in flags) > 0
            and (
                sum(f["since_publish"] for f in flags) >= reg.every_events or lead["publish_clock"]
            )
        )
        checkpoint_due = (
            publish_due
            or sum(f["since_checkpoint"] for f in flags) >= ck.every_events
            or (any(f["unsaved"] for f in flags) and lead["checkpoint_clock"])
        )
        if self.group_checkpoints is not None and checkpoint_due:
            self.checkpoint()
        if publish_due:
            self._publish_on_lead()

    def _publish_on_lead(self) -> None:
        if self.persistence.registry is not None:
            self.publish()
        else:  # the other ranks restart the publish clock with rank 0
            self.schedule.published()

    def finish(self) -> None:
        if self.group_checkpoints is not None:
            self.checkpoint()
        reg = self.cfg.registry
        unpublished = self.schedule.since_publish > 0 or self.state.last_published is None
        if reg.enabled and reg.publish_on_exit and unpublished and self.persistence.fatal is None:
            self._publish_on_lead()

    def process_decoded(self, result: Any, n_records: int) -> list[StepResult]:
        """This rank's micro-batches, then empty steps up to the round's count."""
        own = super().process_decoded(result, n_records)
        pad = self._round_steps - len(own)
        return own + [self.step.train_on(self.state, EventBatch.empty()) for _ in range(pad)]

    # ------------------------------------------------------ checkpoints, publish
    def checkpoint(self, *, full: bool = True) -> Any:
        """Group checkpoint: this rank's part, rank 0's shared part, then the marker."""
        assert self.group_checkpoints is not None
        store = self.group_checkpoints
        state = self.state
        n = self._next_n
        self.dead_letters.flush()
        positions = self.source.positions()
        digest = weights_digest(state.model.state_dict())
        own = store.own.save(
            {"store": state.store.write_snapshot, **metric_blobs(state)},
            {
                **stream_meta(self.cfg, state, positions),
                "group": group_meta(n, self.group.world, rank=self.group.rank),
                "weights_digest": digest,
                "run": {"id": torchrun_run()[0], "start_events": self.run_start},
            },
        )
        parts = {store.own_key: seq_of(own)}
        if self.group.rank == 0:
            nets = state_dicts(state)
            shared = store.shared.save(
                {
                    **{name: tensor_writer(part) for name, part in nets.items()},
                    "vocab": state.vocab.snapshot(),
                },
                {
                    **model_meta(self.cfg, state),
                    "group": group_meta(
                        n, self.group.world, watermark=self.group_step.group_watermark
                    ),
                },
            )
            parts[SHARED] = seq_of(shared)
        clock = time.perf_counter()
        everyone = self.group.all_gather((parts, positions, digest))
        # every part is on disk now; the ranks' weights must still be one model
        digests = [d for _, _, d in everyone]
        if len(set(digests)) != 1:
            raise RuntimeError(
                f"the ranks' weights diverged before group checkpoint {n} (digests {digests}); "
                "not marking it complete: the group restarts from the last complete one"
            )
        self._group_positions = {k: v for _, p, _ in everyone for k, v in p.items()}
        if self.group.rank == 0:
            store.write_marker(n, {k: v for p, _, _ in everyone for k, v in p.items()})
        self.group.barrier()  # the marker exists before any rank commits offsets
        state.lap("communicate_checkpoint", clock)
        self._next_n = n + 1
        self.persistence.saved(state, positions)
        self.schedule.checkpointed()
        return own

    def published_positions(self) -> dict[str, int]:
        return dict(self._group_positions)

    def summary_extra(self) -> dict[str, Any]:
        """The group's totals (every rank's targets), in every rank's summary."""
        own_ranking = self.state.ranking
        mine = (
            self.state.progressive.count,
            self.state.progressive.cumulative(),
            self.state.counters["events_seen"],
            None if own_ranking is None else own_ranking.sums(),
        )
        everyone = self.group.all_gather(mine)
        count = sum(c for c, _, _, _ in everyone)
        # ranking figures of the group: every rank's sums added, then the ratios taken
        group_ranking = (
            {}
            if own_ranking is None
            else ranking.figures(ranking.merged(own_ranking.tasks, [a for *_, a in everyone]))
        )
        key = f"ndcg@{self.cfg.eval.k}"
        return {
            "group": {
                "rank": self.group.rank,
                "world": self.group.world,
                "targets": count,
                "events_seen": sum(e for _, _, e, _ in everyone),
                f"progressive_cumulative_{key}": (
                    sum(c * m[key] for c, m, _, _ in everyone if c) / count if count else math.nan
                ),
                **({"ranking": group_ranking} if group_ranking else {}),
                # seconds in the group's collectives, by what they exchange
                "communicate_s": {
                    part: self.state.step_seconds[f"communicate_{part}"]
                    for part in ("flags", "vocabulary", "gradients", "checkpoint")
                },
                "group_steps": self.state.counters["steps"],
            }
        }
