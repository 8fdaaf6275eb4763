"""Fixtures for tests against a real Kafka broker.

``kafka_cluster`` (session): the cluster named by ``KAFKA_BOOTSTRAP_SERVERS`` if set, else a
local KRaft broker started once per session (``connectors.kafka.broker``; the first run
downloads the broker jars with Maven). If the local broker cannot start, the tests fail when
``CI`` is true (CI must never silently skip them) and are skipped with the reason otherwise.

Tests that use these fixtures carry ``pytestmark = pytest.mark.kafka``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from connectors.kafka.admin import TopicAdmin, TopicError
from connectors.kafka.broker import BrokerError, LocalKafkaBroker, kafka_cache_root, kafka_version

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KafkaCluster:
    """The cluster the tests talk to; ``broker`` is None for an external cluster."""

    bootstrap_servers: str
    broker: LocalKafkaBroker | None


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield KafkaCluster(external, None)
        return
    broker = LocalKafkaBroker(tmp_path_factory.mktemp("kafka-broker"))
    started = time.monotonic()
    try:
        broker.start(timeout_s=180.0)
    except (BrokerError, OSError) as exc:
        reason = f"the local Kafka broker could not start: {exc}"
        if _in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    log.info("local Kafka broker ready in %.1fs: %s", time.monotonic() - started, broker)
    try:
        yield KafkaCluster(broker.bootstrap_servers, broker)
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_cluster: KafkaCluster) -> str:
    """``host:port`` of the test cluster."""
    return kafka_cluster.bootstrap_servers


@pytest.fixture(scope="session")
def kafka_admin(kafka_cluster: KafkaCluster) -> Iterator[TopicAdmin]:
    """A ``TopicAdmin`` on the test cluster."""
    with TopicAdmin(kafka_cluster.bootstrap_servers) as admin:
        yield admin


@pytest.fixture
def kafka_topic(request: pytest.FixtureRequest) -> str:
    """A topic name unique to this test (not created)."""
    test = re.sub(r"[^a-zA-Z0-9]+", "-", request.node.name).strip("-")[:60]
    return f"test-{test}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def create_topic(kafka_admin: TopicAdmin, kafka_topic: str) -> Iterator[Callable[..., str]]:
    """``create_topic(partitions=1, suffix="")`` creates a unique topic and returns its name;
    the topics are deleted after the test."""
    created: list[str] = []

    def create(partitions: int = 1, suffix: str = "") -> str:
        name = f"{kafka_topic}{suffix}"
        kafka_admin.create_topic(name, partitions)
        created.append(name)
        return name

    yield create
    for name in created:
        with contextlib.suppress(TopicError):  # the test may have deleted it already
            kafka_admin.delete_topic(name)


@pytest.fixture
def kafka_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private ``GENREC_KAFKA_HOME`` sharing the real jar cache, so that what ``genrec kafka
    up`` records there (the active broker) never touches the user's cache."""
    home = tmp_path / "kafka-home"
    home.mkdir()
    version = kafka_version()
    (home / version).symlink_to(kafka_cache_root() / version, target_is_directory=True)
    monkeypatch.setenv("GENREC_KAFKA_HOME", str(home))
    return home


@pytest.fixture
def kafka_broker(kafka_cluster: KafkaCluster) -> Iterator[LocalKafkaBroker]:
    """The locally started broker, for tests that stop and restart it (same ports and data).
    It is running again after the test, whatever the test did."""
    if kafka_cluster.broker is None:
        pytest.skip(
            "needs the locally started broker (it is stopped and restarted); "
            "KAFKA_BOOTSTRAP_SERVERS points at an external cluster"
        )
    broker = kafka_cluster.broker
    yield broker
    if not broker.is_running():
        broker.start()
