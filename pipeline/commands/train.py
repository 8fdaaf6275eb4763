"""``genrec train``: the online test-then-train daemon.

Wires the configuration (``pipeline.config``) to a source, a dead-letter sink, the checkpoint
store, the registry and the Prometheus endpoint, resumes from the newest checkpoint, and runs
``pipeline.trainer.OnlineTrainer`` until the source ends, a bound is reached, or SIGTERM /
SIGINT arrives (then it finishes the current batch, checkpoints and exits 0).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

from pipeline import plugins
from pipeline.config import (
    TrainerConfig,
    deep_merge,
    describe_options,
    dotted_overrides,
    load_config,
    nested,
)
from pipeline.gcpolicy import streaming_gc

log = logging.getLogger(__name__)

# CLI flag -> config key (dotted). Everything else: --set SECTION.KEY=VALUE or the YAML file.
_FLAGS: dict[str, tuple[str, type, str]] = {
    "source": ("source.kind", str, "event source: synthetic, file or kafka"),
    "path": ("source.path", str, "file to replay with --source file (JSONL, CSV, Parquet, ...)"),
    "topic": ("source.kafka.topic", str, "Kafka topic with --source kafka"),
    "bootstrap_servers": ("source.kafka.bootstrap_servers", str, "Kafka bootstrap servers"),
    "max_events": ("train.max_events", int, "stop after this many more input events"),
    "duration": ("train.duration_s", float, "stop after this many seconds"),
    "batch_events": ("train.batch_events", int, "events per micro-batch (optimizer step)"),
    "lr": ("train.lr", float, "Adam learning rate"),
    "device": ("train.device", str, "torch device, e.g. cpu or cuda"),
    "threads": ("train.threads", int, "torch CPU threads"),
    "seed": ("train.seed", int, "random seed"),
    "run_dir": ("run_dir", str, "logs, dead letters and summary directory"),
    "checkpoint_dir": ("checkpoint.dir", str, "checkpoint directory"),
    "checkpoint_every_events": ("checkpoint.every_events", int, "checkpoint every N events"),
    "checkpoint_every_s": ("checkpoint.every_s", float, "checkpoint every N seconds"),
    "registry": ("registry.uri", str, "registry path or URI"),
    "publish_every_events": ("registry.every_events", int, "publish every N events"),
    "publish_every_s": ("registry.every_s", float, "publish every N seconds"),
    "metrics_port": ("observability.prometheus_port", int, "Prometheus port (0: off)"),
    "log_every": ("observability.log_every_s", float, "progress log period, seconds"),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train online from an event stream (test-then-train, checkpoints, registry)",
        description=(
            "Train an HSTU model online: every event is scored before it is trained on, "
            "checkpoints hold model, optimizer, vocabulary, sequence store and source "
            "positions, and versions are published to the registry. Settings come from "
            "defaults < --config YAML < GENREC_<SECTION>__<KEY> environment variables < flags."
        ),
        epilog="configuration keys (YAML sections, --set, GENREC_ env vars):\n"
        + "\n".join(describe_options()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_arguments(parser)
    for name, (key, kind, text) in _FLAGS.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(
            flag, dest=name, type=kind, metavar=name.upper(), help=f"{text} ({key})"
        )
    parser.add_argument(
        "--no-resume",
        action="store_true",
        help="start fresh even if the checkpoint directory has checkpoints",
    )
    parser.add_argument(
        "--no-publish", action="store_true", help="do not publish versions to the registry"
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved configuration and exit"
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="run a group of N trainer processes on this machine (torchrun; --source kafka): "
        "each owns a fixed share of the topic's partitions, all train one model; a dead one "
        "restarts the group from its last complete checkpoint (distributed.max_restarts). "
        'See docs/trainer.md, "Several trainers"',
    )
    parser.set_defaults(func=run)


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and ``--set SECTION.KEY=VALUE``: the trainer's settings, for every
    command that needs them (``train``, ``backfill bootstrap``)."""
    parser.add_argument("--config", metavar="FILE", help="the trainer's YAML configuration file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any configuration key (repeatable), e.g. --set vocab.capacity=50000",
    )


