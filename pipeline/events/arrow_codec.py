"""Arrow codec: one Arrow IPC *stream* per payload holding many events (one or more batches).

Columns are the schema's fields by name (extra columns are ignored). Accepted column types:

- ``user_id``, ``item_id``: any integer type, or string / large_string / string_view;
- ``action``: integer codes or string names;
- ``timestamp``: integer or floating seconds, or an Arrow ``timestamp`` of any unit;
- ``value`` (optional): integer or floating, null = absent; ``event_id`` (optional): string.

Any column may be dictionary-encoded. A payload that cannot be read, lacks a required column or
has a column of a disallowed type is rejected as a whole (one ``Reject`` with ``row=None``).
Otherwise validation is vectorised (pyarrow.compute and numpy masks, no per-row Python for
valid rows): each bad row becomes its own ``Reject`` (``row`` = its index in the payload,
payload = that row as JSON) and the good rows pass. String ids are canonicalised column-wise
(``"5"`` -> 5) exactly as ``schema.canonical_key`` does for JSON.

``encode_arrow`` writes ids as int64 when the key column is int64, else as strings; decoding
canonicalises them back, so a round trip returns the same keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.events.batch import EventBatch
from pipeline.events.records import SourceRecord
from pipeline.events.reject import Reject
from pipeline.events.schema import (
    ACTION_CODES,
    FLOAT32_MAX,
    INT64_MAX,
    MAX_ACTION_CODE,
    REQUIRED_FIELDS,
    RejectReason,
    ValidationLimits,
    canonical_key,
    describe,
)

# Canonical decimal spellings with at most 19 digits; 19-digit ones may still overflow int64.
_DECIMAL_RE = r"^(0|-?[1-9][0-9]{0,18})$"
_ACTION_NAMES = pa.array(list(ACTION_CODES), pa.string())
_ACTION_VALUES = np.array(list(ACTION_CODES.values()), dtype=np.int64)
_ROW_REASONS = list(RejectReason)  # reason code k (1-based) -> _ROW_REASONS[k - 1]
_FIELDS = (*REQUIRED_FIELDS, "value", "event_id")
_UNIT_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def to_arrow(batch: EventBatch) -> pa.Table:
    """A batch as an Arrow table in the wire schema (optional columns only when present)."""

    def keys(column: np.ndarray) -> pa.Array:
        if column.dtype == np.int64:
            return pa.array(column, pa.int64())
        return pa.array([str(k) for k in column.tolist()], pa.string())

    columns: dict[str, pa.Array] = {
        "user_id": keys(batch.user_id),
        "item_id": keys(batch.item_id),
        "action": pa.array(batch.action, pa.int16()),
        "timestamp": pa.array(batch.timestamp, pa.int64()),
    }
    if not np.isnan(batch.value).all():
        columns["value"] = pa.array(batch.value, pa.float32(), from_pandas=True)  # NaN -> null
    if batch.event_id is not None:
        columns["event_id"] = pa.array(batch.event_id, pa.string())
    return pa.table(columns)


def encode_arrow(events: EventBatch | Any) -> bytes:
    """An Arrow IPC stream payload of a batch (or of an ``EventLog`` or a slice of one)."""
    if not isinstance(events, EventBatch):
        events = EventBatch.from_event_log(events)
    table = to_arrow(events)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


class _PayloadError(Exception):
    """The payload as a whole is unusable (all its rows are rejected together)."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _np(mask: pa.ChunkedArray) -> np.ndarray:
    """A boolean Arrow result as a numpy bool array, null counting as False."""
    if mask.null_count:
        mask = pc.fill_null(mask, False)
    return mask.to_numpy()


def _int64(column: pa.ChunkedArray, keep: np.ndarray | None = None) -> np.ndarray:
    """Integer column as int64 numpy; rows outside ``keep`` (and nulls) become 0."""
    if keep is not None and not keep.all():
        column = pc.if_else(pa.array(keep), column, pa.scalar(0, column.type))
    if column.null_count:
        column = pc.fill_null(column, 0)
    return column.cast(pa.int64()).to_numpy()


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


@dataclass
class _Keys:
    """A key column before row filtering: int values where ``is_int``, else ``strings``."""

    ints: np.ndarray
    is_int: np.ndarray
    strings: np.ndarray | None  # object array of the original strings (None: all ints)

    def select(self, good: np.ndarray) -> np.ndarray:
        rows = slice(None) if good.all() else good
        is_int = self.is_int[rows]
        ints = self.ints[rows]
        if self.strings is None or is_int.all():
            return ints
        column = self.strings[good]  # a copy (boolean index), safe to fill in
        column[is_int] = ints[is_int]  # numpy stores Python ints in an object array
        return column


