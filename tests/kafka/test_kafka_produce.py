"""Producer/replayer against a real broker: every event arrives once, each user in exactly one
partition (the one its key hashes to) and in event-time order, with the codec header."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.partitioner import DefaultPartitioner

from connectors.kafka.admin import TopicAdmin
from connectors.kafka.producer import (
    CODEC_HEADER,
    EventReplayer,
    ReplayError,
    partition_for_key,
    user_key,
)
from pipeline.events.arrow_codec import decode_arrow_record
from pipeline.events.batch import EventBatch
from pipeline.events.json_codec import decode_json_records
from pipeline.events.records import SourceRecord
from pipeline.events.schema import DEFAULT_LIMITS
from pipeline.lake.synthetic import SyntheticConfig, generate_events

pytestmark = pytest.mark.kafka


def _events(users: int = 40, per_user: int = 12, seed: int = 3):
    return generate_events(
        SyntheticConfig(num_users=users, num_items=100, events_per_user=per_user, seed=seed)
    )


def _consume(bootstrap: str, topic: str, partitions: int, messages: int) -> list:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=30_000
    )
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    received = []
    for message in consumer:
        received.append(message)
        if len(received) == messages:
            break
    consumer.close()
    return received


def _decode(message) -> EventBatch:
    headers = dict(message.headers)
    codec = headers[CODEC_HEADER].decode()
    record = SourceRecord(
        payload=message.value,
        codec=codec,
        partition=f"{message.topic}:{message.partition}",
        offset=message.offset,
    )
    if codec == "json":
        batch, rejects = decode_json_records([record], DEFAULT_LIMITS)
    else:
        batch, rejects = decode_arrow_record(record, DEFAULT_LIMITS)
    assert rejects == []
    return batch


def _rows(batch: EventBatch) -> list[tuple]:
    return list(
        zip(
            batch.user_id.tolist(),
            batch.item_id.tolist(),
            batch.timestamp.tolist(),
            batch.action.tolist(),
            strict=True,
        )
    )


@pytest.mark.parametrize(
    ("codec", "max_request_bytes"),
    [("json", 1_000_000), ("arrow", 1_000_000), ("arrow", 2_500)],
    ids=["json", "arrow", "arrow-split"],
)
def test_replay_keeps_users_in_one_partition_in_time_order(
    kafka_bootstrap: str,
    kafka_admin: TopicAdmin,
    create_topic,
    codec: str,
    max_request_bytes: int,
):
    events = _events()
    topic = create_topic(partitions=3)
    with EventReplayer(
        kafka_bootstrap, topic, codec=codec, batch_events=200, max_request_bytes=max_request_bytes
    ) as replayer:
        stats = replayer.replay(events, progress=False)

    assert stats.events == len(events)
    assert sum(kafka_admin.end_offsets(topic).values()) == stats.messages
    if codec == "json":
        assert stats.messages == len(events)
    else:  # several events per message, at least one message per partition and chunk
        assert 3 <= stats.messages < len(events)
    received = _consume(kafka_bootstrap, topic, 3, stats.messages)
    assert len(received) == stats.messages

    partitions_of_user: dict[object, set[int]] = defaultdict(set)
    times_of_user: dict[object, list[int]] = defaultdict(list)
    rows = []
    # Within a partition, messages arrive in offset order: the order a trainer sees.
    for message in sorted(received, key=lambda m: (m.partition, m.offset)):
        assert dict(message.headers)[CODEC_HEADER] == codec.encode()
        batch = _decode(message)
        if codec == "json":
            assert message.key == user_key(batch.user_id[0])
        for user, _, timestamp, _ in _rows(batch):
            partitions_of_user[user].add(message.partition)
            times_of_user[user].append(timestamp)
        rows.extend(_rows(batch))

    expected = EventBatch.from_event_log(events)
    assert sorted(rows) == sorted(_rows(expected))
    for user, partitions in partitions_of_user.items():
        assert partitions == {partition_for_key(user_key(user), 3)}
    for times in times_of_user.values():
        assert times == sorted(times)
    assert stats.events_per_partition == {
        p: sum(1 for u in expected.user_id.tolist() if partition_for_key(user_key(u), 3) == p)
        for p in range(3)
    }


def test_max_events_sends_the_earliest_events(
    kafka_bootstrap: str, kafka_admin: TopicAdmin, create_topic
):
    events = _events(users=20, per_user=10, seed=5)
    topic = create_topic(partitions=1)
    with EventReplayer(kafka_bootstrap, topic, codec="json", rate=5000.0) as replayer:
        stats = replayer.replay(events, max_events=50, progress=False)
    assert stats.events == stats.messages == 50
    assert kafka_admin.end_offsets(topic) == {0: 50}
    received = _consume(kafka_bootstrap, topic, 1, 50)
    times = [int(_decode(m).timestamp[0]) for m in received]
    assert times == sorted(np.sort(events.timestamp)[:50].tolist())


def test_replay_to_missing_topic_fails_before_sending(kafka_bootstrap: str, kafka_topic: str):
    with pytest.raises(Exception, match="UnknownTopicOrPartition"):
        EventReplayer(kafka_bootstrap, kafka_topic)


def test_replay_error_names_the_topic_when_the_broker_is_gone(kafka_broker, create_topic):
    topic = create_topic(partitions=1)
    replayer = EventReplayer(kafka_broker.bootstrap_servers, topic, codec="json", timeout_s=2.0)
    kafka_broker.stop()
    try:
        with pytest.raises(ReplayError, match=topic):
            replayer.replay(_events(users=2, per_user=3), progress=False)
    finally:
        replayer.close()
        kafka_broker.start()  # before create_topic's teardown deletes the topic


def test_partition_for_key_matches_kafka_python_default_partitioner():
    partitioner = DefaultPartitioner()

    class _Cluster:  # the three methods DefaultPartitioner asks of cluster metadata
        def topics(self):
            return {"t"}

        def partitions_for_topic(self, topic):
            return set(range(7))

        def available_partitions_for_topic(self, topic):
            return set(range(7))

    for user in [0, 1, 42, 123456789, -5, "alice", "ユーザー"]:
        key = user_key(user)
        assert partition_for_key(key, 7) == partitioner.partition(
            "t", key, key, b"", b"", _Cluster()
        )


@pytest.mark.parametrize("codec", ["json", "arrow"])
def test_event_record_time_stamps_each_message_with_its_latest_event(
    kafka_bootstrap: str, create_topic, codec: str
):
    events = _events(users=20, per_user=10, seed=6)
    topic = create_topic(partitions=2)
    with EventReplayer(
        kafka_bootstrap, topic, codec=codec, batch_events=50, record_time="event"
    ) as replayer:
        stats = replayer.replay(events, progress=False)
    received = _consume(kafka_bootstrap, topic, 2, stats.messages)
    assert len(received) == stats.messages
    for message in received:
        assert message.timestamp == int(_decode(message).timestamp.max()) * 1000


def test_record_time_must_be_send_or_event(kafka_bootstrap: str, create_topic):
    with pytest.raises(ValueError, match="record_time"):
        EventReplayer(kafka_bootstrap, create_topic(), record_time="wall")
