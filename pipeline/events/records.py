"""Raw records as sources hand them out: ``SourceRecord`` and a poll's ``Records``.

``Records`` holds the records of a poll in parallel columns. Indexing or iterating gives
``SourceRecord``s, built on demand; the decoder (``pipeline.events.decode_records``) reads the
columns directly. ``CODECS`` names the payload encodings a record can carry.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import repeat
from typing import NamedTuple, overload

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


class Records(Sequence[SourceRecord]):
    """Records column-wise: ``payloads[i]``, ``codecs[i]``, ``partitions[i]``, ``offsets[i]``
    describe record ``i``; ``times[i]`` is its record timestamp in Unix milliseconds where the
    source has one (Kafka), else None. The timestamp is not part of a ``SourceRecord``: only the
    backfill hand-off reads it (``pipeline.stream.trainer``, rejects after a cut-off).

    Kafka hands out thousands of small messages per poll. Building these four lists takes a
    few C-level passes (~0.2 µs per message), where a ``SourceRecord`` per message cost
    0.3-0.5 µs, half as much as decoding the message; the JSON decoder then takes
    ``payloads`` as they are. Indexing and iteration build
    ``SourceRecord``s on demand (rejects, tests); a slice is a ``Records``.
    """

    __slots__ = ("codecs", "offsets", "partitions", "payloads", "times")

    def __init__(
        self,
        payloads: list[bytes] | None = None,
        codecs: list[str] | None = None,
        partitions: list[str] | None = None,
        offsets: list[int] | None = None,
        times: list[int | None] | None = None,
    ) -> None:
        self.payloads = [] if payloads is None else payloads
        self.codecs = [] if codecs is None else codecs
        self.partitions = [] if partitions is None else partitions
        self.offsets = [] if offsets is None else offsets
        self.times = list(repeat(None, len(self.payloads))) if times is None else times
        columns = (self.payloads, self.codecs, self.partitions, self.offsets, self.times)
        if len({len(c) for c in columns}) != 1:
            raise ValueError(
                f"Records columns differ in length: payloads={len(self.payloads)}, "
                f"codecs={len(self.codecs)}, partitions={len(self.partitions)}, "
                f"offsets={len(self.offsets)}, times={len(self.times)}"
            )

    @classmethod
    def of(cls, records: Iterable[SourceRecord]) -> Records:
        """Columns of row-wise records (a ``Records`` is returned as it is)."""
        if isinstance(records, Records):
            return records
        rows = list(records)
        return cls(
            [r.payload for r in rows],
            [r.codec for r in rows],
            [r.partition for r in rows],
            [r.offset for r in rows],
        )

    @classmethod
    def run(cls, payloads: list[bytes], codec: str, partition: str, first_offset: int) -> Records:
        """Consecutive records of one partition and codec, from ``first_offset`` on."""
        n = len(payloads)
        return cls(
            payloads,
            list(repeat(codec, n)),
            list(repeat(partition, n)),
            list(range(first_offset, first_offset + n)),
        )

    def extend(self, other: Iterable[SourceRecord]) -> None:
        """Append ``other``'s records (column by column when it is a ``Records``)."""
        other = Records.of(other)
        self.payloads.extend(other.payloads)
        self.codecs.extend(other.codecs)
        self.partitions.extend(other.partitions)
        self.offsets.extend(other.offsets)
        self.times.extend(other.times)

    def __len__(self) -> int:
        return len(self.payloads)

    @overload
    def __getitem__(self, index: int) -> SourceRecord: ...
    @overload
    def __getitem__(self, index: slice) -> Records: ...
    def __getitem__(self, index: int | slice) -> SourceRecord | Records:
        if isinstance(index, slice):
            return Records(
                self.payloads[index],
                self.codecs[index],
                self.partitions[index],
                self.offsets[index],
                self.times[index],
            )
        return SourceRecord(
            self.payloads[index], self.codecs[index], self.partitions[index], self.offsets[index]
        )

    def __iter__(self) -> Iterator[SourceRecord]:
        columns = zip(self.payloads, self.codecs, self.partitions, self.offsets, strict=True)
        return map(tuple.__new__, repeat(SourceRecord), columns)  # no Python frame per record

    def __eq__(self, other: object) -> bool:
        """Equal to ``Records`` or a list/tuple of ``SourceRecord``s with the same records."""
        if isinstance(other, Records | list | tuple):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Records({list(self)!r})"
