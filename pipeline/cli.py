"""The ``genrec`` command line: one entry point, one module per subcommand group.

Each module in ``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its
subcommand(s) and sets ``func`` (called with the parsed args; returns an exit code): the
pipeline's own (offline training, ``train``) and the connectors' (Kafka, registry), found
through the ``genrec.commands`` entry points (``pipeline/plugins.py``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import threading

from pipeline import plugins
from pipeline.runtime.stopping import restore_signals, stop_on_signals

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_LEVEL_HELP = "logging verbosity (default: INFO)"

COMMAND_MODULES: tuple[str, ...] = (
    "pipeline.commands.offline",
    "pipeline.commands.scaling",
    "pipeline.commands.backfill",
    *plugins.modules("genrec.commands"),
    "pipeline.commands.train",
    "pipeline.commands.serve",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genrec",
        description=(
            "Train HSTU generative recommenders online from user-event streams. "
            "Run 'genrec COMMAND --help' for the options of each command."
        ),
    )
    parser.add_argument("--log-level", default="INFO", choices=LOG_LEVELS, help=LOG_LEVEL_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    _accept_log_level_everywhere(parser)
    return parser


def _accept_log_level_everywhere(parser: argparse.ArgumentParser) -> None:
    """Let ``--log-level`` follow any (sub)command too, as the error hints suggest.

    The default is SUPPRESS, so a subcommand that is not given the flag leaves the value
    parsed before the subcommand (or the top-level default) alone.
    """
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for sub in {id(p): p for p in action.choices.values()}.values():  # aliases: once
            sub.add_argument(
                "--log-level", default=argparse.SUPPRESS, choices=LOG_LEVELS, help=LOG_LEVEL_HELP
            )
            _accept_log_level_everywhere(sub)


def _error_lines(err: Exception) -> list[str]:
    """What to print for a user error: one line per problem, no pydantic or YAML dump."""
    import yaml
    from pydantic import ValidationError

    if isinstance(err, ValidationError):
        return [
            f"{'.'.join(str(p) for p in e['loc']) or err.title}: {e['msg']}"
            for e in err.errors(include_url=False)
        ]
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        return [f"{mark.name}:{mark.line + 1}:{mark.column + 1}: {err.problem}"]
    return str(err).splitlines() or [type(err).__name__]


def _command_of(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is not a top-level option)."""
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `genrec train` stops after a final checkpoint on SIGTERM / SIGINT from its first moment
    # (pipeline/runtime/stopping.py): building the parser alone imports for a second or more;
    # `genrec serve` exits 0 on them.
    stop = threading.Event()
    command = _command_of(argv)
    if command == "train":
        previous = stop_on_signals(stop)
    elif command == "scaling":
        # the running train-offline process is ended with it, never left behind
        previous = stop_on_signals(stop, "stopping the grid; the same command resumes it")
    elif command == "serve":
        # while a version loads (seconds), and after uvicorn's graceful stop re-raises the
        # signal it handled: exit 0, not the signal's default death
        previous = stop_on_signals(stop, "stopping")
    else:
        previous = {}
    try:
        return _main(argv, stop)
    finally:
        restore_signals(previous)


def _main(argv: list[str], stop: threading.Event) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv  # `train --workers` re-runs it
    args.stop = stop  # set by SIGTERM / SIGINT during `train`, `serve` and `scaling`
    # a trainer group's ranks share one terminal: say which rank wrote a line
    rank = f" rank{os.environ['RANK']}" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format=f"%(asctime)s %(levelname)s{rank} %(name)s: %(message)s",
    )
    if args.log_level != "DEBUG":
        # kafka-python, Beam and dask.distributed log every step at INFO; genrec's own lines
        # say what matters.
        for noisy in ("kafka", "apache_beam", "distributed"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # here, not at the top: the parser above is built for --help too, which needs none of them
    import yaml
    from pydantic import ValidationError

    from pipeline.runtime.errors import ConfigError

    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, yaml.YAMLError) as err:
        # Bad settings, files or addresses (pydantic's ValidationError is a ValueError): the
        # message says what and where; the traceback only helps when debugging genrec itself.
        if args.log_level == "DEBUG":
            raise
        prog = f"genrec {args.command}" if args.command else "genrec"
        sys.stderr.writelines(f"{prog}: error: {line}\n" for line in _error_lines(err))
        if not isinstance(err, ConfigError | ValidationError | yaml.YAMLError):
            # A configuration error says all there is; other errors may be genrec's own bug.
            sys.stderr.write("(run with --log-level DEBUG for a traceback)\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
