"""Dead-letter sinks: where rejected input goes, with its reason, so nothing is silently dropped.

``DeadLetterSink`` is the protocol the trainer writes to (``send`` each ``Reject``, ``flush`` at
a checkpoint, ``counts`` for metrics). Implementations here are for embedded runs:

- ``JsonlDeadLetterSink(path)``: appends one JSON line per reject
  (``Reject.to_json_dict()``: reason, message, where, partition, offset, row, payload as UTF-8
  text or base64 with ``payload_encoding``); ``read_dead_letters(path)`` reads them back.
- ``MemoryDeadLetterSink``: keeps rejects in a list (tests, notebooks).

The Kafka dead-letter topic (``connectors/kafka``) implements the same protocol and should
serialise with ``Reject.to_json_dict()`` too, so every dead letter looks the same.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import IO, Protocol, runtime_checkable

from pipeline.events import Reject


@runtime_checkable
class DeadLetterSink(Protocol):
    """Receives every reject; counts them by reason."""

    def send(self, reject: Reject) -> None:
        """Record one reject (may buffer until ``flush``)."""
        ...

    def flush(self) -> None:
        """Make every reject sent so far durable (called before a checkpoint is written)."""
        ...

    def counts(self) -> dict[str, int]:
        """Rejects sent so far per reason value (e.g. ``{"bad_json": 3}``)."""
        ...

    def close(self) -> None: ...


class MemoryDeadLetterSink:
    """Keeps rejects in ``self.rejects``."""

    def __init__(self) -> None:
        self.rejects: list[Reject] = []
        self._counts: Counter[str] = Counter()

    def send(self, reject: Reject) -> None:
        self.rejects.append(reject)
        self._counts[str(reject.reason)] += 1

    def flush(self) -> None:
        """Nothing to do: memory is as durable as it gets."""

    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    def close(self) -> None:
        """Nothing to release."""


class JsonlDeadLetterSink:
    """Appends rejects to a JSON Lines file (created with its parent folder if missing).

    Lines are buffered by the file object and reach the disk on ``flush``/``close``. After a
    crash between a flush and the next checkpoint, replaying from the checkpoint may append a
    reject a second time: dead letters are at-least-once, while events are exactly-once.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = self.path.open("a", encoding="utf-8")
        self._counts: Counter[str] = Counter()

    def send(self, reject: Reject) -> None:
        if self._file is None:
            raise ValueError(
                f"dead-letter file {self.path} is closed; cannot record {reject.where()}"
            )
        self._file.write(json.dumps(reject.to_json_dict()) + "\n")
        self._counts[str(reject.reason)] += 1

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_dead_letters(path: str | Path) -> list[Reject]:
    """The rejects stored in a ``JsonlDeadLetterSink`` file, in write order."""
    with Path(path).open(encoding="utf-8") as f:
        return [Reject.from_json_dict(json.loads(line)) for line in f if line.strip()]
