"""``genrec backfill sequences``: lake files -> validated per-user histories, as a Beam pipeline.

Named composite transforms, in flow order:

- ``ReadLake``: each input file in chunks of ``CHUNK_ROWS`` rows, as the stream's own records:
  a Parquet file's record batches become Arrow IPC payloads (its columns are the event
  schema's: ``user_id``, ``item_id``, ``action``, ``timestamp``, optional ``value`` and
  ``event_id``), a JSON Lines file's lines JSON payloads. A file that cannot be read (corrupt,
  wrong schema) becomes one dead letter naming it; its other files go on.
- ``Validate``: ``pipeline.events.decode_records``, the decoder the trainer runs, so the lake
  is held to the same schema and rejects get the same reasons. Valid events with event time
  ``>= until`` are left out (counted ``after_cutoff``: the stream trains them).
- ``KeyByUserShard``: events go to ``shards`` user-hash shards (a stable hash of the canonical
  user key: the same user always lands in the same shard), one Beam element per chunk and
  shard, never one per event.
- ``WriteHistories``: per shard, every user's events in event-time order, ties in lake order
  (file order as the inputs are listed and sorted, then row order): one Parquet row per user
  (``user``, and lists ``item``, ``timestamp``, ``action``, ``value``), in
  ``shard-SSSSS-of-NNNNN.parquet``.
- dead letters: every rejected row as a JSON line (the stream's dead-letter fields, plus
  ``file`` and ``file_row``: the 0-based row of a Parquet file, the 1-based line of a JSON
  Lines file) in ``deadletters.jsonl``.

Counters (Beam metrics, namespace ``genrec_backfill``) go into ``manifest.json`` with the
inputs, the settings, the runner and the wall time. Inputs are local paths or globs in this
version; the runner is Beam's in-process direct runner.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

NAMESPACE = "genrec_backfill"
CHUNK_ROWS = 65_536
DEFAULT_SHARDS = 16
FORMATS = ("auto", "parquet", "jsonl")
SHARD_NAME = "shard-{:05d}-of-{:05d}.parquet"
DEAD_LETTERS = "deadletters.jsonl"
MANIFEST = "manifest.json"
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


# A chunk of one file: (file, first row of the chunk in the file, codec, payloads).
Chunk = tuple[LakeFile, int, str, list[bytes]]


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
        yield lake_file, row, "arrow", [sink.getvalue()]
        row += batch.num_rows


def _jsonl_chunks(lake_file: LakeFile, handle: Any) -> Iterator[Chunk]:
    lines: list[bytes] = []
    first = 0
    for number, line in enumerate(handle):
        lines.append(line.rstrip(b"\r\n"))
        if len(lines) == CHUNK_ROWS:
            yield lake_file, first, "json", lines
            first, lines = number + 1, []
    if lines:
        yield lake_file, first, "json", lines


def shard_of(users: np.ndarray, shards: int) -> np.ndarray:
    """Stable shard of each canonical user key (int keys by value, str keys by FNV-1a)."""
    from pipeline.state.store import hash_event_ids

    out = np.empty(users.size, dtype=np.int64)
    is_int = np.fromiter((type(k) is int for k in users.tolist()), bool, users.size)
    if users.dtype.kind in "iu":
        is_int[:] = True
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

    lake_file, first, codec, payloads = chunk
    records = Records.run(payloads, codec, f"file:{lake_file.path}", first)
    result = decode_records(records)
    letters, bad_rows = [], set()
    for reject in result.rejects:
        # json: one line per record (offset = line index); arrow: one payload, row inside it
        row = reject.offset if codec == "json" else first + (reject.row or 0)
        whole = codec == "arrow" and reject.row is None
        if whole:
            bad_rows.update(range(first, first + _rows_in(payloads[0])))
        else:
            bad_rows.add(row)
        letters.append(
            {
                **reject.to_json_dict(),
                "file": lake_file.path,
                "file_row": None if whole else (row + 1 if codec == "json" else row),
            }
        )
    n = len(payloads) if codec == "json" else _rows_in(payloads[0])
    rows = np.array([r for r in range(first, first + n) if r not in bad_rows], dtype=np.int64)
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


def _rows_in(arrow_payload: bytes) -> int:
    import pyarrow as pa

    try:
        return pa.ipc.open_stream(arrow_payload).read_all().num_rows
    except pa.ArrowInvalid:
        return 0


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
        name: np.concatenate(
            [_as_keys(p[name]) if name in ("user", "item") else p[name] for p in parts]
        )
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


def _as_keys(values: np.ndarray) -> np.ndarray:
    return values.astype(object) if values.dtype.kind in "iu" else values


def _arrow_keys(values: np.ndarray) -> Any:
    """int64 when every key is an int, else strings (``5`` and ``"5"`` are one key anyway)."""
    import pyarrow as pa

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


def run_sequences(job: SequencesJob) -> dict[str, Any]:
    """Run the pipeline on Beam's direct runner; returns the manifest (also written)."""
    import apache_beam as beam
    from apache_beam.metrics.metric import Metrics, MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions

    if job.shards < 1:
        raise ValueError(f"--shards must be >= 1, got {job.shards}")
    started = time.monotonic()
    files = match_inputs(job.inputs, job.format)
    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("shard-*-of-*.parquet"):
        stale.unlink()  # a rerun into the same directory must not keep the old shards

    def validated(chunk: Any) -> Iterator[Any]:
        if isinstance(chunk, dict):  # an unreadable file
            Metrics.counter(NAMESPACE, "unreadable_files").inc()
            yield beam.pvalue.TaggedOutput("rejects", chunk)
            return
        checked = validate(chunk, job.until)
        for name in ("rows", "rejected", "after_cutoff"):
            Metrics.counter(NAMESPACE, name).inc(getattr(checked, name))
        Metrics.counter(NAMESPACE, "valid").inc(checked.rows - checked.rejected)
        for letter in checked.dead_letters:
            Metrics.counter(NAMESPACE, f"rejected_{letter['reason']}").inc()
            yield beam.pvalue.TaggedOutput("rejects", letter)
        if len(checked.columns["user"]):
            yield checked.columns

    def written(item: tuple[int, Sequence[dict]]) -> str:
        shard, parts = item
        path, users = write_shard(shard, list(parts), str(out), job.shards)
        Metrics.counter(NAMESPACE, "users").inc(users)
        return path

    options = PipelineOptions(runner="DirectRunner", direct_num_workers=1)
    with beam.Pipeline(options=options) as pipeline:
        chunks = (
            pipeline | "ListFiles" >> beam.Create(files) | "ReadLake" >> beam.FlatMap(read_chunks)
        )
        checked = chunks | "Validate" >> beam.FlatMap(validated).with_outputs(
            "rejects", main="events"
        )
        _ = (
            checked.events
            | "KeyByUserShard" >> beam.FlatMap(split_by_shard, job.shards)
            | "GroupShards" >> beam.GroupByKey()
            | "WriteHistories" >> beam.Map(written)
        )
        _ = (
            checked.rejects
            | "DeadLetterLines" >> beam.Map(json.dumps)
            | "WriteDeadLetters"
            >> beam.io.WriteToText(str(out / DEAD_LETTERS), shard_name_template="")
        )
    result = pipeline.result
    counts = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    }
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
        "runner": "DirectRunner (in-process)",
        "shards": sorted(p.name for p in out.glob("shard-*-of-*.parquet")),
        "dead_letters": DEAD_LETTERS,
        "wall_seconds": round(time.monotonic() - started, 2),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
