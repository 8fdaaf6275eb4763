"""The source interface every event stream implements (embedded streams, files, Kafka).

A source hands out raw records with their positions; decoding and validation happen in the
pipeline so that every source gets the same dead-letter handling. Positions are "the next
offset to read" per partition key, exactly what a checkpoint stores and ``seek`` restores.
"""

from __future__ import annotations

import math
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
    """

    payload: bytes
    codec: str
    partition: str
    offset: int

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


def gather(
    source: Source,
    target_events: float,
    events_per_record: float | None,
    max_records: int | None,
    timeout_s: float,
) -> list[SourceRecord]:
    """Poll ``source`` until its records hold about ``target_events`` events (one micro-batch).

    ``events_per_record`` is what decoding has shown so far (1 for JSON, thousands for
    Arrow); while it is unknown (``None``) a single record is asked for, since one Arrow
    record may already be a whole batch. ``max_records`` caps each poll (``None``: no cap).
    Stops at the first empty poll: the Kafka source answers a poll that follows a non-empty
    one with ``[]`` (its clean point for rebalances), so a micro-batch is at most one poll's
    worth there -- which is why the cap defaults to none.
    """
    records: list[SourceRecord] = []
    have = 0.0
    while have < target_events:
        want = 1
        if events_per_record is not None:
            want = max(1, math.ceil((target_events - have) / events_per_record))
        got = source.poll(want if max_records is None else min(max_records, want), timeout_s)
        if not got:
            break
        records.extend(got)
        if events_per_record is None:
            break
        have += len(got) * events_per_record
    return records