def config_from_args(args: argparse.Namespace) -> TrainerConfig:
    """Named flags, then ``--set`` items, over the YAML file and the environment."""
    cli: dict[str, Any] = {}
    for name, (key, _, _) in _FLAGS.items():
        value = getattr(args, name)
        if value is not None:  # typed by argparse: no YAML re-parsing of paths
            cli = deep_merge(cli, nested(key.split("."), value))
    if args.no_resume:
        cli = deep_merge(cli, {"checkpoint": {"resume": False}})
    if args.no_publish:
        cli = deep_merge(cli, {"registry": {"enabled": False}})
    cli = deep_merge(cli, dotted_overrides(args.overrides))
    return load_config(args.config, cli)


def make_source(cfg: TrainerConfig) -> Any:
    """The configured ``Source``; Kafka is imported only when selected."""
    src = cfg.source
    if src.kind == "synthetic":
        from pipeline.sources.synthetic import SyntheticSource
        from pipeline.synthetic import SyntheticConfig

        s = src.synthetic
        synthetic = SyntheticConfig(
            num_users=s.num_users,
            num_items=s.num_items,
            events_per_user=s.events_per_user,
            drift_at=s.drift_at,
            churn=s.churn,
            seed=s.seed,
        )
        per_record = src.events_per_record or (
            cfg.train.batch_events if src.codec == "arrow" else None
        )
        return SyntheticSource(synthetic, codec=src.codec, events_per_record=per_record)
    if src.kind == "file":
        from pipeline.sources.files import FileSource

        assert src.path is not None  # checked by the config
        return FileSource(src.path, format=src.format, events_per_record=src.events_per_record)
    factory = plugins.load("genrec.sources", src.kind, f"--source {src.kind}")
    return factory(cfg)


def make_dead_letter_sink(cfg: TrainerConfig) -> Any:
    """JSONL file under the run directory by default; a Kafka topic when configured."""
    if cfg.dead_letter.kind == "jsonl":
        from pipeline.deadletter import JsonlDeadLetterSink

        return JsonlDeadLetterSink(cfg.dead_letter_path)
    kind = cfg.dead_letter.kind
    return plugins.load("genrec.dead_letters", kind, f"dead_letter.kind={kind}")(cfg)


