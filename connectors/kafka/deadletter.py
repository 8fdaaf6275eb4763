"""Dead-letter topic: every reject is produced to ``<source topic>.dlq`` (or one fixed topic).

Message layout (one message per ``Reject``):

* value: the original payload; for one bad row of an Arrow batch, that row as a JSON object.
* key: the source record's location ``topic:partition@offset[#row]`` (UTF-8).
* headers (UTF-8 values): ``error.reason`` (a ``RejectReason`` value), ``error.message``
  (at most 4000 bytes), ``source.topic``, ``source.partition``, ``source.offset``, and
  ``source.row`` for an Arrow row; for a truncated payload also ``payload.truncated``
  (``true``), ``payload.size`` (bytes of the whole payload) and ``payload.sha256`` (its hex
  digest). ``read_dead_letter(message)`` turns a consumed message back into a ``Reject``.

Dead-letter topics that do not exist are created on first use (``partitions`` partitions,
``max.message.bytes`` = the producer's ``max_request_size``).

Too large is not an outage. A dead letter larger than the producer's ``max_request_size``
(8 MiB; Arrow payloads up to 64 MiB are accepted by the decoder), or one the broker refuses
as too large (``MESSAGE_TOO_LARGE``: an existing topic's ``max.message.bytes`` is smaller),
would fail on every attempt and after every restart: a poison pill. Such a dead letter is
written with its payload truncated to what fits, plus the ``payload.*`` headers: the producer
limit is applied before sending; after a broker refusal the message is re-sent at once with
half the size, and that smaller limit is kept for the topic. ``stats()["truncated"]`` counts
these. Only a topic that refuses a dead letter even without payload (key and headers alone
are too large) raises ``DeadLetterError`` at once: a configuration error to fix.

Outages are retried, never silently dropped: ``send`` hands the message to the producer
(which retries transient errors itself); ``flush`` -- called by the trainer before every
checkpoint -- waits for every acknowledgement and re-sends failed messages with exponential
backoff. If they still fail after ``give_up_after_s`` seconds, ``flush`` raises
``DeadLetterError``: the trainer stops *before* writing a checkpoint that would cover the
undelivered dead letters, and a restart replays them from the previous checkpoint. Dead
letters are therefore at-least-once (a replay may produce one again), while events stay
exactly-once.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError, RecordListTooLargeError
from kafka.record.default_records import DefaultRecordBatchBuilder

from connectors.kafka.admin import TopicAdmin, TopicError
from connectors.kafka.config import KafkaClientConfig, connect
from connectors.kafka.source import parse_partition_key
from pipeline.events import Reject, RejectReason

log = logging.getLogger(__name__)

DLQ_SUFFIX = ".dlq"
MAX_DEAD_LETTER_BYTES = 8 * 1024 * 1024
_MAX_MESSAGE_BYTES = 4000  # headers stay small; the payload carries the data
# A truncated payload's length varint can take up to 4 bytes more than an empty one's.
_LENGTH_SLACK = 4
_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError)


class DeadLetterError(RuntimeError):
    """Dead letters could not be delivered; the trainer must not checkpoint past them."""


def dead_letter_topic(source_topic: str) -> str:
    """The default dead-letter topic of ``source_topic``."""
    return f"{source_topic}{DLQ_SUFFIX}"


def dead_letter_headers(reject: Reject) -> list[tuple[str, bytes]]:
    """The headers naming what was wrong and where it came from."""
    topic, partition = _source(reject)
    message = reject.message.encode("utf-8", "replace")[:_MAX_MESSAGE_BYTES]
    headers = [
        ("error.reason", str(reject.reason).encode()),
        # Cutting may split the last character: drop that part.
        ("error.message", message.decode("utf-8", "ignore").encode()),
        ("source.topic", topic.encode()),
        ("source.partition", str(partition).encode()),
        ("source.offset", str(reject.offset).encode()),
    ]
    if reject.row is not None:
        headers.append(("source.row", str(reject.row).encode()))
    if reject.truncated:
        headers += [
            ("payload.truncated", b"true"),
            ("payload.size", str(reject.original_size).encode()),
            ("payload.sha256", str(reject.original_sha256).encode()),
        ]
    return headers


@dataclass(frozen=True)
class DeadLetterRecord:
    """The Kafka record of one dead letter; ``truncated``: its payload is only a prefix."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    truncated: bool

    @property
    def size(self) -> int:
        """Upper bound of its size on the wire, as the producer checks it against
        ``max_request_size`` (and close to what the broker checks against
        ``max.message.bytes``)."""
        return DefaultRecordBatchBuilder.estimate_size_in_bytes(self.key, self.value, self.headers)


