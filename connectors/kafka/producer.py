"""Producer/replayer: writes an event log into a Kafka topic, in event-time order.

Partitioning: every event goes to the partition its user key hashes to, with the same hash as
kafka-python's ``DefaultPartitioner`` and the Java client (``murmur2(key) & 0x7fffffff % n``),
where the key is the user id's canonical spelling in UTF-8 (``user_key``). So a user's events
all land in one partition, in event-time order, whichever codec is used:

* ``json``: one message per event, key = user key, value = one JSON event.
* ``arrow``: the log is cut into time-ordered chunks of ``batch_events`` events; each chunk is
  bucketed by target partition and every bucket becomes one Arrow IPC message sent with an
  explicit ``partition=`` and no key (a batch holds many users, so no single key describes it;
  the explicit partition is exactly the one each of its users hashes to). Chunks go out in time
  order, so per partition the messages, and each user's events inside them, stay time-ordered.

Every message carries the header ``codec`` = ``b"json"`` or ``b"arrow"``, which the consumer
source uses to pick the decoder. Kafka's own record timestamp is, by default
(``record_time="send"``), left to the producer (send time): event time lives in the payload,
and stamping old event times on records makes the broker's time-based retention delete them
(set the topic's ``retention.ms=-1`` first). ``record_time="event"`` stamps each message with
its latest event time, which a backfill hand-off needs to start the stream at its cut-off T
(``offsets_for_times``: every record before the one it finds then holds only events < T;
docs/backfill.md).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np

from connectors.kafka.admin import TopicAdmin
from connectors.kafka.config import KafkaClientConfig, connect
from pipeline.events.batch import EventBatch
from pipeline.events.records import CODECS
from pipeline.lake.datasets import EventLog

log = logging.getLogger(__name__)

CODEC_HEADER = "codec"
DEFAULT_MAX_REQUEST_BYTES = 1_000_000  # Kafka's default message.max.bytes is 1 MiB + overhead
# Room for the record's key, headers and batch framing on top of the payload.
_RECORD_OVERHEAD_BYTES = 512
_LINGER_MS = 20  # wait this long to fill producer batches: throughput over latency


class ReplayError(RuntimeError):
    """Messages could not be delivered to the topic."""


def user_key(user_id: int | str) -> bytes:
    """The Kafka message key of a user: its canonical id in decimal/UTF-8 (5 and "5" agree)."""
    return str(user_id).encode("utf-8")


def partition_for_key(key: bytes, num_partitions: int) -> int:
    """The partition kafka-python's DefaultPartitioner (and the Java client) pick for ``key``."""
    from kafka.partitioner import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % num_partitions


@dataclass
class ReplayStats:
    """What a replay wrote."""

    topic: str
    codec: str
    events: int = 0
    messages: int = 0
    bytes: int = 0
    seconds: float = 0.0
    events_per_partition: Counter[int] = field(default_factory=Counter)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "codec": self.codec,
            "events": self.events,
            "messages": self.messages,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.events_per_s, 1),
            "events_per_partition": dict(sorted(self.events_per_partition.items())),
        }


class _RateLimiter:
    """Paces sends to ``rate`` events/s on average (no limit when ``rate`` is None)."""

    def __init__(self, rate: float | None) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be > 0 events/s, got {rate}")
        self.rate = rate
        self.started = time.monotonic()
        self.sent = 0

    def acquire(self, events: int) -> None:
        if self.rate is not None:
            delay = self.started + self.sent / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        self.sent += events


RECORD_TIMES = ("send", "event")


