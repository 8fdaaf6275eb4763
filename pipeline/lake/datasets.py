"""Event logs on disk -> per-user sequences.

Event files (CSV, MovieLens ``ratings.csv`` and ``ratings.dat``, Parquet) are read by the
lake's one reader (``pipeline.lake.reader``, the backfill's too: columns by name, the rating
as the event's value, empty lines, encodings and numbers by its rules, docs/data.md). A row it
rejects, or one with a missing field, an empty id, a non-finite timestamp or an unknown
action, is an error naming file and line, unless the caller asks to skip such rows, in which
case they are counted by reason. ``read_event_log`` returns the whole log; ``iter_event_log``
hands it over in chunks of a bounded number of rows, for readers that must not hold a whole
file (file replay). The output of ``genrec backfill sequences`` (a directory) is read by a
function the caller passes in (``pipeline.backfill.histories.event_logs``): the lake does not
import the backfill.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.events.schema import ACTION_CODES, MAX_ACTION_CODE
from pipeline.lake.reader import (
    Chunk,
    DataFormatError,
    LakeFile,
    check_columns,
    parse_numbers,
    read_file,
    suffix_format,
    text_format,
)

log = logging.getLogger(__name__)

FORMATS = ("auto", "movielens-dat", "movielens-csv", "csv", "parquet", "backfill")
MAX_ERRORS_KEPT = 20
READ_ROWS = 65_536  # rows the reader types at once for a whole read


@dataclass(frozen=True)
class EventLog:
    """One row per event, raw keys, in file order.

    ``user``/``item`` are int64 when every key is an integer, else object arrays of str.
    ``timestamp`` is int64 seconds; ``action`` int64 codes (see ``ACTION_CODES``); ``value``
    float64 (a rating; NaN where a row has none), or None for a log without values.
    """

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    action: np.ndarray
    value: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.user)
        for name in ("item", "timestamp", "action", "value"):
            column = getattr(self, name)
            if column is not None and len(column) != n:
                raise ValueError(f"EventLog column {name} has {len(column)} rows, user has {n}")

    def __len__(self) -> int:
        return len(self.user)

    def take(self, index: np.ndarray | slice) -> EventLog:
        return EventLog(
            self.user[index],
            self.item[index],
            self.timestamp[index],
            self.action[index],
            None if self.value is None else self.value[index],
        )

    def slice(self, start: int, stop: int) -> EventLog:
        """Rows ``start:stop``."""
        return self.take(slice(start, stop))

    def sorted_by_time(self) -> EventLog:
        """Event-time order; ties keep file order (stable sort)."""
        return self.take(np.argsort(self.timestamp, kind="stable"))


# Reads the output directory of ``genrec backfill sequences`` in EventLogs of at most
# ``chunk_rows`` rows: (directory, chunk_rows) -> logs.
OutputReader = Callable[[str, int], Iterator[EventLog]]


@dataclass
class ReadStats:
    """What a reader did: rows kept, rows skipped by reason, the first few errors."""

    path: str
    format: str
    rows: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


class _LineErrors:
    """Raises on the first malformed row, or counts it when skipping is allowed."""

    def __init__(self, stats: ReadStats, skip: bool) -> None:
        self.stats = stats
        self.skip = skip

    def __call__(self, where: str, reason: str, message: str) -> None:
        text = f"{where}: {message}"
        if not self.skip:
            raise DataFormatError(
                f"{text}. Fix the input, or pass --skip-malformed to skip and count such rows."
            )
        self.stats.skipped[reason] += 1
        if len(self.stats.errors) < MAX_ERRORS_KEPT:
            self.stats.errors.append(text)


def detect_format(path: str | Path) -> str:
    """Recognise MovieLens files by name and header, a ``genrec backfill sequences`` output
    directory by its manifest; else CSV/Parquet by extension (``pipeline.lake.reader``)."""
    p = Path(path)
    if p.is_dir():
        if (p / "manifest.json").is_file():
            return "backfill"
        raise DataFormatError(
            f"{p} is a directory but not the output of genrec backfill sequences (no "
            "manifest.json); pass an event file or a backfill output directory"
        )
    fmt = suffix_format(str(p))
    if fmt == "text":
        with p.open(encoding="utf-8", errors="replace") as fh:
            return text_format(fh.readline())
    if fmt is None or fmt not in FORMATS:  # JSON Lines are replayed, not read as a table
        raise DataFormatError(
            f"{p}: cannot tell the format from the name; pass --format "
            f"({', '.join(f for f in FORMATS if f != 'auto')})"
        )
    return fmt


def read_event_log(
    path: str | Path,
    format: str = "auto",
    skip_malformed: bool = False,
    read_output: OutputReader | None = None,
) -> tuple[EventLog, ReadStats]:
    """Read an event log; raise DataFormatError on the first malformed row unless skipping.
    ``read_output`` reads a backfill output directory (format ``backfill``)."""
    chunks, stats = _chunks(path, format, skip_malformed, READ_ROWS, read_output)
    parts = list(chunks)
    # int keys only when every key of the file is an integer (one chunk may not tell)
    event_log = EventLog(
        user=_keys_array(_concat([p.user for p in parts])),
        item=_keys_array(_concat([p.item for p in parts])),
        timestamp=np.concatenate([np.zeros(0, np.int64), *(p.timestamp for p in parts)]),
        action=np.concatenate([np.zeros(0, np.int64), *(p.action for p in parts)]),
        value=_values(parts),
    )
    _finish_stats(stats, len(event_log))
    return event_log, stats


def iter_event_log(
    path: str | Path,
    format: str = "auto",
    skip_malformed: bool = False,
    chunk_rows: int = 1 << 20,
    read_output: OutputReader | None = None,
) -> tuple[Iterator[EventLog], ReadStats]:
    """The log in file order, in ``EventLog`` chunks of at most ``chunk_rows`` rows, and the
    ``ReadStats`` that the iteration fills in (complete once it is exhausted).

    Each chunk decides on its own whether its keys are int64 or str: a consumer that mixes
    chunks must canonicalise keys (``EventBatch.from_event_log`` does).
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    chunks, stats = _chunks(path, format, skip_malformed, chunk_rows, read_output)

    def generate() -> Iterator[EventLog]:
        rows = 0
        pending: list[EventLog] = []
        size = 0
        for chunk in chunks:
            if not pending and len(chunk) == chunk_rows:  # the usual chunk: as it is
                rows += chunk_rows
                yield _with_keys(chunk)
                continue
            pending.append(chunk)
            size += len(chunk)
            if size >= chunk_rows:  # the reader's runs end at rejected rows: join them
                whole = _joined(pending)
                for start in range(0, size - size % chunk_rows, chunk_rows):
                    rows += chunk_rows
                    yield _with_keys(whole.slice(start, start + chunk_rows))
                rest = whole.slice(size - size % chunk_rows, size)
                pending, size = ([rest] if len(rest) else []), len(rest)
        if size:
            rows += size
            yield _with_keys(_joined(pending))
        _finish_stats(stats, rows)

    return generate(), stats


