"""``genrec backfill bootstrap``: an event lake -> the trainer checkpoint a stream continues from.

The sequence store and the item vocabulary that ``genrec train`` would hold after streaming
every event of the lake with event time < T, in event-time order, are built by running the
trainer's own step over the lake into a ``TrainerState`` (``pipeline.stream.step``,
``Step.apply_poll``: store vetting, vocabulary admission and expiry, micro-batch assembly,
every counter), with the model's ranking switched off (``scoring=False``). The lake is read
in lake order (inputs as listed, each pattern's files sorted, then rows), decoded and
counted (as ``backfill sequences`` counts it), and its rows before T are put in event-time
order, ties in lake order, by the external sort of file replay (``pipeline.sources.spill``,
spilling into ``checkpoint.dir``): a lake need not be in time order (MovieLens's ratings are
sorted by user), and streaming it in lake order would reject most of its history as
``late``. The fold is sequential, not a parallel Beam transform, on purpose: the user cap's
least-recently-active eviction, the vocabulary's admission counts and its event-time TTL
depend on the global order of events.

What each side of the seam accounts for (``docs/backfill.md``, "Hand-off"):

- a valid event belongs to the backfill when its event time is < T, else to the stream;
- a rejected row has no trustworthy time of its own, so it takes its *arrival time*: in the
  lake the event time of the nearest valid row before it in lake order (none: before T), in
  Kafka its record timestamp. The replayer that writes the lake into Kafka must stamp
  records so (``EventReplayer(record_time="event")``). The sort places a rejected row at
  its arrival time too, so in a lake already in time order it stays where it is.

The checkpoint (a full one, ``pipeline.stream.persistence.write_checkpoint``) carries T
(``meta["cutoff"]``) and empty source positions; a trainer that restores it skips what the
backfill accounted for and starts Kafka partitions at T (``offsets_for_times``). With
``weights`` the model is a ``genrec train-offline`` checkpoint whose item embeddings are
moved to the rows the vocabulary gave their items (``pipeline.backfill.weights``);
otherwise the model is the trainer's fresh initialisation.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from pipeline.backfill.sequences import (
    CHUNK_ROWS,
    COUNTS,
    beam_flag,
    by_reason,
    chunk_counts,
    letter_counts,
    nothing_before_cutoff,
    reject_row,
    reject_weights,
    rejected_rows,
    sum_counts,
)
from pipeline.events import EventBatch, decode_records
from pipeline.events.batch import key_column
from pipeline.events.records import Records
from pipeline.events.reject import DecodeResult, Reject
from pipeline.events.schema import RejectReason
from pipeline.lake import paths
from pipeline.lake.reader import Chunk, LakeFile, match_inputs, read_chunks
from pipeline.sources.spill import SORTED, sort_tables
from pipeline.stream.config import TrainerConfig

if TYPE_CHECKING:  # the trainer's modules load torch: imported where the fold runs
    from pipeline.stream.deadletter import DeadLetterSink
    from pipeline.stream.state import TrainerState
    from pipeline.stream.step import Step

log = logging.getLogger(__name__)

MANIFEST = "bootstrap.json"
DEAD_LETTERS = "bootstrap-deadletters.jsonl"


@dataclass(frozen=True)
class BootstrapJob:
    """What ``run_bootstrap`` folds and where it writes.

    Attributes:
        inputs: lake files or globs, in lake order (``match_inputs``).
        until: the cut-off T, Unix seconds.
        config: the settings of the trainer that will continue (store, vocabulary, model,
            source identity, ``checkpoint.dir``).
        format: the inputs' format (``sequences.FORMATS``).
        weights: a ``genrec train-offline --out`` directory whose model to start from.
        force: write even when ``checkpoint.dir`` already holds checkpoints.
        beam_options: options of Beam's filesystems that read the inputs (``--beam-option``:
            ``hdfs_host``, ``s3_endpoint_url``, ...; s3, azfs and hdfs need them set, even
            empty).
    """

    inputs: Sequence[str]
    until: int
    config: TrainerConfig
    format: str = "auto"
    weights: str | None = None
    force: bool = False
    beam_options: tuple[str, ...] = ()


# Each row of the sort is an event or a reject. ``timestamp`` is the sort key: an event's
# own time, a reject's arrival time (module docstring). A key is an int or a str, so it
# takes two columns, one of them null.
_SCHEMA = pa.schema(
    [
        ("timestamp", pa.int64()),
        ("rows", pa.int64()),  # lake rows it stands for: a whole-payload reject, its chunk's
        ("user_int", pa.int64()),
        ("user_str", pa.string()),
        ("item_int", pa.int64()),
        ("item_str", pa.string()),
        ("action", pa.int64()),
        ("value", pa.float32()),
        ("event_id", pa.string()),
        ("reason", pa.string()),  # null for an event; this and the rest: a reject's fields
        ("message", pa.string()),
        ("partition", pa.string()),
        ("offset", pa.int64()),
        ("payload", pa.binary()),
        ("row", pa.int64()),
    ]
)
_NO_TIME = np.iinfo(np.int64).min  # the arrival time of rejects before the first valid row
RUN_ROWS = 1 << 18  # rows per sorted run of the external sort
SORTED_BATCH_ROWS = 1 << 16  # rows per record batch of the sorted file


def _table(n: int, columns: dict[str, Any]) -> pa.Table:
    """``n`` rows of the sort, the columns not given null."""
    return pa.table(
        {f.name: columns.get(f.name, pa.nulls(n, f.type)) for f in _SCHEMA}, schema=_SCHEMA
    )


def _key_columns(keys: np.ndarray) -> tuple[pa.Array, pa.Array]:
    """A key column as (its int keys, its str keys): each row has one, the other null."""
    if keys.dtype == np.int64:
        return pa.array(keys, pa.int64()), pa.nulls(len(keys), pa.string())
    listed = keys.tolist()
    ints = pa.array([k if type(k) is int else None for k in listed], pa.int64())
    return ints, pa.array([k if type(k) is str else None for k in listed], pa.string())


def _keys(ints: Any, strs: Any) -> np.ndarray:
    if strs.null_count == len(strs):
        return ints.to_numpy()
    return key_column(
        [s if i is None else i for i, s in zip(ints.to_pylist(), strs.to_pylist(), strict=True)]
    )


def sortable(chunk: Chunk, result: DecodeResult, previous: int) -> tuple[pa.Table, int]:
    """A decoded chunk as rows of the sort, in lake order: each valid event at its event
    time, each reject at its arrival time (the event time of the nearest valid row before it
    in lake order; ``previous``: that of the last row before the chunk); and the arrival time
    of the chunk's last row."""
    _, first, rows, codec, _ = chunk
    bad = rejected_rows(result.rejects, codec, first, rows)
    good = np.flatnonzero(~bad)
    times = np.full(rows, previous, np.int64)
    times[good] = result.events.timestamp
    # Forward fill: a rejected row arrives with the nearest valid row before it.
    last_good = np.maximum.accumulate(np.where(bad, -1, np.arange(rows)))
    arrival = np.where(last_good >= 0, times[np.maximum(last_good, 0)], previous)
    events = result.events
    users, items = _key_columns(events.user_id), _key_columns(events.item_id)
    event_rows = _table(
        len(events),
        {
            "timestamp": events.timestamp,
            "rows": np.ones(len(events), np.int64),
            "user_int": users[0],
            "user_str": users[1],
            "item_int": items[0],
            "item_str": items[1],
            "action": events.action,
            "value": events.value,
            **({} if events.event_id is None else {"event_id": events.event_id}),
        },
    )
    rejects = result.rejects
    # A whole-payload reject covers rows that all arrive with ``previous``: row 0 stands.
    reject_at = np.array([reject_row(r, codec, first) or 0 for r in rejects], np.int64)
    reject_rows = _table(
        len(rejects),
        {
            "timestamp": arrival[reject_at],
            "rows": reject_weights(rejects, codec, first, rows),
            "reason": [str(r.reason) for r in rejects],
            "message": [r.message for r in rejects],
            "partition": [r.partition for r in rejects],
            "offset": [r.offset for r in rejects],
            "payload": [r.payload for r in rejects],
            "row": [r.row for r in rejects],
        },
    )
    lake_order = np.argsort(np.concatenate([good, reject_at]), kind="stable")
    table = pa.concat_tables([event_rows, reject_rows]).take(lake_order)
    return table, int(arrival[-1]) if rows else previous