def run(args: argparse.Namespace) -> int:
    # Signal handlers first: a SIGTERM while the source, the metrics endpoint or the restore
    # start up must end the run cleanly (exit 0) like one during training. A group's rank
    # arms them only when it trains (_train_group): torchrun stops a starting rank when a
    # peer died, and such a rank, with nothing to save, may be blocked joining a group that
    # will never be complete, where no Python handler runs; the default action ends it.
    stop = threading.Event()
    in_group = int(os.environ.get("WORLD_SIZE", "1")) > 1
    previous = {} if in_group else _stop_on_signals(stop)
    try:
        return _run(args, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_on_signals(stop: threading.Event) -> dict[int, Any]:
    """SIGTERM / SIGINT set ``stop`` (finish the batch, checkpoint, exit 0); returns the
    handlers they replace."""

    def on_signal(signum: int, _frame: Any) -> None:
        log.info(
            "%s: finishing the current batch, then checkpoint and exit", signal.strsignal(signum)
        )
        stop.set()

    return {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}


def _run(args: argparse.Namespace, stop: threading.Event) -> int:
    from pipeline.distributed.group import world_from_env

    cfg = config_from_args(args)
    if args.print_config:
        print(json.dumps(cfg.model_dump(mode="json"), indent=2))
        return 0
    rank, world = world_from_env()
    if args.workers is not None:
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        if world == 1 and args.workers > 1:
            from pipeline.distributed.launch import exec_torchrun

            if cfg.source.kind in ("synthetic", "file"):
                raise ValueError(
                    f"--workers {args.workers}: source.kind={cfg.source.kind} cannot be split "
                    "between trainers; a trainer group reads a partitioned source (--source kafka)"
                )

            exec_torchrun(args.argv, args.workers, cfg.distributed.max_restarts)
    from pipeline.checkpoint import CheckpointError
    from pipeline.publishing import PublishError
    from pipeline.runlock import DirectoryLock, DirectoryLockedError

    assert cfg.checkpoint.dir is not None  # set by the config's validator
    if world > 1:
        from pipeline.distributed.checkpoints import part_name
        from pipeline.distributed.launch import rank_config

        cfg = rank_config(cfg, rank, world)
    # a group's rank 0 holds the directory, as one trainer would; the others their parts
    where = Path(cfg.checkpoint.dir)
    lock = DirectoryLock(where if rank == 0 else where / part_name(rank, world))
    try:
        lock.acquire()
    except DirectoryLockedError as err:
        raise SystemExit(f"genrec train: error: {err}") from None
    from pipeline.distributed.group import GroupError

    try:
        summary = _train(cfg, stop) if world == 1 else _train_group(cfg, stop)
    except (CheckpointError, PublishError, GroupError, plugins.PluginNotFoundError) as err:
        raise SystemExit(f"genrec train: error: {err}") from None
    finally:
        lock.release()
    print(json.dumps(summary, indent=2, default=float))
    log.info(
        "checkpoints in %s, registry %s, logs and dead letters in %s",
        cfg.checkpoint.dir,
        cfg.registry.uri if cfg.registry.enabled else "(publishing off)",
        cfg.run_dir,
    )
    return 0


def _train_group(cfg: TrainerConfig, stop: threading.Event) -> dict[str, Any]:
    """One rank of a trainer group (``pipeline.distributed``)."""
    from pipeline.distributed.checkpoints import GroupCheckpoints
    from pipeline.distributed.group import Group
    from pipeline.distributed.trainer import GroupTrainer

    d = cfg.distributed
    group = Group.join(d.backend, cfg.train.device, d.timeout_s)
    source = make_source(cfg)
    sink = make_dead_letter_sink(cfg)
    try:
        registry = _open_registry(cfg) if group.rank == 0 else None  # rank 0 publishes
        assert cfg.checkpoint.dir is not None
        checkpoints = GroupCheckpoints(
            cfg.checkpoint.dir, group.rank, group.world, keep=cfg.checkpoint.keep
        )
        metrics = _metrics(cfg, source)
        trainer = GroupTrainer(cfg, source, sink, group, checkpoints, registry, metrics)
        if not (cfg.checkpoint.resume and trainer.restore()):
            trainer.start_weights_equal()
        _stop_on_signals(stop)  # from here a SIGTERM ends the group's round cleanly
        with streaming_gc():
            return trainer.run(stop)
    finally:
        sink.close()
        source.close()
        group.leave()


def _open_registry(cfg: TrainerConfig) -> Any | None:
    """The registry versions are published to (None: publishing is off)."""
    if not cfg.registry.enabled:
        return None
    open_registry = plugins.load("genrec.registries", "default", "publishing")
    return open_registry(cfg.registry.uri, model=cfg.registry_model, create=True)


def _metrics(cfg: TrainerConfig, source: Any) -> Any:
    """The Prometheus metrics, with the consumer lag of a source that reports it (Kafka)."""
    from pipeline.observability import TrainerMetrics

    metrics = TrainerMetrics(cfg.observability.prometheus_host, cfg.observability.prometheus_port)
    if hasattr(source, "on_lag"):
        source.on_lag(metrics.set_consumer_lag)
    return metrics


def _train(cfg: TrainerConfig, stop: threading.Event) -> dict[str, Any]:
    from pipeline.checkpoint import CheckpointStore
    from pipeline.trainer import OnlineTrainer

    source = make_source(cfg)
    sink = make_dead_letter_sink(cfg)
    try:
        trainer = OnlineTrainer(
            cfg,
            source,
            sink,
            checkpoints=CheckpointStore(cfg.checkpoint.dir, keep=cfg.checkpoint.keep),
            registry=_open_registry(cfg),
            metrics=_metrics(cfg, source),
        )
        if hasattr(source, "on_revoke"):  # Kafka: checkpoint before partitions move
            source.on_revoke(lambda _partitions: trainer.checkpoint())
        if cfg.checkpoint.resume:
            trainer.restore()
        with streaming_gc():  # see pipeline/gcpolicy.py
            return trainer.run(stop)
    finally:
        sink.close()
        source.close()
