"""``Records``: a poll's records in columns, read back as ``SourceRecord``s."""

from __future__ import annotations

import pytest

from pipeline.events.records import Records, SourceRecord

ROWS = [
    SourceRecord(b"a", "json", "t:0", 5),
    SourceRecord(b"b", "arrow", "t:1", 9),
    SourceRecord(b"c", "json", "t:0", 6),
]


def test_columns_round_trip_to_records() -> None:
    records = Records.of(ROWS)
    assert records.payloads == [b"a", b"b", b"c"]
    assert records.codecs == ["json", "arrow", "json"]
    assert records.partitions == ["t:0", "t:1", "t:0"]
    assert records.offsets == [5, 9, 6]
    assert len(records) == 3 and records[1] == ROWS[1] and records[-1] == ROWS[-1]
    assert list(records) == ROWS and records == ROWS and records == tuple(ROWS)
    assert Records.of(records) is records  # already columns: no copy
    assert records != ROWS[:2] and records != "abc"


def test_slices_are_records_and_extend_accepts_either_form() -> None:
    records = Records.of(ROWS)
    tail = records[1:]
    assert isinstance(tail, Records) and tail == ROWS[1:]
    joined = Records()
    joined.extend(records[:1])
    joined.extend(ROWS[1:])  # row-wise records are converted
    assert joined == ROWS
    assert not Records() and Records() == []


def test_run_numbers_consecutive_offsets() -> None:
    run = Records.run([b"x", b"y"], "json", "file:a.jsonl", 10)
    assert run == [
        SourceRecord(b"x", "json", "file:a.jsonl", 10),
        SourceRecord(b"y", "json", "file:a.jsonl", 11),
    ]


def test_columns_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="payloads=2, codecs=1"):
        Records([b"x", b"y"], ["json"], ["t:0", "t:0"], [0, 1])
