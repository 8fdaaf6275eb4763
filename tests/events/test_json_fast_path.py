"""The JSON fast path (msgspec + column checks) against the reference decoder (json.loads +
per-field checkers): same batch, same rejects, and the fast path really taken on common input."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.events import DEFAULT_LIMITS, EventBatch
from pipeline.events.json_codec import (
    FAST_CHUNK,
    JsonColumns,
    decode_json_records,
    fast_json_batch,
)
from pipeline.events.records import SourceRecord
from pipeline.events.reject import Reject
from pipeline.events.schema import FLOAT32_MAX

T0 = 1_600_000_000


def reference(payloads: list[bytes]) -> tuple[EventBatch, list[Reject]]:
    columns = JsonColumns(DEFAULT_LIMITS)
    for offset, payload in enumerate(payloads):
        columns.add(SourceRecord(payload, "json", "t:0", offset))
    return columns.batch(), columns.rejects


def assert_same_batch(got: EventBatch, want: EventBatch) -> None:
    for name in ("user_id", "item_id", "timestamp", "action", "value", "event_id"):
        a, b = getattr(got, name), getattr(want, name)
        if b is None:
            assert a is None, name
            continue
        assert a is not None and a.dtype == b.dtype, (name, None if a is None else a.dtype)
        if b.dtype == object:  # keys: the Python type matters too (5 and "5" differ)
            assert [(type(x), x) for x in a.tolist()] == [(type(x), x) for x in b.tolist()]
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)


def records(payloads: list[bytes]) -> list[SourceRecord]:
    return [SourceRecord(p, "json", "t:0", offset) for offset, p in enumerate(payloads)]


def event(**fields: object) -> bytes:
    base: dict[str, object] = {"user_id": 7, "item_id": 11, "action": "view", "timestamp": T0}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


COMMON = [
    event(),
    event(user_id="u-1", item_id="42"),  # str ids, one canonicalised to an int
    event(action=3, value=4.5),
    event(value=2, event_id="e1"),
    event(user_id=-(2**63), item_id=2**63 - 1, action=255, timestamp=T0 + 1),
    b' {"user_id": 1, "item_id": 2, "action": "click", "timestamp": 1600000000, "x": [1]} ',
]


def test_fast_path_takes_common_events_and_matches_the_reference() -> None:
    fast = fast_json_batch(COMMON, DEFAULT_LIMITS)
    assert fast is not None
    want, rejects = reference(COMMON)
    assert rejects == []
    assert_same_batch(fast, want)
    assert fast.user_id.dtype == object and fast.user_id.tolist()[1] == "u-1"


# Valid for the reference, but read differently by msgspec or needing the reference's
# rounding/flooring: the fast path must step aside (or agree exactly).
EDGES = [
    event(timestamp=T0 + 0.75),  # floored by the reference
    event(timestamp=-(2**70)),
    event(timestamp=4_102_444_799.9),
    b'{"user_id":1,"item_id":1,"action":0,"timestamp":Infinity}',
    event(user_id=2**64),  # beyond int64: a str id
    event(item_id=-(2**63) - 1),
    event(user_id=10**30),
    event(value=10**30),
    event(value=float(FLOAT32_MAX)),  # exactly the bound: accepted by the reference
    event(value=int(FLOAT32_MAX) + 1),  # an int just above it: rejected by the reference
    event(value=None, event_id=None),
    b'{"user_id":1,"user_id":2,"item_id":1,"action":0,"timestamp":1600000000}',  # last wins
    b'{"user_id":1,"item_id":1,"action":0,"timestamp":1600000000,"value":NaN}',
    b'{"user_id":1,"item_id":1,"action":0,"timestamp":1600000000,"value":1e400}',
    b'{"user_id":"\\ud800","item_id":1,"action":0,"timestamp":1600000000}',
    b'\xef\xbb\xbf{"user_id":1,"item_id":1,"action":0,"timestamp":1600000000}',
    b'{"user_id":true,"item_id":1,"action":0,"timestamp":1600000000}',
    b'{"user_id":1,"item_id":1,"action":false,"timestamp":1600000000}',
    b'{"user_id":1,"item_id":1,"action":0,"timestamp":1600000000,"value":true}',
    b'{"user_id":1,"item_id":1.0,"action":0,"timestamp":1600000000}',
    event(timestamp=T0 * 1000),
    event(action=256),
    event(action="teleport"),
    event(user_id="05"),
    event(event_id=""),
    b"[]",
    b"",
    b"\xff",
    # Bad only where msgspec does not look: skipped unknown fields.
    b'{"user_id":1,"item_id":1,"action":0,"timestamp":1600000000,"x":"\xff"}',
    b'{"user_id":1,"item_id":1,"action":0,"timestamp":1600000000,"x":"\\udc00"}',
    event(x=[[[]]], y={"a": [1, {"b": None}]}),
    # Nesting around the parsers' recursion limits (json.loads: the interpreter's, ~1,000).
    event(x="[" * 600),  # brackets in a string are not nesting
    b'{"user_id":1,"item_id":1,"action":0,"timestamp":1600000000,"x":%s}'
    % (b"[" * 600 + b"]" * 600),
    b'{"user_id":1,"item_id":1,"action":0,"timestamp":1600000000,"x":%s}'
    % (b"[" * 1100 + b"]" * 1100),
    b'\x0b{"user_id":1,"item_id":1,"action":0,"timestamp":1600000000}',
    b'{"user_id":1,"item_id":1,"action":0,"timestamp":1600000000}\x00',
    b'{"user_id":1,"item_id":1,"action":0,"timestamp":1600000000}\r\n\t ',
    b'{"user_\\u0069d":1,"item_id":1,"action":0,"timestamp":1600000000}',  # escaped key
    b'{"user_id":"a\\u0000b","item_id":"\xc3\xa9","action":0,"timestamp":1600000000}',
    b'{"user_id":1e2,"item_id":1,"action":0,"timestamp":1600000000}',
    b'{"user_id":1,"item_id":1,"action":0,"timestamp":1600000000,"value":1.5,"value":null}',
]


def check_against_reference(payloads: list[bytes]) -> None:
    want, want_rejects = reference(payloads)
    fast = fast_json_batch(payloads, DEFAULT_LIMITS)
    if fast is not None:
        assert want_rejects == [], "the fast path accepted a chunk with a bad payload"
        assert_same_batch(fast, want)
    got, got_rejects = decode_json_records(records(payloads), DEFAULT_LIMITS)
    assert_same_batch(got, want)
    assert got_rejects == want_rejects


def test_each_edge_case_alone_and_among_common_events() -> None:
    for payload in EDGES:
        check_against_reference([payload])
        check_against_reference([*COMMON, payload, *COMMON])


keys = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(min_size=1, max_size=8),
    st.from_regex(r"-?[0-9]{1,21}", fullmatch=True),
)
valid_events = st.fixed_dictionaries(
    {
        "user_id": keys,
        "item_id": keys,
        "action": st.one_of(st.sampled_from(["view", "click", "purchase"]), st.integers(0, 255)),
        "timestamp": st.one_of(
            st.integers(946_684_800, 4_102_444_799),
            st.floats(946_684_800, 4_102_444_799),
        ),
    },
    optional={
        "value": st.one_of(st.none(), st.floats(-1e6, 1e6), st.integers(-(2**40), 2**40)),
        "event_id": st.one_of(st.none(), st.text(min_size=1, max_size=8)),
        "extra": st.one_of(st.none(), st.integers(), st.lists(st.text(max_size=3), max_size=2)),
    },
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([946_684_799, 4_102_444_800, 2**63 - 1, FLOAT32_MAX, 3.5e38]),
    st.sampled_from(["view", "nope", "", "5", "05", "-0", "\ud800", "x" * 300]),
)
field_names = st.sampled_from(["user_id", "item_id", "action", "timestamp", "value", "event_id"])
# A valid event with one field replaced by an arbitrary scalar (often, not always, a reject).
broken_events = st.tuples(valid_events, field_names, json_scalars).map(
    lambda t: {**t[0], t[1]: t[2]}
)
junk = st.one_of(
    broken_events.map(lambda o: json.dumps(o).encode()),
    st.binary(max_size=12),
    st.sampled_from(EDGES),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(valid_events.map(lambda o: json.dumps(o).encode()), max_size=12),
    st.lists(st.tuples(st.integers(0, 12), junk), max_size=2),
)
def test_generated_payloads_decode_as_the_reference_does(
    good: list[bytes], bad: list[tuple[int, bytes]]
) -> None:
    payloads = list(good)
    for at, payload in bad:
        payloads.insert(at, payload)
    check_against_reference(payloads)


def test_a_bad_record_sends_only_its_chunk_to_the_reference() -> None:
    payloads = [event(user_id=i % 97, item_id=i) for i in range(3 * FAST_CHUNK)]
    bad = FAST_CHUNK + 5
    payloads[bad] = b'{"user_id": 1,'
    batch, rejects = decode_json_records(records(payloads), DEFAULT_LIMITS)
    assert [r.offset for r in rejects] == [bad]
    assert batch.item_id.tolist() == [i for i in range(3 * FAST_CHUNK) if i != bad]
    want, _ = reference(payloads)
    assert_same_batch(batch, want)
