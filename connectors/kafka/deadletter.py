"""Dead-letter topic: every reject is produced to ``<source topic>.dlq`` (or one fixed topic).

Message layout (one message per ``Reject``):

* value: the original payload; for one bad row of an Arrow batch, that row as a JSON object.
* key: the source record's location ``topic:partition@offset[#row]`` (UTF-8).
* headers (UTF-8 values): ``error.reason`` (a ``RejectReason`` value), ``error.message``,
  ``source.topic``, ``source.partition``, ``source.offset``, and ``source.row`` for an Arrow
  row. ``read_dead_letter(message)`` turns a consumed message back into a ``Reject``.

Dead-letter topics that do not exist are created on first use (``partitions`` partitions,
``max.message.bytes`` large enough for any source message plus headers).

Delivery is never silently dropped: ``send`` hands the message to the producer (which retries
transient errors itself); ``flush`` -- called by the trainer before every checkpoint -- waits
for every acknowledgement and re-sends failed messages with exponential backoff. If they
still fail after ``give_up_after_s`` seconds, ``flush`` raises ``DeadLetterError``: the
trainer stops *before* writing a checkpoint that would cover the undelivered dead letters,
and a restart replays them from the previous checkpoint. Dead letters are therefore
at-least-once (a replay may produce one again), while events stay exactly-once.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer

from connectors.kafka.admin import TopicAdmin, TopicError
from connectors.kafka.config import KafkaClientConfig
from connectors.kafka.source import parse_partition_key
from pipeline.events import Reject, RejectReason

log = logging.getLogger(__name__)

DLQ_SUFFIX = ".dlq"
MAX_DEAD_LETTER_BYTES = 8 * 1024 * 1024
_MAX_MESSAGE_CHARS = 4000  # headers stay small; the payload carries the data


class DeadLetterError(RuntimeError):
    """Dead letters could not be delivered; the trainer must not checkpoint past them."""


def dead_letter_topic(source_topic: str) -> str:
    """The default dead-letter topic of ``source_topic``."""
    return f"{source_topic}{DLQ_SUFFIX}"


def dead_letter_headers(reject: Reject) -> list[tuple[str, bytes]]:
    """The headers naming what was wrong and where it came from."""
    topic, partition = _source(reject)
    headers = [
        ("error.reason", str(reject.reason).encode()),
        ("error.message", reject.message[:_MAX_MESSAGE_CHARS].encode("utf-8", "replace")),
        ("source.topic", topic.encode()),
        ("source.partition", str(partition).encode()),
        ("source.offset", str(reject.offset).encode()),
    ]
    if reject.row is not None:
        headers.append(("source.row", str(reject.row).encode()))
    return headers


def read_dead_letter(message: Any) -> Reject:
    """A consumed dead-letter message (kafka-python ``ConsumerRecord``) as a ``Reject``."""
    headers = {name: value.decode("utf-8") for name, value in message.headers or ()}
    row = headers.get("source.row")
    return Reject(
        reason=RejectReason(headers["error.reason"]),
        message=headers["error.message"],
        partition=f"{headers['source.topic']}:{headers['source.partition']}",
        offset=int(headers["source.offset"]),
        payload=message.value or b"",
        row=None if row is None else int(row),
    )


def _source(reject: Reject) -> tuple[str, int]:
    try:
        return parse_partition_key(reject.partition)
    except ValueError:
        return reject.partition, -1  # a non-Kafka source: keep its key as the topic


@dataclass
class _Pending:
    """One dead letter handed to the producer and not acknowledged yet."""

    reject: Reject
    future: Any
    attempts: int = 1


class KafkaDeadLetterSink:
    """``DeadLetterSink`` writing to Kafka; see the module docstring.

    Args:
        config: cluster settings, or bootstrap servers.
        topic: one dead-letter topic for everything; None: ``<source topic>.dlq`` each.
        partitions: partition count of dead-letter topics this sink creates.
        give_up_after_s: how long ``flush`` keeps re-sending before it raises.
        max_backoff_s: longest pause between re-sends.
    """

    def __init__(
        self,
        config: KafkaClientConfig | str,
        topic: str | None = None,
        *,
        partitions: int = 1,
        give_up_after_s: float = 300.0,
        max_backoff_s: float = 10.0,
    ) -> None:
        if isinstance(config, str):
            config = KafkaClientConfig(bootstrap_servers=config)
        self.config = config
        self.topic = topic
        self.partitions = partitions
        self.give_up_after_s = give_up_after_s
        self.max_backoff_s = max_backoff_s
        self._producer = KafkaProducer(
            **{**config.client_kwargs(), "client_id": f"{config.client_id}-deadletter"},
            acks="all",
            linger_ms=50,
            max_request_size=MAX_DEAD_LETTER_BYTES,
            allow_auto_create_topics=False,
        )
        self._ready_topics: set[str] = set()
        self._pending: list[_Pending] = []
        self._counts: Counter[str] = Counter()
        self._delivered = 0
        self._closed = False

    def topic_for(self, reject: Reject) -> str:
        """Where ``reject`` goes."""
        return self.topic or dead_letter_topic(_source(reject)[0])

    def send(self, reject: Reject) -> None:
        """Hand ``reject`` to the producer (delivery is confirmed by ``flush``)."""
        if self._closed:
            raise DeadLetterError(f"dead-letter sink is closed; cannot record {reject.where()}")
        self._pending.append(_Pending(reject, self._produce(reject)))
        self._counts[str(reject.reason)] += 1

    def flush(self) -> None:
        """Wait until every dead letter sent so far is acknowledged; re-send failures with
        backoff; raise ``DeadLetterError`` after ``give_up_after_s``."""
        deadline = time.monotonic() + self.give_up_after_s
        backoff = 0.5
        while self._pending:
            self._producer.flush(timeout=max(1.0, deadline - time.monotonic()))
            failed = [p for p in self._pending if not p.future.is_done or p.future.failed()]
            self._delivered += len(self._pending) - len(failed)
            self._pending = failed
            if not failed:
                return
            first = failed[0]
            error = first.future.exception if first.future.is_done else "no acknowledgement"
            if time.monotonic() + backoff > deadline:
                raise DeadLetterError(
                    f"{len(failed)} dead letters could not be delivered to "
                    f"{self.topic_for(first.reject)} on {self.config.bootstrap_servers} within "
                    f"{self.give_up_after_s:.0f}s (first: {first.reject.where()}, "
                    f"{first.attempts} attempts, last error {error!r}); stopping before a "
                    "checkpoint covers them -- restart once the cluster accepts writes"
                )
            log.warning(
                "%d dead letters not delivered yet (first %s: %r); re-sending in %.1fs",
                len(failed),
                first.reject.where(),
                error,
                backoff,
            )
            time.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)
            for pending in failed:
                if pending.future.is_done:  # failed: send again; still in flight: keep waiting
                    pending.future = self._produce(pending.reject)
                    pending.attempts += 1

    def counts(self) -> dict[str, int]:
        """Dead letters sent so far per reason."""
        return dict(self._counts)

    @property
    def delivered(self) -> int:
        """Dead letters acknowledged by the cluster."""
        return self._delivered

    def close(self) -> None:
        """Flush, then release the producer."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._producer.close()

    def _produce(self, reject: Reject) -> Any:
        topic = self.topic_for(reject)
        self._ensure_topic(topic)
        return self._producer.send(
            topic,
            value=reject.payload,
            key=reject.where().encode("utf-8"),
            headers=dead_letter_headers(reject),
        )

    def _ensure_topic(self, topic: str) -> None:
        if topic in self._ready_topics:
            return
        with TopicAdmin(self.config) as admin:
            try:
                admin.describe_topic(topic)
            except TopicError:
                admin.create_topic(
                    topic,
                    self.partitions,
                    configs={"max.message.bytes": str(MAX_DEAD_LETTER_BYTES)},
                )
                log.info("created dead-letter topic %s", topic)
        self._ready_topics.add(topic)


def sink_from_section(kafka: Any) -> KafkaDeadLetterSink:
    """The dead-letter sink of the trainer's ``source.kafka`` config section
    (``dead_letter_topic``, else ``<source topic>.dlq``)."""
    from connectors.kafka.source import client_config_from_section

    return KafkaDeadLetterSink(client_config_from_section(kafka), kafka.dead_letter_topic)
