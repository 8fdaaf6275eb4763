"""``EventBatch``: validated events as numpy columns, the unit the store and trainer consume.

Columns (all the same length, one row per event, in arrival order):

- ``user_id``, ``item_id``: canonical keys (see ``schema.canonical_key``). dtype ``int64``
  when every key of the column is an int; otherwise ``object`` holding Python ``int`` and
  ``str`` keys. Both forms hold the same canonical values, so ``5`` in an int64 column and
  ``5`` in an object column are the same key (use them directly as dict keys).
- ``timestamp``: int64 event time, seconds since the epoch.
- ``action``: int64 action code (``schema.ACTION_CODES``).
- ``value``: float32, ``NaN`` when the event carried no value (``weights()`` fills a default).
- ``event_id``: ``None`` when no event of the batch has one, else an object array of
  ``str`` or ``None``.

A batch built by the codecs is valid by construction; the constructor only checks shapes and
dtypes. Columns may be read-only views of decoded Arrow buffers: treat batches as immutable. ``from_event_log`` converts an in-process ``EventLog`` (trusted data, not re-validated).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.events.schema import canonical_key

_KEY_DTYPES = (np.dtype(np.int64), np.dtype(object))


def key_column(keys: Sequence[int | str]) -> np.ndarray:
    """A key column from canonical keys: int64 when all are ints, else object."""
    if all(type(k) is int for k in keys):
        return np.fromiter(keys, dtype=np.int64, count=len(keys))
    column = np.empty(len(keys), dtype=object)
    column[:] = keys
    return column


def canonical_key_column(values: np.ndarray, field: str) -> np.ndarray:
    """Canonicalise an arbitrary id array (ints, strings or a mix) into a key column."""
    if values.dtype.kind == "i":
        return values.astype(np.int64, copy=False)
    if values.dtype.kind == "u" and (len(values) == 0 or values.max() <= np.iinfo(np.int64).max):
        return values.astype(np.int64)
    return key_column([canonical_key(v, field) for v in values.tolist()])


def concat_keys(columns: Sequence[np.ndarray]) -> np.ndarray:
    """Key columns end to end: int64 when every part is, else object."""
    if all(c.dtype == np.int64 for c in columns):
        return np.concatenate(columns)
    # astype(object) turns int64 entries into Python ints, keeping one key per value.
    return np.concatenate([c.astype(object) for c in columns])


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Validated events as columns (see the module docstring for the column contract)."""

    user_id: np.ndarray
    item_id: np.ndarray
    timestamp: np.ndarray
    action: np.ndarray
    value: np.ndarray
    event_id: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.timestamp)
        for name, dtypes in (
            ("user_id", _KEY_DTYPES),
            ("item_id", _KEY_DTYPES),
            ("timestamp", (np.dtype(np.int64),)),
            ("action", (np.dtype(np.int64),)),
            ("value", (np.dtype(np.float32),)),
            ("event_id", (np.dtype(object),)),
        ):
            column = getattr(self, name)
            if column is None and name == "event_id":
                continue
            if column.ndim != 1 or len(column) != n:
                raise ValueError(
                    f"EventBatch.{name} has shape {column.shape}, expected ({n},) like timestamp"
                )
            if column.dtype not in dtypes:
                expected = " or ".join(str(d) for d in dtypes)
                raise ValueError(f"EventBatch.{name} has dtype {column.dtype}, expected {expected}")

    def __len__(self) -> int:
        return len(self.timestamp)

    @classmethod
    def empty(cls) -> EventBatch:
        return cls(
            user_id=np.empty(0, np.int64),
            item_id=np.empty(0, np.int64),
            timestamp=np.empty(0, np.int64),
            action=np.empty(0, np.int64),
            value=np.empty(0, np.float32),
        )

    @classmethod
    def concat(cls, batches: Sequence[EventBatch]) -> EventBatch:
        """One batch with the rows of ``batches`` in order (key dtypes widen to object)."""
        batches = [b for b in batches if len(b)]
        if not batches:
            return cls.empty()
        if len(batches) == 1:
            return batches[0]
        event_id = None
        if any(b.event_id is not None for b in batches):
            event_id = np.concatenate(
                [
                    np.full(len(b), None, object) if b.event_id is None else b.event_id
                    for b in batches
                ]
            )
        return cls(
            user_id=concat_keys([b.user_id for b in batches]),
            item_id=concat_keys([b.item_id for b in batches]),
            timestamp=np.concatenate([b.timestamp for b in batches]),
            action=np.concatenate([b.action for b in batches]),
            value=np.concatenate([b.value for b in batches]),
            event_id=event_id,
        )

    @classmethod
    def from_event_log(cls, log: Any, start: int = 0, stop: int | None = None) -> EventBatch:
        """Rows ``start:stop`` of an ``EventLog`` (columns user, item, timestamp, action and
        value, which may be None).

        Integer id columns are used as they are; other id columns are canonicalised (so a
        string ``"5"`` becomes the int key 5). Values as float32 (NaN: absent), no event ids.
        """
        rows = slice(start, stop)
        timestamp = np.asarray(log.timestamp[rows], dtype=np.int64)
        return cls(
            user_id=canonical_key_column(np.asarray(log.user[rows]), "user_id"),
            item_id=canonical_key_column(np.asarray(log.item[rows]), "item_id"),
            timestamp=timestamp,
            action=np.asarray(log.action[rows], dtype=np.int64),
            value=np.full(len(timestamp), np.nan, np.float32)
            if log.value is None
            else np.asarray(log.value[rows], dtype=np.float32),
        )

    def take(self, rows: np.ndarray | slice) -> EventBatch:
        """The rows selected by an index array, boolean mask or slice."""
        return EventBatch(
            user_id=self.user_id[rows],
            item_id=self.item_id[rows],
            timestamp=self.timestamp[rows],
            action=self.action[rows],
            value=self.value[rows],
            event_id=None if self.event_id is None else self.event_id[rows],
        )

    def weights(self, default: float = 1.0) -> np.ndarray:
        """``value`` with absent entries replaced by ``default`` (float32)."""
        return np.where(np.isnan(self.value), np.float32(default), self.value)

    def rows(self) -> Iterator[dict[str, Any]]:
        """Each event as a dict of Python scalars (value None when absent); for tests/debugging."""
        columns = {
            "user_id": self.user_id.tolist(),
            "item_id": self.item_id.tolist(),
            "action": self.action.tolist(),
            "timestamp": self.timestamp.tolist(),
            "value": [None if v != v else v for v in self.value.tolist()],
            "event_id": [None] * len(self) if self.event_id is None else self.event_id.tolist(),
        }
        for i in range(len(self)):
            yield {name: column[i] for name, column in columns.items()}