class _Validator:
    """Vectorised checks of one table; the first failing check of a row is its reason."""

    def __init__(self, table: pa.Table, limits: ValidationLimits) -> None:
        self.table = table
        self.limits = limits
        self.n = table.num_rows
        self.reason = np.zeros(self.n, np.uint8)  # 0 = valid, k = _ROW_REASONS[k - 1]
        self.field = np.zeros(self.n, np.uint8)  # index into _FIELDS of the failing column
        # Nulls first, like the JSON codec, which checks every required field is present.
        for name in REQUIRED_FIELDS:
            self.required(name, table.column(name))

    def flag(self, mask: np.ndarray, reason: RejectReason, field: str) -> None:
        new = mask & (self.reason == 0)
        if new.any():
            self.reason[new] = _ROW_REASONS.index(reason) + 1
            self.field[new] = _FIELDS.index(field)

    def column(self, name: str) -> pa.ChunkedArray:
        column = self.table.column(name)
        if pa.types.is_null(column.type):
            # An all-null column (type null) means every row lacks the field, not a bad type.
            column = column.cast(pa.int64())
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        if _is_string(column.type) and not pa.types.is_string(column.type):
            column = column.cast(pa.string())  # one string type for the compute kernels below
        return column

    def bad_type(self, name: str, column: pa.ChunkedArray, expected: str) -> _PayloadError:
        return _PayloadError(
            RejectReason.BAD_TYPE,
            f"Arrow column {name!r} has type {column.type}, expected {expected}",
        )

    def required(self, name: str, column: pa.ChunkedArray) -> np.ndarray:
        """Flags null rows of a required column; returns the present-rows mask."""
        if not column.null_count:
            return np.ones(self.n, bool)
        present = _np(column.is_valid())
        self.flag(~present, RejectReason.MISSING_FIELD, name)
        return present

    def keys(self, name: str) -> _Keys:
        column = self.column(name)
        if pa.types.is_integer(column.type):
            self.required(name, column)
            if pa.types.is_uint64(column.type) and (pc.max(column).as_py() or 0) > INT64_MAX:
                # Beyond int64 the canonical key is the decimal string (rare, so a loop is fine).
                big = _np(pc.greater(column, pa.scalar(INT64_MAX, pa.uint64())))
                strings = np.empty(self.n, object)
                strings[big] = [str(k) for k in pc.filter(column, pa.array(big)).to_pylist()]
                lengths = np.array([len(k) if k else 0 for k in strings], np.int64)
                self.flag(lengths > self.limits.max_id_bytes, RejectReason.OVERSIZED_ID, name)
                return _Keys(_int64(column, ~big), ~big, strings)
            return _Keys(_int64(column), np.ones(self.n, bool), None)
        if not _is_string(column.type):
            raise self.bad_type(name, column, "an integer or string type")
        present = self.required(name, column)
        lengths = _int64(pc.binary_length(column))
        self.flag(present & (lengths == 0), RejectReason.EMPTY_ID, name)
        self.flag(lengths > self.limits.max_id_bytes, RejectReason.OVERSIZED_ID, name)
        is_int = _np(pc.match_substring_regex(column, _DECIMAL_RE))
        if not is_int.any():
            return _Keys(np.zeros(self.n, np.int64), is_int, column.to_numpy(zero_copy_only=False))
        digits = pc.if_else(pa.array(is_int), column, pa.scalar("0", column.type))
        try:
            ints = digits.cast(pa.int64()).to_numpy()
        except pa.ArrowInvalid:
            # Some 19-digit spelling overflows int64: those stay strings (canonical_key rule).
            ints = np.zeros(self.n, np.int64)
            for i in np.flatnonzero(is_int):
                key = canonical_key(column[int(i)].as_py(), name, self.limits)
                if type(key) is int:
                    ints[i] = key
                else:
                    is_int[i] = False
        strings = None if is_int.all() else column.to_numpy(zero_copy_only=False)
        return _Keys(ints, is_int, strings)

    def action(self) -> np.ndarray:
        column = self.column("action")
        present = self.required("action", column)
        if pa.types.is_integer(column.type):
            in_range = _np(
                pc.and_(pc.greater_equal(column, 0), pc.less_equal(column, MAX_ACTION_CODE))
            )
            self.flag(present & ~in_range, RejectReason.BAD_ACTION, "action")
            return _int64(column, in_range)
        if not _is_string(column.type):
            raise self.bad_type("action", column, "an integer (code) or string (name) type")
        index = pc.index_in(column, value_set=_ACTION_NAMES)
        self.flag(present & ~_np(index.is_valid()), RejectReason.BAD_ACTION, "action")
        return _ACTION_VALUES[_int64(index)]

    def timestamp(self) -> tuple[np.ndarray, np.ndarray]:
        """(int64 seconds with bad rows as 0, numeric seconds for messages)."""
        column = self.column("timestamp")
        present = self.required("timestamp", column)
        lo, hi = self.limits.min_timestamp, self.limits.max_timestamp
        t = column.type
        if pa.types.is_timestamp(t):
            seconds = np.floor_divide(_int64(column.cast(pa.int64())), _UNIT_PER_SECOND[t.unit])
            numeric = seconds
        elif pa.types.is_integer(t):
            numeric = (pc.fill_null(column, 0) if column.null_count else column).to_numpy()
            seconds = None
        elif pa.types.is_floating(t):
            numeric = pc.fill_null(column, 0.0).cast(pa.float64()).to_numpy()
            finite = np.isfinite(numeric)
            self.flag(present & ~finite, RejectReason.BAD_TIMESTAMP, "timestamp")
            seconds = None
        else:
            raise self.bad_type(
                "timestamp", column, "integer or float seconds, or a timestamp type"
            )
        with np.errstate(invalid="ignore"):  # NaN rows are already flagged
            in_range = (numeric >= lo) & (numeric < hi)
        self.flag(present & ~in_range, RejectReason.TIMESTAMP_OUT_OF_RANGE, "timestamp")
        if seconds is None:
            # numeric may be uint64 or float: zero out-of-range rows before the int64 cast.
            seconds = np.where(in_range, numeric, 0)
            if seconds.dtype.kind == "f":
                seconds = np.floor(seconds)
            seconds = seconds.astype(np.int64)
        return np.where(in_range, seconds, 0), numeric

    def value(self) -> np.ndarray:
        if "value" not in self.table.column_names:
            return np.full(self.n, np.nan, np.float32)
        column = self.column("value")
        t = column.type
        if not (pa.types.is_floating(t) or pa.types.is_integer(t)):
            raise self.bad_type("value", column, "a float or integer type (null = absent)")
        present = _np(column.is_valid())
        values = pc.fill_null(column.cast(pa.float64()), 0.0).to_numpy()
        ok = np.isfinite(values) & (np.abs(values) <= FLOAT32_MAX)
        self.flag(present & ~ok, RejectReason.BAD_VALUE, "value")
        return np.where(present & ok, values, np.nan).astype(np.float32)

    def event_id(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(object column, present mask), or None when no row has an event id."""
        if "event_id" not in self.table.column_names:
            return None
        column = self.column("event_id")
        if column.null_count == self.n:
            return None
        if not _is_string(column.type):
            raise self.bad_type("event_id", column, "a string type (null = absent)")
        lengths = _int64(pc.binary_length(column))
        present = _np(column.is_valid())
        self.flag(present & (lengths == 0), RejectReason.EMPTY_ID, "event_id")
        self.flag(lengths > self.limits.max_id_bytes, RejectReason.OVERSIZED_ID, "event_id")
        return column.to_numpy(zero_copy_only=False), present


def _read_table(payload: bytes, limits: ValidationLimits) -> pa.Table:
    if len(payload) > limits.max_arrow_bytes:
        raise _PayloadError(
            RejectReason.OVERSIZED_PAYLOAD,
            f"Arrow payload is {len(payload)} bytes, more than max_arrow_bytes={limits.max_arrow_bytes}",
        )
    try:
        table = pa.ipc.open_stream(pa.py_buffer(payload)).read_all()
    except (pa.ArrowException, OSError, ValueError) as err:
        raise _PayloadError(
            RejectReason.BAD_ARROW, f"payload is not a readable Arrow IPC stream: {err}"
        ) from None
    names = table.column_names
    if len(set(names)) != len(names):
        raise _PayloadError(RejectReason.BAD_ARROW, f"Arrow payload has duplicate columns: {names}")
    missing = [name for name in REQUIRED_FIELDS if name not in names]
    if missing:
        raise _PayloadError(
            RejectReason.MISSING_FIELD,
            f"Arrow payload lacks required column(s) {missing}; it has {names}",
        )
    return table


def decode_arrow_record(
    record: SourceRecord, limits: ValidationLimits
) -> tuple[EventBatch, list[Reject]]:
    """Decode one Arrow record into its valid events and one reject per bad row."""
    try:
        table = _read_table(record.payload, limits)
        check = _Validator(table, limits)
        users = check.keys("user_id")
        items = check.keys("item_id")
        actions = check.action()
        timestamps, numeric_timestamps = check.timestamp()
        values = check.value()
        event_ids = check.event_id()
    except _PayloadError as err:
        reject = Reject(err.reason, err.message, record.partition, record.offset, record.payload)
        return EventBatch.empty(), [reject]

    good = check.reason == 0
    all_good = bool(good.all())
    rows = slice(None) if all_good else good
    if event_ids is not None and not event_ids[1][rows].any():
        event_ids = None  # only rejected rows had event ids
    events = EventBatch(
        user_id=users.select(good),
        item_id=items.select(good),
        timestamp=timestamps[rows],
        action=actions[rows],
        value=values[rows],
        event_id=None if event_ids is None else event_ids[0][rows],
    )
    if all_good:
        return events, []
    bad_rows = np.flatnonzero(~good)
    rejects = []
    for row, data in zip(bad_rows.tolist(), table.take(bad_rows).to_pylist(), strict=True):
        reason = _ROW_REASONS[check.reason[row] - 1]
        field = _FIELDS[check.field[row]]
        shown = numeric_timestamps[row].item() if field == "timestamp" else data.get(field)
        rejects.append(
            Reject(
                reason=reason,
                message=describe(reason, field, shown, limits),
                partition=record.partition,
                offset=record.offset,
                payload=json.dumps(data, default=str).encode(),
                row=row,
            )
        )
    return events, rejects