def dead_letter_record(reject: Reject, max_bytes: int) -> DeadLetterRecord:
    """The record of ``reject``: whole when it fits in ``max_bytes``, else with the payload
    truncated to fit (and the ``payload.*`` headers). If key and headers alone exceed
    ``max_bytes``, the record without payload, still larger than ``max_bytes``."""
    whole = _record(reject)
    if whole.size <= max_bytes:
        return whole
    empty = _record(reject.truncated_to(0))
    room = max_bytes - empty.size - _LENGTH_SLACK
    return _record(reject.truncated_to(room)) if room > 0 else empty


def _record(reject: Reject) -> DeadLetterRecord:
    return DeadLetterRecord(
        key=reject.where().encode("utf-8"),
        value=reject.payload,
        headers=dead_letter_headers(reject),
        truncated=reject.truncated,
    )


def read_dead_letter(message: Any) -> Reject:
    """A consumed dead-letter message (kafka-python ``ConsumerRecord``) as a ``Reject``."""
    headers = {name: value.decode("utf-8") for name, value in message.headers or ()}
    row = headers.get("source.row")
    truncated = headers.get("payload.truncated") == "true"
    return Reject(
        reason=RejectReason(headers["error.reason"]),
        message=headers["error.message"],
        partition=f"{headers['source.topic']}:{headers['source.partition']}",
        offset=int(headers["source.offset"]),
        payload=message.value or b"",
        row=None if row is None else int(row),
        original_size=int(headers["payload.size"]) if truncated else None,
        original_sha256=headers["payload.sha256"] if truncated else None,
    )


def _too_large(error: Any) -> bool:
    """Whether the broker refused a record for its size (no retry of the same record helps)."""
    return isinstance(error, _TOO_LARGE)


def _source(reject: Reject) -> tuple[str, int]:
    try:
        return parse_partition_key(reject.partition)
    except ValueError:
        return reject.partition, -1  # a non-Kafka source: keep its key as the topic


@dataclass
class _Pending:
    """One dead letter handed to the producer and not acknowledged yet."""

    reject: Reject
    topic: str
    record: DeadLetterRecord
    future: Any
    attempts: int


