"""``genrec kafka up|status|down``, ``genrec topics ...`` and ``genrec produce``.

``kafka up`` starts the local broker (connectors/kafka/broker.py) as a daemon, waits until it
answers, prints its bootstrap servers and records its data directory (``--dir`` or the default)
in the cache root; the other commands default to that broker when neither
``--bootstrap-servers`` nor ``KAFKA_BOOTSTRAP_SERVERS`` names a cluster, and ``kafka status`` /
``kafka down`` to its directory.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from connectors.kafka.config import add_client_arguments, client_config_from_args

log = logging.getLogger(__name__)


def _one_line_errors(command: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
    """``command`` with its own failures (a topic, the local broker, a replay) ending it with
    their message, as the CLI ends on bad input, instead of a traceback."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        from connectors.kafka.admin import TopicError
        from connectors.kafka.broker import BrokerError
        from connectors.kafka.producer import ReplayError

        try:
            return command(args)
        except (TopicError, BrokerError, ReplayError) as err:
            raise SystemExit(f"genrec {args.command}: error: {err}") from None

    return run


def _client_config(args: argparse.Namespace):
    from connectors.kafka.broker import running_local_bootstrap

    return client_config_from_args(args, default_bootstrap=running_local_bootstrap())


# -- genrec kafka ------------------------------------------------------------------------------


def _kafka_up(args: argparse.Namespace) -> int:
    from connectors.kafka.broker import LocalKafkaBroker, remember_active_broker

    broker = LocalKafkaBroker(args.dir, port=args.port, heap=args.heap)
    servers = broker.start(timeout_s=args.timeout)
    remember_active_broker(broker.data_dir)
    print(servers)
    return 0


def _broker_dir(args: argparse.Namespace) -> Path:
    """``--dir``, else the directory of the broker ``kafka up`` last started."""
    from connectors.kafka.broker import active_broker_dir

    return args.dir if args.dir is not None else active_broker_dir()


def _kafka_status(args: argparse.Namespace) -> int:
    from connectors.kafka.broker import STATE_FILE, LocalKafkaBroker

    directory = _broker_dir(args)
    if not (directory / STATE_FILE).exists():
        print(json.dumps({"running": False, "data_dir": str(directory)}))
        return 1
    broker = LocalKafkaBroker(directory)
    running = broker.is_running()
    print(
        json.dumps(
            {
                "running": running,
                "bootstrap_servers": broker.bootstrap_servers,
                "pid": broker.pid if running else None,
                "version": broker.state.version,
                "data_dir": str(broker.data_dir),
                "log": str(broker.log_path),
            },
            indent=2,
        )
    )
    return 0 if running else 1


def _kafka_down(args: argparse.Namespace) -> int:
    from connectors.kafka.broker import STATE_FILE, LocalKafkaBroker, forget_active_broker

    directory = _broker_dir(args)
    forget_active_broker(directory)
    if (directory / STATE_FILE).exists():
        LocalKafkaBroker(directory).stop(timeout_s=args.timeout)
        print(f"stopped the Kafka broker in {directory}")
    else:
        print(f"no Kafka broker state in {directory}; nothing to stop")
    if args.purge:
        shutil.rmtree(directory, ignore_errors=True)
        print(f"deleted {directory}")
    return 0


# -- genrec topics -----------------------------------------------------------------------------


def _parse_configs(pairs: list[str]) -> dict[str, str]:
    configs = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"--config expects NAME=VALUE (e.g. retention.ms=-1), got {pair!r}")
        configs[name] = value
    return configs


def _topics(args: argparse.Namespace) -> int:
    from connectors.kafka.admin import TopicAdmin

    with TopicAdmin(_client_config(args)) as admin:
        if args.topics_command == "create":
            created = admin.create_topic(
                args.name,
                args.partitions,
                replication_factor=args.replication_factor,
                configs=_parse_configs(args.config),
            )
            verb = "created" if created else "already exists:"
            print(f"{verb} topic {args.name} with {args.partitions} partitions")
        elif args.topics_command == "list":
            for name in admin.list_topics(include_internal=args.internal):
                print(name)
        elif args.topics_command == "describe":
            info = admin.describe_topic(args.name)
            offsets = admin.end_offsets(args.name)
            print(
                json.dumps(
                    {
                        "name": info.name,
                        "partitions": info.partitions,
                        "replication_factor": info.replication_factor,
                        "leaders": info.leaders,
                        "end_offsets": offsets,
                    },
                    indent=2,
                )
            )
        else:
            admin.delete_topic(args.name)
            print(f"deleted topic {args.name}")
    return 0


# -- genrec produce ----------------------------------------------------------------------------