def decoded(table: pa.Table) -> DecodeResult:
    """Rows of the sort back as the decoder's result (events and rejects)."""
    is_event = table.column("reason").is_null()
    events = table.filter(is_event)
    event_ids = events.column("event_id")
    batch = EventBatch(
        user_id=_keys(events.column("user_int"), events.column("user_str")),
        item_id=_keys(events.column("item_int"), events.column("item_str")),
        timestamp=events.column("timestamp").to_numpy(),
        action=events.column("action").to_numpy(),
        value=events.column("value").to_numpy(),
        event_id=None
        if event_ids.null_count == len(event_ids)
        else event_ids.to_numpy(zero_copy_only=False).astype(object),
    )
    fields = ("reason", "message", "partition", "offset", "payload", "row")
    rejected = table.filter(pc.invert(is_event)).select(fields).to_pylist()
    rejects = [Reject(**{**r, "reason": RejectReason(r["reason"])}) for r in rejected]
    return DecodeResult(batch, rejects)


class _Lake:
    """The lake read in lake order: every chunk decoded and counted, and its rows before the
    cut-off handed to the sort in runs of about ``RUN_ROWS`` rows (``runs``)."""

    def __init__(self, files: Sequence[LakeFile], until: int) -> None:
        self.files = files
        self.until = until
        self.counts: dict[str, int] = {}  # as ``backfill sequences`` counts the lake
        self.unreadable: list[dict[str, Any]] = []

    def runs(self) -> Iterator[pa.Table]:
        started = time.monotonic()
        total_bytes = max(1, sum(f.size for f in self.files))
        done_bytes = 0
        previous = _NO_TIME  # arrival time of the last row read, in lake order
        pending: list[pa.Table] = []
        size = 0
        for lake_file in self.files:
            for chunk in read_chunks(lake_file, CHUNK_ROWS):
                if isinstance(chunk, dict):
                    # A file that cannot be read, or a text row that cannot be split into
                    # fields: no stream carries either, so they stay out of the trainer's
                    # counts (the manifest counts and lists them).
                    self.unreadable.append(chunk)
                    self.counts = sum_counts([self.counts, letter_counts(chunk)])
                    continue
                result = decode_records(
                    Records.run(chunk.payloads, chunk.codec, _where(lake_file), chunk.first)
                )
                self.counts = sum_counts([self.counts, chunk_counts(chunk, result, self.until)])
                table, previous = sortable(chunk, result, previous)
                before = pc.less(table.column("timestamp"), self.until)
                pending.append(table.filter(before))
                size += pending[-1].num_rows
                if size >= RUN_ROWS:
                    yield pa.concat_tables(pending)
                    pending, size = [], 0
            done_bytes += lake_file.size
            _log_progress(started, self.counts.get("rows", 0), done_bytes / total_bytes)
        if pending:
            yield pa.concat_tables(pending)