class KafkaDeadLetterSink:
    """``DeadLetterSink`` writing to Kafka; see the module docstring.

    Args:
        config: cluster settings, or bootstrap servers.
        topic: one dead-letter topic for everything; None: ``<source topic>.dlq`` each.
        partitions: partition count of dead-letter topics this sink creates.
        give_up_after_s: how long ``flush`` keeps re-sending before it raises.
        max_backoff_s: longest pause between re-sends.
        max_request_size: the largest dead letter the producer sends (bytes, key and headers
            included); larger ones are truncated to it. Also the ``max.message.bytes`` of
            dead-letter topics this sink creates.
    """

    def __init__(
        self,
        config: KafkaClientConfig | str,
        topic: str | None = None,
        *,
        partitions: int = 1,
        give_up_after_s: float = 300.0,
        max_backoff_s: float = 10.0,
        max_request_size: int = MAX_DEAD_LETTER_BYTES,
    ) -> None:
        if isinstance(config, str):
            config = KafkaClientConfig(bootstrap_servers=config)
        self.config = config
        self.topic = topic
        self.partitions = partitions
        self.give_up_after_s = give_up_after_s
        self.max_backoff_s = max_backoff_s
        self.max_request_size = max_request_size
        self._producer = connect(
            KafkaProducer,
            config,
            client_id=f"{config.client_id}-deadletter",
            acks="all",
            # kafka-python's idempotent producer turns a non-retriable batch error (a record
            # the broker refuses as too large) into a fatal state that fails every later send;
            # dead letters are at-least-once anyway, so its de-duplication buys nothing here.
            enable_idempotence=False,
            linger_ms=50,
            max_request_size=max_request_size,
            allow_auto_create_topics=False,
        )
        self._ready_topics: set[str] = set()
        # Per topic, a record size below the one its broker refused as too large.
        self._topic_limits: dict[str, int] = {}
        self._pending: list[_Pending] = []
        self._counts: Counter[str] = Counter()
        self._sent = 0
        self._truncated = 0
        self._delivered = 0
        self._closed = False

    def topic_for(self, reject: Reject) -> str:
        """Where ``reject`` goes."""
        return self.topic or dead_letter_topic(_source(reject)[0])

    def send(self, reject: Reject) -> None:
        """Hand ``reject`` to the producer (delivery is confirmed by ``flush``)."""
        if self._closed:
            raise DeadLetterError(f"dead-letter sink is closed; cannot record {reject.where()}")
        self._pending.append(self._produce(reject))
        self._counts[str(reject.reason)] += 1
        self._sent += 1

    def flush(self) -> None:
        """Wait until every dead letter sent so far is acknowledged; re-send those the broker
        refused as too large truncated at once, other failures with backoff; raise
        ``DeadLetterError`` after ``give_up_after_s``."""
        deadline = time.monotonic() + self.give_up_after_s
        backoff = 0.5
        while self._pending:
            # Unacknowledged ones count as failed below, up to the give-up time.
            with contextlib.suppress(KafkaTimeoutError):
                self._producer.flush(timeout=max(1.0, deadline - time.monotonic()))
            resent: list[_Pending] = []
            unfit: list[_Pending] = []
            failed: list[_Pending] = []
            for pending in self._pending:
                if pending.future.succeeded():
                    self._delivered += 1
                elif not pending.future.failed() or not _too_large(pending.future.exception):
                    failed.append(pending)  # in flight, or a failure that may clear
                elif pending.record.value:
                    resent.append(self._resend_smaller(pending))
                else:
                    unfit.append(pending)
            self._pending = resent + failed + unfit
            if unfit:
                raise self._unfit_error(unfit[0])
            if not failed:
                continue  # done, or wait for the truncated re-sends
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
            # Failed: send again; still in flight: keep waiting.
            self._pending = resent + [
                self._produce(p.reject, p) if p.future.is_done else p for p in failed
            ]

    def counts(self) -> dict[str, int]:
        """Dead letters sent so far per reason."""
        return dict(self._counts)

    def stats(self) -> dict[str, int]:
        """``sent`` (dead letters sent), ``truncated`` (of them, written with only a prefix
        of their payload) and ``delivered`` (acknowledged by the cluster)."""
        return {"sent": self._sent, "truncated": self._truncated, "delivered": self._delivered}

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

    def _produce(self, reject: Reject, previous: _Pending | None = None) -> _Pending:
        """Send ``reject`` (again, after ``previous``), truncated to the topic's limit."""
        topic = self.topic_for(reject)
        self._ensure_topic(topic)
        limit = self._topic_limits.get(topic, self.max_request_size)
        record = dead_letter_record(reject, limit)
        if record.size > self.max_request_size:
            raise DeadLetterError(
                f"the dead letter of {reject.where()} does not fit in max_request_size="
                f"{self.max_request_size} bytes even without its payload (key and headers take "
                f"{record.size}); raise max_request_size of the dead-letter sink"
            )
        if record.truncated and not (previous is not None and previous.record.truncated):
            self._truncated += 1
        if record.truncated:
            log.warning(
                "dead letter %s for %s: payload of %d bytes does not fit in %d bytes; writing "
                "its first %d bytes with payload.size and payload.sha256 headers",
                reject.where(),
                topic,
                len(reject.payload),
                limit,
                len(record.value),
            )
        future = self._producer.send(
            topic, value=record.value, key=record.key, headers=record.headers
        )
        attempts = 1 if previous is None else previous.attempts + 1
        return _Pending(reject, topic, record, future, attempts)

    def _resend_smaller(self, pending: _Pending) -> _Pending:
        """Re-send a dead letter the broker refused as too large, at half its size."""
        # The broker does not say its limit: halve, never below the size without payload, so
        # every refusal shortens the payload and the empty one ends the search.
        empty = _record(pending.reject.truncated_to(0)).size
        limit = max(empty, pending.record.size // 2)
        self._topic_limits[pending.topic] = min(
            limit, self._topic_limits.get(pending.topic, self.max_request_size)
        )
        return self._produce(pending.reject, pending)

    def _unfit_error(self, pending: _Pending) -> DeadLetterError:
        return DeadLetterError(
            f"topic {pending.topic} on {self.config.bootstrap_servers} refuses the dead letter "
            f"of {pending.reject.where()} even without its payload ({pending.record.size} bytes "
            f"of key and headers; {pending.future.exception!r}); raise the topic's "
            f"max.message.bytes (kafka-configs.sh --alter --entity-type topics --entity-name "
            f"{pending.topic} --add-config max.message.bytes={self.max_request_size})"
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
                    configs={"max.message.bytes": str(self.max_request_size)},
                )
                log.info("created dead-letter topic %s", topic)
        self._ready_topics.add(topic)


def from_trainer_config(cfg: Any) -> KafkaDeadLetterSink:
    """The ``genrec.dead_letters`` plugin for ``dead_letter.kind: kafka``."""
    return sink_from_section(cfg.source.kafka)


def sink_from_section(kafka: Any) -> KafkaDeadLetterSink:
    """The dead-letter sink of the trainer's ``source.kafka`` config section
    (``dead_letter_topic``, else ``<source topic>.dlq``)."""
    from connectors.kafka.source import client_config_from_section

    return KafkaDeadLetterSink(client_config_from_section(kafka), kafka.dead_letter_topic)
