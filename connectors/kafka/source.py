"""Kafka consumer source: the ``Source`` protocol over a consumer group (kafka-python >= 3).

Offsets live in the trainer's checkpoint (``docs/architecture.md``); Kafka's committed group
offsets are written only after a checkpoint (``commit``) and serve lag monitoring and the
hand-over of partitions between trainers. Positions are keyed ``"<topic>:<partition>"`` and
mean "next offset to read".

Where a partition starts when this consumer is assigned it, in order of preference:

1. the larger of the position this process knows (from ``seek`` -- the checkpoint -- or from
   its own consumption) and the group's committed offset. Both describe model state that has
   seen everything before them: ours in our checkpoint, the committed one in the checkpoint
   of whichever trainer owned the partition last. Taking the larger never trains an event
   twice when partitions move between trainers of one group;
2. otherwise ``start``: ``"earliest"``, ``"latest"``, or a timestamp (ISO 8601, or unix
   seconds) resolved with ``offsets_for_times`` (past the end: the end).

Rebalances. When partitions are revoked, the callback registered with ``on_revoke`` runs
first (the trainer checkpoints, which commits), so the next owner starts exactly where this
trainer's state ends. That is only correct when every record handed out so far has been
applied to the state, so this source services the group (and may rebalance) only in a
``poll`` that follows an empty ``poll`` result: after returning records, the next ``poll``
returns no records at once. A caller that applies everything it polled before it polls again
after an empty result (the trainer's loop does) is then always at a clean point when a
rebalance runs. Records fetched but not yet handed out when a rebalance happens are dropped
and fetched again from the new positions.

kafka-python 3 runs rebalance listeners on its IO thread, where blocking consumer calls are
refused; the listener here runs the blocking work (the trainer's checkpoint, committed
offsets, ``offsets_for_times``) in a worker thread and yields to the IO loop meanwhile, so
heartbeats continue during a long checkpoint.

Broker outage. ``poll`` keeps returning no records while the group coordinator is unreachable,
retrying with exponential backoff (``retry_backoff_s`` doubling up to
``max_retry_backoff_s``). It logs one warning per outage with the connection error and one
info line when the cluster is back; kafka-python's own per-attempt connection errors are
silenced meanwhile. A failed ``commit`` (offsets are for lag monitoring) is logged and
retried on a later ``poll``; it never stops the trainer.

Lag: ``lag()`` is the per-partition distance from the position to the partition's high
watermark (as of the last fetch, no extra request); a callback registered with ``on_lag``
receives it every ``lag_every_s`` seconds (the trainer's Prometheus gauge), and an INFO log
line states it as often.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import repeat
from operator import attrgetter
from typing import Any

from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from connectors.kafka.broker import running_local_bootstrap
from connectors.kafka.config import KafkaClientConfig, client_config_from_args, connect
from connectors.kafka.producer import CODEC_HEADER
from pipeline.events.records import Records

log = logging.getLogger(__name__)

RevokeCallback = Callable[[list[str]], None]
LagCallback = Callable[[str, int], None]
# Header bytes -> codec name, decoded once instead of per message.
_CODEC_NAMES: dict[bytes | None, str] = {b"json": "json", b"arrow": "arrow"}
# The headers of every JSON message of this repo's producer: one list comparison recognises
# them, instead of a loop over the headers per message.
_JSON_HEADERS = [(CODEC_HEADER, b"json")]
_value, _headers = attrgetter("value"), attrgetter("headers")
_offset = attrgetter("offset")
_time = attrgetter("timestamp")  # Unix ms: the producer's (CreateTime) or the broker's


def _header_text(value: bytes | None) -> str:
    """An unknown codec header as text (the decoder rejects it, naming the value)."""
    return value.decode("utf-8", "replace") if value is not None else ""


def _codec(headers: list[tuple[str, bytes | None]] | None) -> str:
    """The codec a message's headers name (the last ``codec`` header wins); producers that
    predate the header sent JSON."""
    codec = "json"
    for name, value in headers or ():
        if name == CODEC_HEADER:
            codec = _CODEC_NAMES.get(value) or _header_text(value)
    return codec


_POLL_STEP_MS = 200  # longest single wait inside kafka-python, so outages are noticed quickly


def partition_key(topic: str, partition: int) -> str:
    """The position key of a Kafka partition: ``"<topic>:<partition>"``."""
    return f"{topic}:{partition}"


def parse_partition_key(key: str) -> tuple[str, int]:
    """Inverse of ``partition_key`` (topic names may not contain ':', so split at the last)."""
    topic, sep, partition = key.rpartition(":")
    if not sep or not topic or not partition.isdigit():
        raise ValueError(f"position key {key!r} is not '<topic>:<partition>'")
    return topic, int(partition)


def parse_start(start: str) -> str | int:
    """``"earliest"``, ``"latest"``, or a timestamp as unix milliseconds.

    Timestamps: unix seconds (``"1714521600"``) or ISO 8601 (``"2024-05-01T00:00:00Z"``; no
    zone means UTC)."""
    text = start.strip().lower()
    if text in ("earliest", "latest"):
        return text
    try:
        return int(float(text) * 1000)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(start.strip().replace("Z", "+00:00"))
    except ValueError as err:
        raise ValueError(
            f"start={start!r}: use 'earliest', 'latest', unix seconds or an ISO 8601 time "
            "such as 2024-05-01T00:00:00Z"
        ) from err
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


class KafkaSource:
    """Records of one or more topics, consumed in a consumer group; see the module docstring.

    Args:
        config: cluster settings (SASL/SSL pass through), or bootstrap servers.
        topics: topic name(s) to subscribe to.
        group_id: the consumer group; trainers sharing it split the partitions.
        start: where partitions without a known or committed position start.
        max_poll_interval_s: longest time between polls before the group evicts this member
            (must exceed the longest checkpoint + publish).
        session_timeout_s: heartbeat session timeout.
        retry_backoff_s / max_retry_backoff_s: outage retry backoff (doubles up to the max).
        lag_every_s: how often lag goes to the ``on_lag`` callback and the log.
        consumer_options: extra ``KafkaConsumer`` keyword arguments (they win).
    """

    def __init__(
        self,
        config: KafkaClientConfig | str,
        topics: str | Sequence[str],
        group_id: str,
        start: str = "earliest",
        *,
        max_poll_interval_s: float = 300.0,
        session_timeout_s: float = 45.0,
        retry_backoff_s: float = 0.5,
        max_retry_backoff_s: float = 5.0,
        lag_every_s: float = 10.0,
        consumer_options: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(config, str):
            config = KafkaClientConfig(bootstrap_servers=config)
        self.config = config
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        if not self.topics or any(not t or ":" in t for t in self.topics):
            raise ValueError(f"topics must be non-empty names without ':', got {self.topics}")
        self.group_id = group_id
        self.start = parse_start(start)
        self.retry_backoff_s = retry_backoff_s
        self.max_retry_backoff_s = max_retry_backoff_s
        self.lag_every_s = lag_every_s
        kwargs: dict[str, Any] = {
            "client_id": f"{config.client_id}-source",
            "group_id": group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "latest" if self.start == "latest" else "earliest",
            "max_poll_interval_ms": int(max_poll_interval_s * 1000),
            "session_timeout_ms": int(session_timeout_s * 1000),
            # kafka-python backs off reconnects up to 30 s by default: after an outage the
            # trainer would idle that long after the broker is back.
            "reconnect_backoff_max_ms": 2000,
            "max_partition_fetch_bytes": 8 * 1024 * 1024,  # Arrow batches can be large
            **(consumer_options or {}),
        }
        self._consumer: KafkaConsumer = connect(KafkaConsumer, config, **kwargs)
        _keep_rejoin_requested(self._consumer)
        self._consumer.subscribe(self.topics, listener=_Listener(self))
        self._next: dict[str, int] = {}  # next offset per partition known to this process
        self._assigned: set[str] = set()
        self._committed: dict[str, int] = {}  # last positions committed by ``commit``
        self._uncommitted: dict[str, int] = {}  # commits that failed, retried on poll
        self._generation = 0  # bumped on every revocation
        self._handed_out = False  # records returned since the last empty poll
        self._revoke_callbacks: list[RevokeCallback] = []
        self._lag_callbacks: list[LagCallback] = []
        self._last_lag_report = time.monotonic()
        self._outage_since: float | None = None
        self._next_retry = 0.0
        self._backoff = retry_backoff_s
        self._kafka_log_level: int | None = None
        self._closed = False
        self._share: tuple[int, int] | None = None  # (rank, world) of a static assignment

    # ------------------------------------------------------------------ Source protocol
    def poll(self, max_records: int, timeout_s: float) -> Records:
        """Up to ``max_records`` records, waiting at most ``timeout_s`` for the first one;
        once some arrived, only records already fetched are added.

        Under the group's dynamic assignment, a call that follows a non-empty result returns
        no records at once, so that rebalances run only in a poll after an empty result (the
        clean point, see the module docstring); records fetched in a call before a rebalance
        inside it are dropped and fetched again from the new positions. With a static share
        (``assign_share``, a rank of a trainer group) there are no rebalances, and every call
        fetches. While the broker is unreachable a call waits for the next retry (at most
        ``timeout_s``) and returns what it has, usually nothing. Each call also retries the
        commits that failed and reports the lag (``on_lag``) when it is due."""
        self._maybe_report_lag()
        if self._handed_out and self._share is None:
            self._handed_out = False
            return Records()
        deadline = time.monotonic() + timeout_s
        records = Records()
        ends: dict[str, int] = {}  # next offset per partition after ``records``
        generation = self._generation
        while len(records) < max_records:
            now = time.monotonic()
            if self._outage_since is not None and now < self._next_retry:
                time.sleep(max(0.0, min(deadline, self._next_retry) - now))
                break
            wait_ms = 0 if records else max(0, int((deadline - now) * 1000))
            batch = self._consumer.poll(
                timeout_ms=min(wait_ms, _POLL_STEP_MS), max_records=max_records - len(records)
            )
            if self._generation != generation:
                # A rebalance ran inside poll: what this call fetched before it may belong to
                # partitions now owned elsewhere, and the new positions were seeked anew.
                records = Records()
                ends.clear()
                generation = self._generation
            got = 0
            for tp, msgs in batch.items():
                if msgs:  # in offset order: the last one sets the partition's position
                    key = partition_key(tp.topic, tp.partition)
                    records.extend(self._records(key, msgs))
                    ends[key] = msgs[-1].offset + 1
                    got += len(msgs)
            if not got:
                self._check_health()
                if records or time.monotonic() >= deadline or self._outage_since is not None:
                    break
        if self._outage_since is None and self._uncommitted:
            self._commit(dict(self._uncommitted))
        self._next.update(ends)
        self._handed_out = bool(records)
        return records

    def positions(self) -> dict[str, int]:
        """Next offset to read of every assigned partition with a known position."""
        return {key: self._next[key] for key in sorted(self._assigned) if key in self._next}

    def seek(self, positions: Mapping[str, int]) -> None:
        """Resume from checkpointed positions: assigned partitions move now, the others when
        they are assigned (then the group's committed offset wins if it is further)."""
        for key, offset in positions.items():
            topic, partition = parse_partition_key(key)
            if topic not in self.topics:
                log.warning(
                    "ignoring checkpoint position %s=%d: not a subscribed topic", key, offset
                )
                continue
            self._next[key] = int(offset)
            if key in self._assigned:
                self._consumer.seek(TopicPartition(topic, partition), int(offset))
        self._generation += 1  # records fetched before the seek are stale

    def assign_share(self, rank: int, world: int, timeout_s: float = 60.0) -> list[str]:
        """Own partition ``p`` of every topic where ``p % world == rank``, without the
        group's dynamic assignment (``SharedSource``): a trainer group's rank keeps the same
        partitions across restarts, so the positions in its checkpoints keep their meaning.
        The group id is still used for committed offsets (lag monitoring). Positions: this
        process's (the checkpoint's, from ``seek``), else the committed offset, else
        ``start``. Returns the partition keys owned (possibly none: an idle rank)."""
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in a group of {world}")
        deadline = time.monotonic() + timeout_s
        tps: list[TopicPartition] = []
        for topic in self.topics:
            partitions = self._consumer.partitions_for_topic(topic)
            while not partitions:
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"topic {topic!r} has no partitions on {self.config.bootstrap_servers} "
                        f"after {timeout_s:.0f}s: create it first (genrec kafka topics create)"
                    )
                time.sleep(0.5)
                partitions = self._consumer.partitions_for_topic(topic)
            tps += [TopicPartition(topic, p) for p in sorted(partitions) if p % world == rank]
        self._share = (rank, world)
        self._consumer.unsubscribe()
        self._consumer.assign(tps)
        if tps:
            self._assign(tps)
        else:
            log.warning("rank %d of %d owns no partition of %s: it idles", rank, world, self.topics)
        return self.assignment()

    def start_at(self, time_s: int) -> None:
        """Start partitions this consumer has no position for (and the group no committed
        offset) at the first record stamped ``time_s`` or later (``TimeSeekable``)."""
        self.start = int(time_s) * 1000

    def commit(self, positions: Mapping[str, int]) -> None:
        """Commit positions a checkpoint covers to the group (lag monitoring, hand-over).

        Only partitions assigned to this consumer are committed. Failures are logged and
        retried on a later poll."""
        wanted = {k: int(v) for k, v in positions.items() if k in self._assigned}
        self._uncommitted.update(wanted)
        if self._outage_since is None:
            self._commit(dict(self._uncommitted))

    def exhausted(self) -> bool:
        """Never: a topic is an unbounded stream."""
        return False

    def close(self) -> None:
        """Leave the group. ``on_revoke`` callbacks do not run: the owner checkpoints before
        closing if it wants to (after a crash the state may be half-applied), and the next
        owner starts at the last commit."""
        if self._closed:
            return
        self._closed = True
        self._restore_kafka_logging()
        self._consumer.close(autocommit=False)

    # ------------------------------------------------------------------ extras
    def on_revoke(self, callback: RevokeCallback) -> None:
        """Call ``callback(partition_keys)`` before partitions with uncommitted progress are
        given away; it should checkpoint (and so ``commit``) the current state."""
        self._revoke_callbacks.append(callback)

    def on_lag(self, callback: LagCallback) -> None:
        """Call ``callback(partition_key, lag)`` every ``lag_every_s`` seconds."""
        self._lag_callbacks.append(callback)

    def assignment(self) -> list[str]:
        """Partition keys currently assigned to this consumer."""
        return sorted(self._assigned)

    def lag(self) -> dict[str, int]:
        """Records behind the high watermark per assigned partition (known ones only)."""
        out = {}
        for key in sorted(self._assigned):
            topic, partition = parse_partition_key(key)
            high = self._consumer.highwater(TopicPartition(topic, partition))
            if high is not None and key in self._next:
                out[key] = max(0, int(high) - self._next[key])
        return out

    def pause(self) -> None:
        """Stop fetching from every assigned partition (group membership is kept)."""
        self._consumer.pause(*self._consumer.assignment())

    def resume(self) -> None:
        """Undo ``pause``."""
        self._consumer.resume(*self._consumer.paused())

    @contextmanager
    def paused(self) -> Iterator[None]:
        """``pause()`` for the duration of a ``with`` block (e.g. a checkpoint)."""
        self.pause()
        try:
            yield
        finally:
            self.resume()

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _records(partition: str, messages: list[Any]) -> Records:
        # Column by column with C-level map/repeat: a Python expression per message costs
        # more than the rest of the pipeline's per-message work.
        n = len(messages)
        values = list(map(_value, messages))
        if None in values:  # a tombstone (null value) is an empty payload: a bad_json reject
            values = [b"" if v is None else v for v in values]
        headers = list(map(_headers, messages))
        if headers.count(_JSON_HEADERS) == n:
            codecs = list(repeat("json", n))
        else:
            codecs = list(map(_codec, headers))
        offsets = list(map(_offset, messages))
        return Records(
            values, codecs, list(repeat(partition, n)), offsets, list(map(_time, messages))
        )

    def _commit(self, positions: dict[str, int]) -> None:
        positions = {k: v for k, v in positions.items() if k in self._assigned}
        todo = {k: v for k, v in positions.items() if self._committed.get(k) != v}
        if not todo:
            self._uncommitted.clear()
            return
        offsets = {
            TopicPartition(*parse_partition_key(k)): OffsetAndMetadata(v, "", -1)
            for k, v in todo.items()
        }
        try:
            self._consumer.commit(offsets, timeout_ms=10_000)
        except KafkaError as err:
            log.warning(
                "committing offsets %s of group %r failed (%r); they are for lag monitoring "
                "only and will be retried",
                todo,
                self.group_id,
                err,
            )
            return
        self._committed.update(todo)
        self._uncommitted.clear()

    def _check_health(self) -> None:
        """After an empty poll: notice an outage (coordinator unknown) or a recovery."""
        # kafka-python has no public health probe; an unknown group coordinator after a poll
        # is the first sign that the cluster is unreachable (private, but stable since 1.x).
        down = self._consumer._coordinator.coordinator_unknown()
        now = time.monotonic()
        if down and self._outage_since is None and self._assigned:
            self._outage_since = now
            self._backoff = self.retry_backoff_s
            log.warning(
                "Kafka cluster %s unreachable (%s): training state is kept; retrying with "
                "backoff up to %.0fs until it is back",
                self.config.bootstrap_servers,
                self._probe_error(),
                self.max_retry_backoff_s,
            )
            self._silence_kafka_logging()
        elif down and self._outage_since is not None:
            self._backoff = min(self._backoff * 2, self.max_retry_backoff_s)
        elif not down and self._outage_since is not None:
            log.info(
                "Kafka cluster %s reachable again after %.1fs; resuming",
                self.config.bootstrap_servers,
                now - self._outage_since,
            )
            self._outage_since = None
            self._restore_kafka_logging()
        self._next_retry = now + self._backoff if self._outage_since is not None else 0.0

    def _probe_error(self) -> str:
        """The connection error of the first bootstrap server, for the outage warning."""
        host, _, port = self.config.bootstrap_servers.split(",")[0].rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=2.0):
                return "the broker accepts connections but the group coordinator is unknown"
        except OSError as err:
            return f"{host}:{port}: {err}"

    def _silence_kafka_logging(self) -> None:
        # kafka-python logs every failed reconnect at ERROR; one warning per outage is ours.
        kafka_log = logging.getLogger("kafka")
        if self._kafka_log_level is None:
            self._kafka_log_level = kafka_log.level
            kafka_log.setLevel(logging.CRITICAL)

    def _restore_kafka_logging(self) -> None:
        if self._kafka_log_level is not None:
            logging.getLogger("kafka").setLevel(self._kafka_log_level)
            self._kafka_log_level = None

    def _maybe_report_lag(self) -> None:
        now = time.monotonic()
        if now - self._last_lag_report < self.lag_every_s:
            return
        self._last_lag_report = now
        lag = self.lag()
        for key, value in lag.items():
            for callback in self._lag_callbacks:
                callback(key, value)
        if lag:
            per = " ".join(f"{k}={v:,}" for k, v in lag.items())
            log.info("consumer lag %s: total=%s %s", self.group_id, f"{sum(lag.values()):,}", per)

    # called by _Listener in a worker thread ---------------------------------------------
    def _revoke(self, partitions: Sequence[TopicPartition]) -> None:
        keys = sorted(partition_key(tp.topic, tp.partition) for tp in partitions)
        self._generation += 1
        progressed = [
            k for k in keys if k in self._next and self._committed.get(k) != self._next[k]
        ]
        if progressed and self._revoke_callbacks and not self._closed:
            log.info("partitions %s revoked: checkpointing before they move", keys)
            for callback in self._revoke_callbacks:
                callback(keys)
        self._assigned.difference_update(keys)

    def _lose(self, partitions: Sequence[TopicPartition]) -> None:
        keys = sorted(partition_key(tp.topic, tp.partition) for tp in partitions)
        log.warning(
            "group %r evicted this consumer; partitions %s lost without a hand-over "
            "checkpoint (if another trainer took them, events since the last commit are "
            "trained by both)",
            self.group_id,
            keys,
        )
        self._generation += 1
        self._assigned.difference_update(keys)

    def _assign(self, partitions: Sequence[TopicPartition]) -> None:
        tps = sorted(partitions)
        committed = {tp: self._consumer.committed(tp) for tp in tps}
        unresolved = [
            tp for tp in tps if committed[tp] is None and partition_key(*tp) not in self._next
        ]
        fallback = self._start_offsets(unresolved)
        for tp in tps:
            key = partition_key(tp.topic, tp.partition)
            candidates = [v for v in (self._next.get(key), committed[tp]) if v is not None]
            offset = max(candidates) if candidates else fallback[tp]
            if self._share is not None and key in self._next:
                # a static share never hands partitions over: the checkpoint's position is
                # the state's, and a commit newer than it (a lost checkpoint) must not skip
                offset = self._next[key]
            self._consumer.seek(tp, offset)
            self._next[key] = offset
            if committed[tp] is not None:
                self._committed[key] = committed[tp]
            self._assigned.add(key)
        self._generation += 1
        log.info("assigned %s at %s", [partition_key(*tp) for tp in tps], self.positions())

    def _start_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        if not tps:
            return {}
        if self.start == "earliest":
            return {tp: int(v) for tp, v in self._consumer.beginning_offsets(tps).items()}
        end = {tp: int(v) for tp, v in self._consumer.end_offsets(tps).items()}
        if self.start == "latest":
            return end
        found = self._consumer.offsets_for_times({tp: self.start for tp in tps})
        return {tp: end[tp] if found.get(tp) is None else int(found[tp].offset) for tp in tps}


