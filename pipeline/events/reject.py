"""``Reject`` (one input that failed validation, with where and why) and ``DecodeResult``."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from pipeline.events.batch import EventBatch
from pipeline.events.schema import RejectReason


@dataclass(frozen=True, slots=True)
class Reject:
    """One rejected input, enough to find it, understand it and replay it after a fix.

    Attributes:
        reason: why (``RejectReason``; compares equal to its string value).
        message: what was wrong, for humans.
        partition: the source partition key of the record.
        offset: the record's offset in that partition.
        payload: the raw record payload; for one bad row of an Arrow batch, that row as a JSON
            object (UTF-8 bytes).
        row: the row index inside an Arrow payload (across all its record batches); ``None``
            when the reject covers the whole record (a JSON event, or an Arrow payload that
            could not be read or lacks a column: then all its events are in this one reject).
    """

    reason: RejectReason
    message: str
    partition: str
    offset: int
    payload: bytes
    row: int | None = None

    def where(self) -> str:
        """``partition@offset``, plus ``#row`` for one row of an Arrow batch."""
        base = f"{self.partition}@{self.offset}"
        return base if self.row is None else f"{base}#{self.row}"

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-ready form for dead-letter files/topics: payload as text when it is UTF-8."""
        try:
            payload, encoding = self.payload.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            payload, encoding = base64.b64encode(self.payload).decode("ascii"), "base64"
        return {
            "reason": str(self.reason),
            "message": self.message,
            "where": self.where(),
            "partition": self.partition,
            "offset": self.offset,
            "row": self.row,
            "payload": payload,
            "payload_encoding": encoding,
        }

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> Reject:
        """Inverse of ``to_json_dict`` (to inspect or replay dead letters)."""
        if data["payload_encoding"] == "base64":
            payload = base64.b64decode(data["payload"])
        else:
            payload = data["payload"].encode("utf-8")
        return cls(
            reason=RejectReason(data["reason"]),
            message=data["message"],
            partition=data["partition"],
            offset=data["offset"],
            payload=payload,
            row=data["row"],
        )


@dataclass(frozen=True, slots=True)
class DecodeResult:
    """Valid events of the decoded records (in record order) and one reject per bad input."""

    events: EventBatch
    rejects: list[Reject] = field(default_factory=list)
