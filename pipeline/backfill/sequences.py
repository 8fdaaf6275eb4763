"""``genrec backfill sequences``: lake files -> validated per-user histories, as a Beam pipeline.

Named steps, in flow order (one linear pipeline: see ``_keyed`` for why):

- ``ListFiles`` / ``ReadLake``: each input file in chunks of ``CHUNK_ROWS`` rows, as the
  stream's own records, by the lake's reader (``pipeline.lake.reader``: Parquet, JSON Lines,
  CSV, MovieLens): a row that cannot be split into its fields or typed, or whose line is not
  UTF-8 text, is a dead letter of its own; a file that cannot be read (corrupt, not Parquet,
  a header without the format's columns) becomes one dead letter naming it; the others go on.
- ``Validate``: ``pipeline.events.decode_records``, the decoder the trainer runs, so the lake
  is held to the same schema and rejects get the same reasons. Valid events with event time
  ``>= until`` are left out (counted ``after_cutoff``: the stream trains them). The valid
  events are keyed by user-hash shard (a stable hash of the canonical user key: the same
  user always lands in the same shard), one element per chunk and shard, never one per
  event; dead letters and counts get keys of their own.
- ``GroupByShard`` / ``WriteHistories``: per shard, every user's events in event-time order,
  ties in lake order (file order as the inputs are listed and sorted, then row order): one
  Parquet row per user (``user``, and lists ``item``, ``timestamp``, ``action``, ``value``)
  in ``shard-SSSSS-of-NNNNN.parquet``; every rejected row as a JSON line (the stream's
  dead-letter fields, plus ``file`` and ``file_row``: the 0-based row of a Parquet file, the
  1-based line of a text file) in ``deadletters.jsonl``, in lake order.

On the direct runner a progress line (rows read, rate, ETA from the inputs' bytes) is
logged every ``SequencesJob.progress_every_s``.

Counts (``rows`` = ``valid`` + ``rejected`` + ``after_cutoff``; the rejects by reason count
rows, so they sum to ``rejected``: ``chunk_counts``) travel through the pipeline as data
(summed at the group) into ``manifest.json``, with the inputs, the settings, the runner and the wall time. Inputs, the output directory and its
files go through Beam's ``FileSystems`` (``pipeline.lake.paths``): local paths, or
``gs://``, ``s3://``, ... where Beam's filesystem for the scheme is installed.
Runners (``runner_options``): Beam's in-process direct execution, Beam's Dask runner on a
dask.distributed cluster (``runner="dask"``; a local one of ``dask_workers`` processes unless
``dask_address`` names a scheduler), or any other Beam runner by name, its options given as
``beam_options``. The inputs and the output directory must be ones every worker sees.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from pipeline.events import decode_records
from pipeline.events.batch import concat_keys
from pipeline.events.records import Records
from pipeline.lake import paths
from pipeline.lake.reader import (
    MAX_HEADER_BYTES,
    Chunk,
    LakeFile,
    match_inputs,
    read_chunks,
)
from pipeline.state.grouping import factorize, hash_event_ids
from pipeline.stream.observability import duration

log = logging.getLogger(__name__)

CHUNK_ROWS = 65_536
PROGRESS_EVERY_S = 10.0  # as the trainer's observability.log_every_s
DEFAULT_SHARDS = 16
SHARD_NAME = "shard-{:05d}-of-{:05d}.parquet"
SHARD_GLOB = "shard-*-of-*.parquet"
DEAD_LETTERS = "deadletters.jsonl"
MANIFEST = "manifest.json"
COUNTS_FILE = ".counts.json"  # the pipeline's summed counts, read back into the manifest
_ROW_BITS = 40  # lake order = file index << 40 | row in file
# rows read = valid (before the cut-off) + rejected + after_cutoff (valid, at or after it);
# an unreadable file's rows are unknown: it is counted in unreadable_files alone
COUNTS = ("rows", "valid", "rejected", "after_cutoff", "users", "unreadable_files")


_PROGRESS: _Progress | None = None  # the run's progress line, where the run reads the lake


class _Progress:
    """The periodic progress line of a run (rows read, rate, ETA from the inputs' bytes),
    logged at INFO, as the trainer's is."""

    def __init__(self, files: Sequence[LakeFile], every_s: float) -> None:
        self.every_s = every_s
        self.before: dict[int, int] = {}  # file index -> bytes of the files before it
        total = 0
        for lake_file in files:
            self.before[lake_file.index] = total
            total += lake_file.size
        self.total = max(1, total)
        self.started = self.last = time.monotonic()
        self.rows = 0

    def advance(self, lake_file: LakeFile, rows: int, position: int) -> None:
        """``rows`` more rows read, up to byte ``position`` of ``lake_file``."""
        self.rows += rows
        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        self.last = now
        elapsed = max(now - self.started, 1e-9)
        read = self.before[lake_file.index] + min(position, lake_file.size)
        done = min(1.0, read / self.total)
        eta = duration(elapsed * (1 - done) / done) if done > 0 else "?"
        log.info(
            "backfill sequences: rows=%s (%s/s) %.0f%% of %.1f MB ETA %s",
            f"{self.rows:,}", f"{self.rows / elapsed:,.0f}", 100 * done, self.total / 1e6, eta,
        )  # fmt: skip


def _progress(lake_file: LakeFile, rows: int, position: int) -> None:
    if _PROGRESS is not None:
        _PROGRESS.advance(lake_file, rows, position)


def shard_of(users: np.ndarray, shards: int) -> np.ndarray:
    """Stable shard of each canonical user key (int keys by value, str keys by FNV-1a)."""
    out = np.empty(users.size, dtype=np.int64)
    if users.dtype.kind in "iu":
        return np.mod(users.astype(np.int64), shards)
    is_int = np.fromiter((type(k) is int for k in users.tolist()), bool, users.size)
    ints = users[is_int].astype(np.int64)
    out[is_int] = np.mod(ints, shards)
    strs = users[~is_int]
    if strs.size:
        out[~is_int] = np.mod(hash_event_ids(strs.astype(object), strs.size), shards)
    return out


@dataclass(frozen=True)
class Validated:
    """One chunk after validation."""

    columns: dict[str, np.ndarray]  # valid events before ``until``, with their lake order
    dead_letters: list[dict[str, Any]]
    counts: dict[str, int]  # ``chunk_counts``


def reject_row(reject: Any, codec: str, first: int) -> int | None:
    """The row of a chunk (0-based in it; ``first`` is the chunk's first row) that a reject
    of its decoding covers, or None for all of them. JSON: one record per row, so the
    reject's offset is its row; Arrow: one record per chunk, and a reject names its row or
    none (a payload that could not be read, or lacks a column)."""
    return reject.offset - first if codec == "json" else reject.row


def rejected_rows(rejects: Sequence[Any], codec: str, first: int, rows: int) -> np.ndarray:
    """bool [rows]: the rows of a chunk that ``rejects`` (its decoding's) cover."""
    bad = np.zeros(rows, dtype=bool)
    for reject in rejects:
        row = reject_row(reject, codec, first)
        bad[slice(None) if row is None else row] = True
    return bad


def reject_weights(rejects: Sequence[Any], codec: str, first: int, rows: int) -> list[int]:
    """Per reject of a chunk's decoding, the rows it counts for: the rows of the chunk it
    covers (a whole-payload reject: all of them) that no reject before it covers."""
    bad = np.zeros(rows, dtype=bool)
    weights = []
    for reject in rejects:
        row = reject_row(reject, codec, first)
        cover = slice(None) if row is None else slice(row, row + 1)
        weights.append(int((~bad[cover]).sum()))
        bad[cover] = True
    return weights


def chunk_counts(chunk: Chunk, result: Any, until: int | None) -> dict[str, int]:
    """The counts of a decoded chunk (``result``: its ``DecodeResult``): ``rows`` = ``valid``
    (before ``until``) + ``rejected`` + ``after_cutoff`` (valid, at or after ``until``), and
    ``rejected_<reason>``, which sum to ``rejected``: a reject counts the rows it covers."""
    _, first, rows, codec, _ = chunk
    counts = {"rows": rows, "rejected": 0}
    weights = reject_weights(result.rejects, codec, first, rows)
    for reject, weight in zip(result.rejects, weights, strict=True):
        key = "rejected_" + str(reject.reason)
        counts[key] = counts.get(key, 0) + weight
        counts["rejected"] += weight
    after = 0 if until is None else int((result.events.timestamp >= until).sum())
    counts["after_cutoff"] = after
    counts["valid"] = len(result.events) - after
    return counts


def letter_counts(letter: dict[str, Any]) -> dict[str, int]:
    """The counts of a dead letter ``read_chunks`` yields: an unreadable file (its rows are
    unknown) is counted apart from rows; a text row that cannot be split or typed is a row
    read and rejected."""
    if letter["file_row"] is None:
        return {"unreadable_files": 1}
    return {"rows": 1, "rejected": 1, f"rejected_{letter['reason']}": 1}


def sum_counts(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for part in counts:
        for name, value in part.items():
            total[name] = total.get(name, 0) + value
    return total


def by_reason(counts: Mapping[str, int]) -> dict[str, int]:
    """The ``rejected_<reason>`` counts of summed counts, by reason (they sum to
    ``rejected``)."""
    return {
        name.removeprefix("rejected_"): value
        for name, value in sorted(counts.items())
        if name.startswith("rejected_")
    }


def validate(chunk: Chunk, until: int | None) -> Validated:
    """The stream's decoder over one chunk; see ``Validated``."""
    lake_file, first, n, codec, payloads = chunk
    records = Records.run(payloads, codec, f"file:{lake_file.path}", first)
    result = decode_records(records)
    letters = []
    base = 0 if lake_file.format == "parquet" else 1  # Parquet rows count from 0, lines from 1
    for reject in result.rejects:
        row = reject_row(reject, codec, first)
        letters.append(
            {
                **reject.to_json_dict(),
                "file": lake_file.path,
                "file_row": None if row is None else first + row + base,
            }
        )
    rows = first + np.flatnonzero(~rejected_rows(result.rejects, codec, first, n))
    events = result.events
    if rows.size != len(events):
        raise AssertionError(f"{lake_file.path}: {len(events)} valid events for {rows.size} rows")
    keep = np.ones(len(events), bool) if until is None else events.timestamp < until
    columns = {
        "user": events.user_id[keep],
        "item": events.item_id[keep],
        "timestamp": events.timestamp[keep],
        "action": events.action[keep],
        "value": events.value[keep],
        "order": (np.int64(lake_file.index) << _ROW_BITS) + rows[keep],
    }
    return Validated(columns, letters, chunk_counts(chunk, result, until))


def split_by_shard(columns: dict[str, np.ndarray], shards: int) -> Iterator[tuple[int, dict]]:
    """(shard, the columns of its events) for each shard the chunk has events of."""
    shard = shard_of(columns["user"], shards)
    for s in np.unique(shard).tolist():
        pick = shard == s
        yield s, {name: values[pick] for name, values in columns.items()}


def write_shard(
    shard: int, parts: Sequence[dict[str, np.ndarray]], out_dir: str, shards: int
) -> tuple[str, int]:
    """One Parquet row per user of the shard, events in time order, ties in lake order;
    returns (path, users)."""
    cols = {
        name: concat_keys([p[name] for p in parts])
        if name in ("user", "item")
        else np.concatenate([p[name] for p in parts])
        for name in parts[0]
    }
    users, user_index = factorize(cols["user"])
    order = np.lexsort((cols["order"], cols["timestamp"], user_index))
    counts = np.bincount(user_index, minlength=len(users))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    lists = {}
    for name in ("item", "timestamp", "action", "value"):
        values = cols[name][order]
        lists[name] = pa.ListArray.from_arrays(
            pa.array(offsets, pa.int32()),
            _arrow_keys(values) if name == "item" else pa.array(values),
        )
    table = pa.table({"user": _arrow_keys(users), **lists})
    path = paths.join(out_dir, SHARD_NAME.format(shard, shards))
    paths.write_parquet(table, path)
    return path, len(users)


def _arrow_keys(values: np.ndarray) -> Any:
    """int64 when every key is an int, else strings (``5`` and ``"5"`` are one key anyway)."""

    if values.dtype.kind in "iu":
        return pa.array(values, pa.int64())
    listed = values.tolist()
    if all(type(k) is int for k in listed):
        return pa.array(listed, pa.int64())
    return pa.array([str(k) for k in listed], pa.string())


class RunnerSettings(Protocol):
    """The runner flags a backfill job carries (``--runner``, ``--dask-address``,
    ``--dask-workers``, ``--beam-option``): what ``runner_options`` and ``describe_runner``
    read."""

    runner: str  # "direct", "dask", or a Beam runner's name or class path
    dask_address: str | None
    dask_workers: int
    beam_options: tuple[str, ...]  # KEY=VALUE or --flag[=VALUE], for PipelineOptions


@dataclass(frozen=True)
class SequencesJob:
    """What ``backfill sequences`` runs on (the CLI's flags)."""

    inputs: tuple[str, ...]
    out: str
    format: str = "auto"
    until: int | None = None
    shards: int = DEFAULT_SHARDS
    runner: str = "direct"  # or "dask", or a Beam runner (runner_options)
    dask_address: str | None = None  # a running scheduler; None: a local cluster
    dask_workers: int = 2  # of that local cluster
    beam_options: tuple[str, ...] = ()  # PipelineOptions flags (beam_flag)
    progress_every_s: float = PROGRESS_EVERY_S  # the progress line's period (direct runner)


def _keyed(chunk: Any, until: int | None, shards: int) -> Iterator[tuple[tuple[str, int], Any]]:
    """One chunk as keyed parts: (("shard", s), columns), (("rejects", 0), dead letter),
    (("counts", 0), {...}).

    One stream into one ``GroupByKey`` (no fan-out, no multiple outputs, counts as data, not
    Beam metrics): Beam's Dask runner computes only one of several branches of a
    PCollection and has no metrics, and this way every runner gives the same outputs.
    """
    if isinstance(chunk, dict):
        yield ("rejects", 0), chunk
        yield ("counts", 0), letter_counts(chunk)
        return
    checked = validate(chunk, until)
    for letter in checked.dead_letters:
        yield ("rejects", 0), letter
    yield ("counts", 0), checked.counts
    if len(checked.columns["user"]):
        for shard, columns in split_by_shard(checked.columns, shards):
            yield ("shard", shard), columns


def _write_part(item: tuple[tuple[str, int], Iterable[Any]], out_dir: str, shards: int) -> int:
    """Write one group: a shard's histories, the dead letters or the summed counts."""
    (kind, number), parts = item
    if kind == "shard":
        return write_shard(number, list(parts), out_dir, shards)[1]
    if kind == "rejects":
        return _write_dead_letters(parts, paths.join(out_dir, DEAD_LETTERS))
    counts = sum_counts(parts)
    paths.write_bytes(paths.join(out_dir, COUNTS_FILE), json.dumps(counts).encode())
    return len(counts)


def _write_dead_letters(letters: Iterable[dict[str, Any]], path: str) -> int:
    """One JSON line per dead letter, in lake order (the same file on every runner);
    returns how many."""

    def place(letter: dict[str, Any]) -> tuple[str, int]:
        return letter["file"], -1 if letter["file_row"] is None else letter["file_row"]

    letters = sorted(letters, key=place)
    paths.write_bytes(path, "".join(json.dumps(letter) + "\n" for letter in letters).encode())
    return len(letters)


def run_sequences(job: SequencesJob) -> dict[str, Any]:
    """Run the pipeline on the chosen runner; returns the manifest (also written)."""
    import apache_beam as beam  # lazy: quiet_beam runs before Beam loads

    if job.shards < 1:
        raise ValueError(f"--shards must be >= 1, got {job.shards}")
    started = time.monotonic()
    paths.use_options(pipeline_flags(job))  # a bad runner or option fails here, first
    names = [MANIFEST, DEAD_LETTERS, COUNTS_FILE]
    names += [SHARD_NAME.format(s, job.shards) for s in range(job.shards)]
    paths.check_out(job.out, job.inputs, "--input", names)
    files = match_inputs(job.inputs, job.format)
    out = job.out
    paths.make_dirs(out)
    counts_file, dead_letters = paths.join(out, COUNTS_FILE), paths.join(out, DEAD_LETTERS)
    # a rerun into the same directory keeps nothing old
    paths.delete([*paths.matching(paths.join(out, SHARD_GLOB)), counts_file, dead_letters])
    with runner_options(job) as options, _progress_line(job, files):
        with beam.Pipeline(options=options) as pipeline:
            _ = (
                pipeline
                | "ListFiles" >> beam.Create(files)
                | "ReadLake" >> beam.FlatMap(read_chunks, CHUNK_ROWS, _progress)
                | "Validate" >> beam.FlatMap(_keyed, job.until, job.shards)
                | "GroupByShard" >> beam.GroupByKey()
                | "WriteHistories" >> beam.Map(_write_part, out, job.shards)
            )
        close_runner_client(pipeline)
    # no counts file: the lake had no rows and no unreadable file (nothing reached the group)
    counts = json.loads(paths.read_bytes(counts_file)) if paths.exists(counts_file) else {}
    paths.delete([counts_file])
    if not paths.exists(dead_letters):
        paths.write_bytes(dead_letters, b"")
    shard_files = paths.matching(paths.join(out, SHARD_GLOB))
    counts["users"] = sum(_parquet_rows(path) for path in shard_files)
    manifest = {
        "created_at": datetime.now(UTC).isoformat(),
        "inputs": [asdict(f) for f in files],
        "until": job.until,
        "counts": {name: counts.get(name, 0) for name in COUNTS},
        "rejected_by_reason": by_reason(counts),
        "settings": {"format": job.format, "shards": job.shards, "chunk_rows": CHUNK_ROWS},
        "runner": describe_runner(job),
        "shards": [paths.name(path) for path in shard_files],
        "dead_letters": DEAD_LETTERS,
        "wall_seconds": round(time.monotonic() - started, 2),
    }
    paths.write_bytes(paths.join(out, MANIFEST), (json.dumps(manifest, indent=2) + "\n").encode())
    problem = nothing_before_cutoff(job.inputs, job.format, len(files), counts)
    if problem is not None:  # the output stays, to look into
        raise ValueError(
            f"{problem}{_first_letter(dead_letters)}; every dead letter is in {dead_letters}"
        )
    return manifest


def nothing_before_cutoff(
    inputs: Sequence[str], format: str, files: int, counts: Mapping[str, int]
) -> str | None:
    """What is wrong with a lake that has rows or unreadable files but gives no valid event
    before the cut-off (the wrong --format or --until, say), or None. Both backfill jobs
    refuse such a lake: its empty result is never what was meant. A lake without rows
    (empty or header-only files) is not refused. ``counts``: the jobs' summed counts,
    reasons included."""
    valid, rows, after, unreadable = (
        counts.get(name, 0) for name in ("valid", "rows", "after_cutoff", "unreadable_files")
    )
    if valid or not (rows or unreadable):
        return None
    where = f"--input {','.join(inputs)}"
    if after:
        return (
            f"{where}: no valid row before --until in {files} file(s): all {after} valid "
            "rows are at or after it; check --until"
        )
    reasons = ", ".join(f"{n} {r}" for r, n in by_reason(counts).items())
    if unreadable:
        reasons = ", ".join(filter(None, [reasons, f"{unreadable} unreadable file(s)"]))
    return (
        f"{where}: no valid row in {files} file(s), {rows} rows ({reasons}); "
        f"check the files and --format (now {format})"
    )


def _first_letter(path: str) -> str:
    """'; the first: FILE row R: REASON: MESSAGE', or nothing when the first dead letter is
    too long to read here (a whole chunk's payload)."""
    try:
        first = json.loads(paths.first_line(path, MAX_HEADER_BYTES))
    except ValueError:
        return ""
    row = "" if first["file_row"] is None else f" row {first['file_row']}"
    return f"; the first: {first['file']}{row}: {first['reason']}: {first['message']}"


def _parquet_rows(path: str) -> int:
    with paths.parquet_file(path) as parquet:
        return parquet.metadata.num_rows


@contextmanager
def _progress_line(job: SequencesJob, files: Sequence[LakeFile]) -> Iterator[None]:
    """The run's progress line. A module attribute, not an argument of the transforms: Beam
    pickles those, so each bundle would count on its own copy. The direct runner reads the
    lake in this process, so it finds it there; Dask workers are other processes, which have
    none (no progress line on Dask)."""
    global _PROGRESS
    _PROGRESS = _Progress(files, job.progress_every_s) if job.runner == "direct" else None
    try:
        yield
    finally:
        _PROGRESS = None


def close_runner_client(pipeline: Any) -> None:
    """Close the client Beam's Dask runner opens and leaves open (after the run)."""
    client = getattr(pipeline.result, "client", None)
    if client is not None:
        client.close()


# Options genrec sets from its own flags: a --beam-option for one of them is refused.
_OWN_OPTIONS = {"runner": "--runner", "dask_client_address": "--dask-address"}
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
# ``direct``: the FnApiRunner, the in-process engine Beam's DirectRunner runs batch pipelines
# on. The DirectRunner itself (Beam 2.77) first tries the PrismRunner, which downloads a
# binary from GitHub (and, offline, falls back to the FnApiRunner after the failed download).
DIRECT_RUNNER = "FnApiRunner"


def beam_flag(option: str) -> str:
    """One ``--beam-option`` as a ``PipelineOptions`` flag: ``KEY=VALUE`` -> ``--KEY=VALUE``;
    ``--flag`` and ``--flag=VALUE`` as given. ``ValueError`` for anything else, and for an
    option genrec sets from a flag of its own (``--runner``, ``--dask-address``)."""
    flag = option if option.startswith("--") else f"--{option}"
    key = flag[2:].split("=", 1)[0]
    if not key or not (option.startswith("--") or "=" in option):
        raise ValueError(
            f"--beam-option {option!r} is neither KEY=VALUE nor --FLAG[=VALUE] (a Beam "
            "pipeline option), e.g. --beam-option flink_master=HOST:8081 or "
            "--beam-option=--save_main_session"
        )
    if key in _OWN_OPTIONS:
        raise ValueError(f"--beam-option {option!r}: set {key} with {_OWN_OPTIONS[key]}")
    return flag


def pipeline_flags(job: RunnerSettings) -> list[str]:
    """The ``PipelineOptions`` flags of the job's runner and its ``beam_options`` (these last:
    they may override genrec's defaults; a local Dask cluster's address is added by
    ``runner_options``). ``ValueError`` for a bad option or a runner Beam does not know."""
    flags = [beam_flag(option) for option in job.beam_options]
    if job.runner == "direct":
        return [f"--runner={DIRECT_RUNNER}", "--direct_num_workers=1", *flags]
    if job.runner == "dask":
        return [f"--runner={DASK_RUNNER}", *flags]
    _check_runner(job.runner)
    return [f"--runner={job.runner}", *flags]


def _check_runner(name: str) -> None:
    """Fail before any work on a runner name Beam cannot resolve (making one downloads and
    starts nothing: that happens when a pipeline runs)."""
    from apache_beam.runners.runner import create_runner  # lazy: quiet_beam runs first

    try:
        create_runner(name)
    except (ValueError, ImportError, AttributeError) as err:
        raise ValueError(
            f"--runner {name!r} is neither direct, dask nor a Beam runner that can be loaded: "
            f"{' '.join(str(err).split())}"
        ) from None


def describe_runner(job: RunnerSettings) -> str:
    """The runner in words, for a manifest, with the ``--beam-option`` flags Beam gets."""
    if job.runner == "direct":
        runner = "DirectRunner (in-process)"
    elif job.runner == "dask":
        where = job.dask_address or f"a local cluster of {job.dask_workers} worker processes"
        runner = f"DaskRunner on {where}"
    else:
        runner = job.runner
    flags = " ".join(beam_flag(option) for option in job.beam_options)
    return f"{runner} with {flags}" if flags else runner


class _BeamRootWarnings(logging.Filter):
    """Drops the warnings Beam's own modules log on the root logger, not on Beam's loggers
    (which the CLI quiets): "apitools not found ..." at import, "Resource module is not
    available ..." at every model load. They are about Beam's optional parts (BigQuery, memory
    figures of RunInference), nothing a backfill job uses; errors still pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        from_beam = f"{os.sep}apache_beam{os.sep}" in record.pathname
        return not (from_beam and record.levelno <= logging.WARNING)


def quiet_beam() -> None:
    """Before Beam is imported (a backfill command's first step; each local Dask worker's):
    ``_BeamRootWarnings`` on the root logger, once, and Beam's Dask runner's note on every
    run that its default partition size changed kept to errors. Not at --log-level DEBUG."""
    root = logging.getLogger()
    if root.getEffectiveLevel() <= logging.DEBUG:
        return
    if not any(isinstance(f, _BeamRootWarnings) for f in root.filters):
        root.addFilter(_BeamRootWarnings())
    logging.getLogger("apache_beam.runners.dask.transform_evaluator").setLevel(logging.ERROR)


@contextmanager
def runner_options(job: RunnerSettings) -> Iterator[Any]:
    """Pipeline options for the runner (``pipeline_flags``); a local Dask cluster lives as
    long as the run. Runners other than direct and dask get the flags untouched."""
    from apache_beam.options.pipeline_options import PipelineOptions  # lazy: as create_runner

    # always explicit flags: options come from here, never from the process's own sys.argv
    flags = pipeline_flags(job)
    if job.runner != "dask":
        yield PipelineOptions(flags)
        return
    try:
        from distributed import Client, LocalCluster  # optional: only --runner dask needs it
    except ImportError as err:
        raise ValueError(
            "--runner dask needs dask.distributed (pip install 'dask[distributed]')"
        ) from err
    quiet = logging.getLogger().getEffectiveLevel() > logging.DEBUG
    if quiet:
        # importing distributed sets its loggers to INFO (every scheduler step): quiet them
        for name in list(logging.root.manager.loggerDict):
            if name == "distributed" or name.startswith("distributed."):
                logging.getLogger(name).setLevel(logging.WARNING)
    if job.dask_address:
        yield PipelineOptions([*flags, f"--dask_client_address={job.dask_address}"])
        return
    with (
        LocalCluster(
            n_workers=job.dask_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # any free port: never a clash with another cluster
            silence_logs=logging.WARNING,
        ) as cluster,
        Client(cluster) as client,
    ):
        if quiet:  # the workers print to this terminal too
            client.run(quiet_beam)
        yield PipelineOptions([*flags, f"--dask_client_address={cluster.scheduler_address}"])
