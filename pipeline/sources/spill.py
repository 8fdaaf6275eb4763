"""Event-time order in bounded memory: an external sort of an event log into a spill file.

File replay puts a table in event-time order (ties keep file order) before streaming it. The
file may be larger than memory, so the reader hands it over in chunks: each chunk is sorted
(stable) and written as a sorted run, the runs are merged into one Arrow IPC file whose record
batches are the replay's records, and record k is then read on its own (``SpilledLog.slice``).
Memory is one chunk while sorting and one block per run while merging; disk is about twice
the events' Arrow size while merging, once after. Ties: the merge orders by (time, run, row),
and runs are numbered in file order, so the result equals ``EventLog.sorted_by_time``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from pipeline.datasets import EventLog

log = logging.getLogger(__name__)

COLUMNS = ("user", "item", "timestamp", "action")
# Rows buffered while merging, shared by the runs (each reads at least MIN_BLOCK_ROWS).
MERGE_BUFFER_ROWS = 1 << 20
MIN_BLOCK_ROWS = 1024


class SpilledLog:
    """A sorted event log in an Arrow IPC file of record batches of ``batch_rows`` rows.

    It owns its spill directory: ``close`` deletes it, and so does garbage collection or the
    interpreter's exit when nobody closed it (a source dropped after an error, a test)."""

    def __init__(self, directory: Path, path: Path, num_events: int, batch_rows: int) -> None:
        self.directory = directory
        self.path = path
        self.batch_rows = batch_rows
        self._num_events = num_events
        self._remove = weakref.finalize(self, shutil.rmtree, str(directory), ignore_errors=True)
        self._reader: Any = ipc.open_file(pa.OSFile(str(path)))  # reads, never maps

    def __len__(self) -> int:
        return self._num_events

    def slice(self, start: int, stop: int) -> EventLog:
        """Rows ``start:stop`` (reading only the batches that hold them)."""
        stop = min(stop, self._num_events)
        if stop <= start:
            return _to_event_log(pa.Table.from_batches([], self._reader.schema))
        first, last = start // self.batch_rows, (stop - 1) // self.batch_rows
        table = pa.Table.from_batches([self._reader.get_batch(k) for k in range(first, last + 1)])
        lo = start - first * self.batch_rows
        return _to_event_log(table.slice(lo, stop - start))

    def close(self) -> None:
        """Delete the spill directory (the log is unusable afterwards)."""
        self._reader = None
        self._remove()


def spill_sorted(
    chunks: Iterable[EventLog], batch_rows: int, directory: str | Path | None = None
) -> SpilledLog:
    """Sort ``chunks`` (the log in file order) by event time into a new spill directory
    under ``directory`` (default: the system's temporary directory)."""
    spill = Path(tempfile.mkdtemp(prefix="genrec-replay-", dir=directory))
    try:
        runs, total = [], 0
        for chunk in chunks:
            total += len(chunk)
            if len(chunk):
                run = spill / f"run-{len(runs):06d}.arrow"
                _write(run, chunk.take(np.argsort(chunk.timestamp, kind="stable")), batch_rows)
                runs.append(run)
        out = spill / "sorted.arrow"
        if len(runs) <= 1:  # one run is the sorted log already
            if runs:
                runs[0].rename(out)
            else:
                empty = np.zeros(0, np.int64)
                _write(out, EventLog(empty, empty, empty, empty), batch_rows)
        else:
            _merge(runs, out, batch_rows)
            for run in runs:
                run.unlink()
        log.info("sorted %d events by event time in %d run(s) at %s", total, len(runs), out)
        return SpilledLog(spill, out, total, batch_rows)
    except BaseException:
        shutil.rmtree(spill, ignore_errors=True)
        raise


def _schema(key_type: pa.DataType) -> pa.Schema:
    return pa.schema(
        [("user", key_type), ("item", key_type), ("timestamp", pa.int64()), ("action", pa.int64())]
    )


def _key_type(event_log: EventLog) -> pa.DataType:
    ints = event_log.user.dtype.kind == "i" and event_log.item.dtype.kind == "i"
    return pa.int64() if ints else pa.string()


def _arrays(event_log: EventLog, key_type: pa.DataType) -> list[pa.Array]:
    def keys(values: np.ndarray) -> pa.Array:
        if key_type == pa.string() and values.dtype.kind == "i":
            return pa.array(values).cast(pa.string())
        return pa.array(values, type=key_type)

    return [
        keys(event_log.user),
        keys(event_log.item),
        pa.array(event_log.timestamp, pa.int64()),
        pa.array(event_log.action, pa.int64()),
    ]


