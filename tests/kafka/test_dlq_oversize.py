"""Oversized dead letters against a real broker: a reject too large for the producer's
``max_request_size`` or for the dead-letter topic's ``max.message.bytes`` is written truncated,
with its size, sha256 and origin in headers, instead of failing the trainer on every restart
(a poison pill)."""

from __future__ import annotations

import contextlib
import hashlib
import time

import numpy as np
import pyarrow as pa
import pytest
from waiting import consume_partition0

from connectors.kafka.admin import TopicError
from connectors.kafka.deadletter import (
    MAX_DEAD_LETTER_BYTES,
    DeadLetterError,
    KafkaDeadLetterSink,
    dead_letter_topic,
    read_dead_letter,
)
from pipeline.events import RejectReason, decode_records
from pipeline.events.records import SourceRecord

pytestmark = pytest.mark.kafka


def _arrow_without_action(rows: int) -> bytes:
    """An Arrow IPC payload that lacks the ``action`` column: one reject for all of it."""
    ids = np.arange(rows, dtype=np.int64)
    table = pa.table({"user_id": ids, "item_id": ids, "timestamp": ids + 1_700_000_000})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _assert_truncated_dead_letter(message, payload: bytes, topic: str, offset: int) -> None:
    headers = dict(message.headers)
    assert headers["payload.truncated"] == b"true"
    assert headers["payload.size"] == str(len(payload)).encode()
    assert headers["payload.sha256"] == hashlib.sha256(payload).hexdigest().encode()
    assert headers["source.topic"] == topic.encode()
    assert headers["source.partition"] == b"0"
    assert headers["source.offset"] == str(offset).encode()
    assert message.key == f"{topic}:0@{offset}".encode()
    assert 0 < len(message.value) < len(payload) and payload.startswith(message.value)
    letter = read_dead_letter(message)
    assert letter.truncated and letter.original_size == len(payload)
    assert letter.original_sha256 == hashlib.sha256(payload).hexdigest()
    assert letter.where() == f"{topic}:0@{offset}"


def test_reject_above_the_producer_limit_is_written_truncated(kafka_bootstrap, kafka_admin):
    topic = f"test-dlq-oversize-producer-{time.time_ns()}"  # the source topic is not needed
    payload = _arrow_without_action(450_000)  # ~10.8 MB, like the payload
    assert len(payload) > MAX_DEAD_LETTER_BYTES
    (big,) = decode_records([SourceRecord(payload, "arrow", f"{topic}:0", 41)]).rejects
    assert big.reason == RejectReason.MISSING_FIELD and big.payload == payload
    (small,) = decode_records([SourceRecord(b"{oops", "json", f"{topic}:0", 42)]).rejects
    sink = KafkaDeadLetterSink(kafka_bootstrap, give_up_after_s=30.0)
    try:
        sink.send(big)  # HEAD: MessageSizeTooLargeError here, the trainer exits 1
        sink.send(small)
        sink.flush()
        assert sink.stats() == {"sent": 2, "truncated": 1, "delivered": 2}
    finally:
        sink.close()
    try:
        first, second = consume_partition0(kafka_bootstrap, dead_letter_topic(topic), 2)
    finally:
        kafka_admin.delete_topic(dead_letter_topic(topic))
    _assert_truncated_dead_letter(first, payload, topic, 41)
    assert len(first.value) > MAX_DEAD_LETTER_BYTES - 64 * 1024  # as much as fits
    assert read_dead_letter(first).reason == RejectReason.MISSING_FIELD
    assert read_dead_letter(second) == small  # small ones stay whole, no payload.* headers
    assert "payload.truncated" not in dict(second.headers)