def _chunks(
    path: str | Path,
    format: str,
    skip_malformed: bool,
    chunk_rows: int,
    read_output: OutputReader | None,
) -> tuple[Iterator[EventLog], ReadStats]:
    """The log's rows in file order, in EventLogs of raw keys (str, or int64 where a Parquet
    column holds integers), and the ``ReadStats`` they fill in."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file (check the --data path)")
    if format not in FORMATS:
        raise DataFormatError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    fmt = detect_format(p) if format == "auto" else format
    stats = ReadStats(path=str(p), format=fmt)
    if fmt == "backfill":
        if read_output is None:
            raise DataFormatError(
                f"{p}: the output of genrec backfill sequences is read by train-offline and "
                "evaluate (--data DIR), not here"
            )
        return read_output(str(p), chunk_rows), stats
    on_error = _LineErrors(stats, skip_malformed)
    return _read_file(p, fmt, chunk_rows, on_error), stats


def _read_file(path: Path, fmt: str, chunk_rows: int, on_error: _LineErrors) -> Iterator[EventLog]:
    """The reader's chunks as EventLogs, its dead letters and the rows ``_checked`` finds
    wanting given to ``on_error``."""
    lake_file = LakeFile(0, str(path), path.stat().st_size, fmt)
    with path.open("rb") as handle:
        for chunk in _file_chunks(lake_file, handle, chunk_rows):
            if isinstance(chunk, dict):  # a row the reader rejects
                on_error(f"{path}:{chunk['file_row']}", chunk["reason"], chunk["message"])
                continue
            _, first, _, _, payloads = chunk
            table = pa.ipc.open_stream(payloads[0]).read_all()
            # the backfill rejects a Parquet file's rows when it lacks a column: one error here
            check_columns(table.column_names, f"{path}: the Parquet file")
            # the reader's first is a Parquet row, or a line index (lines count from 1)
            where = _where_row(path, first) if fmt == "parquet" else _where_line(path, first + 1)
            yield _checked(table, where, on_error)


def _file_chunks(
    lake_file: LakeFile, handle: BinaryIO, chunk_rows: int
) -> Iterator[Chunk | dict[str, Any]]:
    """``read_file``'s, its errors about the file (a header or columns that are not the
    format's) naming the file."""
    try:
        yield from read_file(lake_file, handle, chunk_rows)
    except DataFormatError as err:
        raise DataFormatError(f"{lake_file.path}: {err}") from None


