"""``genrec backfill sequences|bootstrap|recommend``: the batch jobs on an event lake.

``sequences``: an event lake -> per-user histories (Apache Beam); ``bootstrap``: the
checkpoint ``genrec train`` continues from; ``recommend``: a registry version's top-K items
for every backfilled user (the registry comes from the ``genrec.registries`` plugin). See
pipeline/backfill/ for the jobs and docs/backfill.md for the flow.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

from pipeline.stream.publishing import DEFAULT_BATCH_USERS, DEFAULT_MAX_VOCAB_BYTES

DEFAULT_REGISTRY = "./registry"


def _cutoff(text: str) -> int:
    """``--until``: Unix seconds, or an ISO 8601 time (UTC when it names no zone), in
    0..``histories.MAX_UNTIL``: the range the readers of the output accept in its manifest."""
    from pipeline.backfill.histories import MAX_UNTIL

    try:
        seconds = int(text)
    except ValueError:
        seconds = _iso_seconds(text)
    if not 0 <= seconds <= MAX_UNTIL:
        raise argparse.ArgumentTypeError(
            f"--until {text!r} is outside 1970-01-01..9999-12-31T23:59:59 (0..{MAX_UNTIL} s)"
        )
    return seconds


def _iso_seconds(text: str) -> int:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--until {text!r} is neither Unix seconds nor an ISO 8601 time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def register(subparsers: argparse._SubParsersAction) -> None:
    from pipeline.backfill.sequences import CHUNK_ROWS, DEFAULT_SHARDS
    from pipeline.lake.reader import FORMATS

    backfill = subparsers.add_parser(
        "backfill",
        help="batch jobs that bring an event lake's history in (Apache Beam; warm start)",
        description=(
            "Batch backfill jobs: sequences (Apache Beam: direct, Dask or another Beam "
            "runner; local files or object storage), bootstrap (the checkpoint `genrec "
            "train` continues from at a cut-off) and recommend (batch top-K from a registry "
            "version). See docs/backfill.md."
        ),
    )
    jobs = backfill.add_subparsers(dest="job", metavar="JOB", required=True)
    seq = jobs.add_parser(
        "sequences",
        help="lake files -> validated per-user histories (Parquet shards), dead letters, manifest",
        description=(
            "Read Parquet / JSON Lines / CSV / MovieLens event files, validate every row with the stream's own "
            f"decoder (chunks of {CHUNK_ROWS:,} rows), and write each user's events in event-"
            "time order (ties in lake order: inputs as listed, each pattern's files sorted, "
            "then rows) as one Parquet row per user in user-hash shards, every rejected row "
            "to deadletters.jsonl (with its file and row) and the counts to manifest.json. "
            "Text lines that are not UTF-8 or hold a NUL byte are dead letters of their own "
            "(undecodable). A lake with rows but no valid one is an error (exit 2; the "
            "output stays, to look into)."
        ),
    )
    seq.add_argument(
        "--input",
        required=True,
        action="append",
        help="file or glob (repeat, or separate with commas), local or on any filesystem "
        "Beam has (gs://, s3://, azfs://, hdfs://: with its apache-beam extra); Parquet and "
        "CSV columns user_id, item_id, action, timestamp, optional value and event_id; JSONL: "
        "one event per line; MovieLens ratings.csv / ratings.dat as published",
    )
    seq.add_argument(
        "--format",
        choices=FORMATS,
        default="auto",
        help="input format; auto: by extension (.parquet/.pq, .jsonl/.ndjson/.json, .dat: "
        "movielens-dat, .csv: movielens-csv when the header is MovieLens's "
        "userId,movieId,rating,timestamp, else csv with the event schema's column names) "
        "(default: %(default)s)",
    )
    seq.add_argument(
        "--until",
        type=_cutoff,
        help="cut-off T (Unix seconds or ISO 8601, 1970..9999): only events with time < T go "
        "into the histories; later valid ones are counted as after_cutoff (default: none)",
    )
    seq.add_argument(
        "--out",
        required=True,
        help="output directory, local or gs://, s3://, ... as --input (created; a rerun "
        "replaces its shards, dead letters and manifest; refused, before anything is read, "
        "when it is a file or lies inside an --input, i.e. under its path or matched by its "
        "glob). train-offline --data reads local directories only",
    )
    seq.add_argument(
        "--shards",
        type=int,
        default=DEFAULT_SHARDS,
        help="user-hash shards, one Parquet file each (default: %(default)s)",
    )
    add_runner_arguments(seq, "the inputs and --out")
    seq.set_defaults(func=_sequences)
    _register_bootstrap(jobs)
    _register_recommend(jobs)


def add_registry_argument(parser: argparse.ArgumentParser) -> None:
    """``--registry URI`` (default ``$GENREC_REGISTRY``, else ./registry)."""
    parser.add_argument(
        "--registry",
        default=os.environ.get("GENREC_REGISTRY", DEFAULT_REGISTRY),
        metavar="URI",
        help="registry location: path, file://, s3://, gs:// or hdfs:// URI "
        "(default: $GENREC_REGISTRY, else ./registry)",
    )


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    """``--model NAME``: which of the registry's models (default: its only one)."""
    parser.add_argument(
        "--model",
        default=None,
        metavar="NAME",
        help="the registry's model: 'genrec train' publishes under its run name (run_name, "
        "else synthetic, file-<stem>, kafka-<topic>); 'default' is a registry's model from "
        "before model names (default: the registry's only model; an error lists them when "
        "it has several)",
    )


