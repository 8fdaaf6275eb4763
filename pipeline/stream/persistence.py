"""Saving and restoring one trainer's state: checkpoints and registry versions.

A checkpoint (``pipeline.stream.checkpoint``) holds model, optimizer, vocabulary, store,
progressive metrics, counters and the source positions of exactly that state; it is a delta
on the previous one (``pipeline.stream.rowdelta``: only the item rows and users changed since)
until the chain grows too long or too large. Restoring takes the newest checkpoint that
applies, after checking that it belongs to these settings and this source
(``RestoreRefusedError`` otherwise: the user's mistake, not damage).

A version published to the registry (``pipeline.stream.publishing``) carries the weights,
the vocabulary and the config with the positions, watermark and metrics of the state it was
published from. A publish names the ``latest`` this trainer last saw: when another writer
moved it, nothing is published and ``Persistence.fatal`` holds the ``ConcurrentPublishError``
(the loop stops after a final checkpoint instead of forking the lineage).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from model.hstu import RESEARCH_FORM
from model.optim import PUBLISHED, RowSparseAdam, is_row_sparse_state
from pipeline.sources.base import Source, TimeSeekable
from pipeline.state.store import SequenceStore
from pipeline.state.vocab import ItemVocabulary
from pipeline.stream import ranking, rowdelta
from pipeline.stream.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    seq_of,
    state_from_bytes,
    state_to_bytes,
    tensor_writer,
)
from pipeline.stream.config import HSTU_FORM_SETTINGS, TrainerConfig
from pipeline.stream.deadletter import DeadLetterSink
from pipeline.stream.observability import TrainerMetrics
from pipeline.stream.progressive import ProgressiveMetrics
from pipeline.stream.publishing import (
    MODEL_FILE,
    ROWS_FILE,
    VOCAB_FILE,
    ConcurrentPublishError,
    PublishError,
)
from pipeline.stream.state import TrainerState, new_model, shape_config, task_names

log = logging.getLogger(__name__)

# Model settings added after checkpoints existed, with the value those checkpoints were
# written with, so that an older checkpoint of the same shapes still restores.
# Model settings added after checkpoints were first written, with the value those had.
_LEGACY_MODEL_SETTINGS = {
    "kind": "hstu",
    "layer_norm": "affine",
    "init": "genrec",
    "action_inputs": False,
    "value_boundaries": None,
    "ranking_tasks": [],
    "ranking_hidden": [64],
}

# HSTU settings added later still: every earlier HSTU checkpoint had the research code's form.
_LEGACY_HSTU_SETTINGS = {name: RESEARCH_FORM[key] for name, key in HSTU_FORM_SETTINGS.items()}


class RestoreRefusedError(ValueError):
    """A checkpoint that is intact but belongs to other settings or another source."""


@dataclass(frozen=True)
class _Chain:
    """The newest checkpoint (or version) of this state, which the next delta builds on."""

    seq: int  # the checkpoint's sequence number, or the version
    deltas: int  # since the full one at its root
    full_bytes: int
    delta_bytes: int  # written by those deltas together
    row_tensors: frozenset[str]  # rowdelta.present() of the root: a delta must have the same

    def takes_delta(self, full_every: int, row_tensors: frozenset[str]) -> bool:
        """Whether the next one may be a delta on this chain, or must be full: every
        ``full_every``-th is, and so is one after deltas that together outgrew half the full
        one (a load would read too much), or with other row tensors (Adam state appeared)."""
        return (
            self.deltas + 1 < full_every
            and self.delta_bytes * 2 <= self.full_bytes
            and row_tensors == self.row_tensors
        )

    def then(self, seq: int, size: int) -> _Chain:
        """This chain after ``seq``, a delta of ``size`` bytes on it."""
        return replace(self, seq=seq, deltas=self.deltas + 1, delta_bytes=self.delta_bytes + size)


class Persistence:
    """Checkpoints and registry versions of one trainer's state; see the module docstring.

    Args:
        cfg: the configuration.
        source: the source whose positions a checkpoint records (seeked on restore).
        dead_letters: flushed before a checkpoint, so its events' dead letters are durable.
        checkpoints: checkpoint store (None: ``restore`` finds nothing).
        registry: where versions are published (None: ``publish`` must not be called).
        metrics: Prometheus metrics (checkpoint time, published version).
    """

    def __init__(
        self,
        cfg: TrainerConfig,
        source: Source,
        dead_letters: DeadLetterSink,
        checkpoints: CheckpointStore | None,
        registry: Any | None,
        metrics: TrainerMetrics,
    ) -> None:
        self.cfg = cfg
        self.source = source
        self.dead_letters = dead_letters
        self.checkpoints = checkpoints
        self.registry = registry
        self.metrics = metrics
        self.published: list[int] = []  # versions published by this process
        self.resumed_from: str | None = None  # the checkpoint restored
        self.restored_positions: dict[str, int] | None = None  # its source positions
        # The publish that failed because another writer moved ``latest`` (the run stops).
        self.fatal: ConcurrentPublishError | None = None
        # What this trainer last saw ``latest`` point to: a publish fails instead of forking
        # the lineage when another writer moved it meanwhile.
        self._expected_latest: int | None = None
        self._chain: _Chain | None = None
        # The newest version this process published, which the next delta version builds on.
        self._versions: _Chain | None = None

    # ------------------------------------------------------------- restore
    def restore(self, state: TrainerState) -> TrainerState | None:
        """The newest checkpoint that restores, as a state (the source seeked to its
        positions); None when there is none.

        A checkpoint that verifies but cannot be applied (bad content behind matching
        hashes, missing metadata) is skipped with a warning naming it, and the next older
        one is tried. A checkpoint of other settings or of another source is the user's
        mistake, not damage: that stops with what to do. ``CheckpointError`` when
        checkpoints exist but none restores.
        """
        if self.checkpoints is None:
            return None
        problems = []
        for ckpt in self.checkpoints.loadable():
            check_compatible(self.cfg, ckpt)
            try:
                restored = self.apply(ckpt, state)
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
            return restored
        if problems or self.checkpoints.sequences():
            raise CheckpointError(
                f"no checkpoint in {self.checkpoints.directory} can be restored"
                + (f" ({'; '.join(problems)})" if problems else " (all are damaged; see above)")
                + ": move the directory aside to keep it for inspection, or start fresh with "
                "--no-resume"
            )
        return None

    def apply(self, ckpt: Checkpoint, state: TrainerState) -> TrainerState:
        """``state`` rebuilt from ``ckpt`` (its generator, loss and timings kept), the source
        seeked to the checkpoint's positions; nothing changes unless it succeeds."""
        cfg, meta = self.cfg, ckpt.meta
        model, optimizer = new_model(cfg)
        nets = load_nets(ckpt)
        model.load_state_dict(nets["model"])
        optimizer_state = nets["optimizer"]
        written_sparse = is_row_sparse_state(optimizer_state)
        # DLRM always trains with dense Adam (pipeline.stream.state.new_model)
        if written_sparse != isinstance(optimizer, RowSparseAdam):
            raise RestoreRefusedError(
                f"checkpoint {ckpt.path} holds the optimizer state of train.sparse_embeddings="
                f"{str(written_sparse).lower()}; resume it with --set "
                f"train.sparse_embeddings={str(written_sparse).lower()}"
            )
        optimizer.load_state_dict(optimizer_state)
        store = checkpoint_store(ckpt)
        vocab = ItemVocabulary.restore(ckpt.state["vocab"])
        # The blobs carry their own sizes: they must fit the model and the settings.
        if vocab.capacity != cfg.vocab.capacity or store.max_len != cfg.store.max_len:
            raise ValueError(
                f"vocabulary capacity {vocab.capacity} / store max_len {store.max_len} do not "
                f"match the settings ({cfg.vocab.capacity} / {cfg.store.max_len})"
            )
        progressive = ProgressiveMetrics.restore(ckpt.state["progressive"])
        ranking_metrics = ranking.restore(task_names(cfg), ckpt.state.get("ranking"))
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
        restored = replace(
            state,
            model=model,
            optimizer=optimizer,
            store=store,
            vocab=vocab,
            progressive=progressive,
            ranking=ranking_metrics,
            counters=counters,
            rejected=rejected,
            last_published=last_published,
            cutoff=cutoff,
        )
        if cutoff is not None and isinstance(self.source, TimeSeekable):
            self.source.start_at(cutoff)  # partitions without a position start at T
        self.restored_positions = dict(positions)
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
            restored.counters["events_trained"],
            positions,
        )
        return restored

    # ---------------------------------------------------------- checkpoint
    def checkpoint(self, state: TrainerState, *, full: bool = False) -> Path:
        """Save model, optimizer, vocabulary, store, metrics and positions atomically.

        A delta on the previous checkpoint (``pipeline.stream.rowdelta``: only the item rows
        changed since) unless ``full``, the chain has ``checkpoint.full_every - 1`` deltas, its
        deltas together outgrow half the full checkpoint, or the item table is trained densely.
        """
        assert self.checkpoints is not None
        self.dead_letters.flush()  # dead letters of these events are durable first
        positions = self.source.positions()
        nets = state_dicts(state)
        parent = None if full else self._delta_parent(state, nets)
        path = write_checkpoint(self.cfg, self.checkpoints, state, positions, nets, parent)
        size = sum(f.stat().st_size for f in path.iterdir())
        if parent is None or self._chain is None:
            self._chain = _Chain(seq_of(path), 0, size, 0, rowdelta.present(nets))
        else:
            self._chain = self._chain.then(seq_of(path), size)
        self.saved(state, positions)
        log.debug("checkpoint %s at %s", path, positions)
        return path

    def saved(self, state: TrainerState, positions: dict[str, int]) -> None:
        """After a checkpoint of ``positions``: nothing is changed since and the offsets are
        committed (lag monitoring only)."""
        if isinstance(state.optimizer, RowSparseAdam):
            state.optimizer.clear_changed()
        state.store.clear_changed()
        self.source.commit(positions)
        self.metrics.checkpoint_time.set(time.time())

    def _delta_parent(self, state: TrainerState, nets: Mapping[str, Any]) -> int | None:
        """The checkpoint the next one can be a delta on, or None: it must be full."""
        chain = self._chain
        if (
            chain is None  # nothing of this state saved yet
            or not isinstance(state.optimizer, RowSparseAdam)  # dense Adam moves every row
            or not chain.takes_delta(self.cfg.checkpoint.full_every, rowdelta.present(nets))
        ):
            return None
        return chain.seq

    # ------------------------------------------------------------ registry
    def follow_latest(self, state: TrainerState) -> None:
        """Note where ``latest`` points as a run starts; take it as this state's version when
        it was published from exactly the restored checkpoint (the process died after that
        publish, before the next checkpoint could record it), so the next version names it
        as its parent."""
        assert self.registry is not None
        latest = self._expected_latest = self.registry.latest_version()
        if self.restored_positions is None or latest in (None, state.last_published):
            return
        try:
            manifest = self.registry.show(latest)
        except Exception as err:  # an unreadable version is simply not ours to adopt
            log.warning("cannot read latest version %s: %s", latest, err)
            return
        if manifest.source_positions == self.restored_positions:
            log.info("version %d was published from this checkpoint's state: its parent", latest)
            state.last_published = latest

    def publish(self, state: TrainerState, positions: dict[str, int]) -> int | None:
        """Publish weights, vocabulary and config with ``positions``, watermark and metrics:
        a delta on the previous version (the item rows changed since it, the dense weights)
        unless the chain of versions has ``registry.full_every - 1`` deltas, its deltas
        together outgrow half the full version, or this process did not publish that one;
        a delta the registry refuses (its base damaged) is published full instead.

        Returns the new version, or None when another writer moved ``latest`` since this
        trainer last looked: then nothing is published and ``fatal`` holds the
        ``ConcurrentPublishError``.
        """
        weights = state.model.state_dict()
        base = self._delta_base(state, weights)
        try:
            try:
                manifest, size = self._publish(state, positions, weights, base)
            except PublishError as err:
                if base is None or isinstance(err, ConcurrentPublishError):
                    raise
                # e.g. the base was damaged or removed by hand: a full version needs no base
                log.warning(
                    "cannot publish a delta on version %d (%s); publishing it full", base, err
                )
                base = None
                manifest, size = self._publish(state, positions, weights, None)
        except ConcurrentPublishError as err:
            log.error("%s; stopping after a final checkpoint", err)
            self.fatal = err
            return None
        if base is None or self._versions is None:
            self._versions = _Chain(
                manifest.version, 0, size, 0, rowdelta.present({"model": weights})
            )
        else:
            self._versions = self._versions.then(manifest.version, size)
        if isinstance(state.optimizer, RowSparseAdam):
            state.optimizer.clear_changed(since=PUBLISHED)
        self._expected_latest = manifest.version
        state.last_published = manifest.version
        self.published.append(manifest.version)
        self.metrics.published.set(manifest.version)
        return manifest.version

    def _publish(
        self,
        state: TrainerState,
        positions: dict[str, int],
        weights: Mapping[str, Any],
        base: int | None,
    ) -> tuple[Any, int]:
        """Publish ``state`` in full, or as a delta on version ``base``: (its manifest, the
        bytes of its weights: what a load of the chain reads, not the vocabulary)."""
        assert self.registry is not None
        if base is None:
            files = {MODEL_FILE: state_to_bytes(dict(weights))}
        else:
            assert isinstance(state.optimizer, RowSparseAdam)
            rest, changed = rowdelta.split(
                {"model": weights}, state.optimizer.changed_rows(since=PUBLISHED)
            )
            files = {MODEL_FILE: state_to_bytes(rest["model"]), ROWS_FILE: state_to_bytes(changed)}
        manifest = self.registry.publish(
            {**files, VOCAB_FILE: state.vocab.snapshot()},
            parent=state.last_published,
            source_positions=positions,
            watermark=None if state.store.watermark < 0 else state.store.watermark,
            metrics=registry_metrics(state),
            config={
                "model": self.cfg.model.kind,
                self.cfg.model.kind: asdict(state.model.cfg),
                "trainer": self.cfg.model_dump(mode="json"),
            },
            expect_latest=self._expected_latest,
            delta_of=base,
        )
        return manifest, sum(len(blob) for blob in files.values())

    def _delta_base(self, state: TrainerState, weights: Mapping[str, Any]) -> int | None:
        """The version the next one can be a delta on, or None: it must be full. Only a
        version this process published from this state: the rows changed since are known."""
        versions = self._versions
        if (
            versions is None  # nothing of this state published by this process yet
            or versions.seq != state.last_published
            or not isinstance(state.optimizer, RowSparseAdam)  # dense Adam moves every row
            or not versions.takes_delta(
                self.cfg.registry.full_every, rowdelta.present({"model": weights})
            )
        ):
            return None
        return versions.seq


