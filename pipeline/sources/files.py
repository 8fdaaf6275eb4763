"""``FileSource``: replay an event file as a stream of records.

Two kinds of file:

- **Tables** (MovieLens ``.dat``/``.csv``, generic CSV, Parquet; read by the lake's reader
  through ``pipeline.lake.datasets.iter_event_log``, a rating as the event's value): the log is put in event-time order (ties keep file
  order) in bounded memory, by an external sort into a spill file (``pipeline.sources.spill``:
  chunks of ``chunk_rows`` rows sorted and merged on disk under ``spill_dir``, deleted on
  ``close``, or when the source is collected or the process exits), and cut into records like ``SyntheticSource`` (codec ``arrow``, the default:
  ``events_per_record`` events each, default 4096; ``json``: one event each). Offset = record index. A malformed row is
  an error when the file is opened (``DataFormatError`` naming file:line), unless
  ``skip_malformed=True``: then the reader skips and counts such rows (``read_stats``) and logs
  a warning, because table rows never reach the validator.
- **JSON Lines** (``format="jsonl"``, or ``auto`` for ``.jsonl``/``.ndjson``): one raw JSON event
  per line, streamed in file order. Each line is one ``json`` record with offset = line index
  (0-based), payload = the line without its line break, so malformed lines flow to validation
  and dead letters instead of crashing the reader (an empty line is rejected as ``bad_json``).

The partition key is ``file:<file name>`` unless ``partition`` is given: stable when the data
moves, so checkpointed positions still apply. ``seek`` skips to the checkpointed offset.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from pipeline.events.records import Records
from pipeline.lake.datasets import ReadStats, iter_event_log
from pipeline.sources.base import Source
from pipeline.sources.eventlog import EventLogSource
from pipeline.sources.spill import SpilledLog, spill_sorted

log = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".ndjson")
# Rows parsed per sorted run: ~100 MB of Python objects at most while a chunk is read.
CHUNK_ROWS = 1 << 18


class JsonlSource:
    """One JSON record per line of a file; offset = line index."""

    def __init__(self, path: str | Path, partition: str) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such file to replay")
        self.partition = partition
        self.committed: dict[str, int] = {}
        self._file: IO[bytes] | None = None
        self._next = 0
        self._peeked: bytes | None = None  # a line read ahead by exhausted()
        self._eof = False
        self._open_at(0)

    def _open_at(self, line: int) -> None:
        if self._file is not None:
            self._file.close()
        self._file = self.path.open("rb")
        self._next, self._peeked, self._eof = 0, None, False
        for _ in range(line):
            if self._read_line() is None:
                raise ValueError(
                    f"cannot seek {self.partition} to line {line}: {self.path} has only "
                    f"{self._next} lines; was the checkpoint written for another file?"
                )
            self._next += 1

    def _read_line(self) -> bytes | None:
        if self._peeked is not None:
            line, self._peeked = self._peeked, None
            return line
        if self._eof or self._file is None:
            return None
        line = self._file.readline()
        if not line:
            self._eof = True
            return None
        return line.rstrip(b"\r\n") if line.endswith(b"\n") else line

    def poll(self, max_records: int, timeout_s: float = 0.0) -> Records:
        lines = []
        while len(lines) < max_records:
            line = self._read_line()
            if line is None:
                break
            lines.append(line)
        records = Records.run(lines, "json", self.partition, self._next)
        self._next += len(lines)
        return records

    def positions(self) -> dict[str, int]:
        return {self.partition: self._next}

    def seek(self, positions: Mapping[str, int]) -> None:
        """Continue at line ``positions[partition]`` (0 when absent; others are ignored)."""
        if self.partition not in positions and positions:
            log.warning(
                "positions %s do not name partition %r; starting it from line 0",
                dict(positions),
                self.partition,
            )
        self._open_at(positions.get(self.partition, 0))

    def commit(self, positions: Mapping[str, int]) -> None:
        self.committed = dict(positions)

    def exhausted(self) -> bool:
        if self._peeked is None and not self._eof:
            self._peeked = self._read_line()
        return self._peeked is None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class FileSource:
    """A ``Source`` replaying one file (see the module docstring for formats and offsets)."""

    def __init__(
        self,
        path: str | Path,
        format: str = "auto",
        codec: str | None = None,
        events_per_record: int | None = None,
        partition: str | None = None,
        skip_malformed: bool = False,
        spill_dir: str | Path | None = None,
        chunk_rows: int = CHUNK_ROWS,
    ) -> None:
        self.path = Path(path)
        self._spill_dir = spill_dir
        self._chunk_rows = chunk_rows
        self._spilled: SpilledLog | None = None
        self.partition = partition or f"file:{self.path.name}"
        self.read_stats: ReadStats | None = None
        is_jsonl = format == "jsonl" or (
            format == "auto" and self.path.suffix.lower() in JSONL_SUFFIXES
        )
        self._inner: Source
        if is_jsonl:
            if codec not in (None, "json") or events_per_record not in (None, 1):
                raise ValueError(
                    f"{self.path}: a JSON Lines file replays one json record per line; "
                    f"got codec={codec!r}, events_per_record={events_per_record}"
                )
            self._inner = JsonlSource(self.path, self.partition)
        else:
            self._format = format
            self._skip_malformed = skip_malformed
            self._inner = EventLogSource(
                self._read, self.partition, codec or "arrow", events_per_record
            )

    @property
    def spilled(self) -> SpilledLog | None:
        """The sorted spill of a table file once it was read (None: JSONL, or not yet)."""
        return self._spilled

    def _read(self) -> SpilledLog:
        chunks, self.read_stats = iter_event_log(
            self.path, self._format, self._skip_malformed, self._chunk_rows
        )
        assert isinstance(self._inner, EventLogSource)
        self._spilled = spill_sorted(chunks, self._inner.events_per_record, self._spill_dir)
        return self._spilled

    def poll(self, max_records: int, timeout_s: float = 0.0) -> Records:
        return self._inner.poll(max_records, timeout_s)

    def positions(self) -> dict[str, int]:
        return self._inner.positions()

    def seek(self, positions: Mapping[str, int]) -> None:
        self._inner.seek(positions)

    def commit(self, positions: Mapping[str, int]) -> None:
        self._inner.commit(positions)

    def exhausted(self) -> bool:
        return self._inner.exhausted()

    def remaining_events(self) -> int | None:
        """Events left in a table file (reading it if not done yet); None for JSON Lines,
        whose lines are counted only as they are read (``FiniteSource``)."""
        if isinstance(self._inner, EventLogSource):
            return self._inner.remaining_events()
        return None

    def close(self) -> None:
        self._inner.close()
        if self._spilled is not None:
            self._spilled.close()
            self._spilled = None