class _Batches:
    """Joins the parts of one micro-batch that record batches split, then applies it."""

    def __init__(self, state: TrainerState, step: Step, dead_letters: DeadLetterSink) -> None:
        self.state = state
        self.step = step
        self.dead_letters = dead_letters
        self.batch = -1
        self.parts: list[DecodeResult] = []
        self.rows = 0

    def add(self, batch: int, part: DecodeResult, rows: int) -> None:
        if batch != self.batch:
            self.flush()
            self.batch = batch
        self.parts.append(part)
        self.rows += rows

    def flush(self) -> None:
        if self.parts:
            events = EventBatch.concat([p.events for p in self.parts])
            rejects = [r for p in self.parts for r in p.rejects]
            result = DecodeResult(events, rejects)
            self.step.apply_poll(self.state, result, self.rows, self.dead_letters, scoring=False)
        self.parts, self.rows = [], 0


def fold(path: Path, state: TrainerState, step: Step, dead_letters: DeadLetterSink) -> int:
    """Apply the sorted rows in ``path`` to ``state`` (rejects to ``dead_letters``), cut into
    micro-batches where a stream trainer reading them as one-row records
    ``train.batch_events`` at a time cuts its own (the row at position ``p`` of the sorted
    lake is in batch ``p // batch_events``); returns the lake rows folded."""
    size = step.cfg.train.batch_events
    batches = _Batches(state, step, dead_letters)
    position = 0
    with pa.OSFile(str(path)) as handle:
        reader = ipc.open_file(handle)
        for k in range(reader.num_record_batches):
            table = pa.Table.from_batches([reader.get_batch(k)])
            weights = table.column("rows").to_numpy()
            batch_of = (position + np.cumsum(weights) - weights) // size
            position += int(weights.sum())
            for batch in np.unique(batch_of).tolist():
                pick = batch_of == batch
                batches.add(batch, decoded(table.filter(pick)), int(weights[pick].sum()))
    batches.flush()
    return position


