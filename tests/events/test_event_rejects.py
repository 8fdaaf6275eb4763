"""Every reject reason from a crafted bad input, with its location; good rows still pass."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from pipeline.events import RejectReason, ValidationLimits, decode, decode_records
from pipeline.events.records import SourceRecord

T0 = 1_600_000_000
GOOD = {"user_id": 1, "item_id": "i", "action": "view", "timestamp": T0}


def with_fields(**changes: object) -> dict:
    event = {**GOOD, **changes}
    return {k: v for k, v in event.items() if v is not ...}  # ... = leave the field out


def arrow_payload(*tables: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, tables[0].schema) as writer:
        for table in tables:
            writer.write_table(table)
    return sink.getvalue().to_pybytes()


JSON_CASES = [
    (b"\xff\xfe{}", RejectReason.UNDECODABLE),
    (b'{"user_id": 1,', RejectReason.BAD_JSON),
    (b"", RejectReason.BAD_JSON),
    (b"[1, 2]", RejectReason.BAD_JSON),
    (b'"just a string"', RejectReason.BAD_JSON),
    (with_fields(user_id=...), RejectReason.MISSING_FIELD),
    (with_fields(timestamp=None), RejectReason.MISSING_FIELD),
    (with_fields(action=...), RejectReason.MISSING_FIELD),
    (with_fields(user_id=True), RejectReason.BAD_TYPE),
    (with_fields(item_id=3.0), RejectReason.BAD_TYPE),
    (with_fields(item_id=[1]), RejectReason.BAD_TYPE),
    (with_fields(timestamp="2020-01-01"), RejectReason.BAD_TYPE),
    (with_fields(action={"a": 1}), RejectReason.BAD_TYPE),
    (with_fields(value="5"), RejectReason.BAD_TYPE),
    (with_fields(event_id=17), RejectReason.BAD_TYPE),
    (with_fields(user_id=""), RejectReason.EMPTY_ID),
    (with_fields(event_id=""), RejectReason.EMPTY_ID),
    (with_fields(item_id="x" * 257), RejectReason.OVERSIZED_ID),
    (with_fields(item_id="é" * 129), RejectReason.OVERSIZED_ID),  # 258 bytes, 129 characters
    (with_fields(event_id="e" * 300), RejectReason.OVERSIZED_ID),
    # Valid JSON, but the escape decodes to a lone surrogate: no valid Unicode id.
    (b'{"user_id":"\\ud800","item_id":1,"action":0,"timestamp":1e9}', RejectReason.UNDECODABLE),
    (
        b'{"user_id":1,"item_id":1,"action":0,"timestamp":1e9,"event_id":"a\\udfff"}',
        RejectReason.UNDECODABLE,
    ),
    (with_fields(item_id="\ud800" * 300), RejectReason.OVERSIZED_ID),
    (with_fields(action="teleport"), RejectReason.BAD_ACTION),
    (with_fields(action=256), RejectReason.BAD_ACTION),
    (with_fields(action=-1), RejectReason.BAD_ACTION),
    (b'{"user_id":1,"item_id":1,"action":0,"timestamp":NaN}', RejectReason.BAD_TIMESTAMP),
    (b'{"user_id":1,"item_id":1,"action":0,"timestamp":-Infinity}', RejectReason.BAD_TIMESTAMP),
    (with_fields(timestamp=T0 * 1000), RejectReason.TIMESTAMP_OUT_OF_RANGE),
    (with_fields(timestamp=0), RejectReason.TIMESTAMP_OUT_OF_RANGE),
    (with_fields(timestamp=4_102_444_800), RejectReason.TIMESTAMP_OUT_OF_RANGE),
    (with_fields(timestamp=10**400), RejectReason.TIMESTAMP_OUT_OF_RANGE),
    (with_fields(value=1e39), RejectReason.BAD_VALUE),
    (with_fields(value=10**400), RejectReason.BAD_VALUE),
    (b'{"user_id":1,"item_id":1,"action":0,"timestamp":1e9,"value":NaN}', RejectReason.BAD_VALUE),
    (with_fields(padding="x" * 70_000), RejectReason.OVERSIZED_PAYLOAD),
]


@pytest.mark.parametrize("raw, reason", JSON_CASES)
def test_json_reject_reason_and_location(raw: bytes | dict, reason: RejectReason) -> None:
    payload = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
    result = decode(SourceRecord(payload, "json", "events:3", 41))
    assert len(result.events) == 0
    [reject] = result.rejects
    assert reject.reason == reason
    assert reject.where() == "events:3@41" and reject.row is None
    assert reject.payload == payload
    assert reject.message


def test_out_of_range_message_hints_at_milliseconds() -> None:
    reject = decode(
        SourceRecord(json.dumps(with_fields(timestamp=T0 * 1000)).encode(), "json", "p", 0)
    )
    assert "milliseconds" in reject.rejects[0].message


def test_custom_limits() -> None:
    limits = ValidationLimits(max_json_bytes=80, max_id_bytes=3, min_timestamp=0, max_timestamp=10)
    cases = [
        (with_fields(user_id="abcd", timestamp=5), RejectReason.OVERSIZED_ID),
        (with_fields(user_id="abc", timestamp=5, pad="x" * 80), RejectReason.OVERSIZED_PAYLOAD),
        (with_fields(user_id="abc", timestamp=T0), RejectReason.TIMESTAMP_OUT_OF_RANGE),
    ]
    records = [
        SourceRecord(json.dumps(c).encode(), "json", "p", i) for i, (c, _) in enumerate(cases)
    ]
    records.append(
        SourceRecord(json.dumps(with_fields(user_id="abc", timestamp=5)).encode(), "json", "p", 9)
    )
    result = decode_records(records, limits)
    assert [r.reason for r in result.rejects] == [reason for _, reason in cases]
    assert result.events.user_id.tolist() == ["abc"] and result.events.timestamp.tolist() == [5]


def test_arrow_batch_with_bad_rows_keeps_exactly_the_good_rows() -> None:
    rows = [
        # (user_id, item_id, action, timestamp, value, event_id, expected reason or None)
        ("u1", 10, "view", float(T0), 1.0, "e0", None),
        (None, 11, "view", float(T0), None, None, RejectReason.MISSING_FIELD),
        ("", 12, "view", float(T0), None, None, RejectReason.EMPTY_ID),
        ("u3", 13, "view", float(T0) + 0.5, None, None, None),
        ("x" * 300, 14, "click", float(T0), None, None, RejectReason.OVERSIZED_ID),
        ("u5", 15, "fly", float(T0), None, None, RejectReason.BAD_ACTION),
        ("u6", 16, "view", float("nan"), None, None, RejectReason.BAD_TIMESTAMP),
        ("u7", 17, "view", float(T0) * 1000, None, None, RejectReason.TIMESTAMP_OUT_OF_RANGE),
        ("u8", 18, "view", float(T0), float("inf"), None, RejectReason.BAD_VALUE),
        ("42", 19, "purchase", float(T0), 2.5, None, None),
        ("u10", None, "view", float(T0), None, None, RejectReason.MISSING_FIELD),
        ("u11", 21, None, float(T0), None, None, RejectReason.MISSING_FIELD),
        ("u12", 22, "view", None, None, None, RejectReason.MISSING_FIELD),
        ("u13", 23, "view", float(T0), None, "", RejectReason.EMPTY_ID),
    ]
    names = ["user_id", "item_id", "action", "timestamp", "value", "event_id"]
    table = pa.table({name: [row[i] for row in rows] for i, name in enumerate(names)})
    result = decode(SourceRecord(arrow_payload(table), "arrow", "events:0", 7))

    good = [i for i, row in enumerate(rows) if row[-1] is None]
    assert result.events.user_id.tolist() == ["u1", "u3", 42]
    assert result.events.item_id.tolist() == [rows[i][1] for i in good]
    assert result.events.timestamp.tolist() == [T0, T0, T0]
    assert result.events.action.tolist() == [1, 1, 5]
    assert np.array_equal(
        result.events.value, np.array([1.0, np.nan, 2.5], np.float32), equal_nan=True
    )
    assert result.events.event_id is not None and result.events.event_id.tolist() == [
        "e0",
        None,
        None,
    ]

    bad = [(i, row[-1]) for i, row in enumerate(rows) if row[-1] is not None]
    assert [(r.row, r.reason) for r in result.rejects] == bad
    for reject in result.rejects:
        assert reject.where() == f"events:0@7#{reject.row}"
        offending = json.loads(reject.payload)
        assert offending["item_id"] == rows[reject.row][1]  # the payload is the offending row


def test_arrow_row_indices_span_record_batches() -> None:
    first = pa.table(
        {"user_id": [1, 2], "item_id": [1, 1], "action": [0, 0], "timestamp": [T0, T0]}
    )
    second = pa.table(
        {"user_id": [3, 4], "item_id": [1, 1], "action": [0, 999], "timestamp": [T0, T0]}
    )
    result = decode(SourceRecord(arrow_payload(first, second), "arrow", "p", 0))
    assert result.events.user_id.tolist() == [1, 2, 3]
    assert [(r.row, r.reason) for r in result.rejects] == [(3, RejectReason.BAD_ACTION)]


def test_arrow_accepts_other_column_types() -> None:
    table = pa.table(
        {
            "user_id": pa.array(["7", "bob", None], pa.large_string()),
            "item_id": pa.array([2**64 - 1, 5, 6], pa.uint64()),
            "action": pa.array(["click", "view", "view"]).dictionary_encode(),
            "timestamp": pa.array([T0 * 1000 + 999, T0 * 1000, T0 * 1000], pa.timestamp("ms")),
            "value": pa.array([3, None, 1], pa.int8()),
        }
    )
    result = decode(SourceRecord(arrow_payload(table), "arrow", "p", 0))
    assert list(result.events.rows()) == [
        {
            "user_id": 7,
            "item_id": str(2**64 - 1),
            "action": 2,
            "timestamp": T0,
            "value": 3.0,
            "event_id": None,
        },
        {
            "user_id": "bob",
            "item_id": 5,
            "action": 1,
            "timestamp": T0,
            "value": None,
            "event_id": None,
        },
    ]
    assert [(r.row, r.reason) for r in result.rejects] == [(2, RejectReason.MISSING_FIELD)]


@pytest.mark.parametrize(
    "payload, reason, needle",
    [
        (b"definitely not arrow", RejectReason.BAD_ARROW, "not a readable Arrow IPC stream"),
        ("truncated", RejectReason.BAD_ARROW, "not a readable Arrow IPC stream"),
        ("no_timestamp", RejectReason.MISSING_FIELD, "['timestamp']"),
        ("string_timestamp", RejectReason.BAD_TYPE, "'timestamp'"),
        ("float_ids", RejectReason.BAD_TYPE, "'user_id'"),
        ("list_event_id", RejectReason.BAD_TYPE, "'event_id'"),
        ("huge", RejectReason.OVERSIZED_PAYLOAD, "max_arrow_bytes=1000"),
    ],
)
def test_arrow_payload_level_rejects(
    payload: bytes | str, reason: RejectReason, needle: str
) -> None:
    base = {"user_id": [1, 2], "item_id": [1, 2], "action": [0, 0], "timestamp": [T0, T0]}
    tables = {
        "no_timestamp": {k: v for k, v in base.items() if k != "timestamp"},
        "string_timestamp": {**base, "timestamp": ["2020", "2021"]},
        "float_ids": {**base, "user_id": [1.0, 2.0]},
        "list_event_id": {**base, "event_id": [["a"], ["b"]]},
        "huge": {**base, "user_id": [str(i) for i in range(2)], "pad": ["x" * 2000] * 2},
    }
    if payload == "truncated":
        payload = arrow_payload(pa.table(base))[:-40]
    elif isinstance(payload, str):
        payload = arrow_payload(pa.table(tables[payload]))
    limits = ValidationLimits(max_arrow_bytes=1000)
    result = decode(SourceRecord(payload, "arrow", "events:1", 5), limits)
    assert len(result.events) == 0
    [reject] = result.rejects
    assert (reject.reason, reject.row, reject.where()) == (reason, None, "events:1@5")
    assert needle in reject.message
    assert reject.payload == payload


@pytest.mark.parametrize(
    "row",
    [
        {"user_id": "", "item_id": None, "action": "view", "timestamp": T0},
        {"user_id": "x" * 300, "item_id": "", "action": "fly", "timestamp": None},
        {"user_id": "u", "item_id": "i", "action": "fly", "timestamp": float("nan")},
        {"user_id": "u", "item_id": "i", "action": 1, "timestamp": 1.0, "value": float("inf")},
        {"user_id": "u", "item_id": "", "action": 1, "timestamp": T0, "event_id": ""},
    ],
)
def test_json_and_arrow_report_the_same_first_reason(row: dict) -> None:
    json_reject = decode(SourceRecord(json.dumps(row).encode(), "json", "p", 0)).rejects
    arrow = decode(SourceRecord(arrow_payload(pa.Table.from_pylist([row])), "arrow", "p", 0))
    assert [r.reason for r in arrow.rejects] == [r.reason for r in json_reject]
    assert len(arrow.rejects) == 1 and arrow.rejects[0].row == 0