def state_dicts(state: TrainerState) -> dict[str, Any]:
    """The model's and the optimizer's state dicts, as a checkpoint saves them."""
    return {"model": state.model.state_dict(), "optimizer": state.optimizer.state_dict()}


def write_checkpoint(
    cfg: TrainerConfig,
    checkpoints: CheckpointStore,
    state: TrainerState,
    positions: dict[str, int],
    nets: dict[str, Any],
    parent: int | None = None,
) -> Path:
    """Save ``state`` (``nets``: its ``state_dicts``) as the state after ``positions``: in
    full, or as a delta on checkpoint ``parent`` (the item rows and users changed since)."""
    if parent is None:
        # Streamed to disk: a full table or store is never serialised in memory.
        blobs: dict[str, Any] = {name: tensor_writer(part) for name, part in nets.items()}
        blobs["store"] = state.store.write_snapshot
    else:
        assert isinstance(state.optimizer, RowSparseAdam)
        rest, changed = rowdelta.split(nets, state.optimizer.changed_rows())
        blobs = {name: state_to_bytes(part) for name, part in rest.items()}
        blobs["item_rows"] = state_to_bytes(changed)
        blobs["store_delta"] = state.store.delta_snapshot()  # users written since
    blobs |= {"vocab": state.vocab.snapshot(), **metric_blobs(state)}
    meta = {
        **stream_meta(cfg, state, positions),
        **model_meta(cfg, state),
        "delta": parent is not None,
    }
    return checkpoints.save(blobs, meta, parent=parent)


