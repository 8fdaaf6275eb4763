"""``genrec backfill sequences``: lake files -> validated per-user histories, as a Beam pipeline.

Named steps, in flow order (one linear pipeline: see ``_keyed`` for why):

- ``ListFiles`` / ``ReadLake``: each input file in chunks of ``CHUNK_ROWS`` rows, as the
  stream's own records: a Parquet file's record batches become Arrow IPC payloads (its
  columns are the event schema's: ``user_id``, ``item_id``, ``action``, ``timestamp``,
  optional ``value`` and ``event_id``), a JSON Lines file's lines JSON payloads. A file that
  cannot be read (corrupt, not Parquet) becomes one dead letter naming it; the others go on.
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
  1-based line of a JSON Lines file) in ``deadletters.jsonl``, in lake order.

Counts travel through the pipeline as data (summed by ``CombineGlobally``) into
``manifest.json``, with the inputs, the settings, the runner and the wall time. Inputs are
local paths or globs in this version. Runners: Beam's in-process direct runner, or Beam's
Dask runner on a dask.distributed cluster (``runner="dask"``; a local one of
``dask_workers`` processes unless ``dask_address`` names a scheduler). The output directory
must be one that every worker sees (a local one for a local cluster).
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CHUNK_ROWS = 65_536
DEFAULT_SHARDS = 16
FORMATS = ("auto", "parquet", "jsonl")
SHARD_NAME = "shard-{:05d}-of-{:05d}.parquet"
DEAD_LETTERS = "deadletters.jsonl"
MANIFEST = "manifest.json"
COUNTS_FILE = ".counts.json"  # the pipeline's summed counts, read back into the manifest
_ROW_BITS = 40  # lake order = file index << 40 | row in file
# rows read = valid + rejected; valid = trained by the stream's history + after_cutoff
COUNTS = ("rows", "valid", "rejected", "after_cutoff", "users", "unreadable_files")


@dataclass(frozen=True)
class LakeFile:
    """One input file: its position in lake order, path, size and format."""

    index: int
    path: str
    size: int
    format: str


def match_inputs(patterns: Sequence[str], format: str = "auto") -> list[LakeFile]:
    """The files the patterns (paths or globs) name, in lake order: patterns as given, each
    one's matches sorted by path. ``FileNotFoundError`` for a pattern that matches nothing."""
    from apache_beam.io.filesystems import FileSystems

    if format not in FORMATS:
        raise ValueError(f"unknown --format {format!r}; choose one of {', '.join(FORMATS)}")
    files: list[LakeFile] = []
    seen: set[str] = set()
    for pattern in patterns:
        matched = FileSystems.match([pattern])[0].metadata_list
        if not matched:
            raise FileNotFoundError(f"--input {pattern!r} matches no file; check the path")
        for meta in sorted(matched, key=lambda m: m.path):
            if meta.path not in seen:
                seen.add(meta.path)
                fmt = _file_format(meta.path, format)
                files.append(LakeFile(len(files), meta.path, meta.size_in_bytes, fmt))
    return files


def _file_format(path: str, format: str) -> str:
    if format != "auto":
        return format
    suffix = Path(path).suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    raise ValueError(
        f"{path}: cannot tell the format from the name; pass --format parquet or jsonl"
    )


# A chunk of one file: (file, first row of the chunk in the file, its rows, codec, payloads).
Chunk = tuple[LakeFile, int, int, str, list[bytes]]


def read_chunks(lake_file: LakeFile) -> Iterator[Chunk | dict[str, Any]]:
    """The file's chunks; a file that cannot be read yields one dead-letter dict instead."""
    from apache_beam.io.filesystems import FileSystems

    try:
        with FileSystems.open(lake_file.path) as handle:
            if lake_file.format == "parquet":
                yield from _parquet_chunks(lake_file, handle)
            else:
                yield from _jsonl_chunks(lake_file, handle)
    except Exception as err:  # corrupt or unreadable file: its dead letter, the rest goes on
        yield {
            "reason": "unreadable_file",
            "message": f"cannot read {lake_file.format} file {lake_file.path}: "
            f"{type(err).__name__}: {' '.join(str(err).split())[:500]}",
            "file": lake_file.path,
            "file_row": None,
        }


def _parquet_chunks(lake_file: LakeFile, handle: Any) -> Iterator[Chunk]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = 0
    for batch in pq.ParquetFile(handle).iter_batches(batch_size=CHUNK_ROWS):
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, batch.schema) as writer:
            writer.write_batch(batch)
        yield lake_file, row, batch.num_rows, "arrow", [sink.getvalue()]
        row += batch.num_rows