def run_bootstrap(job: BootstrapJob) -> dict[str, Any]:
    """Fold the lake into a trainer's state and write it as that trainer's checkpoint;
    returns the manifest (also written next to the checkpoints as ``bootstrap.json``)."""
    from pipeline.runtime import threads
    from pipeline.stream.checkpoint import CheckpointError, CheckpointStore
    from pipeline.stream.deadletter import JsonlDeadLetterSink
    from pipeline.stream.distributed.checkpoints import claim_directory
    from pipeline.stream.observability import TrainerMetrics
    from pipeline.stream.persistence import state_dicts, write_checkpoint
    from pipeline.stream.state import new_state
    from pipeline.stream.step import Step

    cfg = job.config
    directory = Path(cfg.checkpoint.dir)
    try:
        claim_directory(directory, 1)  # one trainer's state: never into a trainer group's
    except CheckpointError as err:
        raise ValueError(f"checkpoint.dir: {err}") from None
    store = CheckpointStore(directory, keep=cfg.checkpoint.keep)
    if store.sequences() and not job.force:
        raise FileExistsError(
            f"checkpoint.dir {directory} already holds checkpoints {store.sequences()}: a "
            "bootstrap starts a trainer's state, so give it a fresh directory (set "
            "checkpoint.dir or run_name) or pass --force to write over that state"
        )
    paths.use_options([beam_flag(option) for option in job.beam_options])
    files = match_inputs(job.inputs, job.format)
    started = time.monotonic()
    sink = JsonlDeadLetterSink(directory / DEAD_LETTERS)
    threads.set_torch_threads(cfg.train.threads)  # as a trainer of these settings
    state = new_state(cfg)
    step = Step(cfg, TrainerMetrics())  # Prometheus metrics that nobody serves
    lake = _Lake(files, job.until)
    # The sort spills next to the checkpoints: a place the job writes to anyway.
    spill = Path(tempfile.mkdtemp(prefix=".bootstrap-sort-", dir=directory))
    try:
        sort_tables(lake.runs(), spill, SORTED_BATCH_ROWS, lambda _: _SCHEMA)
        problem = nothing_before_cutoff(job.inputs, job.format, len(files), lake.counts)
        if problem is not None:  # before a checkpoint a trainer would resume from
            raise ValueError(f"{problem}; every dead letter is in {sink.path}")
        folded = fold(spill / SORTED, state, step, sink)
        log.info(
            "bootstrap: folded %d rows before the cut-off in event-time order: %d users, "
            "%d items held", folded, state.store.num_users, len(state.vocab),
        )  # fmt: skip
        if job.weights is not None:
            from pipeline.backfill.weights import load_offline_weights

            load_offline_weights(state, job.weights)
        state.cutoff = job.until
        sink.flush()  # the dead letters are durable before the checkpoint that counts them
        # The stream has not been read yet: no source positions.
        path = write_checkpoint(cfg, store, state, {}, state_dicts(state))
    finally:
        sink.close()
        shutil.rmtree(spill, ignore_errors=True)
    manifest = {
        "checkpoint": str(path),
        "until": job.until,
        "inputs": [{"path": f.path, "size": f.size, "format": f.format} for f in files],
        "counts": {name: lake.counts.get(name, 0) for name in COUNTS if name != "users"},
        "rejected_by_reason": by_reason(lake.counts),
        "trainer_counters": dict(state.counters),
        "trainer_rejected": dict(state.rejected),
        "users": state.store.num_users,
        "items_held": len(state.vocab),
        "weights": job.weights,
        "unreadable": lake.unreadable,
        "wall_s": round(time.monotonic() - started, 3),
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _log_progress(started: float, rows: int, done: float) -> None:
    """One line per file read: rows so far, rate, the share of input bytes read and an ETA
    of the reading (the fold in time order follows)."""
    elapsed = max(time.monotonic() - started, 1e-9)
    eta = elapsed * (1 - done) / max(done, 1e-9)
    log.info(
        "bootstrap: read %d rows (%.0f rows/s), %.0f%% of the input bytes, ETA %.0f s",
        rows, rows / elapsed, 100 * done, eta,
    )  # fmt: skip


def _where(lake_file: LakeFile) -> str:
    return f"file:{lake_file.path}"
