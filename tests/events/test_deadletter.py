"""Dead-letter sinks: every reject is kept with its reason, location and payload, and counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.deadletter import (
    DeadLetterSink,
    JsonlDeadLetterSink,
    MemoryDeadLetterSink,
    read_dead_letters,
)
from pipeline.events import Reject, RejectReason

REJECTS = [
    Reject(RejectReason.BAD_JSON, "not JSON", "events:0", 3, b"{oops"),
    Reject(RejectReason.UNDECODABLE, "not UTF-8", "events:1", 9, b"\xff\x00\xfe"),
    Reject(RejectReason.BAD_JSON, "not JSON", "events:0", 4, b"]"),
    Reject(RejectReason.BAD_ACTION, "bad action", "events:2", 0, b'{"action": "fly"}', row=17),
]


def test_jsonl_sink_writes_counts_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "dlq" / "rejects.jsonl"
    sink = JsonlDeadLetterSink(path)
    assert isinstance(sink, DeadLetterSink)
    for reject in REJECTS[:2]:
        sink.send(reject)
    sink.flush()
    assert len(path.read_text().splitlines()) == 2  # durable after flush
    for reject in REJECTS[2:]:
        sink.send(reject)
    sink.close()

    assert sink.counts() == {"bad_json": 2, "undecodable": 1, "bad_action": 1}
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["where"] for line in lines] == [
        "events:0@3",
        "events:1@9",
        "events:0@4",
        "events:2@0#17",
    ]
    assert lines[0]["payload"] == "{oops" and lines[0]["payload_encoding"] == "utf-8"
    assert lines[1]["payload_encoding"] == "base64"
    assert read_dead_letters(path) == REJECTS

    with pytest.raises(ValueError, match="closed"):
        sink.send(REJECTS[0])


def test_jsonl_sink_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "rejects.jsonl"
    for reject in REJECTS[:2]:
        sink = JsonlDeadLetterSink(path)
        sink.send(reject)
        sink.close()
    assert read_dead_letters(path) == REJECTS[:2]


def test_memory_sink() -> None:
    sink = MemoryDeadLetterSink()
    assert isinstance(sink, DeadLetterSink)
    for reject in REJECTS:
        sink.send(reject)
    assert sink.rejects == REJECTS
    assert sink.counts() == {"bad_json": 2, "undecodable": 1, "bad_action": 1}
