"""``genrec serve``: the HTTP recommendation service (``pipeline.serve``)."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from pipeline.serve.config import load_serve_config
from pipeline.stream.config import deep_merge, describe_options, dotted_overrides, nested

log = logging.getLogger(__name__)

# CLI flag -> config key (dotted). Everything else: --set KEY=VALUE or the YAML file.
_FLAGS: dict[str, tuple[str, type, str]] = {
    "registry": ("registry", str, "model registry: a directory or a URI"),
    "model": ("model", str, "the registry's model (default: its only one)"),
    "alias": ("alias", str, "the alias to follow (default: latest)"),
    "host": ("http.host", str, "address to listen on (default: 127.0.0.1)"),
    "port": ("http.port", int, "port to listen on (default: 8000; 0: any free port)"),
    "stream": ("history.stream", str, "kafka: keep histories fresh from the topic; none"),
    "topic": ("history.kafka.topic", str, "the event topic with --stream kafka"),
    "bootstrap_servers": ("history.kafka.bootstrap_servers", str, "Kafka bootstrap servers"),
    "bootstrap": (
        "history.bootstrap",
        str,
        "start the histories from this 'genrec backfill bootstrap' checkpoint directory",
    ),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    from pipeline.serve.config import ServeConfig

    parser = subparsers.add_parser(
        "serve",
        help="serve top-K recommendations and candidate ranking over HTTP",
        description=(
            "Serve a registry's model over HTTP: POST /recommend {user_id, k, exclude_seen, "
            "history} returns the top K items with scores, the version and the history "
            "length; POST /rank {user_id, candidates, history} returns every ranking task's "
            "probability per candidate; GET /healthz, /readyz, /metrics (Prometheus). The "
            "server follows an alias (default latest) and swaps to each new version once it "
            "verifies; a version that fails is refused and the old one keeps serving. "
            "Histories: the events of the topic (--stream kafka, the server's own consumer "
            "group), a bootstrap checkpoint (--bootstrap), and the request's 'history'. "
            "Settings come from defaults < --config YAML < GENREC_SERVE__<SECTION>__<KEY> "
            "environment variables < flags. See docs/serving.md."
        ),
        epilog="configuration keys (YAML, --set, GENREC_SERVE__ env vars):\n"
        + "\n".join(describe_options(ServeConfig)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE", help="the server's YAML configuration file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any configuration key (repeatable), e.g. --set batching.max_batch=32",
    )
    for name, (key, kind, text) in _FLAGS.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(
            flag, dest=name, type=kind, metavar=name.upper(), help=f"{text} ({key})"
        )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved configuration and exit"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cli: dict[str, Any] = {}
    for name, (key, _, _) in _FLAGS.items():
        value = getattr(args, name)
        if value is not None:
            cli = deep_merge(cli, nested(key.split("."), value))
    cfg = load_serve_config(args.config, deep_merge(cli, dotted_overrides(args.overrides)))
    if args.print_config:
        print(json.dumps(cfg.model_dump(mode="json"), indent=2))
        return 0
    from pipeline.serve.app import create_app
    from pipeline.serve.service import bind, build_service, make_server

    sock = bind(cfg.http.host, cfg.http.port)  # a port in use fails before a version loads
    try:
        service = build_service(cfg)
    except BaseException:
        sock.close()
        raise
    if args.stop.is_set():  # SIGTERM / SIGINT while the version loaded
        sock.close()
        return 0
    host, port = sock.getsockname()[:2]
    log.info(
        "serving %s (alias %s, version %s) on http://%s:%d",
        cfg.registry, cfg.alias,
        service.follower.current.version if service.follower.current else "none yet",
        host, port,
    )  # fmt: skip
    make_server(create_app(service), sock, cfg.http.max_connections).run(sockets=[sock])
    return 0
