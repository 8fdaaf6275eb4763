"""JSON codec: one JSON object per payload (UTF-8), fields as in ``schema``.

Decoding has two paths behind ``decode_json_records``:

- the reference (``JsonColumns``): per payload, ``json.loads`` plus the scalar checkers of
  ``schema`` (no pydantic: the same rules, several times faster); it yields the exact reject
  reason and message of every bad payload;
- the fast path (``fast_json_batch``): a chunk of payloads decoded by ``msgspec`` straight into
  typed structs (no dict per event) and checked column by column with numpy. It accepts a
  chunk only when every payload is a valid event of the common shapes (int or str ids, int
  timestamps, ...) and returns exactly the batch the reference would; any doubt -- a bad
  payload, a float timestamp, a number msgspec reads differently from ``json`` -- hands the
  chunk to the reference. ``tests/events`` compares the two on generated payloads.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from itertools import repeat
from operator import attrgetter
from typing import Any

import msgspec
import numpy as np

from pipeline.events.batch import EventBatch, key_column
from pipeline.events.records import Records, SourceRecord
from pipeline.events.reject import Reject
from pipeline.events.schema import (
    ACTION_CODES,
    ACTION_NAMES,
    FLOAT32_MAX,
    MAX_ACTION_CODE,
    REQUIRED_FIELDS,
    Event,
    EventError,
    RejectReason,
    ValidationLimits,
    canonical_key,
    check_action,
    check_event_id,
    check_timestamp,
    check_value,
    describe,
)


def encode_json(event: Event | Mapping[str, Any]) -> bytes:
    """One event as a compact JSON payload; a mapping is validated as an ``Event`` first."""
    if not isinstance(event, Event):
        event = Event.model_validate(event)
    return json.dumps(event.to_json_dict(), separators=(",", ":")).encode()


def encode_json_rows(batch: EventBatch) -> list[bytes]:
    """One JSON payload per row of a (valid) batch, without re-validating it."""
    payloads = []
    for row in batch.rows():
        row["action"] = ACTION_NAMES.get(row["action"], row["action"])
        if row["value"] is None:
            del row["value"]
        if row["event_id"] is None:
            del row["event_id"]
        payloads.append(json.dumps(row, separators=(",", ":")).encode())
    return payloads


# json.loads wraps the C scanner in a BOM check and two whitespace regex matches that cost
# more than scanning a small event. raw_decode is the scan alone: when it consumes the whole
# text (no leading or trailing whitespace, no BOM) its object is the one json.loads returns.
# Every other text goes through json.loads, for its exact error messages.
_raw_decode = json.JSONDecoder().raw_decode


def _parse_json(text: str) -> Any:
    """``json.loads(text)``; a bad text raises ``EventError`` (``BAD_JSON``)."""
    try:
        obj, end = _raw_decode(text)
        if end == len(text):
            return obj
    except (ValueError, RecursionError):
        pass  # json.loads below raises the same error
    try:
        return json.loads(text)
    except ValueError as err:  # JSONDecodeError
        raise EventError(RejectReason.BAD_JSON, f"payload is not valid JSON: {err}") from None
    except RecursionError:
        raise EventError(RejectReason.BAD_JSON, "payload JSON is nested too deeply") from None


class JsonColumns:
    """Accumulates validated JSON events into columns; rejects go to ``rejects``."""

    def __init__(self, limits: ValidationLimits) -> None:
        self.limits = limits
        self.users: list[int | str] = []
        self.items: list[int | str] = []
        self.timestamps: list[int] = []
        self.actions: list[int] = []
        self.values: list[float] = []
        self.event_ids: list[str | None] = []
        self.rejects: list[Reject] = []

    def add(self, record: SourceRecord) -> None:
        """Validate one JSON record and append it as an event or a reject."""
        try:
            self._add(record.payload)
        except EventError as err:
            self.rejects.append(
                Reject(err.reason, err.message, record.partition, record.offset, record.payload)
            )

    def _add(self, payload: bytes) -> None:
        limits = self.limits
        if len(payload) > limits.max_json_bytes:
            raise EventError(
                RejectReason.OVERSIZED_PAYLOAD,
                f"JSON payload is {len(payload)} bytes, more than max_json_bytes="
                f"{limits.max_json_bytes}",
            )
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as err:
            raise EventError(RejectReason.UNDECODABLE, f"payload is not UTF-8: {err}") from None
        obj = _parse_json(text)
        if not isinstance(obj, dict):
            raise EventError(
                RejectReason.BAD_JSON, f"payload is a JSON {type(obj).__name__}, expected an object"
            )
        get = obj.get
        user, item = get("user_id"), get("item_id")
        action, timestamp = get("action"), get("timestamp")
        if user is None or item is None or action is None or timestamp is None:
            missing = next(name for name in REQUIRED_FIELDS if get(name) is None)
            reason = RejectReason.MISSING_FIELD
            raise EventError(reason, describe(reason, missing, None, limits))
        # Check everything before appending anything, so a reject leaves no partial row.
        user = canonical_key(user, "user_id", limits)
        item = canonical_key(item, "item_id", limits)
        action = check_action(action, limits)
        timestamp = check_timestamp(timestamp, limits)
        value = check_value(get("value"), limits)
        event_id = check_event_id(get("event_id"), limits)
        self.users.append(user)
        self.items.append(item)
        self.actions.append(action)
        self.timestamps.append(timestamp)
        self.values.append(value)
        self.event_ids.append(event_id)

    def batch(self) -> EventBatch:
        """The accepted events so far, as one batch."""
        event_id = None
        if self.event_ids.count(None) != len(self.event_ids):  # any event id (a C-speed scan)
            event_id = np.empty(len(self.event_ids), dtype=object)
            event_id[:] = self.event_ids
        return EventBatch(
            user_id=key_column(self.users),
            item_id=key_column(self.items),
            timestamp=np.array(self.timestamps, dtype=np.int64),
            action=np.array(self.actions, dtype=np.int64),
            value=np.array(self.values, dtype=np.float32),
            event_id=event_id,
        )


class _WireEvent(msgspec.Struct):
    """The shapes the fast path takes; anything else fails to decode (-> the reference).

    As in the reference: unknown fields are skipped, the last of duplicate keys wins, and
    ``null`` for an optional field is the same as leaving it out.
    """

    user_id: int | str
    item_id: int | str
    timestamp: int | float
    action: str | int
    value: int | float | None = None
    event_id: str | None = None


_decode_event = msgspec.json.Decoder(_WireEvent).decode
_user, _item = attrgetter("user_id"), attrgetter("item_id")
_timestamp, _action = attrgetter("timestamp"), attrgetter("action")
_value, _event_id = attrgetter("value"), attrgetter("event_id")
_KEY_TYPES = frozenset({int, str})
_NUMBER_TYPES = frozenset({int, float})
_VALUE_TYPES = frozenset({int, float, type(None)})
# Nesting (inside skipped unknown fields) that json.loads and msgspec both decode at any sane
# stack depth. Their recursion limits differ, so a chunk that might nest deeper goes to the
# reference, whose verdict is json.loads's. A payload of at most twice this many bytes cannot
# nest deeper; longer ones are checked by counting their brackets.
_SAFE_DEPTH = 512


def _column(objects: list[_WireEvent], field: Callable[[_WireEvent], Any]) -> list[Any]:
    """One field of every decoded event."""
    return list(map(field, objects))  # C-speed: no Python frame per row


def _types(column: Sequence[Any]) -> frozenset[type]:
    return frozenset(map(type, column))


def _as_int64(column: Sequence[Any]) -> np.ndarray | None:
    """The column as int64 when numpy infers exactly that: every entry an int within int64
    (a str, a float or a bigger int infers another dtype). One pass instead of a type scan
    plus a conversion; the columns come from msgspec, which yields no bools for them."""
    if not column or type(column[0]) is not int:  # str ids: skip building a str array
        return None
    array = np.array(column)
    return array if array.dtype == np.int64 else None


def _key_column(column: Sequence[Any], name: str, limits: ValidationLimits) -> Any:
    ints = _as_int64(column)
    if ints is not None:
        return ints
    if _types(column) <= _KEY_TYPES:  # str ids, or ints beyond int64: the rule per id
        return key_column([canonical_key(key, name, limits) for key in column])
    return None


def _action_column(column: Sequence[Any]) -> np.ndarray | None:
    try:  # all names: a name's code, or None, which int64 refuses (TypeError)
        return np.fromiter(map(ACTION_CODES.get, column), dtype=np.int64, count=len(column))
    except TypeError:
        pass
    codes = _as_int64(column)
    if codes is not None:
        return codes if ((codes >= 0) & (codes <= MAX_ACTION_CODE)).all() else None
    if _types(column) <= _KEY_TYPES:  # names and codes mixed: the reference rule per action
        return np.array([check_action(raw) for raw in column], dtype=np.int64)
    return None


def _timestamp_column(column: Sequence[Any], limits: ValidationLimits) -> Any:
    stamps = _as_int64(column)
    if stamps is None:
        if not _types(column) <= _NUMBER_TYPES:
            return None
        # Seconds with a fraction, floored as the reference does, or ints beyond int64. Every
        # in-range int is exact in float64 (< 2**53), and NaN/inf fail the range check.
        stamps = np.array(column, dtype=np.float64)  # OverflowError for huge ints
    in_range = (stamps >= limits.min_timestamp) & (stamps < limits.max_timestamp)
    if not in_range.all():
        return None
    return stamps if stamps.dtype == np.int64 else np.floor(stamps).astype(np.int64)


def _value_column(column: list[Any]) -> np.ndarray | None:
    if column.count(None) == len(column):  # no value anywhere (a C-speed scan)
        return np.full(len(column), np.nan, dtype=np.float32)
    if not _types(column) <= _VALUE_TYPES:
        return None
    values = np.array(column, dtype=np.float64)  # None -> NaN; OverflowError for huge ints
    absent = np.isnan(values)
    if int(absent.sum()) != column.count(None):
        return None  # a NaN that was not a null
    # Strictly below: the reference compares ints with FLOAT32_MAX exactly, before rounding.
    if not (np.abs(values[~absent]) < FLOAT32_MAX).all():
        return None
    return values.astype(np.float32)


def _event_id_column(column: list[Any], limits: ValidationLimits) -> np.ndarray | None:
    if column.count(None) == len(column):  # no event id anywhere
        return None
    out = np.empty(len(column), dtype=object)
    out[:] = [check_event_id(raw, limits) for raw in column]
    return out


def _shallow(payloads: Sequence[bytes], longest: int) -> bool:
    """True when no payload (the longest of ``longest`` bytes) can nest deeper than
    ``_SAFE_DEPTH``."""
    if longest <= 2 * _SAFE_DEPTH:
        return True
    arrays = map(bytes.count, payloads, repeat(b"["))
    objects = map(bytes.count, payloads, repeat(b"{"))
    return max(map(int.__add__, arrays, objects)) <= _SAFE_DEPTH


def fast_json_batch(payloads: Sequence[bytes], limits: ValidationLimits) -> EventBatch | None:
    """The batch of a chunk of JSON payloads when all of them are valid events, else ``None``.

    A returned batch equals the reference's (``JsonColumns``) for the same payloads; ``None``
    says nothing about which payload is bad -- run the reference to find out.
    """
    if not payloads:
        return None
    longest = max(map(len, payloads))
    if longest > limits.max_json_bytes or not _shallow(payloads, longest):
        return None
    try:
        # msgspec checks UTF-8 only in the strings it keeps; the reference rejects invalid
        # UTF-8 anywhere. An ASCII separator cannot complete a multi-byte sequence, so the
        # joined chunk is valid UTF-8 exactly when every payload is.
        joined = b"\n".join(payloads)
        if not joined.isascii():
            joined.decode("utf-8")
        # msgspec refuses what json.loads reads differently (NaN, 1e400, lone surrogates,
        # floats as ids); ints beyond int64 take the reference's per-id rule (ids) or fail
        # the range check (timestamps) below.
        objects = list(map(_decode_event, payloads))
        columns = (
            _key_column(_column(objects, _user), "user_id", limits),
            _key_column(_column(objects, _item), "item_id", limits),
            _timestamp_column(_column(objects, _timestamp), limits),
            _action_column(_column(objects, _action)),
        )
        value = _value_column(_column(objects, _value))
        event_id = _event_id_column(_column(objects, _event_id), limits)
    except (ValueError, EventError, OverflowError, TypeError, RecursionError):
        # ValueError: msgspec's DecodeError and ValidationError, and UnicodeDecodeError.
        return None
    if value is None or any(column is None for column in columns):
        return None
    return EventBatch(*columns, value, event_id=event_id)


# Rows per fast-path attempt: a bad payload sends only its chunk to the reference.
FAST_CHUNK = 1024


def decode_json_records(
    records: Sequence[SourceRecord], limits: ValidationLimits
) -> tuple[EventBatch, list[Reject]]:
    """Decode JSON records into one batch (record order) and their rejects."""
    records = Records.of(records)
    batches: list[EventBatch] = []
    rejects: list[Reject] = []
    for lo in range(0, len(records), FAST_CHUNK):
        rows = slice(lo, lo + FAST_CHUNK)
        fast = fast_json_batch(records.payloads[rows], limits)
        if fast is None:  # only now the chunk's other columns are needed
            columns = JsonColumns(limits)
            for record in records[rows]:
                columns.add(record)
            fast = columns.batch()
            rejects.extend(columns.rejects)
        batches.append(fast)
    return EventBatch.concat(batches), rejects


__all__ = [
    "FAST_CHUNK",
    "JsonColumns",
    "decode_json_records",
    "encode_json",
    "encode_json_rows",
    "fast_json_batch",
]
