"""KafkaSource against a real broker: codec headers, positions, where partitions start,
rebalance hand-over through the revoke callback, lag."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewPartitions
from waiting import WAIT_S, poll_records, wait_for_assignment, wait_until

from connectors.kafka.source import KafkaSource, parse_start
from pipeline.events import RejectReason, decode_records, encode_arrow, encode_json
from pipeline.events.schema import Event
from pipeline.lake.datasets import EventLog

pytestmark = pytest.mark.kafka


def _event(user: int, item: int, ts: int) -> Event:
    return Event(user_id=user, item_id=item, timestamp=ts, action="click")


def _send(bootstrap: str, topic: str, values: list[tuple[int, bytes, list]]) -> None:
    """Send ``(partition, value, headers)`` messages and wait for them."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for partition, value, headers in values:
        producer.send(topic, value=value, partition=partition, headers=headers)
    producer.flush()
    producer.close()


def _plain(bootstrap: str, topic: str, partition: int, count: int) -> None:
    payload = encode_json(_event(1, 2, 1_700_000_000))
    _send(bootstrap, topic, [(partition, payload, [("codec", b"json")])] * count)


def test_records_carry_codec_header_location_and_positions(kafka_bootstrap, create_topic):
    topic = create_topic(partitions=2)
    arrow = encode_arrow(
        EventLog(
            user=np.array([7, 7]),
            item=np.array([1, 2]),
            timestamp=np.array([1_700_000_000, 1_700_000_001]),
            action=np.array([0, 0]),
        )
    )
    _send(
        kafka_bootstrap,
        topic,
        [
            (0, encode_json(_event(1, 5, 1_700_000_000)), [("codec", b"json")]),
            (0, encode_json(_event(1, 6, 1_700_000_001)), []),  # no header: JSON
            (1, arrow, [("codec", b"arrow")]),
            (1, b"\x00avro", [("codec", b"avro")]),
        ],
    )
    source = KafkaSource(kafka_bootstrap, topic, f"g-{topic}")
    try:
        records = poll_records(source, 4)
        assert source.positions() == {f"{topic}:0": 2, f"{topic}:1": 2}
    finally:
        source.close()
    by_place = {(r.partition, r.offset): r for r in records}
    assert sorted(by_place) == [
        (f"{topic}:0", 0),
        (f"{topic}:0", 1),
        (f"{topic}:1", 0),
        (f"{topic}:1", 1),
    ]
    assert [by_place[(f"{topic}:0", i)].codec for i in (0, 1)] == ["json", "json"]
    assert by_place[(f"{topic}:1", 0)].codec == "arrow"
    assert by_place[(f"{topic}:1", 1)].codec == "avro"
    result = decode_records(records)
    assert len(result.events) == 4
    assert [(r.reason, r.partition, r.offset) for r in result.rejects] == [
        (RejectReason.UNKNOWN_CODEC, f"{topic}:1", 1)
    ]


def test_poll_after_records_returns_empty_at_once(kafka_bootstrap, create_topic):
    topic = create_topic(partitions=1)
    _plain(kafka_bootstrap, topic, 0, 10)
    source = KafkaSource(kafka_bootstrap, topic, f"g-{topic}")
    try:
        first = poll_records(source, 1)
        started = time.monotonic()
        assert source.poll(100, 5.0) == []  # the clean point where rebalances may run
        assert time.monotonic() - started < 1.0
        rest = poll_records(source, 10 - len(first))
        assert [r.offset for r in [*first, *rest]] == list(range(10))
    finally:
        source.close()


def test_assignment_starts_at_the_further_of_checkpoint_and_commit(kafka_bootstrap, create_topic):
    topic = create_topic(partitions=1)
    _plain(kafka_bootstrap, topic, 0, 30)
    key, group = f"{topic}:0", f"g-{topic}"

    first = KafkaSource(kafka_bootstrap, topic, group)
    poll_records(first, 10)
    first.commit(first.positions())
    assert first.positions() == {key: 10}
    first.close()

    behind = KafkaSource(kafka_bootstrap, topic, group)
    behind.seek({key: 5})  # a checkpoint older than the commit: another owner trained 5..9
    assert poll_records(behind, 1)[0].offset == 10
    behind.close()

    ahead = KafkaSource(kafka_bootstrap, topic, group)
    ahead.seek({key: 20})  # our checkpoint is further than the commit (crash before commit)
    assert poll_records(ahead, 1)[0].offset == 20
    ahead.close()


def test_start_latest_and_timestamp(kafka_bootstrap, create_topic):
    topic = create_topic(partitions=1)
    _plain(kafka_bootstrap, topic, 0, 5)
    time.sleep(0.05)
    middle = time.time()
    time.sleep(0.05)
    _plain(kafka_bootstrap, topic, 0, 5)

    since = KafkaSource(kafka_bootstrap, topic, f"g1-{topic}", start=str(middle))
    assert poll_records(since, 1)[0].offset == 5
    since.close()

    latest = KafkaSource(kafka_bootstrap, topic, f"g2-{topic}", start="latest")
    assert wait_for_assignment(latest, [f"{topic}:0"]) == []
    assert latest.positions() == {f"{topic}:0": 10}
    _plain(kafka_bootstrap, topic, 0, 1)
    assert [r.offset for r in poll_records(latest, 1)] == [10]
    latest.close()


