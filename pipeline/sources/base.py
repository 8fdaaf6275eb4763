"""The source interface every event stream implements (embedded streams, files, Kafka).

A source hands out raw records with their positions; decoding and validation happen in the
pipeline so that every source gets the same dead-letter handling. Positions are "the next
offset to read" per partition key, exactly what a checkpoint stores and ``seek`` restores.

``poll`` returns ``Records``: the records of a poll in parallel columns. Indexing or
iterating gives ``SourceRecord``s, built on demand; the decoder reads the columns directly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from pipeline.events.records import Records


@runtime_checkable
class Source(Protocol):
    """A stream of records with checkpointable positions."""

    def poll(self, max_records: int, timeout_s: float) -> Records:
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


@runtime_checkable
class TimeSeekable(Protocol):
    """A source that can start partitions at an event time (Kafka: ``offsets_for_times``)."""

    def start_at(self, time_s: int) -> None:
        """Partitions without a known or committed position start at the first record
        stamped ``time_s`` (Unix seconds) or later."""
        ...


@runtime_checkable
class FiniteSource(Protocol):
    """A source that knows how many events it has left (the synthetic and table-file
    replays): the trainer's progress line has a total and an ETA without ``max_events``."""

    def remaining_events(self) -> int | None:
        """Events not handed out yet (None: unknown, e.g. JSON Lines)."""
        ...


@runtime_checkable
class SharedSource(Protocol):
    """A partitioned source whose partitions a trainer group can split statically (Kafka):
    rank r of w owns the same partitions on every start (``pipeline.stream.distributed``)."""

    def assign_share(self, rank: int, world: int, timeout_s: float = 60.0) -> list[str]:
        """Own this rank's partitions from now on; returns their position keys."""
        ...


def gather(
    source: Source,
    target_events: float,
    events_per_record: float | None,
    max_records: int | None,
    timeout_s: float,
) -> Records:
    """Poll ``source`` until its records hold about ``target_events`` events (one micro-batch).

    ``events_per_record`` is what decoding has shown so far (1 for JSON, thousands for
    Arrow); while it is unknown (``None``) a single record is asked for, since one Arrow
    record may already be a whole batch. ``max_records`` caps each poll (``None``: no cap).
    Stops at the first empty poll: the Kafka source answers a poll that follows a non-empty
    one with no records (its clean point for rebalances), so a micro-batch is at most one poll's
    worth there -- which is why the cap defaults to none.
    """
    records = Records()
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
