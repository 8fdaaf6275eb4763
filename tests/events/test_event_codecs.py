"""Round trips of the JSON and Arrow codecs, id canonicalisation and EventBatch operations."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.events import (
    ACTION_CODES,
    Event,
    EventBatch,
    RejectReason,
    canonical_key,
    decode,
    decode_records,
    encode_arrow,
    encode_json,
    encode_json_rows,
)
from pipeline.events.records import SourceRecord
from pipeline.lake.datasets import EventLog

T0 = 1_600_000_000


def arrow_payload(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def json_record(obj: object, offset: int = 0) -> SourceRecord:
    return SourceRecord(json.dumps(obj).encode(), "json", "p", offset)


def make_batch(users: list, items: list, event_ids: list | None = None) -> EventBatch:
    n = len(users)
    values = np.array([np.nan if i % 2 else i / 2 for i in range(n)], np.float32)
    return EventBatch(
        user_id=np.array(users, dtype=np.int64 if all(type(u) is int for u in users) else object),
        item_id=np.array(items, dtype=np.int64 if all(type(i) is int for i in items) else object),
        timestamp=T0 + np.arange(n, dtype=np.int64) * 7,
        action=np.arange(n, dtype=np.int64) % 6,
        value=values,
        event_id=None if event_ids is None else np.array(event_ids, dtype=object),
    )


@pytest.mark.parametrize(
    "users, items, event_ids",
    [
        ([1, 2, 3, -4], [10, 20, 30, 2**63 - 1], None),
        (["alice", 7, "bob", "05"], ["i-1", "i-2", 3, "x" * 256], ["e1", None, "e3", "e4"]),
    ],
)
def test_arrow_round_trip(users: list, items: list, event_ids: list | None) -> None:
    batch = make_batch(users, items, event_ids)
    result = decode(SourceRecord(encode_arrow(batch), "arrow", "p", 0))
    assert result.rejects == []
    assert list(result.events.rows()) == list(batch.rows())
    assert result.events.user_id.dtype == batch.user_id.dtype
    assert result.events.item_id.dtype == batch.item_id.dtype


@pytest.mark.parametrize(
    "users, items, event_ids",
    [
        ([1, 2, 3], [10, 20, 30], None),
        (["alice", 7, "bob"], ["i-1", "i-2", 3], ["e1", None, "e3"]),
    ],
)
def test_json_round_trip(users: list, items: list, event_ids: list | None) -> None:
    batch = make_batch(users, items, event_ids)
    payloads = encode_json_rows(batch)
    result = decode_records([SourceRecord(p, "json", "p", i) for i, p in enumerate(payloads)])
    assert result.rejects == []
    assert list(result.events.rows()) == list(batch.rows())


def test_encode_json_validates_and_uses_action_names() -> None:
    wire = json.loads(
        encode_json({"user_id": "5", "item_id": "b", "action": 5, "timestamp": 1.6e9, "x": 1})
    )
    assert wire == {"user_id": 5, "item_id": "b", "action": "purchase", "timestamp": 1_600_000_000}
    with pytest.raises(ValueError, match="timestamp_out_of_range"):
        encode_json({"user_id": 1, "item_id": 1, "action": 0, "timestamp": 5})


def test_float_timestamp_is_floored_and_extra_fields_ignored() -> None:
    record = json_record(
        {"user_id": 1, "item_id": 2, "action": "click", "timestamp": T0 + 0.99, "extra": [1]}
    )
    result = decode(record)
    assert result.events.timestamp.tolist() == [T0]
    assert result.events.action.tolist() == [ACTION_CODES["click"]]


@pytest.mark.parametrize(
    "raw, key",
    [
        (5, 5),
        ("5", 5),
        ("-3", -3),
        ("0", 0),
        ("05", "05"),
        ("+5", "+5"),
        (" 5", " 5"),
        ("-0", "-0"),
        ("9223372036854775807", 2**63 - 1),
        ("9223372036854775808", "9223372036854775808"),
        (2**63, "9223372036854775808"),
        ("١٢", "١٢"),  # non-ASCII digits are not decimal spellings
        (np.int64(9), 9),
    ],
)
def test_canonical_key(raw: object, key: int | str) -> None:
    got = canonical_key(raw, "user_id")
    assert got == key and type(got) is type(key)


ids = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.text(min_size=1, max_size=24),
    st.from_regex(r"-?[0-9]{1,21}", fullmatch=True),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(ids, min_size=1, max_size=8))
def test_json_and_arrow_canonicalise_ids_alike(raw_ids: list) -> None:
    # Arrow columns are typed: send every id as a string, which must canonicalise like JSON does.
    n = len(raw_ids)
    table = pa.table(
        {
            "user_id": [str(r) for r in raw_ids],
            "item_id": [str(r) for r in raw_ids],
            "action": [0] * n,
            "timestamp": [T0] * n,
        }
    )
    arrow = decode(SourceRecord(arrow_payload(table), "arrow", "p", 0))
    records = [
        json_record({"user_id": r, "item_id": str(r), "action": 0, "timestamp": T0}, i)
        for i, r in enumerate(raw_ids)
    ]
    from_json = decode_records(records)
    assert [r.reason for r in arrow.rejects] == [r.reason for r in from_json.rejects]
    assert [r.row for r in arrow.rejects] == [r.offset for r in from_json.rejects]
    for got_arrow, got_json in zip(arrow.events.rows(), from_json.events.rows(), strict=True):
        assert got_arrow == got_json
        assert type(got_arrow["user_id"]) is type(got_json["user_id"])
        assert got_json["user_id"] == got_json["item_id"]


def test_int_and_string_spelling_are_one_user() -> None:
    records = [
        json_record({"user_id": 5, "item_id": 1, "action": 0, "timestamp": T0}, 0),
        json_record({"user_id": "5", "item_id": 1, "action": 0, "timestamp": T0}, 1),
        json_record({"user_id": "05", "item_id": 1, "action": 0, "timestamp": T0}, 2),
    ]
    users = decode_records(records).events.user_id.tolist()
    assert users == [5, 5, "05"]
    assert len(set(users)) == 2


def test_concat_widens_key_dtype_and_merges_event_ids() -> None:
    ints = make_batch([1, 2], [3, 4])
    mixed = make_batch(["a", 9], [5, "b"], ["e1", "e2"])
    both = EventBatch.concat([ints, EventBatch.empty(), mixed])
    assert both.user_id.dtype == object and both.item_id.dtype == object
    assert both.user_id.tolist() == [1, 2, "a", 9]
    assert [type(u) for u in both.user_id] == [int, int, str, int]
    assert both.event_id is not None and both.event_id.tolist() == [None, None, "e1", "e2"]
    assert EventBatch.concat([ints, ints]).user_id.dtype == np.int64
    assert len(EventBatch.concat([])) == 0


def test_batch_rejects_mismatched_columns() -> None:
    with pytest.raises(ValueError, match=r"EventBatch.action has shape"):
        EventBatch(
            user_id=np.zeros(2, np.int64),
            item_id=np.zeros(2, np.int64),
            timestamp=np.zeros(2, np.int64),
            action=np.zeros(3, np.int64),
            value=np.zeros(2, np.float32),
        )
    with pytest.raises(ValueError, match=r"EventBatch.value has dtype float64"):
        EventBatch(
            user_id=np.zeros(1, np.int64),
            item_id=np.zeros(1, np.int64),
            timestamp=np.zeros(1, np.int64),
            action=np.zeros(1, np.int64),
            value=np.zeros(1, np.float64),
        )


def test_from_event_log_canonicalises_string_keys() -> None:
    event_log = EventLog(
        user=np.array(["7", "u"], dtype=object),
        item=np.array([1, 2], dtype=np.int64),
        timestamp=np.array([T0, T0 + 1], dtype=np.int64),
        action=np.array([0, 3], dtype=np.int64),
    )
    batch = EventBatch.from_event_log(event_log)
    assert batch.user_id.tolist() == [7, "u"]
    assert batch.item_id.dtype == np.int64
    assert np.isnan(batch.value).all() and batch.weights().tolist() == [1.0, 1.0]
    decoded = decode(SourceRecord(encode_arrow(event_log), "arrow", "p", 0))
    assert list(decoded.events.rows()) == list(batch.rows())


def test_decode_records_keeps_record_order_across_codecs() -> None:
    def event(user: int) -> dict:
        return {"user_id": user, "item_id": 1, "action": 0, "timestamp": T0}

    arrow = encode_arrow(make_batch([3, 4], [1, 1]))
    records = [
        json_record(event(1), 0),
        json_record(event(2), 1),
        SourceRecord(arrow, "arrow", "p", 2),
        json_record(event(5), 3),
        SourceRecord(b"{}", "avro", "p", 4),
    ]
    result = decode_records(records)
    assert result.events.user_id.tolist() == [1, 2, 3, 4, 5]
    assert [(r.reason, r.offset) for r in result.rejects] == [(RejectReason.UNKNOWN_CODEC, 4)]


def test_pydantic_event_reports_the_same_reasons() -> None:
    bad = [
        ({"item_id": 1, "action": 0, "timestamp": T0}, "missing"),
        ({"user_id": None, "item_id": 1, "action": 0, "timestamp": T0}, "missing_field"),
        ({"user_id": "", "item_id": 1, "action": 0, "timestamp": T0}, "empty_id"),
        ({"user_id": 1.0, "item_id": 1, "action": 0, "timestamp": T0}, "bad_type"),
        ({"user_id": 1, "item_id": 1, "action": "jump", "timestamp": T0}, "bad_action"),
        ({"user_id": 1, "item_id": 1, "action": 0, "timestamp": float("nan")}, "bad_timestamp"),
        ({"user_id": 1, "item_id": 1, "action": 0, "timestamp": T0, "value": 1e40}, "bad_value"),
    ]
    for obj, error_type in bad:
        with pytest.raises(ValueError) as info:
            Event.model_validate(obj)
        assert info.value.errors()[0]["type"] == error_type  # type: ignore[attr-defined]
        expected = "missing_field" if error_type == "missing" else error_type
        assert decode(json_record(obj)).rejects[0].reason == expected
