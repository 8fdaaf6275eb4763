"""The source interface every event stream implements (embedded streams, files, Kafka).

A source hands out raw records with their positions; decoding and validation happen in the
pipeline so that every source gets the same dead-letter handling. Positions are "the next
offset to read" per partition key, exactly what a checkpoint stores and ``seek`` restores.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple, Protocol, runtime_checkable

CODECS = ("json", "arrow")


class SourceRecord(NamedTuple):
    """One raw record: a single JSON event or an Arrow IPC batch of many events.

    A NamedTuple rather than a frozen dataclass: sources build one per Kafka message, and
    tuple construction is several times cheaper on that hot path.

    Attributes:
        payload: the raw bytes, undecoded.
        codec: "json" or "arrow" (Kafka: chosen by the message's ``codec`` header).
        partition: position key, e.g. ``"events:2"`` for Kafka topic ``events`` partition 2,
            or the file path for file replay.
        offset: the record's own offset within that partition.
        key: the record key (user id for Kafka), if any.
    """

    payload: bytes
    codec: str
    partition: str
    offset: int
    key: bytes | None = None

    def where(self) -> str:
        """Human-readable location for error messages and dead letters."""
        return f"{self.partition}@{self.offset}"


@runtime_checkable
class Source(Protocol):
    """A stream of records with checkpointable positions."""

    def poll(self, max_records: int, timeout_s: float) -> list[SourceRecord]:
        """Up to ``max_records`` records, waiting at most ``timeout_s`` for the first one."""
        ...

    def positions(self) -> dict[str, int]:
        """Next offset to read per partition, covering every record returned so far."""
        ...

    def seek(self, positions: Mapping[str, int]) -> None:
        """Resume from checkpointed positions (partitions not named start at the default)."""
        ...

    def commit(self, positions: Mapping[str, int]) -> None:
        """Report positions that a durable checkpoint covers (Kafka: for lag monitoring)."""
        ...

    def exhausted(self) -> bool:
        """True when a finite source has nothing more to give (always False for Kafka)."""
        ...

    def close(self) -> None: ...
