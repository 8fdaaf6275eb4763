"""Event-time order in bounded memory: an external sort of a log into a spill file.

File replay puts a table in event-time order (ties keep file order) before streaming it, and
``backfill bootstrap`` puts a lake's decoded rows in that order before folding them. The
input may be larger than memory, so it comes in chunks: each chunk (an Arrow table with an
int64 ``timestamp`` column) is sorted (stable) and written as a sorted run, and the runs are
merged into one Arrow IPC file of record batches of ``batch_rows`` rows (``sort_tables``).
File replay then reads record k on its own (``SpilledLog.slice``). Memory is one chunk while
sorting and one block per run while merging; disk is about twice the rows' Arrow size while
merging, once after. Ties: the merge orders by (time, run, row), and runs are numbered in
input order, so the result equals a stable sort of the whole input (for an event log,
``EventLog.sorted_by_time``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from pipeline.lake.datasets import EventLog

log = logging.getLogger(__name__)

COLUMNS = ("user", "item", "timestamp", "action")
SORTED = "sorted.arrow"
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
        tables = (_table(chunk) for chunk in chunks)
        total = sort_tables(tables, spill, batch_rows, _merged_schema)
        return SpilledLog(spill, spill / SORTED, total, batch_rows)
    except BaseException:
        shutil.rmtree(spill, ignore_errors=True)
        raise


def sort_tables(
    tables: Iterable[pa.Table],
    spill: Path,
    batch_rows: int,
    schema: Callable[[list[pa.Schema]], pa.Schema],
) -> int:
    """Sort ``tables`` (in input order) stably by their int64 ``timestamp`` column into
    ``spill/sorted.arrow``; returns its rows. ``schema`` gives the sorted file's schema from
    the runs' (none for an empty input); each run is cast to it."""
    runs, total = [], 0
    for table in tables:
        total += table.num_rows
        if table.num_rows:
            run = spill / f"run-{len(runs):06d}.arrow"
            order = np.argsort(_times(table), kind="stable")
            _write(run, table.take(order), batch_rows)
            runs.append(run)
    out = spill / SORTED
    schemas = [ipc.open_file(str(run)).schema for run in runs]
    if len(runs) == 1 and schemas[0] == schema(schemas):  # one run is the sorted log already
        runs[0].rename(out)
    else:
        _merge(runs, out, batch_rows, schema(schemas))
        for run in runs:
            run.unlink()
    log.info("sorted %d rows by event time in %d run(s) at %s", total, len(runs), out)
    return total


def _event_schema(key_type: pa.DataType) -> pa.Schema:
    return pa.schema(
        [
            ("user", key_type),
            ("item", key_type),
            ("timestamp", pa.int64()),
            ("action", pa.int64()),
            ("value", pa.float64()),  # NaN where an event has none
        ]
    )


def _merged_schema(schemas: list[pa.Schema]) -> pa.Schema:
    """An event log's keys are str as soon as one run has them (the stream canonicalises
    "5" and 5 alike), else int64."""
    if any(schema.field("user").type != pa.int64() for schema in schemas):
        return _event_schema(pa.string())
    return _event_schema(pa.int64())


def _table(event_log: EventLog) -> pa.Table:
    ints = event_log.user.dtype.kind == "i" and event_log.item.dtype.kind == "i"
    key_type = pa.int64() if ints else pa.string()

    def keys(values: np.ndarray) -> pa.Array:
        if key_type == pa.string() and values.dtype.kind == "i":
            return pa.array(values).cast(pa.string())
        return pa.array(values, type=key_type)

    arrays = [
        keys(event_log.user),
        keys(event_log.item),
        pa.array(event_log.timestamp, pa.int64()),
        pa.array(event_log.action, pa.int64()),
        pa.array(
            np.full(len(event_log), np.nan) if event_log.value is None else event_log.value,
            pa.float64(),
        ),
    ]
    return pa.Table.from_arrays(arrays, schema=_event_schema(key_type))


def _times(table: pa.Table) -> np.ndarray:
    return table.column("timestamp").to_numpy()