def _jsonl_chunks(lake_file: LakeFile, handle: Any) -> Iterator[Chunk]:
    lines: list[bytes] = []
    first = 0
    for number, line in enumerate(handle):
        lines.append(line.rstrip(b"\r\n"))
        if len(lines) == CHUNK_ROWS:
            yield lake_file, first, len(lines), "json", lines
            first, lines = number + 1, []
    if lines:
        yield lake_file, first, len(lines), "json", lines


def shard_of(users: np.ndarray, shards: int) -> np.ndarray:
    """Stable shard of each canonical user key (int keys by value, str keys by FNV-1a)."""
    from pipeline.state.store import hash_event_ids

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
    rows: int  # rows read
    rejected: int  # rows rejected (a whole-payload reject covers all of its rows)
    after_cutoff: int  # valid events at or after ``until``


def validate(chunk: Chunk, until: int | None) -> Validated:
    """The stream's decoder over one chunk; see ``Validated``."""
    from pipeline.events import decode_records
    from pipeline.sources.base import Records

    lake_file, first, n, codec, payloads = chunk
    records = Records.run(payloads, codec, f"file:{lake_file.path}", first)
    result = decode_records(records)
    letters = []
    good = np.ones(n, dtype=bool)  # per row of the chunk
    for reject in result.rejects:
        # json: one line per record (offset = line index); arrow: one payload, row inside it
        row = reject.offset if codec == "json" else first + (reject.row or 0)
        whole = codec == "arrow" and reject.row is None
        if whole:
            good[:] = False
        else:
            good[row - first] = False
        letters.append(
            {
                **reject.to_json_dict(),
                "file": lake_file.path,
                "file_row": None if whole else (row + 1 if codec == "json" else row),
            }
        )
    rows = first + np.flatnonzero(good)
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
    return Validated(columns, letters, n, n - rows.size, int((~keep).sum()))


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
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.state.grouping import factorize

    cols = {
        name: _concat_keys([p[name] for p in parts])
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
    path = str(Path(out_dir) / SHARD_NAME.format(shard, shards))
    pq.write_table(table, path)
    return path, len(users)


def _concat_keys(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """int64 when every part has int keys (no Python objects), else one object array."""
    if all(a.dtype.kind in "iu" for a in arrays):
        return np.concatenate(arrays).astype(np.int64, copy=False)
    return np.concatenate([a.astype(object) for a in arrays])


def _arrow_keys(values: np.ndarray) -> Any:
    """int64 when every key is an int, else strings (``5`` and ``"5"`` are one key anyway)."""
    import pyarrow as pa

    if values.dtype.kind in "iu":
        return pa.array(values, pa.int64())
    listed = values.tolist()
    if all(type(k) is int for k in listed):
        return pa.array(listed, pa.int64())
    return pa.array([str(k) for k in listed], pa.string())


@dataclass(frozen=True)
class SequencesJob:
    """What ``backfill sequences`` runs on (the CLI's flags)."""

    inputs: tuple[str, ...]
    out: str
    format: str = "auto"
    until: int | None = None
    shards: int = DEFAULT_SHARDS
    runner: str = "direct"  # or "dask"
    dask_address: str | None = None  # a running scheduler; None: a local cluster
    dask_workers: int = 2  # of that local cluster


def _sum_counts(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for part in counts:
        for name, value in part.items():
            total[name] = total.get(name, 0) + value
    return total


def _keyed(chunk: Any, until: int | None, shards: int) -> Iterator[tuple[tuple[str, int], Any]]:
    """One chunk as keyed parts: (("shard", s), columns), (("rejects", 0), dead letter),
    (("counts", 0), {...}).

    One stream into one ``GroupByKey`` (no fan-out, no multiple outputs, counts as data, not
    Beam metrics): Beam's Dask runner computes only one of several branches of a
    PCollection and has no metrics, and this way every runner gives the same outputs.
    """
    if isinstance(chunk, dict):  # an unreadable file
        yield ("rejects", 0), chunk
        yield ("counts", 0), {"unreadable_files": 1, "rejected_unreadable_file": 1}
        return
    checked = validate(chunk, until)
    counts = {
        "rows": checked.rows,
        "valid": checked.rows - checked.rejected,
        "rejected": checked.rejected,
        "after_cutoff": checked.after_cutoff,
    }
    for letter in checked.dead_letters:
        key = f"rejected_{letter['reason']}"
        counts[key] = counts.get(key, 0) + 1
        yield ("rejects", 0), letter
    yield ("counts", 0), counts
    if len(checked.columns["user"]):
        for shard, columns in split_by_shard(checked.columns, shards):
            yield ("shard", shard), columns


def _write_part(item: tuple[tuple[str, int], Iterable[Any]], out_dir: str, shards: int) -> int:
    """Write one group: a shard's histories, the dead letters or the summed counts."""
    (kind, number), parts = item
    out = Path(out_dir)
    if kind == "shard":
        return write_shard(number, list(parts), out_dir, shards)[1]
    if kind == "rejects":
        return _write_dead_letters(parts, str(out / DEAD_LETTERS))
    counts = _sum_counts(parts)
    (out / COUNTS_FILE).write_text(json.dumps(counts))
    return len(counts)


def _write_dead_letters(letters: Iterable[dict[str, Any]], path: str) -> int:
    """One JSON line per dead letter, in lake order (the same file on every runner);
    returns how many."""

    def place(letter: dict[str, Any]) -> tuple[str, int]:
        return letter["file"], -1 if letter["file_row"] is None else letter["file_row"]

    letters = sorted(letters, key=place)
    with open(path, "w", encoding="utf-8") as out:
        out.writelines(json.dumps(letter) + "\n" for letter in letters)
    return len(letters)


def run_sequences(job: SequencesJob) -> dict[str, Any]:
    """Run the pipeline on the chosen runner; returns the manifest (also written)."""
    import apache_beam as beam
    import pyarrow.parquet as pq

    if job.shards < 1:
        raise ValueError(f"--shards must be >= 1, got {job.shards}")
    started = time.monotonic()
    files = match_inputs(job.inputs, job.format)
    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("shard-*-of-*.parquet"), out / COUNTS_FILE, out / DEAD_LETTERS]:
        stale.unlink(missing_ok=True)  # a rerun into the same directory keeps nothing old
    with _runner(job) as options:
        with beam.Pipeline(options=options) as pipeline:
            _ = (
                pipeline
                | "ListFiles" >> beam.Create(files)
                | "ReadLake" >> beam.FlatMap(read_chunks)
                | "Validate" >> beam.FlatMap(_keyed, job.until, job.shards)
                | "GroupByShard" >> beam.GroupByKey()
                | "WriteHistories" >> beam.Map(_write_part, str(out), job.shards)
            )
        client = getattr(pipeline.result, "client", None)
        if client is not None:
            client.close()  # Beam's Dask runner opens a client and leaves it open
    counts = json.loads((out / COUNTS_FILE).read_text())
    (out / COUNTS_FILE).unlink()
    if not (out / DEAD_LETTERS).exists():
        (out / DEAD_LETTERS).write_text("")
    shard_files = sorted(out.glob("shard-*-of-*.parquet"))
    counts["users"] = sum(pq.ParquetFile(path).metadata.num_rows for path in shard_files)
    manifest = {
        "created_at": datetime.now(UTC).isoformat(),
        "inputs": [asdict(f) for f in files],
        "until": job.until,
        "counts": {name: counts.get(name, 0) for name in COUNTS},
        "rejected_by_reason": {
            k.removeprefix("rejected_"): v
            for k, v in sorted(counts.items())
            if k.startswith("rejected_")
        },
        "settings": {"format": job.format, "shards": job.shards, "chunk_rows": CHUNK_ROWS},
        "runner": _describe_runner(job),
        "shards": [path.name for path in shard_files],
        "dead_letters": DEAD_LETTERS,
        "wall_seconds": round(time.monotonic() - started, 2),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _describe_runner(job: SequencesJob) -> str:
    if job.runner == "direct":
        return "DirectRunner (in-process)"
    where = job.dask_address or f"a local cluster of {job.dask_workers} worker processes"
    return f"DaskRunner on {where}"


@contextmanager
def _runner(job: SequencesJob) -> Iterator[Any]:
    """Pipeline options for the runner; a local Dask cluster lives as long as the run."""
    from apache_beam.options.pipeline_options import PipelineOptions

    if job.runner == "direct":
        # flags=[]: options come from here, never from the process's own sys.argv
        yield PipelineOptions(flags=[], runner="DirectRunner", direct_num_workers=1)
        return
    if job.runner != "dask":
        raise ValueError(f"unknown --runner {job.runner!r}; choose direct or dask")
    try:
        from distributed import Client, LocalCluster
    except ImportError as err:
        raise ValueError(
            "--runner dask needs dask.distributed (pip install 'dask[distributed]')"
        ) from err
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # importing distributed sets its loggers to INFO (every scheduler step): quiet them
        for name in list(logging.root.manager.loggerDict):
            if name == "distributed" or name.startswith("distributed."):
                logging.getLogger(name).setLevel(logging.WARNING)
    runner = "apache_beam.runners.dask.dask_runner.DaskRunner"
    if job.dask_address:
        yield PipelineOptions([f"--runner={runner}", f"--dask_client_address={job.dask_address}"])
        return
    with (
        LocalCluster(
            n_workers=job.dask_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # any free port: never a clash with another cluster
            silence_logs=logging.WARNING,
        ) as cluster,
        Client(cluster),
    ):
        yield PipelineOptions(
            [f"--runner={runner}", f"--dask_client_address={cluster.scheduler_address}"]
        )
