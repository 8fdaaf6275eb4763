"""The ``genrec`` command line: one entry point, one module per subcommand group.

Each module in ``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its
subcommand(s) and sets ``func`` (called with the parsed args; returns an exit code).
Modules are imported only when listed, so ``genrec --help`` stays quick.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMAND_MODULES: tuple[str, ...] = (
    "pipeline.commands.offline",
    "pipeline.commands.kafka",
    "pipeline.commands.registry",
    "pipeline.commands.train",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genrec",
        description=(
            "Train HSTU generative recommenders online from user-event streams. "
            "Run 'genrec COMMAND --help' for the options of each command."
        ),
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging verbosity (default: INFO)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.log_level != "DEBUG":
        # kafka-python logs every connection step at INFO; genrec's own lines say what matters.
        logging.getLogger("kafka").setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as err:
        # Bad settings, files or addresses (pydantic's ValidationError is a ValueError): the
        # message says what and where; the traceback only helps when debugging genrec itself.
        if args.log_level == "DEBUG":
            raise
        prog = f"genrec {args.command}" if args.command else "genrec"
        sys.stderr.write(f"{prog}: error: {err}\n(run with --log-level DEBUG for a traceback)\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
