"""``genrec backfill recommend``: a registry version's top-K items for every backfilled user.

A job of ``genrec backfill`` that lives with the registry: ``pipeline/`` never imports a
connector, so ``connectors.registry.commands.register`` (a ``genrec.commands`` entry point,
registered after ``pipeline.commands.backfill``) adds it to the ``backfill`` parser's jobs.
See connectors/registry/recommend.py for the pipeline and docs/backfill.md for the flow.
"""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.commands.backfill import add_runner_arguments, runner_settings

DEFAULT_BATCH_USERS = 1024  # scores of a batch: B x vocab.capacity floats, twice
# The decompressed vocabulary's default bound: ~25M items with int keys.
DEFAULT_MAX_VOCAB_BYTES = 1 << 30


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``recommend`` to the jobs of the ``genrec backfill`` subcommand, if there is one
    (a parser made of the registry's commands alone has none)."""
    from connectors.registry.commands import add_model_argument, add_registry_argument

    jobs = _backfill_jobs(subparsers)
    if jobs is None:
        return
    job = jobs.add_parser(
        "recommend",
        help="a registry version's top-K items for every user of a `backfill sequences` output",
        description=(
            "Score every user of a `genrec backfill sequences` output with a published "
            "version (Beam RunInference; every artefact's sha256 is checked against its "
            "manifest) and write each user's top K items, best first, with their scores: "
            "part-SSSSS-BBBBB.parquet files (columns user, items, scores, version) and "
            "manifest.json. A user's context is the last max_len events whose item the "
            "version's vocabulary knows (unknown items are skipped); the query time is the "
            "backfill's --until (else the user's last event time). Only the version's live "
            "catalogue is recommended; see docs/backfill.md, Batch top-K."
        ),
    )
    add_registry_argument(job)
    add_model_argument(job)
    job.add_argument(
        "--version",
        default="latest",
        metavar="latest|N",
        help="version to score with: latest (or another alias), a number or vNNNNNN; an alias "
        "is resolved once, so every worker uses the same version (default: %(default)s)",
    )
    job.add_argument(
        "--histories",
        required=True,
        metavar="DIR",
        help="output directory of `genrec backfill sequences` (its manifest.json and "
        "shard-*.parquet files), local or gs://, s3://, azfs://, hdfs:// (with Beam's "
        "filesystem for it: its apache-beam extra); every file is checked before "
        "scoring starts, at most GENREC_BACKFILL_MAX_SHARD_USERS / _EVENTS per shard "
        "(docs/backfill.md, 'Reading backfill output')",
    )
    job.add_argument(
        "--k", type=int, required=True, help="items per user (fewer when fewer are left)"
    )
    job.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output directory, local or on object storage as --histories (created; a "
        "rerun replaces its part files and manifest; refused when it is a file, or is or "
        "lies under --histories)",
    )
    job.add_argument(
        "--keep-history",
        action="store_true",
        help="may recommend items of the user's own history (default: they are excluded)",
    )
    job.add_argument(
        "--batch-users",
        type=int,
        default=DEFAULT_BATCH_USERS,
        metavar="B",
        help="users per inference batch and per output part; a batch's scores take about "
        "B x vocab.capacity x 8 bytes (default: %(default)s)",
    )
    job.add_argument(
        "--max-vocab-bytes",
        type=int,
        default=DEFAULT_MAX_VOCAB_BYTES,
        metavar="BYTES",
        help="refuse a version whose vocab.npz holds (or decompresses to) more than this, "
        "before reading it (default: %(default)s, about 25M items)",
    )
    add_runner_arguments(job, "--registry, --histories and --out")
    job.set_defaults(func=_recommend)


def _backfill_jobs(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction | None:
    """The jobs of ``genrec backfill`` (``pipeline.commands.backfill`` registers it before
    the connectors' commands: ``pipeline.cli.COMMAND_MODULES``), or None."""
    backfill = subparsers.choices.get("backfill")
    actions = backfill._actions if backfill is not None else []
    return next((a for a in actions if isinstance(a, argparse._SubParsersAction)), None)


def _recommend(args: argparse.Namespace) -> int:
    from pipeline.backfill.sequences import quiet_beam

    quiet_beam()  # before Beam is imported
    from connectors.registry.errors import RegistryError
    from connectors.registry.recommend import RecommendJob, run_recommend

    job = RecommendJob(
        args.registry,
        args.version,
        args.histories,
        args.k,
        args.out,
        args.keep_history,
        args.batch_users,
        **runner_settings(args),
        model=args.model,
        max_vocab_bytes=args.max_vocab_bytes,
    )
    try:
        manifest = run_recommend(job)
    except RegistryError as err:  # a missing version or a bad file: the message names it
        print(f"genrec backfill recommend: error: {err}", file=sys.stderr)
        return 1
    shown = ("model", "version", "users", "users_without_items", "runner", "wall_seconds")
    print(json.dumps({k: manifest[k] for k in shown}, indent=2))
    return 0
