"""Replay an event log as records: the engine behind the synthetic and file sources.

The log (loaded lazily, on first use, by a caller-supplied function; an ``EventLog`` in memory
or anything with its length and ``slice``, such as the file source's ``SpilledLog`` on disk) is cut into consecutive
records of ``events_per_record`` events: Arrow IPC payloads of many events, or one JSON
payload per event. Record k holds events ``[k * events_per_record, (k + 1) * events_per_record)``
of the log, so a position is simply the number of records already emitted, and ``seek``
restores any position exactly (the loader must be deterministic, which the synthetic generator
and file readers are). The source is finite: ``exhausted()`` once every record was polled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Protocol

from pipeline.events import EventBatch, encode_arrow, encode_json_rows
from pipeline.events.records import CODECS, Records
from pipeline.lake.datasets import EventLog

log = logging.getLogger(__name__)

DEFAULT_EVENTS_PER_RECORD = {"arrow": 4096, "json": 1}


class LogRows(Protocol):
    """What the source needs of a log: its length and rows ``start:stop`` as an EventLog."""

    def __len__(self) -> int: ...

    def slice(self, start: int, stop: int) -> EventLog: ...


def resolve_events_per_record(codec: str, events_per_record: int | None) -> int:
    """Check a codec / events-per-record pair; ``None`` picks the codec's default."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose one of {CODECS}")
    if events_per_record is None:
        return DEFAULT_EVENTS_PER_RECORD[codec]
    if events_per_record < 1:
        raise ValueError(f"events_per_record must be >= 1, got {events_per_record}")
    if codec == "json" and events_per_record != 1:
        raise ValueError(
            f"the json codec carries one event per record, got events_per_record="
            f"{events_per_record}; use codec='arrow' for many events per record"
        )
    return events_per_record


class EventLogSource:
    """A ``Source`` over one event log, one partition, records of ``events_per_record`` events."""

    def __init__(
        self,
        load: Callable[[], LogRows],
        partition: str,
        codec: str = "arrow",
        events_per_record: int | None = None,
    ) -> None:
        self.partition = partition
        self.codec = codec
        self.events_per_record = resolve_events_per_record(codec, events_per_record)
        self.committed: dict[str, int] = {}
        self._load = load
        self._log: LogRows | None = None
        self._next = 0

    @property
    def event_log(self) -> LogRows:
        """The replayed log, loaded on first access."""
        if self._log is None:
            self._log = self._load()
        return self._log

    @property
    def num_records(self) -> int:
        return -(-len(self.event_log) // self.events_per_record)

    def poll(self, max_records: int, timeout_s: float = 0.0) -> Records:
        """The next up to ``max_records`` records (never waits: the data is in memory)."""
        start = self._next
        stop = min(start + max(max_records, 0), self.num_records)
        if stop <= start:
            return Records()
        epr = self.events_per_record
        events = EventBatch.from_event_log(self.event_log.slice(start * epr, stop * epr))
        if self.codec == "json":
            payloads = encode_json_rows(events)
        else:
            payloads = [
                encode_arrow(events.take(slice(i, i + epr))) for i in range(0, len(events), epr)
            ]
        self._next = stop
        return Records.run(payloads, self.codec, self.partition, start)

    def positions(self) -> dict[str, int]:
        return {self.partition: self._next}

    def seek(self, positions: Mapping[str, int]) -> None:
        """Continue at ``positions[partition]`` (0 when absent; other partitions are ignored)."""
        if self.partition not in positions:
            if positions:
                log.warning(
                    "positions %s do not name partition %r; starting it from 0",
                    dict(positions),
                    self.partition,
                )
            self._next = 0
            return
        offset = positions[self.partition]
        if not 0 <= offset <= self.num_records:
            raise ValueError(
                f"cannot seek {self.partition} to offset {offset}: it has {self.num_records} "
                f"records of {self.events_per_record} events; was the checkpoint written for "
                f"other data or another events_per_record?"
            )
        self._next = offset

    def commit(self, positions: Mapping[str, int]) -> None:
        """Remember the checkpointed positions (``committed``); nothing else to tell."""
        self.committed = dict(positions)

    def exhausted(self) -> bool:
        return self._next >= self.num_records

    def remaining_events(self) -> int:
        """Events in the records not polled yet (``FiniteSource``)."""
        return max(0, len(self.event_log) - self._next * self.events_per_record)

    def close(self) -> None:
        self._log = None