def add_runner_arguments(parser: argparse.ArgumentParser, workers_see: str) -> None:
    """``--runner``, ``--dask-address``, ``--dask-workers``, ``--beam-option`` of a Beam job;
    ``workers_see`` names the paths a remote cluster's workers must reach."""
    parser.add_argument(
        "--runner",
        default="direct",
        metavar="direct|dask|RUNNER",
        help="direct: Beam's in-process execution (downloads nothing); dask: Beam's Dask "
        "runner on a dask.distributed cluster (--dask-address, or a local one); any other "
        "name is a Beam runner, given its --beam-option flags untouched: FlinkRunner, "
        "SparkRunner, DataflowRunner, PortableRunner, ... or a runner class's dotted path "
        "(untested here: see docs/backfill.md, Runners) (default: %(default)s)",
    )
    parser.add_argument(
        "--dask-address",
        help="scheduler of a running dask.distributed cluster (tcp://HOST:PORT); its workers "
        f"must see {workers_see} (default: start a local cluster)",
    )
    parser.add_argument(
        "--dask-workers",
        type=int,
        default=2,
        help="worker processes of the local Dask cluster (default: %(default)s)",
    )
    add_beam_option_argument(
        parser,
        "a Beam pipeline option for PipelineOptions, with every runner (repeat): KEY=VALUE is "
        "passed as --KEY=VALUE, e.g. flink_master=HOST:8081, environment_type=LOOPBACK, "
        "hdfs_host=NAMENODE",
    )


def add_beam_option_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--beam-option`` (repeatable); ``what`` says what the options are for."""
    parser.add_argument(
        "--beam-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"{what}; a flag as given, with '=': --beam-option=--FLAG[=VALUE]. The manifest "
        "records them as given: pass no secrets this way. runner and dask_client_address "
        "come from --runner and --dask-address",
    )


def runner_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The runner fields of a job (``pipeline.backfill.sequences.RunnerSettings``) from the
    flags ``add_runner_arguments`` adds."""
    return {
        "runner": args.runner,
        "dask_address": args.dask_address,
        "dask_workers": args.dask_workers,
        "beam_options": tuple(args.beam_option),
    }


def _sequences(args: argparse.Namespace) -> int:
    from pipeline.backfill.sequences import SequencesJob, quiet_beam, run_sequences

    quiet_beam()  # before Beam is imported

    inputs = tuple(p.strip() for arg in args.input for p in arg.split(",") if p.strip())
    job = SequencesJob(
        inputs, args.out, args.format, args.until, args.shards, **runner_settings(args)
    )
    manifest = run_sequences(job)
    shown = ("counts", "rejected_by_reason", "shards", "runner", "wall_seconds")
    print(json.dumps({k: manifest[k] for k in shown}, indent=2))
    return 0


