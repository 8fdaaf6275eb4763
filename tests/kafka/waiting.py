"""Bounded waits for tests against a real broker.

A loaded 2-core machine makes every broker round trip (group join, metadata, fetch) slow and
uneven, so a test waits for the state it needs -- with a deadline and a message that says
what never happened -- instead of sleeping or assuming it is there already.
"""

from __future__ import annotations

import time

from kafka import KafkaConsumer, TopicPartition
from waits import wait_until

from connectors.kafka.deadletter import MAX_DEAD_LETTER_BYTES
from connectors.kafka.source import KafkaSource
from pipeline.events.records import SourceRecord

# Generous for a rebalance or a first fetch on a loaded machine; pytest-timeout (300 s per
# test, pyproject.toml) still bounds the whole test.
WAIT_S = 90.0


def poll_records(source: KafkaSource, count: int, timeout_s: float = WAIT_S) -> list[SourceRecord]:
    """Poll ``source`` until it handed out exactly ``count`` records (it is asked for no more);
    fail with what it got and its assignment after ``timeout_s``."""
    records: list[SourceRecord] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count:
        assert time.monotonic() < deadline, (
            f"got {len(records)} of {count} records from {source.topics} in {timeout_s:.0f}s; "
            f"assignment {source.assignment()}, positions {source.positions()}"
        )
        records.extend(source.poll(count - len(records), 0.2))
    return records


def wait_for_assignment(
    source: KafkaSource, partitions: list[str], timeout_s: float = WAIT_S
) -> list[SourceRecord]:
    """Poll ``source`` until exactly ``partitions`` are assigned to it; return the records it
    handed out meanwhile (the caller must account for them)."""
    records: list[SourceRecord] = []

    def assigned() -> bool:
        records.extend(source.poll(1000, 0.2))
        return source.assignment() == sorted(partitions)

    wait_until(assigned, timeout_s, f"{sorted(partitions)} assigned to group {source.group_id}")
    return records


def consume_partition0(bootstrap: str, topic: str, expected: int, timeout_s: float = 30) -> list:
    """The first ``expected`` messages of ``topic``'s partition 0 (dead letters up to the
    producer's size limit fit one fetch); fails if they do not come within ``timeout_s``."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=int(timeout_s * 1000),
        fetch_max_bytes=2 * MAX_DEAD_LETTER_BYTES,
        max_partition_fetch_bytes=2 * MAX_DEAD_LETTER_BYTES,
    )
    consumer.assign([TopicPartition(topic, 0)])
    messages = []
    for message in consumer:
        messages.append(message)
        if len(messages) == expected:
            break
    consumer.close()
    assert len(messages) == expected, (
        f"{topic}: {len(messages)} of {expected} messages in {timeout_s:.0f}s"
    )
    return messages