def metric_blobs(state: TrainerState) -> dict[str, bytes]:
    """The progressive metrics a checkpoint saves (retrieval, and ranking when on)."""
    out = {"progressive": state.progressive.snapshot()}
    if state.ranking is not None:
        out["ranking"] = ranking.snapshot(state.ranking)
    return out


def registry_metrics(state: TrainerState) -> dict[str, float]:
    """The metrics a published version records (finite ones only)."""
    out: dict[str, float] = {}
    for name, value in state.progressive.windowed().items():
        out[f"{name}_window"] = value
    for name, value in state.progressive.cumulative().items():
        out[f"{name}_cumulative"] = value
    out["events_trained"] = float(state.counters["events_trained"])
    out["targets"] = float(state.counters["targets"])
    out["loss"] = state.last_loss
    # per task: ranking/like/ne, ranking/like/auc, ... (cumulative progressive figures)
    out |= {f"ranking/{name}": value for name, value in ranking.figures(state.ranking).items()}
    return {k: float(v) for k, v in out.items() if math.isfinite(v)}


def stream_meta(
    cfg: TrainerConfig, state: TrainerState, positions: dict[str, int]
) -> dict[str, Any]:
    """What a checkpoint records of the stream this process read: where it is, what it
    counted, its event time and which source it was."""
    return {
        "source_positions": positions,
        "counters": dict(state.counters),
        "rejected": dict(state.rejected),
        "watermark": state.store.watermark,
        "source": source_identity(cfg),
    }