def _register_bootstrap(jobs: argparse._SubParsersAction) -> None:
    from pipeline.commands.train import add_settings_arguments
    from pipeline.lake.reader import FORMATS

    boot = jobs.add_parser(
        "bootstrap",
        help="lake files before T -> the checkpoint `genrec train` continues from at T",
        description=(
            "Replay every lake row before the cut-off T, in event-time order (an external "
            "sort that spills to checkpoint.dir), through the trainer's own state code "
            "(store, vocabulary, counters; no model ranking) and write the result as a "
            "checkpoint in the trainer's checkpoint.dir, with T in it. A "
            "`genrec train` with the same settings then resumes from it: it skips events "
            "before T (and rejected records stamped before T) and starts Kafka partitions at "
            "T (offsets_for_times). Give the trainer's settings as for `genrec train` "
            '(--config, GENREC_ variables, --set); see docs/backfill.md, "Bootstrap and hand-off".'
        ),
    )
    boot.add_argument(
        "--input",
        required=True,
        action="append",
        help="lake file or glob (repeat, or separate with commas), in lake order, as for "
        "`backfill sequences`",
    )
    boot.add_argument(
        "--format", choices=FORMATS, default="auto", help="input format (default: %(default)s)"
    )
    boot.add_argument(
        "--until",
        type=_cutoff,
        required=True,
        help="cut-off T (Unix seconds or ISO 8601, 1970..9999; UTC when no zone): the "
        "backfill accounts for events before T, the stream for the rest",
    )
    add_settings_arguments(boot)
    boot.add_argument(
        "--weights",
        metavar="DIR",
        help="start the model from this `genrec train-offline --out` directory (or its "
        "checkpoint folder; same model settings; item rows are moved to the vocabulary's) "
        "instead of a fresh one",
    )
    add_beam_option_argument(
        boot,
        "an option of Beam's filesystems for reading --input (repeat): KEY=VALUE, e.g. "
        "hdfs_host=NAMENODE, s3_endpoint_url=URL, s3_region_name=REGION",
    )
    boot.add_argument(
        "--force",
        action="store_true",
        help="write even when checkpoint.dir already holds checkpoints",
    )
    boot.set_defaults(func=_bootstrap)


def _bootstrap(args: argparse.Namespace) -> int:
    from pipeline.backfill.sequences import quiet_beam

    quiet_beam()  # before Beam is imported
    from pipeline.backfill.bootstrap import BootstrapJob, run_bootstrap
    from pipeline.stream.config import dotted_overrides, load_config

    cfg = load_config(args.config, dotted_overrides(args.overrides))
    inputs = tuple(p.strip() for arg in args.input for p in arg.split(",") if p.strip())
    manifest = run_bootstrap(
        BootstrapJob(
            inputs,
            args.until,
            cfg,
            args.format,
            args.weights,
            args.force,
            tuple(args.beam_option),
        )
    )
    shown = ("checkpoint", "counts", "rejected_by_reason", "users", "items_held", "wall_s")
    print(json.dumps({k: manifest[k] for k in shown}, indent=2))
    return 0


def _register_recommend(jobs: argparse._SubParsersAction) -> None:
    """``recommend``: scores with a version of the ``genrec.registries`` plugin's registry."""
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
        "--rerank",
        action="store_true",
        help="re-order each user's top K by a ranking task's probability (the version's "
        "ranking head; the K items as candidates after the user's history); the scores "
        "written are those probabilities; a version without ranking heads is refused",
    )
    job.add_argument(
        "--rerank-task",
        metavar="NAME",
        help="the ranking task --rerank orders by (default: the version's first task)",
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


def _recommend(args: argparse.Namespace) -> int:
    from pipeline.backfill.sequences import quiet_beam

    quiet_beam()  # before Beam is imported
    from pipeline.backfill.recommend import RecommendJob, run_recommend
    from pipeline.plugins import PluginNotFoundError
    from pipeline.stream.publishing import PublishError

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
        rerank=args.rerank,
        rerank_task=args.rerank_task,
    )
    try:
        manifest = run_recommend(job)
    except (PublishError, PluginNotFoundError) as err:  # e.g. a missing version, a bad file
        print(f"genrec backfill recommend: error: {err}", file=sys.stderr)
        return 1
    shown = ("model", "version", "users", "users_without_items", "runner", "wall_seconds")
    print(json.dumps({k: manifest[k] for k in shown}, indent=2))
    return 0