def _write(path: Path, event_log: EventLog, batch_rows: int) -> None:
    key_type = _key_type(event_log)
    table = pa.Table.from_arrays(_arrays(event_log, key_type), schema=_schema(key_type))
    with ipc.new_file(str(path), table.schema) as writer:
        writer.write_table(table, max_chunksize=batch_rows)


class _Run:
    """One sorted run's unread rows: a buffered block and the batches after it."""

    def __init__(self, path: Path, block_rows: int) -> None:
        self.reader = ipc.open_file(pa.OSFile(str(path)))
        self.block_rows = block_rows
        self.schema = self.reader.schema
        self.next_batch = 0
        self.buffer: EventLog | None = None

    @property
    def drained(self) -> bool:
        return self.next_batch >= self.reader.num_record_batches

    def load(self) -> None:
        """Append batches to the buffer until about ``block_rows`` more rows are in."""
        parts = [] if self.buffer is None else [self.buffer]
        rows = 0
        while not self.drained and rows < self.block_rows:
            batch = self.reader.get_batch(self.next_batch)
            self.next_batch += 1
            rows += batch.num_rows
            parts.append(_to_event_log(pa.Table.from_batches([batch]).cast(self.schema)))
        self.buffer = _concat(parts) if parts else None

    def limit(self) -> float:
        """Rows with an earlier time than this may be emitted: later ones are not read yet."""
        if self.drained:
            return np.inf
        assert self.buffer is not None and len(self.buffer)
        return float(self.buffer.timestamp[-1])


def _merge(paths: list[Path], out: Path, batch_rows: int) -> None:
    block = max(MIN_BLOCK_ROWS, MERGE_BUFFER_ROWS // len(paths))
    runs = [_Run(path, block) for path in paths]
    # str keys as soon as one run has them (the stream canonicalises "5" and 5 alike)
    key_type = pa.int64()
    if any(run.schema.field("user").type != pa.int64() for run in runs):
        key_type = pa.string()
    for run in runs:
        run.schema = _schema(key_type)
    pending: list[EventLog] = []  # emitted rows not yet written as whole batches
    with ipc.new_file(str(out), _schema(key_type)) as writer:

        def flush(final: bool) -> None:
            nonlocal pending
            rows = _concat(pending) if pending else None
            pending = []
            if rows is None:
                return
            whole = len(rows) if final else len(rows) - len(rows) % batch_rows
            if whole:
                head = rows.take(slice(0, whole))
                table = pa.Table.from_arrays(_arrays(head, key_type), schema=_schema(key_type))
                writer.write_table(table, max_chunksize=batch_rows)
            if whole < len(rows):
                pending = [rows.take(slice(whole, None))]

        for run in runs:
            run.load()
        active = [run for run in runs if run.buffer is not None and len(run.buffer)]
        while active:
            limit = min(run.limit() for run in active)
            # in run order, then stably by time: ties keep (run, row), i.e. file order
            ready = []
            for run in active:
                assert run.buffer is not None
                cut = int(np.searchsorted(run.buffer.timestamp, limit, side="left"))
                if cut:
                    ready.append(run.buffer.take(slice(0, cut)))
                    run.buffer = run.buffer.take(slice(cut, None))
            if ready:
                rows = _concat(ready)
                rows = rows.take(np.argsort(rows.timestamp, kind="stable"))
                pending.append(rows)
                if sum(len(p) for p in pending) >= batch_rows:
                    flush(final=False)
            else:
                # every buffered row is at the limit time: read further where it binds
                for run in active:
                    if run.limit() == limit:
                        run.load()
            for run in active:
                if run.buffer is not None and not len(run.buffer) and not run.drained:
                    run.load()
            active = [run for run in active if run.buffer is not None and len(run.buffer)]
        flush(final=True)


def _concat(parts: list[EventLog]) -> EventLog:
    if len(parts) == 1:
        return parts[0]
    return EventLog(*(np.concatenate([getattr(p, c) for p in parts]) for c in COLUMNS))


def _to_event_log(table: pa.Table) -> EventLog:
    def column(name: str) -> np.ndarray:
        values = table.column(name).to_numpy(zero_copy_only=False)
        return values.astype(object) if values.dtype.kind not in "iu" else values

    return EventLog(column("user"), column("item"), column("timestamp"), column("action"))
