"""``genrec train``: the online test-then-train daemon.

Wires the configuration (``pipeline.stream.config``) to a source, a dead-letter sink, the checkpoint
store, the registry and the Prometheus endpoint, resumes from the newest checkpoint, and runs
``pipeline.stream.trainer.OnlineTrainer`` until the source ends, a bound is reached, or SIGTERM /
SIGINT arrives (then it finishes the current batch, checkpoints and exits 0).
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
from pathlib import Path
from typing import Any

from pipeline import plugins
from pipeline.runtime.gcpolicy import streaming_gc
from pipeline.runtime.stopping import default_signals
from pipeline.stream.config import (
    TrainerConfig,
    deep_merge,
    describe_options,
    dotted_overrides,
    load_config,
    nested,
)

log = logging.getLogger(__name__)

# CLI flag -> config key (dotted). Everything else: --set SECTION.KEY=VALUE or the YAML file.
_FLAGS: dict[str, tuple[str, type, str]] = {
    "source": ("source.kind", str, "event source: synthetic, file or kafka"),
    "path": ("source.path", str, "file to replay with --source file (JSONL, CSV, Parquet, ...)"),
    "topic": ("source.kafka.topic", str, "Kafka topic with --source kafka"),
    "bootstrap_servers": ("source.kafka.bootstrap_servers", str, "Kafka bootstrap servers"),
    "connect_timeout": (
        "source.kafka.connect_timeout_s",
        float,
        "seconds to wait for a Kafka broker to answer before giving up",
    ),
    "max_events": (
        "train.max_events",
        int,
        "stop after this many more input events in this run (torchrun's restarts of a group "
        "continue the count)",
    ),
    "duration": ("train.duration_s", float, "stop after this many seconds"),
    "batch_events": ("train.batch_events", int, "events per micro-batch (optimizer step)"),
    "lr": ("train.lr", float, "Adam learning rate"),
    "positives": (
        "train.positives",
        str,
        "which events are retrieval targets, scored and trained on: all, 'value>=4' or "
        "'action:click,purchase' (names or codes); the others are context",
    ),
    "device": ("train.device", str, "torch device, e.g. cpu or cuda"),
    "threads": (
        "train.threads",
        int,
        "torch CPU threads (default: OMP_NUM_THREADS, else the cores other processes leave free)",
    ),
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
        "--action-inputs",
        action=argparse.BooleanOptionalAction,
        help="add each event's action and value embeddings to its input token "
        "(model.action_inputs; default: false)",
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
        "SIGTERM/SIGINT stop every rank after a last group checkpoint (exit 0). The "
        "checkpoint directory belongs to one kind of trainer (one process, or a group of N). "
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
    if args.action_inputs is not None:
        cli = deep_merge(cli, {"model": {"action_inputs": args.action_inputs}})
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
        from pipeline.lake.synthetic import SyntheticConfig
        from pipeline.lake.synthetic_actions import ActionStreamConfig
        from pipeline.sources.synthetic import SyntheticSource

        s = src.synthetic
        synthetic: SyntheticConfig | ActionStreamConfig
        if s.actions:
            synthetic = ActionStreamConfig(
                num_users=s.num_users,
                num_items=s.num_items,
                events_per_user=s.events_per_user,
                seed=s.seed,
            )
        else:
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
        from pipeline.stream.deadletter import JsonlDeadLetterSink

        return JsonlDeadLetterSink(cfg.dead_letter_path)
    kind = cfg.dead_letter.kind
    return plugins.load("genrec.dead_letters", kind, f"dead_letter.kind={kind}")(cfg)


def run(args: argparse.Namespace) -> int:
    # ``args.stop``: set by SIGTERM / SIGINT, whose handlers pipeline.cli installed before
    # anything slow started, in a single trainer and in every rank of a group alike
    return _run(args, args.stop)


def _run(args: argparse.Namespace, stop: threading.Event) -> int:
    from pipeline.stream.distributed.group import world_from_env

    cfg = config_from_args(args)
    if args.print_config:
        print(json.dumps(cfg.model_dump(mode="json"), indent=2))
        return 0
    rank, world = world_from_env()
    if args.workers is not None:
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        if world == 1 and args.workers > 1:
            from pipeline.stream.distributed.group import GroupError
            from pipeline.stream.distributed.launch import run_torchrun

            if cfg.source.kind in ("synthetic", "file"):
                raise ValueError(
                    f"--workers {args.workers}: source.kind={cfg.source.kind} cannot be split "
                    "between trainers; a trainer group reads a partitioned source (--source kafka)"
                )

            try:
                return run_torchrun(args.argv, args.workers, cfg, stop)
            except GroupError as err:
                raise SystemExit(f"genrec train: error: {err}") from None
    from pipeline.runtime.runlock import DirectoryLock, DirectoryLockedError
    from pipeline.stream.checkpoint import CheckpointError
    from pipeline.stream.distributed.checkpoints import claim_directory, part_name
    from pipeline.stream.publishing import PublishError

    assert cfg.checkpoint.dir is not None  # set by the config's validator
    if world > 1:
        from pipeline.stream.distributed.launch import rank_config

        cfg = rank_config(cfg, rank, world)
    # a group's rank 0 holds the directory, as one trainer would; the others their parts
    where = Path(cfg.checkpoint.dir)
    lock = DirectoryLock(where if rank == 0 else where / part_name(rank, world))
    created = _missing_dirs(lock.directory)
    created_run_dirs = _missing_dirs(Path(cfg.run_dir))
    try:
        claim_directory(where, world)  # before a rank's lock makes its part's directory
        lock.acquire()
        if rank == 0:  # under the directory's lock: one trainer records itself the owner
            claim_directory(where, world, record=True)
    except (DirectoryLockedError, CheckpointError) as err:
        lock.release()
        raise SystemExit(f"genrec train: error: {err}") from None
    from pipeline.stream.distributed.group import GroupError

    trained = False
    try:
        summary = _train(cfg, stop) if world == 1 else _train_group(cfg, stop)
        trained = True
    except (CheckpointError, PublishError, GroupError, plugins.PluginNotFoundError) as err:
        raise SystemExit(f"genrec train: error: {err}") from None
    finally:
        if not trained:
            _clean_up_failed_run(cfg, lock.path, created, created_run_dirs)
        lock.release()
    print(json.dumps(summary, indent=2, default=float))
    log.info(
        "checkpoints in %s, registry %s, logs and dead letters in %s",
        cfg.checkpoint.dir,
        cfg.registry.uri if cfg.registry.enabled else "(publishing off)",
        cfg.run_dir,
    )
    return 0


def _missing_dirs(directory: Path) -> list[Path]:
    """``directory`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not directory.exists() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    return missing


def _clean_up_failed_run(
    cfg: TrainerConfig, lock_path: Path, checkpoint_dirs: list[Path], run_dirs: list[Path]
) -> None:
    """Remove what a failed run created and did not use: its lock file when no checkpoint was
    written (called while the lock is held, so no other trainer uses the directory), its empty
    metrics log and dead-letter file, and the directories it created that are empty then."""
    from pipeline.stream.distributed.checkpoints import OWNER

    # the lock and the owner record alone: no checkpoint was written
    own = {lock_path, lock_path.parent / OWNER}
    unused = set(lock_path.parent.iterdir()) <= own
    _discard(checkpoint_dirs, sorted(own) if unused else [])
    outputs = (cfg.metrics_log_path, cfg.dead_letter_path)
    _discard(run_dirs, [p for p in outputs if p.is_file() and not p.stat().st_size])


def _discard(created: list[Path], files: list[Path]) -> None:
    """Delete ``files``, then the directories in ``created`` (deepest first) while they are
    empty."""
    for path in files:
        path.unlink(missing_ok=True)
    for directory in created:
        try:
            directory.rmdir()
        except OSError:  # not empty: the run (or someone else) put something there
            return


def _train_group(cfg: TrainerConfig, stop: threading.Event) -> dict[str, Any]:
    """One rank of a trainer group (``pipeline.stream.distributed``)."""
    from pipeline.stream.distributed.checkpoints import GroupCheckpoints
    from pipeline.stream.distributed.group import Group
    from pipeline.stream.distributed.trainer import GroupTrainer

    d = cfg.distributed
    # A rank whose peer died before joining blocks in init_process_group (native code, where
    # no Python handler runs) until torchrun stops it: the default action must end it then;
    # it has nothing to save yet.
    with default_signals():
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
        with streaming_gc():
            summary = trainer.run(stop)
        # Every rank is past its last collective before any tears its connections down: a
        # rank that left first made its peer's gloo threads abort at exit (std::terminate).
        group.barrier()
        return summary
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
    from pipeline.stream.observability import TrainerMetrics

    metrics = TrainerMetrics(cfg.observability.prometheus_host, cfg.observability.prometheus_port)
    if hasattr(source, "on_lag"):
        source.on_lag(metrics.set_consumer_lag)
    return metrics


def _train(cfg: TrainerConfig, stop: threading.Event) -> dict[str, Any]:
    from pipeline.stream.checkpoint import CheckpointStore
    from pipeline.stream.trainer import OnlineTrainer

    source = make_source(cfg)
    sink = make_dead_letter_sink(cfg)
    metrics = _metrics(cfg, source)
    try:
        trainer = OnlineTrainer(
            cfg,
            source,
            sink,
            checkpoints=CheckpointStore(cfg.checkpoint.dir, keep=cfg.checkpoint.keep),
            registry=_open_registry(cfg),
            metrics=metrics,
        )
        if hasattr(source, "on_revoke"):  # Kafka: checkpoint before partitions move
            source.on_revoke(lambda _partitions: trainer.checkpoint())
        if cfg.checkpoint.resume:
            trainer.restore()
        with streaming_gc():  # see pipeline/runtime/gcpolicy.py
            return trainer.run(stop)
    finally:
        metrics.close()
        sink.close()
        source.close()