def model_meta(cfg: TrainerConfig, state: TrainerState) -> dict[str, Any]:
    """What a checkpoint records of the model: its settings, lineage and cut-off."""
    return {
        "last_published": state.last_published,
        "shape_config": shape_config(cfg),
        "config": cfg.model_dump(mode="json"),
        "cutoff": state.cutoff,
    }


def source_identity(cfg: TrainerConfig) -> str:
    """What a checkpoint's positions refer to: the source kind and what it reads."""
    src = cfg.source
    if src.kind == "file":
        return f"file:{Path(src.path or '').resolve()}"
    if src.kind == "kafka":
        return f"kafka:{src.kafka.topic}"
    return "synthetic"


def check_compatible(cfg: TrainerConfig, ckpt: Checkpoint) -> None:
    """Refuse (``RestoreRefusedError``) a checkpoint of other shapes or of another source."""
    saved = _with_legacy_defaults(ckpt.meta.get("shape_config"))
    wanted = shape_config(cfg)
    if saved != wanted:
        diff = _setting_differences(saved, wanted)
        raise RestoreRefusedError(
            f"checkpoint {ckpt.path} was written with other model/store/vocab settings "
            f"({diff or saved}); set them as the checkpoint has them (--set KEY=VALUE) "
            "or use another checkpoint.dir"
        )
    saved_source = ckpt.meta.get("source")
    if saved_source is not None and saved_source != source_identity(cfg):
        raise RestoreRefusedError(
            f"checkpoint {ckpt.path} holds the state of source {saved_source!r}, but this "
            f"run reads {source_identity(cfg)!r}; its positions mean nothing here. "
            "Give this run its own state (set run_name, or --checkpoint-dir and --run-dir), "
            "or pass --no-resume to start from scratch over these checkpoints"
        )


def load_nets(ckpt: Checkpoint) -> dict[str, Any]:
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


def _with_legacy_defaults(saved: Any) -> Any:
    if isinstance(saved, dict) and isinstance(saved.get("model"), dict):
        model = {**_LEGACY_MODEL_SETTINGS, **saved["model"]}
        if model["kind"] == "hstu":
            model = {**_LEGACY_HSTU_SETTINGS, **model}
        return {**saved, "model": model}
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


def _int_counter(value: Any, name: str) -> Counter[str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, int) for k, v in value.items()
    ):
        raise TypeError(f"meta {name!r} is not a mapping of names to counts: {value!r:.200}")
    return Counter(dict(value))


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or "no details"
    return f"{type(err).__name__}: {text}"[:500]