def _produce(args: argparse.Namespace) -> int:
    from connectors.kafka.producer import EventReplayer

    if args.synthetic:
        from pipeline.lake.synthetic import SyntheticConfig, generate_events

        events = generate_events(
            SyntheticConfig(
                num_users=args.users,
                num_items=args.items,
                events_per_user=args.events_per_user,
                seed=args.seed,
            )
        )
    else:
        from pipeline.lake.datasets import read_event_log

        events, stats = read_event_log(args.data, args.format, args.skip_malformed)
        log.info("read %d events from %s (%s)", stats.rows, stats.path, stats.format)
    with EventReplayer(
        _client_config(args),
        args.topic,
        codec=args.codec,
        batch_events=args.batch_events,
        rate=args.rate,
        record_time=args.record_time,
    ) as replayer:
        result = replayer.replay(events, max_events=args.max_events, progress=not args.no_progress)
    print(json.dumps(result.as_dict(), indent=2))
    return 0


# -- registration ------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``kafka``, ``topics`` and ``produce`` to the genrec command."""
    from pipeline.lake.datasets import FORMATS

    kafka = subparsers.add_parser("kafka", help="run a local Apache Kafka broker (no Docker)")
    kafka_sub = kafka.add_subparsers(dest="kafka_command", metavar="ACTION", required=True)
    from connectors.kafka.broker import default_broker_dir

    default_dir = default_broker_dir()
    up = kafka_sub.add_parser("up", help="start the local broker and print bootstrap servers")
    down = kafka_sub.add_parser("down", help="stop the local broker (data is kept)")
    status = kafka_sub.add_parser("status", help="print the local broker's state (exit 1: down)")
    up.add_argument(
        "--dir",
        type=Path,
        default=default_dir,
        help=f"broker data/state directory (default: {default_dir}); the other commands "
        "(topics, produce, train, kafka status/down) then find this broker by themselves",
    )
    for sub in (down, status):
        sub.add_argument(
            "--dir",
            type=Path,
            help="broker data/state directory (default: the one 'genrec kafka up' last "
            f"started, else {default_dir})",
        )
    up.add_argument("--port", type=int, help="client port (default: recorded or a free one)")
    up.add_argument("--heap", default="512m", help="JVM max heap (default: 512m)")
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness")
    up.set_defaults(func=_one_line_errors(_kafka_up))
    down.add_argument("--timeout", type=float, default=30.0, help="seconds before SIGKILL")
    down.add_argument("--purge", action="store_true", help="also delete the data directory")
    down.set_defaults(func=_one_line_errors(_kafka_down))
    status.set_defaults(func=_one_line_errors(_kafka_status))

    topics = subparsers.add_parser("topics", help="create, list, describe or delete topics")
    topics_sub = topics.add_subparsers(dest="topics_command", metavar="ACTION", required=True)
    create = topics_sub.add_parser("create", help="create a topic (ok if it exists alike)")
    create.add_argument("name", help="topic name")
    create.add_argument(
        "--partitions", type=int, required=True, help="partitions (users are keyed to them)"
    )
    create.add_argument(
        "--replication-factor", type=int, default=1, help="copies of each partition (default: 1)"
    )
    create.add_argument(
        "--config", action="append", default=[], metavar="NAME=VALUE", help="topic config"
    )
    listing = topics_sub.add_parser("list", help="list topic names")
    listing.add_argument("--internal", action="store_true", help="include __internal topics")
    describe = topics_sub.add_parser("describe", help="partitions, leaders, end offsets")
    describe.add_argument("name", help="topic name")
    delete = topics_sub.add_parser("delete", help="delete a topic and its data")
    delete.add_argument("name", help="topic name")
    for sub in (create, listing, describe, delete):
        add_client_arguments(sub)
        sub.set_defaults(func=_one_line_errors(_topics))

    produce = subparsers.add_parser(
        "produce", help="replay a dataset or the synthetic stream into a topic"
    )
    produce.add_argument("--topic", required=True, help="topic to write to")
    source = produce.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="event log file (MovieLens, CSV, Parquet)")
    source.add_argument("--synthetic", action="store_true", help="the seeded synthetic stream")
    produce.add_argument("--format", default="auto", choices=FORMATS, help="format of --data")
    produce.add_argument(
        "--skip-malformed", action="store_true", help="skip (and count) bad rows of --data"
    )
    produce.add_argument("--users", type=int, default=500, help="synthetic: number of users")
    produce.add_argument("--items", type=int, default=1000, help="synthetic: number of items")
    produce.add_argument(
        "--events-per-user", type=int, default=60, help="synthetic: mean events per user"
    )
    produce.add_argument("--seed", type=int, default=0, help="synthetic: random seed")
    produce.add_argument(
        "--codec",
        default="json",
        choices=["json", "arrow"],
        help="one JSON event per message, or Arrow batches of many (default: json)",
    )
    produce.add_argument(
        "--rate", type=float, help="events per second (default: as fast as possible)"
    )
    produce.add_argument(
        "--batch-events", type=int, default=2000, help="events per Arrow message at most"
    )
    produce.add_argument("--max-events", type=int, help="stop after this many events")
    produce.add_argument(
        "--record-time",
        choices=("send", "event"),
        default="send",
        help="Kafka record timestamps: the send time, or each message's latest event time "
        "(needed for a backfill hand-off at a cut-off; set the topic's retention.ms=-1 "
        "first, or the broker deletes old-stamped records) (default: %(default)s)",
    )
    produce.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_client_arguments(produce)
    produce.set_defaults(func=_one_line_errors(_produce))