def _where_row(path: Path, first: int) -> Callable[[int], str]:
    return lambda k: f"{path}: row {first + k}"


def _where_line(path: Path, first: int) -> Callable[[int], str]:
    return lambda k: f"{path}:{first + k}"


def _checked(table: pa.Table, where: Callable[[int], str], on_error: _LineErrors) -> EventLog:
    """The rows of a chunk of the reader's as an EventLog, without the rows with a missing
    field, an empty id, a non-finite timestamp or an unknown action (``on_error`` hears of
    each, in row order; the first flaw of a row is its reason)."""
    n = table.num_rows
    reasons = np.full(n, "", dtype=object)
    messages: dict[int, str] = {}

    def flag(mask: np.ndarray, reason: str, message: Callable[[int], str]) -> None:
        for row in np.flatnonzero(mask & (reasons == "")).tolist():
            reasons[row] = reason
            messages[row] = message(row)

    columns = {name: table.column(name).combine_chunks() for name in table.column_names}
    user, item = _ids(columns["user_id"]), _ids(columns["item_id"])
    no_time = columns["timestamp"].is_null().to_numpy(zero_copy_only=False)
    flag((user == "") & (item == "") & no_time, "missing_field", lambda _: "an empty row or line")
    required = ("user_id", "item_id", "timestamp", "action")
    for name in required:
        flag(columns[name].is_null().to_numpy(zero_copy_only=False), "missing_field",
             lambda _, f=name: f"no {f.removesuffix('_id')}")  # fmt: skip
    flag((user == "") | (item == ""), "empty_id", lambda _: "empty user or item id")
    seconds, numeric = _seconds(columns["timestamp"])
    flag(
        ~numeric,
        "bad_type",
        lambda r: f"timestamp {columns['timestamp'][r].as_py()!r} is not a number",
    )
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(seconds) & (np.abs(seconds) < 2.0**63)
    flag(
        numeric & ~finite,
        "bad_timestamp",
        lambda r: f"timestamp {seconds[r]} is not a finite number",
    )
    action, known = _codes(columns["action"])
    flag(
        ~known,
        "bad_action",
        lambda r: (
            f"action {str(columns['action'][r].as_py()).strip()!r} is neither an integer "
            f"code in 0..{MAX_ACTION_CODE} nor one of {sorted(ACTION_CODES)}"
        ),
    )
    value = None
    if "value" in columns:
        value, numeric = _numbers(columns["value"])
        flag(
            ~numeric, "bad_type", lambda r: f"value {columns['value'][r].as_py()!r} is not a number"
        )
    for row in sorted(messages):
        on_error(where(row), reasons[row], messages[row])
    keep = reasons == ""
    return EventLog(
        user=user[keep],
        item=item[keep],
        timestamp=np.trunc(np.where(keep, seconds, 0))[keep].astype(np.int64),
        action=action[keep],
        value=None if value is None else value[keep],
    )