def test_reject_above_the_topics_max_message_bytes_is_resent_truncated(
    kafka_bootstrap, kafka_admin, create_topic
):
    topic = create_topic(partitions=1)
    # An existing dead-letter topic whose limit is below the producer's: the broker refuses.
    small_dlq = f"{topic}-small-dlq"
    kafka_admin.create_topic(small_dlq, 1, configs={"max.message.bytes": "20000"})
    payload = b'{"user_id": 1, "item_id": "' + b"x" * 50_000  # unterminated: bad_json
    rejects = decode_records(
        [
            SourceRecord(payload, "json", f"{topic}:0", 7),
            SourceRecord(payload + b"y", "json", f"{topic}:0", 8),
        ]
    ).rejects
    assert [r.reason for r in rejects] == [RejectReason.BAD_JSON] * 2
    give_up_after_s = 20.0
    sink = KafkaDeadLetterSink(kafka_bootstrap, topic=small_dlq, give_up_after_s=give_up_after_s)
    try:
        sink.send(rejects[0])
        started = time.monotonic()
        sink.flush()  # HEAD: DeadLetterError after give_up_after_s
        assert time.monotonic() - started < give_up_after_s / 2, "re-sent without backoff"
        sink.send(rejects[1])  # truncated up front to the limit learned from the refusal
        sink.flush()
        assert sink.stats() == {"sent": 2, "truncated": 2, "delivered": 2}
    finally:
        sink.close()
    try:
        first, second = consume_partition0(kafka_bootstrap, small_dlq, 2)
    finally:
        with contextlib.suppress(TopicError):
            kafka_admin.delete_topic(small_dlq)
    _assert_truncated_dead_letter(first, payload, topic, 7)
    _assert_truncated_dead_letter(second, payload + b"y", topic, 8)
    assert len(first.value) < 20_000
    assert read_dead_letter(first).payload.decode("utf-8")  # cut as text, still UTF-8


def test_topic_refusing_even_an_empty_dead_letter_raises_at_once(kafka_bootstrap, kafka_admin):
    topic = f"test-dlq-oversize-unfit-{time.time_ns()}"
    tiny_dlq = f"{topic}-tiny-dlq"
    # Below key + headers: no truncation helps, a configuration error to report, not retry.
    kafka_admin.create_topic(tiny_dlq, 1, configs={"max.message.bytes": "100"})
    (reject,) = decode_records([SourceRecord(b"x" * 4096, "json", f"{topic}:0", 9)]).rejects
    sink = KafkaDeadLetterSink(kafka_bootstrap, topic=tiny_dlq, give_up_after_s=60.0)
    try:
        sink.send(reject)
        started = time.monotonic()
        with pytest.raises(DeadLetterError, match=rf"{topic}:0@9 even without its payload"):
            sink.flush()
        assert time.monotonic() - started < 30.0, "raised at once, not after give_up_after_s"
        assert sink.delivered == 0
        with pytest.raises(DeadLetterError):
            sink.close()  # close flushes too: still nothing is dropped silently
    finally:
        kafka_admin.delete_topic(tiny_dlq)


def test_an_outage_unlike_a_size_refusal_raises_after_give_up(
    kafka_bootstrap, create_topic, kafka_broker
):
    topic = create_topic(partitions=1)
    dlq = create_topic(partitions=1, suffix="-outage-dlq")
    first, second = decode_records(
        [
            SourceRecord(b"{oops", "json", f"{topic}:0", 8),
            SourceRecord(b"]", "json", f"{topic}:0", 9),
        ]
    ).rejects
    sink = KafkaDeadLetterSink(kafka_bootstrap, topic=dlq, give_up_after_s=3.0)
    try:
        sink.send(first)
        sink.flush()  # the topic's metadata is known now: the next send does not block
        kafka_broker.stop()  # the cluster accepts no writes until the deadline passes
        sink.send(second)
        # HEAD: KafkaTimeoutError from the producer's flush instead of DeadLetterError
        with pytest.raises(DeadLetterError, match=rf"within 3s \(first: {topic}:0@9"):
            sink.flush()
        assert sink.stats() == {"sent": 2, "truncated": 0, "delivered": 1}
        kafka_broker.start()
        sink.give_up_after_s = 60.0  # reconnecting may take a few backoff rounds
        sink.flush()  # the outage is over: the dead letter was kept and is delivered now
        assert sink.stats() == {"sent": 2, "truncated": 0, "delivered": 2}
    finally:
        if kafka_broker.is_running():  # else close waits out the 120 s delivery timeout
            sink.close()
    assert [read_dead_letter(m).offset for m in consume_partition0(kafka_bootstrap, dlq, 2)] == [
        8,
        9,
    ]
