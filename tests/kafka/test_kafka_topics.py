"""Topic admin: idempotent creation, mismatch errors, describe/list/delete."""

from __future__ import annotations

import pytest

from connectors.kafka.admin import TopicAdmin, TopicError

pytestmark = pytest.mark.kafka


def test_create_is_idempotent_when_partitions_match(kafka_admin: TopicAdmin, kafka_topic: str):
    assert kafka_admin.create_topic(kafka_topic, 3) is True
    assert kafka_admin.create_topic(kafka_topic, 3) is False
    assert kafka_admin.describe_topic(kafka_topic).partitions == 3
    kafka_admin.delete_topic(kafka_topic)


def test_create_with_other_partition_count_is_a_clear_error(kafka_admin: TopicAdmin, create_topic):
    name = create_topic(partitions=3)
    with pytest.raises(TopicError, match=r"already exists with 3 partitions, not the 2"):
        kafka_admin.create_topic(name, 2)
    assert kafka_admin.describe_topic(name).partitions == 3


def test_describe_list_delete(kafka_admin: TopicAdmin, create_topic):
    name = create_topic(partitions=2)
    info = kafka_admin.describe_topic(name)
    assert (info.name, info.partitions, info.replication_factor) == (name, 2, 1)
    assert kafka_admin.end_offsets(name) == {0: 0, 1: 0}
    assert name in kafka_admin.list_topics()
    assert not any(t.startswith("__") for t in kafka_admin.list_topics())

    kafka_admin.delete_topic(name)
    assert name not in kafka_admin.list_topics()
    with pytest.raises(TopicError, match="does not exist"):
        kafka_admin.delete_topic(name)
    with pytest.raises(TopicError, match="UnknownTopicOrPartition"):
        kafka_admin.describe_topic(name)
