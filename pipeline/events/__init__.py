"""Event schema, codecs and validation: raw ``SourceRecord`` bytes -> ``EventBatch`` + rejects.

The whole public API is importable from ``pipeline.events``:

- schema (``schema.py``): ``Event`` (pydantic model), ``ValidationLimits``,
  ``RejectReason``, ``ACTION_CODES`` / ``ACTION_NAMES`` / ``MAX_ACTION_CODE``,
  ``canonical_key`` (the id rule: ints, and decimal strings of int64s, are ints; other ids str);
- columns (``batch.py``): ``EventBatch`` (numpy columns; ``concat``, ``from_event_log``,
  ``take``, ``weights``, ``rows``);
- codecs: ``encode_json(event) -> bytes`` (one event per payload),
  ``encode_json_rows(batch) -> list[bytes]``, ``encode_arrow(batch_or_event_log) -> bytes``
  (one Arrow IPC stream, many events), ``to_arrow(batch) -> pa.Table``;
- decoding: ``decode(record) -> DecodeResult`` and ``decode_records(records) -> DecodeResult``
  (``DecodeResult.events``: the valid events in record order; ``.rejects``: one ``Reject``
  per bad JSON record, per bad Arrow row, or per unreadable Arrow payload).

Decoding never raises on bad input: everything wrong ends up as a ``Reject`` with a
``RejectReason``, a message, the location (``partition@offset``, ``#row`` for an Arrow row) and
the payload; send rejects to a ``pipeline.stream.deadletter.DeadLetterSink``. Decode many records in
one ``decode_records`` call: JSON events are then gathered into one batch instead of one batch
per event. The rules themselves are documented in ``pipeline/events/schema.py`` and
``docs/events.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby

from pipeline.events.arrow_codec import decode_arrow_record, encode_arrow, to_arrow
from pipeline.events.batch import EventBatch
from pipeline.events.json_codec import decode_json_records, encode_json, encode_json_rows
from pipeline.events.records import CODECS, Records, SourceRecord
from pipeline.events.reject import DecodeResult, Reject
from pipeline.events.schema import (
    ACTION_CODES,
    ACTION_NAMES,
    DEFAULT_LIMITS,
    MAX_ACTION_CODE,
    Event,
    EventError,
    RejectReason,
    ValidationLimits,
    canonical_key,
)


def decode_records(
    records: Sequence[SourceRecord], limits: ValidationLimits = DEFAULT_LIMITS
) -> DecodeResult:
    """Decode and validate records; valid events keep record (and row) order.

    ``records``: a ``Records`` (what sources return; read column-wise) or any sequence of
    ``SourceRecord``s.

    A valid JSON event (its decimal-string item id becomes an int, its action name the
    action's code) and one without an item, which becomes a reject:

    >>> click = b'{"user_id": 7, "item_id": "42", "action": "click", "timestamp": 1700000000}'
    >>> result = decode_records(
    ...     [
    ...         SourceRecord(click, "json", "events:0", 5),
    ...         SourceRecord(b'{"user_id": 7}', "json", "events:0", 6),
    ...     ]
    ... )
    >>> batch = result.events
    >>> batch.user_id.tolist(), batch.item_id.tolist(), batch.action.tolist()
    ([7], [42], [2])
    >>> [(r.reason.value, r.message, r.offset) for r in result.rejects]
    [('missing_field', "required field 'item_id' is missing or null", 6)]
    """
    records = Records.of(records)
    batches: list[EventBatch] = []
    rejects: list[Reject] = []
    # Runs of one codec (C-speed grouping): a run of JSON records decodes as one batch.
    lo = 0
    for codec, same in groupby(records.codecs):
        hi = lo + len(list(same))
        run, lo = records[lo:hi], hi
        if codec == "json":
            events, bad = decode_json_records(run, limits)
            batches.append(events)
            rejects.extend(bad)
        elif codec == "arrow":
            for record in run:
                events, bad = decode_arrow_record(record, limits)
                batches.append(events)
                rejects.extend(bad)
        else:
            for record in run:
                message = (
                    f"unknown codec {record.codec!r} at {record.where()}; expected one of {CODECS}"
                )
                rejects.append(
                    Reject(
                        RejectReason.UNKNOWN_CODEC,
                        message,
                        record.partition,
                        record.offset,
                        record.payload,
                    )
                )
    return DecodeResult(EventBatch.concat(batches), rejects)


def decode(record: SourceRecord, limits: ValidationLimits = DEFAULT_LIMITS) -> DecodeResult:
    """Decode and validate one record (prefer ``decode_records`` for many JSON records)."""
    return decode_records([record], limits)


__all__ = [
    "ACTION_CODES",
    "ACTION_NAMES",
    "DEFAULT_LIMITS",
    "MAX_ACTION_CODE",
    "DecodeResult",
    "Event",
    "EventBatch",
    "EventError",
    "Reject",
    "RejectReason",
    "ValidationLimits",
    "canonical_key",
    "decode",
    "decode_records",
    "encode_arrow",
    "encode_json",
    "encode_json_rows",
    "to_arrow",
]
