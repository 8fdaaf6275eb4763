"""Dead-letter sinks: every reject is kept with its reason, location and payload, and counted."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
from kafka.errors import KafkaConnectionError, KafkaTimeoutError, MessageSizeTooLargeError
from kafka.future import Future
from kafka.record.default_records import DefaultRecordBatchBuilder

from pipeline.events import Reject, RejectReason
from pipeline.stream.deadletter import (
    DeadLetterSink,
    JsonlDeadLetterSink,
    MemoryDeadLetterSink,
    read_dead_letters,
)

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


def test_jsonl_sink_truncates_a_huge_payload_and_reads_it_back(tmp_path: Path) -> None:
    path = tmp_path / "rejects.jsonl"
    text = ("é" * 40).encode()  # 80 bytes of 2-byte characters
    binary = bytes(range(256)) * 4
    sink = JsonlDeadLetterSink(path, max_payload_bytes=33)
    sink.send(Reject(RejectReason.MISSING_FIELD, "no action column", "events:0", 5, binary))
    sink.send(Reject(RejectReason.BAD_JSON, "not JSON", "events:0", 6, text))
    sink.send(REJECTS[0])  # small: written whole, in the old format
    sink.close()
    assert sink.stats() == {"sent": 3, "truncated": 2}
    assert sink.counts() == {"missing_field": 1, "bad_json": 2}

    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["truncated"] is True and lines[0]["original_size"] == len(binary)
    assert lines[0]["original_sha256"] == hashlib.sha256(binary).hexdigest()
    assert "truncated" not in lines[2] and "original_size" not in lines[2]
    big, cut_text, small = read_dead_letters(path)
    assert big.payload == binary[:33] and big.truncated and big.where() == "events:0@5"
    assert big.original_size == 1024 and big.original_sha256 == hashlib.sha256(binary).hexdigest()
    # Text is cut at a character boundary, so that it stays text (not base64).
    assert lines[1]["payload_encoding"] == "utf-8" and cut_text.payload == text[:32]
    assert cut_text.original_size == 80
    assert small == REJECTS[0] and not small.truncated


def test_truncating_again_keeps_the_whole_payloads_size_and_checksum() -> None:
    whole = Reject(RejectReason.BAD_JSON, "not JSON", "events:0", 6, b"x" * 100)
    once = whole.truncated_to(50)
    twice = once.truncated_to(10)
    assert twice.payload == b"x" * 10
    assert (twice.original_size, twice.original_sha256) == (100, once.original_sha256)
    assert whole.truncated_to(100) is whole


def test_memory_sink_stats() -> None:
    sink = MemoryDeadLetterSink()
    for reject in REJECTS:
        sink.send(reject)
    sink.send(REJECTS[0].truncated_to(2))
    assert sink.stats() == {"sent": 5, "truncated": 1}


# The Kafka sink's size handling, without a broker: a fake producer that checks
# max_request_size like kafka-python does and plays a broker with a smaller topic limit.


class _FakeProducer:
    broker_limit: int | None = None  # the topic's max.message.bytes; None: no limit
    unreachable = False  # every send fails with a transient error
    silent = False  # no send is ever acknowledged: flush times out
    instances: ClassVar[list[_FakeProducer]] = []

    def __init__(self, **config: Any) -> None:
        self.max_request_size = config["max_request_size"]
        self.written: list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]] = []
        _FakeProducer.instances.append(self)

    def send(self, topic: str, value: bytes, key: bytes, headers: list) -> Future:
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
        if size > self.max_request_size:
            raise MessageSizeTooLargeError(f"{size} bytes > max_request_size")
        future = Future()
        if self.silent:
            return future
        if self.unreachable:
            return future.failure(KafkaConnectionError("broker down"))
        if self.broker_limit is not None and size > self.broker_limit:
            return future.failure(MessageSizeTooLargeError())
        self.written.append((topic, key, value, headers))
        return future.success(None)

    def flush(self, timeout: float | None = None) -> None:
        """Futures are resolved in ``send``, or never (``silent``)."""
        if self.silent:
            raise KafkaTimeoutError("Timeout waiting for future")

    def close(self) -> None:
        """Nothing to release."""


@pytest.fixture
def fake_kafka(monkeypatch: pytest.MonkeyPatch) -> type[_FakeProducer]:
    import connectors.kafka.deadletter as kafka_deadletter

    monkeypatch.setattr(kafka_deadletter, "KafkaProducer", _FakeProducer)
    monkeypatch.setattr(kafka_deadletter.KafkaDeadLetterSink, "_ensure_topic", lambda *_: None)
    monkeypatch.setattr(_FakeProducer, "instances", [])
    return _FakeProducer


def _big_reject(size: int, offset: int = 11) -> Reject:
    return Reject(RejectReason.MISSING_FIELD, "no action column", "ev:0", offset, b"a" * size)


def test_kafka_sink_truncates_above_max_request_size(fake_kafka: type[_FakeProducer]) -> None:
    from connectors.kafka.deadletter import KafkaDeadLetterSink, dead_letter_record

    sink = KafkaDeadLetterSink("fake:9092", max_request_size=2000)
    assert isinstance(sink, DeadLetterSink)
    sink.send(_big_reject(10_000))  # HEAD: MessageSizeTooLargeError
    sink.send(REJECTS[0])
    sink.flush()
    assert sink.stats() == {"sent": 2, "truncated": 1, "delivered": 2}
    (topic, key, value, headers), small = fake_kafka.instances[0].written
    assert topic == "ev.dlq" and key == b"ev:0@11"
    assert 1900 < DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers) <= 2000
    named = dict(headers)
    assert named["payload.truncated"] == b"true" and named["payload.size"] == b"10000"
    assert named["payload.sha256"] == hashlib.sha256(b"a" * 10_000).hexdigest().encode()
    assert named["source.offset"] == b"11" and value == b"a" * len(value)
    assert "payload.truncated" not in dict(small[3])
    assert dead_letter_record(REJECTS[0], 2000).value == REJECTS[0].payload


def test_kafka_sink_resends_truncated_when_the_broker_refuses_the_size(
    fake_kafka: type[_FakeProducer], monkeypatch: pytest.MonkeyPatch
) -> None:
    from connectors.kafka.deadletter import KafkaDeadLetterSink

    monkeypatch.setattr(fake_kafka, "broker_limit", 3000)
    sink = KafkaDeadLetterSink("fake:9092", give_up_after_s=5.0, max_request_size=100_000)
    sink.send(_big_reject(50_000))
    started = time.monotonic()
    sink.flush()  # HEAD: DeadLetterError after give_up_after_s
    assert time.monotonic() - started < 1.0, "a size refusal is re-sent at once, not backed off"
    sink.send(_big_reject(60_000, offset=12))  # fits the learned limit first time
    sink.close()
    assert sink.stats() == {"sent": 2, "truncated": 2, "delivered": 2}
    written = fake_kafka.instances[0].written
    assert [dict(h)["payload.size"] for *_, h in written] == [b"50000", b"60000"]
    assert all(
        DefaultRecordBatchBuilder.estimate_size_in_bytes(k, v, h) <= 3000 for _, k, v, h in written
    )


def test_kafka_sink_raises_when_even_an_empty_dead_letter_is_refused(
    fake_kafka: type[_FakeProducer], monkeypatch: pytest.MonkeyPatch
) -> None:
    from connectors.kafka.deadletter import DeadLetterError, KafkaDeadLetterSink

    monkeypatch.setattr(fake_kafka, "broker_limit", 50)  # below key + headers
    sink = KafkaDeadLetterSink("fake:9092", max_request_size=100_000)
    sink.send(_big_reject(5000))
    with pytest.raises(DeadLetterError, match=r"ev:0@11 even without its payload.*max.message"):
        sink.flush()
    assert sink.stats()["delivered"] == 0


def test_kafka_sink_still_raises_for_an_outage_after_give_up(
    fake_kafka: type[_FakeProducer], monkeypatch: pytest.MonkeyPatch
) -> None:
    from connectors.kafka.deadletter import DeadLetterError, KafkaDeadLetterSink

    monkeypatch.setattr(fake_kafka, "unreachable", True)
    sink = KafkaDeadLetterSink("fake:9092", give_up_after_s=0.6, max_backoff_s=0.1)
    sink.send(REJECTS[0])
    with pytest.raises(DeadLetterError, match=r"within 1s \(first: events:0@3"):
        sink.flush()


def test_kafka_sink_raises_dead_letter_error_when_acknowledgements_never_come(
    fake_kafka: type[_FakeProducer], monkeypatch: pytest.MonkeyPatch
) -> None:
    from connectors.kafka.deadletter import DeadLetterError, KafkaDeadLetterSink

    monkeypatch.setattr(fake_kafka, "silent", True)  # the producer's flush times out
    sink = KafkaDeadLetterSink("fake:9092", give_up_after_s=0.6)
    sink.send(REJECTS[0])
    with pytest.raises(DeadLetterError, match="no acknowledgement"):  # HEAD: KafkaTimeoutError
        sink.flush()


def test_kafka_error_message_header_is_bounded_in_bytes() -> None:
    from connectors.kafka.deadletter import dead_letter_headers

    reject = Reject(RejectReason.BAD_JSON, "é" * 100_000, "events:0", 1, b"{")
    message = dict(dead_letter_headers(reject))["error.message"]
    assert 3990 < len(message) <= 4000  # HEAD: 4000 characters, 8000 bytes
    assert message.decode("utf-8") == "é" * (len(message) // 2)