class EventReplayer:
    """Sends event logs to one topic.

    Args:
        config: cluster settings, or bootstrap servers for a plaintext cluster.
        topic: an existing topic (create it with ``TopicAdmin.create_topic``).
        codec: ``"json"`` (one event per message) or ``"arrow"`` (one batch per message).
        batch_events: events per time-ordered chunk (the largest Arrow message).
        rate: average events per second, or None for as fast as possible. With a rate, chunks
            are capped at a tenth of a second of events so that the stream stays smooth.
        max_request_bytes: the producer's message size limit; larger Arrow buckets are split.
        timeout_s: how long a message may wait for metadata and delivery (retries included)
            before the replay fails with ``ReplayError``.
        record_time: ``"send"`` (the producer's clock) or ``"event"`` (the message's latest
            event time); see the module docstring.
    """

    def __init__(
        self,
        config: KafkaClientConfig | str,
        topic: str,
        codec: str = "json",
        batch_events: int = 2000,
        rate: float | None = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        timeout_s: float = 120.0,
        record_time: str = "send",
    ) -> None:
        from kafka import KafkaProducer

        if record_time not in RECORD_TIMES:
            raise ValueError(f"record_time must be one of {RECORD_TIMES}, got {record_time!r}")
        self.record_time = record_time

        if codec not in CODECS:
            raise ValueError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")
        if batch_events < 1:
            raise ValueError(f"batch_events must be >= 1, got {batch_events}")
        if isinstance(config, str):
            config = KafkaClientConfig(bootstrap_servers=config)
        self.config = config
        self.topic = topic
        self.codec = codec
        self.rate = rate
        self.batch_events = batch_events
        if rate is not None:
            self.batch_events = max(1, min(batch_events, math.ceil(rate / 10)))
        self.max_request_bytes = max_request_bytes
        with TopicAdmin(config) as admin:
            self.num_partitions = admin.describe_topic(topic).partitions
        self._header = [(CODEC_HEADER, codec.encode())]
        self._failures: list[BaseException] = []
        timeout_ms = max(int(timeout_s * 1000), 2 * _LINGER_MS)
        self._producer = connect(
            KafkaProducer,
            config,
            client_id=f"{config.client_id}-replayer",
            acks="all",
            linger_ms=_LINGER_MS,
            max_block_ms=timeout_ms,
            delivery_timeout_ms=timeout_ms,
            request_timeout_ms=min(30_000, timeout_ms - _LINGER_MS),
            max_request_size=max_request_bytes,
            allow_auto_create_topics=False,
        )

    def replay(
        self, events: EventLog, max_events: int | None = None, progress: bool = True
    ) -> ReplayStats:
        """Send ``events`` (the first ``max_events`` in event-time order) and flush.

        Raises ``ReplayError`` if any message failed after the producer's retries."""
        from tqdm import tqdm

        ordered = events.sorted_by_time()
        if max_events is not None:
            ordered = ordered.take(slice(0, max_events))
        stats = ReplayStats(topic=self.topic, codec=self.codec)
        limiter = _RateLimiter(self.rate)
        started = time.monotonic()
        with tqdm(
            total=len(ordered), unit="ev", unit_scale=True, desc=self.topic, disable=not progress
        ) as bar:
            for start in range(0, len(ordered), self.batch_events):
                chunk = EventBatch.from_event_log(ordered, start, start + self.batch_events)
                limiter.acquire(len(chunk))
                self._send_chunk(chunk, stats)
                bar.update(len(chunk))
            self._producer.flush()
        stats.seconds = time.monotonic() - started
        if self._failures:
            raise ReplayError(
                f"{len(self._failures)} messages to topic {self.topic!r} on "
                f"{self.config.bootstrap_servers} failed; first error: {self._failures[0]!r}"
            )
        log.info(
            "replayed %d events in %d messages to %s in %.1fs (%.0f events/s)",
            stats.events,
            stats.messages,
            self.topic,
            stats.seconds,
            stats.events_per_s,
        )
        return stats

    def close(self) -> None:
        self._producer.close()

    def __enter__(self) -> EventReplayer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------

    def _send_chunk(self, chunk: EventBatch, stats: ReplayStats) -> None:
        keys = [user_key(u) for u in chunk.user_id.tolist()]
        partitions = np.fromiter(
            (partition_for_key(k, self.num_partitions) for k in keys), np.int64, len(keys)
        )
        stats.events += len(chunk)
        stats.events_per_partition.update(partitions.tolist())
        if self.codec == "json":
            from pipeline.events.json_codec import encode_json_rows

            rows = zip(
                keys, partitions.tolist(), encode_json_rows(chunk), chunk.timestamp.tolist(),
                strict=True,
            )  # fmt: skip
            for key, partition, payload, when in rows:
                self._send(payload, partition, key, stats, when)
            return
        for partition in np.unique(partitions).tolist():
            self._send_arrow(chunk.take(partitions == partition), partition, stats)

    def _send_arrow(self, batch: EventBatch, partition: int, stats: ReplayStats) -> None:
        from pipeline.events.arrow_codec import encode_arrow

        payload = encode_arrow(batch)
        if len(payload) > self.max_request_bytes - _RECORD_OVERHEAD_BYTES and len(batch) > 1:
            half = len(batch) // 2  # halves keep their order, so events stay time-ordered
            self._send_arrow(batch.take(slice(0, half)), partition, stats)
            self._send_arrow(batch.take(slice(half, None)), partition, stats)
            return
        self._send(payload, partition, None, stats, int(batch.timestamp.max()))

    def _send(
        self,
        payload: bytes,
        partition: int,
        key: bytes | None,
        stats: ReplayStats,
        latest_event_s: int,
    ) -> None:
        from kafka.errors import KafkaError

        stamp = latest_event_s * 1000 if self.record_time == "event" else None
        try:
            future = self._producer.send(
                self.topic,
                value=payload,
                key=key,
                partition=partition,
                headers=self._header,
                timestamp_ms=stamp,
            )
        except KafkaError as exc:  # e.g. no metadata within timeout_s: the cluster is away
            raise ReplayError(
                f"cannot send to topic {self.topic!r} partition {partition} on "
                f"{self.config.bootstrap_servers} after {stats.messages} messages: {exc!r}"
            ) from exc
        future.add_errback(self._failures.append)
        stats.messages += 1
        stats.bytes += len(payload)