def _keep_rejoin_requested(consumer: KafkaConsumer) -> None:
    """Make a rebalance that metadata asked for stick until it completes (KAFKA-9815).

    kafka-python (3.0.12) rejoins when the partitions in its metadata differ from those of
    the last assignment it computed as leader, without setting its ``rejoin_needed`` flag.
    If the ``poll`` that starts that rejoin times out before JoinGroup/SyncGroup answer (a
    loaded machine, a 200 ms poll step), the join task still computes the new assignment,
    the difference is gone, and no later ``poll`` applies the result: the consumer keeps an
    empty or stale assignment and stops heartbeating, for good. A consumer that joins
    before its first metadata response ("No partition metadata for topic", common at start)
    takes this path. Like the Java client's fix, requesting the rejoin whenever one is
    needed keeps it pending until a join has been applied."""
    coordinator = consumer._coordinator  # no public handle; stable since kafka-python 1.x
    need_rejoin = coordinator.need_rejoin

    def need_rejoin_until_joined() -> bool:
        if need_rejoin():
            coordinator.request_rejoin()
            return True
        return False

    coordinator.need_rejoin = need_rejoin_until_joined


class _Listener(AsyncConsumerRebalanceListener):
    """Rebalance listener: runs the source's blocking handlers off kafka-python's IO thread."""

    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked:
            await self._blocking(self.source._revoke, list(revoked))

    async def on_partitions_lost(self, lost: Any) -> None:
        if lost:
            self.source._lose(list(lost))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        if assigned:
            await self._blocking(self.source._assign, list(assigned))

    async def _blocking(self, fn: Callable[[Any], None], arg: Any) -> None:
        """Run ``fn(arg)`` in a thread; yield to the IO loop (heartbeats, the requests ``fn``
        makes) until it is done; re-raise its error."""
        errors: list[BaseException] = []

        def target() -> None:
            try:
                fn(arg)
            except BaseException as err:  # re-raised on the IO thread below
                errors.append(err)

        worker = threading.Thread(target=target, name="kafka-rebalance", daemon=True)
        worker.start()
        net = self.source._consumer._net  # kafka-python's IO loop (no public handle)
        while worker.is_alive():
            await net.sleep(0.01)
        if errors:
            raise errors[0]


def client_config_from_section(kafka: Any) -> KafkaClientConfig:
    """Cluster settings from the trainer's ``source.kafka`` config section; unset values fall
    back to the ``KAFKA_*`` environment variables (the SASL password comes only from there),
    and the servers finally to the local broker of ``genrec kafka up`` if it runs."""
    return client_config_from_args(kafka, default_bootstrap=running_local_bootstrap())


def from_trainer_config(cfg: Any) -> KafkaSource:
    """The ``genrec.sources`` plugin for ``source.kind: kafka`` (see pipeline/plugins.py)."""
    return source_from_section(cfg.source.kafka, lag_every_s=cfg.observability.log_every_s)


def source_from_section(kafka: Any, lag_every_s: float = 10.0) -> KafkaSource:
    """The ``KafkaSource`` described by the trainer's ``source.kafka`` config section."""
    topics = [t.strip() for t in kafka.topic.split(",") if t.strip()]
    return KafkaSource(
        client_config_from_section(kafka),
        topics,
        kafka.group_id,
        kafka.start,
        max_poll_interval_s=kafka.max_poll_interval_s,
        session_timeout_s=kafka.session_timeout_s,
        lag_every_s=lag_every_s,
    )