def test_revoke_checkpoints_first_so_the_next_owner_continues_exactly(
    kafka_bootstrap, create_topic
):
    topic = create_topic(partitions=4)
    for partition in range(4):
        _plain(kafka_bootstrap, topic, partition, 25)
    group = f"g-{topic}"
    owner = KafkaSource(kafka_bootstrap, topic, group)
    revoked: list[list[str]] = []

    def checkpoint(keys: list[str]) -> None:  # what the trainer does: save, then commit
        revoked.append(keys)
        owner.commit(owner.positions())

    owner.on_revoke(checkpoint)
    handed = [(r.partition, r.offset) for r in poll_records(owner, 30)]  # part of the stream

    joiner = KafkaSource(kafka_bootstrap, topic, group)
    joined: list = []
    stop = threading.Event()

    def run_joiner() -> None:
        while not stop.is_set():
            joined.extend((r.partition, r.offset) for r in joiner.poll(100, 0.2))

    def owner_polls(done: Callable[[], bool]) -> Callable[[], bool]:
        def step() -> bool:
            handed.extend((r.partition, r.offset) for r in owner.poll(100, 0.2))
            return done()

        return step

    thread = threading.Thread(target=run_joiner, name="joiner", daemon=True)
    thread.start()
    try:
        wait_until(
            owner_polls(lambda: bool(joiner.assignment()) and len(owner.assignment()) < 4),
            WAIT_S,
            "the rebalance that gives the joiner partitions",
        )
        for partition in range(4):  # more data for both owners after the hand-over
            _plain(kafka_bootstrap, topic, partition, 25)
        wait_until(
            owner_polls(lambda: len(handed) + len(joined) >= 200),
            WAIT_S,
            "all 200 records handed out by the owner and the joiner together",
        )
    finally:
        stop.set()
        thread.join(timeout=30)
        joiner.close()
        owner.close()
    assert not thread.is_alive(), "the joiner's poll loop did not stop within 30s"
    everything = handed + joined
    assert revoked and sorted(revoked[0]) == [f"{topic}:{p}" for p in range(4)]
    assert len(everything) == len(set(everything)) == 200  # nothing twice, nothing missing
    assert joined


def test_a_rejoin_that_outlasts_the_poll_is_still_applied(kafka_bootstrap, create_topic):
    """A rebalance that metadata asks for (here a partition added; at start-up, a join
    before the first metadata response: "No partition metadata for topic") whose
    JoinGroup/SyncGroup outlast the poll that started it used to be computed and then never
    applied: the consumer kept no partitions and stopped heartbeating, for good."""
    topic = create_topic(partitions=1)
    source = KafkaSource(
        kafka_bootstrap, topic, f"g-{topic}", consumer_options={"metadata_max_age_ms": 500}
    )
    try:
        wait_for_assignment(source, [f"{topic}:0"])
        coordinator = source._consumer._coordinator
        perform_assignment = coordinator._perform_assignment
        slowed: list[bool] = []

        def slow_once(*args: object) -> object:
            # A loaded machine, made certain: the leader's assignment takes longer than the
            # 200 ms poll step that started the rejoin.
            if not slowed:
                slowed.append(True)
                time.sleep(1.0)
            return perform_assignment(*args)

        coordinator._perform_assignment = slow_once
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        try:
            admin.create_partitions({topic: NewPartitions(total_count=2)})
        finally:
            admin.close()
        wait_for_assignment(source, [f"{topic}:0", f"{topic}:1"])
        assert slowed, "the rejoin did not go through the slowed assignment"
    finally:
        source.close()


def test_lag_is_distance_to_high_watermark(kafka_bootstrap, create_topic):
    topic = create_topic(partitions=1)
    _plain(kafka_bootstrap, topic, 0, 20)
    reported: dict[str, int] = {}
    source = KafkaSource(kafka_bootstrap, topic, f"g-{topic}", lag_every_s=0.0)
    source.on_lag(reported.__setitem__)
    try:
        poll_records(source, 5)
        assert source.lag() == {f"{topic}:0": 15}
        source.poll(1, 0.1)  # the empty poll after records: reports lag
        assert reported == {f"{topic}:0": 15}
    finally:
        source.close()


def test_parse_start():
    assert parse_start("earliest") == "earliest"
    assert parse_start("LATEST") == "latest"
    assert parse_start("1714521600") == 1_714_521_600_000
    assert parse_start("2024-05-01T00:00:00Z") == 1_714_521_600_000
    assert parse_start("2024-05-01T02:00:00+02:00") == 1_714_521_600_000
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_start("yesterday")