def _ids(column: pa.Array) -> np.ndarray:
    """Keys as written: int64 for an integer column, else str (nulls: "", flagged before)."""
    if pa.types.is_integer(column.type):
        return pc.fill_null(column, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    if not pa.types.is_string(column.type):
        column = pa.array([None if v is None else str(v) for v in column.to_pylist()], pa.string())
    return pc.fill_null(column, "").to_numpy(zero_copy_only=False).astype(object)


def _numbers(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """float64 values (NaN for nulls), and which rows hold a number or null."""
    if pa.types.is_string(column.type) or pa.types.is_binary(column.type):
        column, numeric = parse_numbers(column.cast(pa.string()), pa.float64())
    elif pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        column, numeric = column.cast(pa.float64()), np.ones(len(column), bool)
    else:
        column, numeric = pa.nulls(len(column), pa.float64()), np.zeros(len(column), bool)
    values = pc.fill_null(column, np.nan).to_numpy(zero_copy_only=False)
    return values.astype(np.float64), numeric


def _seconds(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps in seconds (a timestamp type's by its unit), and which rows are numbers."""
    if pa.types.is_timestamp(column.type):
        per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[column.type.unit]
        raw = pc.fill_null(column.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
        return raw / per_second, np.ones(len(column), bool)
    return _numbers(column)


def _codes(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """int64 action codes, and which rows have a known one (a code in 0..MAX_ACTION_CODE or a
    name of ``ACTION_CODES``; nulls count as known here: flagged before)."""
    if pa.types.is_integer(column.type):
        codes = pc.fill_null(column, 0).to_numpy(zero_copy_only=False).astype(np.int64)
        return codes, (codes >= 0) & (codes <= MAX_ACTION_CODE)
    texts = column.to_pylist()
    parsed = {text: _parse_action(str(text)) for text in set(texts) if text is not None}
    codes = np.array(
        [0 if t is None else parsed[t] if parsed[t] is not None else -1 for t in texts], np.int64
    )
    return np.maximum(codes, 0), codes >= 0


def _parse_action(text: str) -> int | None:
    text = text.strip()
    if text.lstrip("-").isdigit():
        code = int(text)
        return code if 0 <= code <= MAX_ACTION_CODE else None
    return ACTION_CODES.get(text.lower())


def _concat(columns: list[np.ndarray]) -> np.ndarray:
    """Key columns end to end: int64 when every part is, else str objects."""
    if all(c.dtype == np.int64 for c in columns):
        return np.concatenate([np.zeros(0, np.int64), *columns])
    return np.concatenate(
        [
            np.zeros(0, object),
            *(c if c.dtype == object else c.astype(str).astype(object) for c in columns),
        ]
    )


def _values(parts: list[EventLog]) -> np.ndarray | None:
    """The logs' values end to end (NaN for a log without), or None when none has any."""
    if all(p.value is None for p in parts):
        return None
    return np.concatenate([np.full(len(p), np.nan) if p.value is None else p.value for p in parts])


def _joined(parts: list[EventLog]) -> EventLog:
    """EventLogs end to end, keys as read (``_concat``)."""
    return EventLog(
        user=_concat([p.user for p in parts]),
        item=_concat([p.item for p in parts]),
        timestamp=np.concatenate([p.timestamp for p in parts]),
        action=np.concatenate([p.action for p in parts]),
        value=_values(parts),
    )


def _with_keys(event_log: EventLog) -> EventLog:
    """The log with keys int64 when all of them are integers, else str (``_keys_array``)."""
    return EventLog(
        _keys_array(event_log.user),
        _keys_array(event_log.item),
        event_log.timestamp,
        event_log.action,
        event_log.value,
    )


def _finish_stats(stats: ReadStats, rows: int) -> None:
    stats.rows = rows
    if stats.skipped_total:
        log.warning(
            "%s: skipped %d malformed rows (%s); first: %s",
            stats.path,
            stats.skipped_total,
            dict(stats.skipped),
            stats.errors[0],
        )


def _keys_array(keys: np.ndarray) -> np.ndarray:
    """int64 when every key is an integer literal (MovieLens), else str objects."""
    if keys.dtype == np.int64:
        return keys
    try:
        return np.asarray([int(k) for k in keys.tolist()], dtype=np.int64)
    except ValueError:
        return keys


@dataclass(frozen=True)
class SequenceDataset:
    """Per-user sequences in time order (ties in input order), items remapped to rows.

    ``item_ids`` are embedding rows 1..num_items (0 is padding); ``item_keys[row]`` is the
    original key (``item_keys[0]`` is None). Sequence u spans ``offsets[u]:offsets[u+1]`` and
    belongs to ``user_keys[u]``. ``values`` are the events' values as float32 (a rating; NaN
    where an event has none, and for every event when not given).
    """

    item_ids: np.ndarray
    timestamps: np.ndarray
    actions: np.ndarray
    offsets: np.ndarray
    item_keys: np.ndarray
    user_keys: np.ndarray
    values: np.ndarray = None  # type: ignore[assignment]  # None -> all NaN (__post_init__)

    def __post_init__(self) -> None:
        values = np.full(self.item_ids.size, np.nan, np.float32)
        if self.values is not None:
            values = np.asarray(self.values, dtype=np.float32)
        object.__setattr__(self, "values", values)

    @property
    def num_items(self) -> int:
        return len(self.item_keys) - 1

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_events(self) -> int:
        return int(self.offsets[-1])

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def drop_last(self, k: int) -> SequenceDataset:
        """Each sequence without its last k events (sequences never go below length 0)."""
        return self.prefixes(np.maximum(self.lengths() - k, 0))

    def prefixes(self, keep_len: np.ndarray) -> SequenceDataset:
        """Each sequence u cut to its first ``keep_len[u]`` events."""
        lengths = self.lengths()
        pos = np.arange(self.num_events) - np.repeat(self.offsets[:-1], lengths)
        keep = pos < np.repeat(keep_len, lengths)
        offsets = np.concatenate([[0], np.cumsum(keep_len)]).astype(np.int64)
        return SequenceDataset(
            self.item_ids[keep],
            self.timestamps[keep],
            self.actions[keep],
            offsets,
            self.item_keys,
            self.user_keys,
            self.values[keep],
        )


def build_sequences(event_log: EventLog, min_length: int = 1) -> SequenceDataset:
    """Group by user, sort by time (stable), remap item keys to rows 1..num_items.

    Users with fewer than ``min_length`` events are dropped; item rows cover only the
    remaining events.
    """
    user_keys, user_idx = np.unique(event_log.user, return_inverse=True)
    counts = np.bincount(user_idx, minlength=len(user_keys))
    kept_users = counts >= min_length
    mask = kept_users[user_idx]
    user_keys = user_keys[kept_users]
    user_idx = np.cumsum(kept_users)[user_idx[mask]] - 1
    ev = event_log.take(mask)
    order = np.lexsort((ev.timestamp, user_idx))  # lexsort is stable: ties keep file order
    item_keys, item_rows = np.unique(ev.item[order], return_inverse=True)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(user_idx, minlength=len(user_keys)))])
    return SequenceDataset(
        item_ids=(item_rows + 1).astype(np.int64),
        timestamps=ev.timestamp[order].astype(np.int64),
        actions=ev.action[order].astype(np.int64),
        offsets=offsets.astype(np.int64),
        item_keys=np.concatenate([np.array([None], dtype=object), item_keys.astype(object)]),
        user_keys=user_keys,
        values=None if ev.value is None else ev.value[order].astype(np.float32),
    )
