"""``Reject`` (one input that failed validation, with where and why) and ``DecodeResult``."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
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
        original_size: set only when ``payload`` is a truncated prefix (a dead-letter sink
            bounds what it writes): the byte size of the whole payload.
        original_sha256: with ``original_size``, the hex sha256 of the whole payload, to match
            the dead letter with the source record.
    """

    reason: RejectReason
    message: str
    partition: str
    offset: int
    payload: bytes
    row: int | None = None
    original_size: int | None = None
    original_sha256: str | None = None

    @property
    def truncated(self) -> bool:
        """Whether ``payload`` is only the first bytes of the rejected payload."""
        return self.original_size is not None

    def truncated_to(self, max_bytes: int) -> Reject:
        """This reject with at most ``max_bytes`` of its payload, recording the whole
        payload's size and sha256; ``self`` when the payload fits already.

        A UTF-8 payload is cut at a character boundary, so that it stays text."""
        if len(self.payload) <= max_bytes:
            return self
        if self.truncated:  # cut again: size and checksum stay those of the whole payload
            size, sha256 = self.original_size, self.original_sha256
        else:
            size, sha256 = len(self.payload), hashlib.sha256(self.payload).hexdigest()
        return dataclasses.replace(
            self,
            payload=_utf8_prefix(self.payload, max(0, max_bytes)),
            original_size=size,
            original_sha256=sha256,
        )

    def where(self) -> str:
        """``partition@offset``, plus ``#row`` for one row of an Arrow batch."""
        base = f"{self.partition}@{self.offset}"
        return base if self.row is None else f"{base}#{self.row}"

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-ready form for dead-letter files/topics: payload as text when it is UTF-8;
        ``truncated``, ``original_size`` and ``original_sha256`` only for a truncated one."""
        try:
            payload, encoding = self.payload.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            payload, encoding = base64.b64encode(self.payload).decode("ascii"), "base64"
        data: dict[str, Any] = {
            "reason": str(self.reason),
            "message": self.message,
            "where": self.where(),
            "partition": self.partition,
            "offset": self.offset,
            "row": self.row,
            "payload": payload,
            "payload_encoding": encoding,
        }
        if self.truncated:
            data["truncated"] = True
            data["original_size"] = self.original_size
            data["original_sha256"] = self.original_sha256
        return data

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> Reject:
        """Inverse of ``to_json_dict`` (to inspect or replay dead letters); reads lines
        written before truncation existed too."""
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
            original_size=data.get("original_size"),
            original_sha256=data.get("original_sha256"),
        )


def _utf8_prefix(data: bytes, max_bytes: int) -> bytes:
    """``data[:max_bytes]``, shortened by up to 3 bytes when that ends a UTF-8 text inside a
    character (a split character would make the whole prefix binary)."""
    cut = data[:max_bytes]
    for end in range(len(cut), max(-1, len(cut) - 4), -1):
        try:
            cut[:end].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return cut[:end]
    return cut  # not UTF-8 text: keep every byte


@dataclass(frozen=True, slots=True)
class DecodeResult:
    """Valid events of the decoded records (in record order) and one reject per bad input."""

    events: EventBatch
    rejects: list[Reject] = field(default_factory=list)