def _write(path: Path, table: pa.Table, batch_rows: int) -> None:
    with ipc.new_file(str(path), table.schema) as writer:
        _write_batches(writer, table, batch_rows)


def _write_batches(writer: Any, table: pa.Table, batch_rows: int) -> None:
    """Record batches of ``batch_rows`` rows each (the last may be shorter): a table of
    several chunks would otherwise be cut at each chunk's end too."""
    writer.write_table(table.combine_chunks(), max_chunksize=batch_rows)


class _Run:
    """One sorted run's unread rows: a buffered block and the batches after it."""

    def __init__(self, path: Path, block_rows: int, schema: pa.Schema) -> None:
        self.reader = ipc.open_file(pa.OSFile(str(path)))
        self.block_rows = block_rows
        self.schema = schema
        self.next_batch = 0
        self.buffer = schema.empty_table()
        self.times = np.zeros(0, np.int64)  # the buffer's times, read once

    def take(self, cut: int) -> pa.Table:
        """The buffer's first ``cut`` rows, which leave it."""
        head = self.buffer.slice(0, cut)
        self.buffer, self.times = self.buffer.slice(cut), self.times[cut:]
        return head

    @property
    def drained(self) -> bool:
        return self.next_batch >= self.reader.num_record_batches

    def load(self) -> None:
        """Append batches to the buffer until about ``block_rows`` more rows are in."""
        parts = [self.buffer]
        rows = 0
        while not self.drained and rows < self.block_rows:
            batch = self.reader.get_batch(self.next_batch)
            self.next_batch += 1
            rows += batch.num_rows
            parts.append(pa.Table.from_batches([batch]).cast(self.schema))
        self.buffer = pa.concat_tables(parts).combine_chunks()
        self.times = _times(self.buffer)

    def limit(self) -> float:
        """Rows with an earlier time than this may be emitted: later ones are not read yet."""
        if self.drained:
            return np.inf
        assert self.buffer.num_rows
        return float(self.times[-1])


def _merge(paths: list[Path], out: Path, batch_rows: int, schema: pa.Schema) -> None:
    block = max(MIN_BLOCK_ROWS, MERGE_BUFFER_ROWS // max(1, len(paths)))
    runs = [_Run(path, block, schema) for path in paths]
    pending: list[pa.Table] = []  # emitted rows not yet written as whole batches
    with ipc.new_file(str(out), schema) as writer:

        def flush(final: bool) -> None:
            nonlocal pending
            rows = pa.concat_tables(pending) if pending else schema.empty_table()
            pending = []
            whole = rows.num_rows if final else rows.num_rows - rows.num_rows % batch_rows
            if whole:
                _write_batches(writer, rows.slice(0, whole), batch_rows)
            if whole < rows.num_rows:
                pending = [rows.slice(whole)]

        for run in runs:
            run.load()
        active = [run for run in runs if run.buffer.num_rows]
        while active:
            limit = min(run.limit() for run in active)
            # in run order, then stably by time: ties keep (run, row), i.e. input order
            ready = []
            for run in active:
                cut = int(np.searchsorted(run.times, limit, side="left"))
                if cut:
                    ready.append(run.take(cut))
            if ready:
                rows = pa.concat_tables(ready)
                pending.append(rows.take(np.argsort(_times(rows), kind="stable")))
                if sum(p.num_rows for p in pending) >= batch_rows:
                    flush(final=False)
            else:
                # every buffered row is at the limit time: read further where it binds
                for run in active:
                    if run.limit() == limit:
                        run.load()
            for run in active:
                if not run.buffer.num_rows and not run.drained:
                    run.load()
            active = [run for run in active if run.buffer.num_rows]
        flush(final=True)


def _to_event_log(table: pa.Table) -> EventLog:
    def column(name: str) -> np.ndarray:
        values = table.column(name).to_numpy(zero_copy_only=False)
        return values.astype(object) if values.dtype.kind not in "iu" else values

    value = table.column("value").to_numpy(zero_copy_only=False)
    return EventLog(column("user"), column("item"), column("timestamp"), column("action"), value)
