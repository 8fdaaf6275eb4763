"""Dead-letter sinks: where rejected input goes, with its reason, so nothing is silently dropped.

``DeadLetterSink`` is the protocol the trainer writes to (``send`` each ``Reject``, ``flush`` at
a checkpoint, ``counts`` and ``stats`` for metrics). Implementations here are for embedded runs:

- ``JsonlDeadLetterSink(path)``: appends one JSON line per reject
  (``Reject.to_json_dict()``: reason, message, where, partition, offset, row, payload as UTF-8
  text or base64 with ``payload_encoding``); ``read_dead_letters(path)`` reads them back.
  A payload above ``max_payload_bytes`` (8 MiB) is written truncated to that, with
  ``truncated``, ``original_size`` and ``original_sha256``: a huge reject (Arrow payloads up to
  64 MiB are accepted by the decoder) never makes an unbounded line.
- ``MemoryDeadLetterSink``: keeps rejects in a list (tests, notebooks).

The Kafka dead-letter topic (``connectors/kafka/deadletter.py``) implements the same protocol
and carries the same fields (as message headers), so every dead letter says the same things.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import IO, Protocol, runtime_checkable

from pipeline.events import Reject

log = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 8 * 1024 * 1024


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

    def stats(self) -> dict[str, int]:
        """At least ``sent`` (rejects sent so far) and ``truncated`` (those of them written
        with only the first bytes of their payload)."""
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

    def stats(self) -> dict[str, int]:
        """Memory keeps payloads whole: ``truncated`` counts rejects that arrived truncated."""
        return {"sent": len(self.rejects), "truncated": sum(r.truncated for r in self.rejects)}

    def close(self) -> None:
        """Nothing to release."""


class JsonlDeadLetterSink:
    """Appends rejects to a JSON Lines file (created with its parent folder if missing).

    Lines are buffered by the file object and reach the disk on ``flush``/``close``. After a
    crash between a flush and the next checkpoint, replaying from the checkpoint may append a
    reject a second time: dead letters are at-least-once, while events are exactly-once.

    Args:
        path: the JSON Lines file.
        max_payload_bytes: payload bytes kept per reject; a longer payload is cut to this and
            its line records the whole payload's size and sha256 (``Reject.truncated``).
    """

    def __init__(self, path: str | Path, *, max_payload_bytes: int = MAX_PAYLOAD_BYTES) -> None:
        if max_payload_bytes < 0:
            raise ValueError(
                f"dead-letter file {path}: max_payload_bytes must be >= 0, got {max_payload_bytes}"
            )
        self.path = Path(path)
        self.max_payload_bytes = max_payload_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = self.path.open("a", encoding="utf-8")
        self._counts: Counter[str] = Counter()
        self._sent = 0
        self._truncated = 0

    def send(self, reject: Reject) -> None:
        if self._file is None:
            raise ValueError(
                f"dead-letter file {self.path} is closed; cannot record {reject.where()}"
            )
        bounded = reject.truncated_to(self.max_payload_bytes)
        if bounded is not reject:
            log.warning(
                "dead letter %s: payload of %d bytes written truncated to %d bytes "
                "(max_payload_bytes) with its size and sha256",
                reject.where(),
                len(reject.payload),
                len(bounded.payload),
            )
        self._file.write(json.dumps(bounded.to_json_dict()) + "\n")
        self._counts[str(reject.reason)] += 1
        self._sent += 1
        self._truncated += bounded.truncated

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    def stats(self) -> dict[str, int]:
        return {"sent": self._sent, "truncated": self._truncated}

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_dead_letters(path: str | Path) -> list[Reject]:
    """The rejects stored in a ``JsonlDeadLetterSink`` file, in write order (truncated ones
    with ``original_size`` and ``original_sha256``)."""
    with Path(path).open(encoding="utf-8") as f:
        return [Reject.from_json_dict(json.loads(line)) for line in f if line.strip()]
