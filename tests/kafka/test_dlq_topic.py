"""KafkaDeadLetterSink against a real broker: every reject lands in ``<topic>.dlq`` with its
reason and origin; undeliverable dead letters raise instead of disappearing."""

from __future__ import annotations

import pytest
from waiting import consume_partition0

from connectors.kafka.deadletter import (
    DeadLetterError,
    KafkaDeadLetterSink,
    dead_letter_topic,
    read_dead_letter,
)
from pipeline.events import RejectReason, decode_records
from pipeline.events.records import SourceRecord

pytestmark = pytest.mark.kafka


def test_rejects_land_in_the_dead_letter_topic_with_reason_and_origin(
    kafka_bootstrap, kafka_admin, create_topic
):
    topic = create_topic(partitions=2)
    records = [
        SourceRecord(b"\xff\xfe garbage", "json", f"{topic}:1", 7),
        SourceRecord(b'{"user_id": 1, "item_id": ', "json", f"{topic}:0", 3),
        SourceRecord(b"not arrow at all", "arrow", f"{topic}:1", 8),
        SourceRecord(b"{}", "avro", f"{topic}:0", 4),
    ]
    rejects = decode_records(records).rejects
    assert len(rejects) == 4
    sink = KafkaDeadLetterSink(kafka_bootstrap)
    try:
        for reject in rejects:
            sink.send(reject)
        sink.flush()
        assert sink.delivered == 4
        assert sink.counts() == {
            "undecodable": 1,
            "bad_json": 1,
            "bad_arrow": 1,
            "unknown_codec": 1,
        }
    finally:
        sink.close()
    messages = consume_partition0(kafka_bootstrap, dead_letter_topic(topic), 4)
    kafka_admin.delete_topic(dead_letter_topic(topic))

    def place(r):
        return (r.partition, r.offset)

    assert sorted(map(read_dead_letter, messages), key=place) == sorted(rejects, key=place)
    headers = dict(messages[0].headers)
    assert set(headers) == {
        "error.reason",
        "error.message",
        "source.topic",
        "source.partition",
        "source.offset",
    }
    assert headers["source.topic"] == topic.encode()


def test_arrow_row_rejects_name_their_row(kafka_bootstrap, kafka_admin, create_topic):
    import pyarrow as pa

    topic = create_topic(partitions=1)
    table = pa.table(
        {
            "user_id": [1, 2],
            "item_id": [10, 20],
            "timestamp": [1_700_000_000, 5],  # row 1: before 2000
            "action": ["click", "click"],
        }
    )
    sink_buffer = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink_buffer, table.schema) as writer:
        writer.write_table(table)
    record = SourceRecord(sink_buffer.getvalue().to_pybytes(), "arrow", f"{topic}:0", 12)
    result = decode_records([record])
    assert len(result.events) == 1 and len(result.rejects) == 1
    sink = KafkaDeadLetterSink(kafka_bootstrap, topic=f"{topic}-all-dead")
    try:
        sink.send(result.rejects[0])
        sink.flush()
    finally:
        sink.close()
    (message,) = consume_partition0(kafka_bootstrap, f"{topic}-all-dead", 1)
    kafka_admin.delete_topic(f"{topic}-all-dead")
    headers = dict(message.headers)
    assert headers["source.row"] == b"1"
    assert headers["error.reason"] == str(RejectReason.TIMESTAMP_OUT_OF_RANGE).encode()
    assert read_dead_letter(message) == result.rejects[0]


def test_undeliverable_dead_letters_raise_rather_than_vanish(kafka_bootstrap, create_topic):
    topic = create_topic(partitions=1)
    tiny = create_topic(partitions=1, suffix="-tiny-dlq")
    # The broker refuses messages above the topic's limit, and 100 bytes cannot hold even the
    # key and headers of a truncated dead letter: delivery can never succeed.
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.alter_configs(
        [ConfigResource(ConfigResourceType.TOPIC, tiny, configs={"max.message.bytes": "100"})]
    )
    admin.close()
    (reject,) = decode_records([SourceRecord(b"x" * 4096, "json", f"{topic}:0", 9)]).rejects
    sink = KafkaDeadLetterSink(kafka_bootstrap, topic=tiny, give_up_after_s=2.0)
    sink.send(reject)
    with pytest.raises(DeadLetterError, match=rf"{topic}:0@9"):
        sink.flush()
    assert sink.delivered == 0
    with pytest.raises(DeadLetterError):
        sink.close()  # close flushes too: still nothing is dropped silently
