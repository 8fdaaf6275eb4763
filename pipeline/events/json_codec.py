"""JSON codec: one JSON object per payload (UTF-8), fields as in ``schema``.

Decoding is ``json.loads`` plus the scalar checkers of ``schema`` (no pydantic on the hot path:
the same rules, several times faster; ``bench/stream_throughput.py`` measures both).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.events.batch import EventBatch, key_column
from pipeline.events.reject import Reject
from pipeline.events.schema import (
    ACTION_NAMES,
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
from pipeline.sources.base import SourceRecord


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


def decode_json_records(
    records: Sequence[SourceRecord], limits: ValidationLimits
) -> tuple[EventBatch, list[Reject]]:
    """Decode JSON records into one batch (record order) and their rejects."""
    columns = JsonColumns(limits)
    for record in records:
        columns.add(record)
    return columns.batch(), columns.rejects


__all__ = ["JsonColumns", "decode_json_records", "encode_json", "encode_json_rows"]
