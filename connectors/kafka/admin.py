"""Topic administration: create (idempotent), describe, list, delete, end offsets.

A thin, typed wrapper over kafka-python's ``KafkaAdminClient`` whose errors say which topic
and what to do. Creating a topic that already exists is fine when its partition count matches
(so ``genrec topics create`` can run at every deploy); a different count is an error, because
the partition of a user's events would silently change.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from connectors.kafka.config import KafkaClientConfig, connect

T = TypeVar("T")


def _index(partition: dict[str, Any]) -> int:
    return int(partition["partition_index"])


class TopicError(RuntimeError):
    """A topic could not be created, found or deleted as asked."""


@dataclass(frozen=True)
class TopicInfo:
    """What the cluster says about one topic."""

    name: str
    partitions: int
    replication_factor: int
    leaders: dict[int, int]  # partition -> leader broker id (-1: none)


class TopicAdmin:
    """Topic operations against one cluster.

    Args:
        config: a ``KafkaClientConfig``, or bootstrap servers for a plaintext cluster.
        timeout_s: how long each request (and waiting for a new topic's leaders) may take.
    """

    def __init__(self, config: KafkaClientConfig | str, timeout_s: float = 30.0) -> None:
        from kafka import KafkaAdminClient

        if isinstance(config, str):
            config = KafkaClientConfig(bootstrap_servers=config)
        self.config = config
        self.timeout_s = timeout_s
        # Reconnect within a second after a broker restart (kafka-python backs off up to 30s).
        self._admin = connect(
            KafkaAdminClient,
            config,
            client_id=f"{config.client_id}-admin",
            request_timeout_ms=int(timeout_s * 1000),
            reconnect_backoff_max_ms=1000,
        )

    def create_topic(
        self,
        name: str,
        partitions: int,
        replication_factor: int = 1,
        configs: dict[str, str] | None = None,
    ) -> bool:
        """Create ``name`` and wait until every partition has a leader.

        Returns True if created, False if it already existed with ``partitions`` partitions.
        Raises ``TopicError`` if it exists with a different partition count.
        """
        from kafka.errors import TopicAlreadyExistsError

        if partitions < 1:
            raise ValueError(f"topic {name!r}: partitions must be >= 1, got {partitions}")
        spec: dict[str, Any] = {
            "num_partitions": partitions,
            "replication_factor": replication_factor,
            "configs": dict(configs or {}),
        }
        timeout_ms = int(self.timeout_s * 1000)
        try:
            self._retry(
                f"create topic {name!r}", self._admin.create_topics, {name: spec}, timeout_ms
            )
            created = True
        except TopicAlreadyExistsError:
            created = False
        self._admin.wait_for_topics([name], timeout_ms=timeout_ms)
        if not created:
            existing = self.describe_topic(name)
            if existing.partitions != partitions:
                raise TopicError(
                    f"topic {name!r} already exists with {existing.partitions} partitions, not "
                    f"the {partitions} requested on {self.config.bootstrap_servers}; use "
                    f"--partitions {existing.partitions}, or delete the topic first (this "
                    "loses its data and re-keys users to partitions)"
                )
        return created

    def describe_topic(self, name: str) -> TopicInfo:
        """Partition count, replication factor and leaders of ``name``."""
        from kafka.errors import for_code

        (topic,) = self._retry(f"describe topic {name!r}", self._admin.describe_topics, [name])
        if topic["error_code"] != 0:
            error = for_code(topic["error_code"]).__name__
            raise TopicError(
                f"cannot describe topic {name!r} on {self.config.bootstrap_servers}: {error}"
                " (create it with 'genrec topics create')"
            )
        partitions = topic["partitions"]
        return TopicInfo(
            name=name,
            partitions=len(partitions),
            replication_factor=len(partitions[0]["replica_nodes"]) if partitions else 0,
            leaders={p["partition_index"]: p["leader_id"] for p in sorted(partitions, key=_index)},
        )

    def list_topics(self, include_internal: bool = False) -> list[str]:
        """Sorted topic names (internal ones such as ``__consumer_offsets`` only if asked)."""
        names = self._retry("list topics", self._admin.list_topics)
        return sorted(n for n in names if include_internal or not n.startswith("__"))

    def delete_topic(self, name: str) -> None:
        """Delete ``name`` and its data; returns once the topic is gone from the metadata."""
        from kafka.errors import UnknownTopicOrPartitionError

        try:
            timeout_ms = int(self.timeout_s * 1000)
            self._retry(f"delete topic {name!r}", self._admin.delete_topics, [name], timeout_ms)
        except UnknownTopicOrPartitionError as exc:
            raise TopicError(
                f"cannot delete topic {name!r}: it does not exist on "
                f"{self.config.bootstrap_servers}"
            ) from exc
        # The controller accepts a deletion before the brokers' metadata drops the topic: wait,
        # so that a listing or a re-create right after sees it gone.
        deadline = time.monotonic() + self.timeout_s
        while name in self.list_topics():
            if time.monotonic() > deadline:
                raise TopicError(
                    f"topic {name!r} was deleted but is still listed by "
                    f"{self.config.bootstrap_servers} after {self.timeout_s:.0f}s; the brokers "
                    "finish the deletion in the background: check again with 'genrec topics list'"
                )
            time.sleep(0.1)

    def end_offsets(self, name: str) -> dict[int, int]:
        """Per partition, the offset the next message will get (= messages written, as long
        as nothing was deleted)."""
        from kafka import TopicPartition
        from kafka.admin import OffsetSpec

        info = self.describe_topic(name)
        specs = {TopicPartition(name, p): OffsetSpec.LATEST for p in range(info.partitions)}
        result = self._retry(f"end offsets of {name!r}", self._admin.list_partition_offsets, specs)
        return {tp.partition: int(result[tp].offset) for tp in specs}

    def close(self) -> None:
        self._admin.close()

    def _retry(self, what: str, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)``, retried on transient errors (a broker restarting, a connection in
        backoff) until ``timeout_s`` passes. An unknown topic is an answer, not retried."""
        from kafka.errors import KafkaError, UnknownTopicOrPartitionError

        deadline = time.monotonic() + self.timeout_s
        delay = 0.1
        while True:
            try:
                return call(*args)
            except UnknownTopicOrPartitionError:
                raise
            except KafkaError as exc:
                if not exc.retriable:
                    raise
                if time.monotonic() + delay > deadline:
                    raise TopicError(
                        f"{what} on {self.config.bootstrap_servers} still failed after "
                        f"{self.timeout_s:.0f}s: {exc!r}; is the cluster up?"
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def __enter__(self) -> TopicAdmin:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
