"""``genrec backfill bootstrap``: an event lake -> the trainer checkpoint a stream continues from.

The sequence store and the item vocabulary that ``genrec train`` would hold after streaming
every event of the lake with event time < T are built by running the trainer's own state
code (``OnlineTrainer.process_decoded``: store vetting, vocabulary admission and expiry,
micro-batch assembly, every counter) over the lake in lake order, with the model's ranking
switched off (``OnlineTrainer.scoring``). That part is a sequential fold, not a parallel Beam
transform, on purpose: the user cap's least-recently-active eviction, the vocabulary's
admission counts and its event-time TTL depend on the global order of events, and lake order
(inputs as listed, each pattern's files sorted, then rows) is what stands for arrival order.

What each side of the seam accounts for (``docs/backfill.md``, "Hand-off"):

- a valid event belongs to the backfill when its event time is < T, else to the stream;
- a rejected row has no trustworthy time of its own, so it takes its *arrival time*: in the
  lake the event time of the nearest valid row before it in lake order (none: before T), in
  Kafka its record timestamp. The replayer that writes the lake into Kafka must stamp
  records so (``EventReplayer(record_time="event")``).

The checkpoint carries T (``meta["cutoff"]``) and empty source positions; a trainer that
restores it skips what the backfill accounted for and starts Kafka partitions at T
(``offsets_for_times``). With ``weights`` the model is a ``genrec train-offline`` checkpoint
whose item embeddings are moved to the rows the vocabulary gave their items
(``pipeline.backfill.weights``); otherwise the model is the trainer's fresh initialisation.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.backfill import paths
from pipeline.backfill.sequences import (
    Chunk,
    LakeFile,
    beam_flag,
    match_inputs,
    read_chunks,
    reject_row,
    rejected_rows,
)
from pipeline.config import TrainerConfig
from pipeline.events import EventBatch, decode_records
from pipeline.events.reject import DecodeResult
from pipeline.sources.base import Records

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


class _NoSource:
    """The source of a bootstrap checkpoint: it has read no partition of the stream yet."""

    def positions(self) -> dict[str, int]:
        return {}

    def commit(self, positions: Any) -> None:
        """Nothing to report: the bootstrap reads files, not the stream."""


def seam_parts(
    chunk: Chunk,
    result: DecodeResult,
    until: int,
    previous: float,
    lake_row: int,
    batch_rows: int,
) -> tuple[list[tuple[int, DecodeResult, int]], float]:
    """The backfill's share of a decoded chunk whose first row is row ``lake_row`` of the
    lake, cut where a stream trainer reading the lake as one-event records ``batch_rows`` at
    a time cuts its micro-batches (lake row ``r`` is in batch ``r // batch_rows``): per batch
    the chunk has rows of, (batch, its events and rejects before the cut-off, its rows); and
    the arrival time of the chunk's last row (see the module docstring)."""
    _, first, rows, codec, _ = chunk
    bad = rejected_rows(result.rejects, codec, first, rows)
    good = np.flatnonzero(~bad)
    arrival = np.full(rows, np.nan)
    arrival[good] = result.events.timestamp
    # Forward fill: a rejected row arrives with the nearest valid row before it.
    last_good = np.maximum.accumulate(np.where(bad, -1, np.arange(rows)))
    arrival = np.where(last_good >= 0, arrival[np.maximum(last_good, 0)], previous)
    batch_of_event = (lake_row + good) // batch_rows
    # A whole-payload reject covers rows that all arrive with ``previous``: row 0 stands.
    reject_at = [reject_row(r, codec, first) or 0 for r in result.rejects]
    batch_of_reject = [(lake_row + row) // batch_rows for row in reject_at]
    parts = []
    for b in range(lake_row // batch_rows, (lake_row + rows - 1) // batch_rows + 1):
        take = (batch_of_event == b) & (result.events.timestamp < until)
        rejects = [
            r
            for r, rb, row in zip(result.rejects, batch_of_reject, reject_at, strict=True)
            if rb == b and arrival[row] < until
        ]
        in_batch = min(lake_row + rows, (b + 1) * batch_rows) - max(lake_row, b * batch_rows)
        parts.append((b, DecodeResult(result.events.take(take), rejects), in_batch))
    return parts, float(arrival[-1])


class _Batches:
    """Joins the parts of one micro-batch that chunks (and files) split, then applies it."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
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
            self.trainer.process_decoded(DecodeResult(events, rejects), self.rows)
        self.parts, self.rows = [], 0


def run_bootstrap(job: BootstrapJob) -> dict[str, Any]:
    """Fold the lake into a trainer's state and write it as that trainer's checkpoint;
    returns the manifest (also written next to the checkpoints as ``bootstrap.json``)."""
    from pipeline.checkpoint import CheckpointError, CheckpointStore
    from pipeline.deadletter import JsonlDeadLetterSink
    from pipeline.distributed.checkpoints import claim_directory
    from pipeline.trainer import OnlineTrainer

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
    trainer = OnlineTrainer(cfg, _NoSource(), sink, checkpoints=store)  # type: ignore[arg-type]
    trainer.scoring = False
    unreadable: list[dict[str, Any]] = []
    rows = after = 0
    previous = -np.inf  # arrival time of the last row read, in lake order
    batches = _Batches(trainer)
    try:
        total_bytes = max(1, sum(f.size for f in files))
        done_bytes = 0
        for lake_file in files:
            rows_before = rows
            for chunk in read_chunks(lake_file):
                if isinstance(chunk, dict):
                    # A file that cannot be read, or a text row that cannot be split into
                    # fields: no stream carries either, so they stay out of the trainer's
                    # counts (the manifest lists them).
                    unreadable.append(chunk)
                    rows += chunk["file_row"] is not None
                    continue
                result = decode_records(
                    Records.run(chunk[4], chunk[3], _where(lake_file), chunk[1])
                )
                parts, previous = seam_parts(
                    chunk, result, job.until, previous, rows, cfg.train.batch_events
                )
                rows += chunk[2]
                for batch, part, n_rows in parts:
                    after += n_rows - len(part.events) - len(part.rejects)
                    batches.add(batch, part, n_rows)
            done_bytes += lake_file.size
            _log_progress(started, rows, done_bytes / total_bytes, trainer)
            log.debug("bootstrap: %s: %d rows", lake_file.path, rows - rows_before)
        batches.flush()
        if job.weights is not None:
            from pipeline.backfill.weights import load_offline_weights

            load_offline_weights(trainer, job.weights)
        trainer.cutoff = job.until
        path = trainer.checkpoint(full=True)
    finally:
        sink.close()
    manifest = {
        "checkpoint": str(path),
        "until": job.until,
        "inputs": [{"path": f.path, "size": f.size, "format": f.format} for f in files],
        "counts": {
            "rows": rows,
            "after_cutoff": after,
            "unreadable_files": sum(u["file_row"] is None for u in unreadable),
            "unparsed_rows": sum(u["file_row"] is not None for u in unreadable),
            **dict(trainer.counters),
        },
        "rejected": dict(trainer.rejected),
        "users": trainer.store.num_users,
        "items": len(trainer.vocab),
        "weights": job.weights,
        "unreadable": unreadable,
        "wall_s": round(time.monotonic() - started, 3),
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _log_progress(started: float, rows: int, done: float, trainer: Any) -> None:
    """One line per file: rows so far, rate, the share of input bytes read and an ETA."""
    elapsed = max(time.monotonic() - started, 1e-9)
    eta = elapsed * (1 - done) / max(done, 1e-9)
    log.info(
        "bootstrap: %d rows (%.0f rows/s), %.0f%% of the input bytes, ETA %.0f s; %d users, "
        "%d items held", rows, rows / elapsed, 100 * done, eta, trainer.store.num_users,
        len(trainer.vocab),
    )  # fmt: skip


def _where(lake_file: LakeFile) -> str:
    return f"file:{lake_file.path}"
