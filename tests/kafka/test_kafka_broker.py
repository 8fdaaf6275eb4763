"""The local broker: readiness, state shared across handles, restart with data, clear errors."""

from __future__ import annotations

import json
import socket

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from connectors.kafka.admin import TopicAdmin
from connectors.kafka.broker import (
    STATE_FILE,
    BrokerError,
    LocalKafkaBroker,
    running_local_bootstrap,
)

pytestmark = pytest.mark.kafka


def test_cluster_answers_metadata_and_creates_topics(kafka_admin: TopicAdmin, create_topic):
    name = create_topic(partitions=2)
    assert name in kafka_admin.list_topics()
    info = kafka_admin.describe_topic(name)
    assert info.partitions == 2
    assert all(leader >= 0 for leader in info.leaders.values())


def test_state_file_lets_another_handle_find_the_running_broker(kafka_broker: LocalKafkaBroker):
    state = json.loads((kafka_broker.data_dir / STATE_FILE).read_text())
    assert state["pid"] == kafka_broker.pid
    assert state["port"] == kafka_broker.state.port
    other = LocalKafkaBroker(kafka_broker.data_dir)  # what `genrec kafka status` does
    assert other.is_running()
    assert other.bootstrap_servers == kafka_broker.bootstrap_servers
    assert other.pid == kafka_broker.pid


def test_trainer_source_falls_back_to_the_running_local_broker(
    kafka_broker: LocalKafkaBroker, tmp_path, monkeypatch
):
    """`genrec train --source kafka` without servers uses the broker `genrec kafka up` runs."""
    from connectors.kafka.source import client_config_from_section
    from pipeline.stream.config import KafkaSection

    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    assert running_local_bootstrap(kafka_broker.data_dir) == kafka_broker.bootstrap_servers
    assert running_local_bootstrap(tmp_path) is None  # no broker state there
    monkeypatch.setenv("GENREC_KAFKA_HOME", str(tmp_path))  # default broker dir: empty
    with pytest.raises(ValueError, match="genrec kafka up"):
        client_config_from_section(KafkaSection())
    (tmp_path / "local").symlink_to(kafka_broker.data_dir)
    config = client_config_from_section(KafkaSection())
    assert config.bootstrap_servers == kafka_broker.bootstrap_servers


def _consume_all(bootstrap: str, topic: str, expected: int) -> list[bytes]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=30_000
    )
    consumer.assign([TopicPartition(topic, 0)])
    values = []
    for message in consumer:
        values.append(message.value)
        if len(values) == expected:
            break
    consumer.close()
    return values


def test_stop_and_restart_keeps_address_and_data(kafka_broker: LocalKafkaBroker, create_topic):
    topic = create_topic(partitions=1)
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers)
    for i in range(20):
        producer.send(topic, value=f"event-{i}".encode(), partition=0)
    producer.flush()
    producer.close()
    address = kafka_broker.bootstrap_servers

    kafka_broker.stop()
    assert not kafka_broker.is_running()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", kafka_broker.state.port), timeout=2.0).close()

    kafka_broker.start()
    assert kafka_broker.bootstrap_servers == address
    values = _consume_all(address, topic, expected=20)
    assert values == [f"event-{i}".encode() for i in range(20)]


def test_start_failure_reports_the_broker_log(kafka_broker: LocalKafkaBroker, tmp_path):
    # A second broker on the running broker's port cannot bind it; the error must say so and
    # must not mistake the first broker (another cluster id) for a ready second one.
    clash = LocalKafkaBroker(tmp_path / "clash", port=kafka_broker.state.port, heap="256m")
    with pytest.raises(BrokerError) as excinfo:
        clash.start(timeout_s=60.0)
    message = str(excinfo.value)
    assert "not running" in message
    assert "Address already in use" in message
    assert not clash.is_running()
    assert kafka_broker.is_running()
