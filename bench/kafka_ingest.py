"""Events/s from a real Kafka broker into jagged batches, next to a bare consume loop.

For each codec (JSON: one event per message; Arrow: ``--events-per-message`` events per
message) the same topic is read four ways, each with a fresh consumer group from offset 0:

- ``bare``: a plain kafka-python ``KafkaConsumer.poll`` loop that only counts messages (the
  floor: what kafka-python itself costs);
- ``source``: ``KafkaSource.poll`` only (group, positions, codec header);
- ``decode``: records gathered one micro-batch at a time (the trainer's ``gather``) ->
  ``decode_records`` (validated ``EventBatch``);
- ``pipeline``: the same, then the trainer's
  ``BatchBuilder`` (sequence store + vocabulary + jagged batch assembly), per micro-batch of
  ``--batch-events`` events -- everything the trainer does before the model.

``<mode>_overhead`` = that mode's seconds / bare seconds (``pipeline_overhead`` is the
pipeline's overhead over kafka-python). Each figure is the best of ``--repeat`` reads; the
modes take turns (bare, source, decode, pipeline, bare, ...) so that drift in the machine or
the broker affects them alike, and a full garbage collection runs before every read (outside
the clock) so that no read pays for the cyclic garbage of the readers before it.
kafka-python checks record CRCs in pure Python unless the ``crc32c`` package is installed;
``--no-check-crcs`` shows the difference.
Everything runs under ``genrec train``'s garbage-collector settings (``pipeline/runtime/gcpolicy.py``);
``--default-gc`` keeps CPython's defaults. Prints one JSON object. Without
``--bootstrap-servers`` (or ``KAFKA_BOOTSTRAP_SERVERS``) a temporary local broker is started.

Example::

    python3 bench/kafka_ingest.py --events 1000000 --json-events 100000
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

_POLL_MAX_RECORDS = 10_000  # the source-only read; the others poll like the trainer


def produce(bootstrap: str, topic: str, events: Any, codec: str, args: argparse.Namespace) -> Any:
    from connectors.kafka.admin import TopicAdmin
    from connectors.kafka.producer import EventReplayer

    with TopicAdmin(bootstrap) as admin:
        admin.create_topic(topic, args.partitions)
    # The replayer splits each chunk by partition: one Arrow message per partition per chunk.
    per_chunk = args.events_per_message * args.partitions
    with EventReplayer(bootstrap, topic, codec=codec, batch_events=per_chunk) as replayer:
        return replayer.replay(events, progress=False)


def bare(bootstrap: str, topic: str, messages: int, check_crcs: bool) -> float:
    """Seconds for a plain kafka-python poll loop to receive ``messages`` messages."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-bare-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        check_crcs=check_crcs,
    )
    consumer.poll(timeout_ms=5000, max_records=1)  # join the group before the clock starts
    consumer.seek_to_beginning()
    started = time.perf_counter()
    seen = 0
    while seen < messages:
        batch = consumer.poll(timeout_ms=1000, max_records=10_000)
        seen += sum(len(v) for v in batch.values())
    elapsed = time.perf_counter() - started
    consumer.close()
    return elapsed


def _open_source(bootstrap: str, topic: str, args: argparse.Namespace) -> Any:
    """A ``KafkaSource`` in a fresh group, joined and rewound to offset 0."""
    from connectors.kafka.source import KafkaSource

    source = KafkaSource(
        bootstrap,
        topic,
        f"bench-src-{uuid.uuid4().hex[:8]}",
        consumer_options={"check_crcs": args.check_crcs},
    )
    source.poll(1, 5.0)  # join the group before the clock starts
    source.seek({key: 0 for key in source.assignment()})
    return source


def through_source(
    bootstrap: str, topic: str, messages: int, args: argparse.Namespace, *, mode: str
) -> dict[str, Any]:
    """Seconds for ``KafkaSource`` + ``decode_records`` (``decode``), + batch assembly
    (``pipeline``). Records are gathered one micro-batch at a time with the trainer's own
    ``gather``."""
    from pipeline.events import decode_records
    from pipeline.sources.base import gather
    from pipeline.state.store import SequenceStore
    from pipeline.state.vocab import ItemVocabulary
    from pipeline.stream.batching import BatchBuilder

    source = _open_source(bootstrap, topic, args)
    store = SequenceStore(max_len=args.max_len, tolerance_s=3600)
    builder = BatchBuilder(store, ItemVocabulary(capacity=2_000_000), args.max_len // 2)
    size = args.batch_events
    per_record: float | None = None
    started = time.perf_counter()
    seen = events = batches = 0
    while seen < messages:
        records = gather(source, size, per_record, None, 1.0)
        seen += len(records)
        if not records:
            continue
        decoded = decode_records(records)
        n_events = len(decoded.events) + len(decoded.rejects)
        per_record = max(1.0, n_events / len(records))
        events += n_events
        if mode == "decode":
            continue
        for lo in range(0, len(decoded.events), size):
            builder.commit(builder.build(decoded.events.take(slice(lo, lo + size))))
            batches += 1
    elapsed = time.perf_counter() - started
    source.close()
    return {"seconds": elapsed, "events_decoded": events, "batches": batches}


def source_only(bootstrap: str, topic: str, messages: int, args: argparse.Namespace) -> float:
    """Seconds for ``KafkaSource.poll`` alone to hand out ``messages`` records."""
    source = _open_source(bootstrap, topic, args)
    started = time.perf_counter()
    seen = 0
    while seen < messages:
        seen += len(source.poll(_POLL_MAX_RECORDS, 1.0))
    elapsed = time.perf_counter() - started
    source.close()
    return elapsed


def run_codec(bootstrap: str, codec: str, events: Any, args: argparse.Namespace) -> dict[str, Any]:
    topic = f"bench-{codec}-{uuid.uuid4().hex[:8]}"
    stats = produce(bootstrap, topic, events, codec, args)
    n, messages = stats.events, stats.messages
    out: dict[str, Any] = {
        "events": n,
        "messages": messages,
        "produce_events_per_s": round(stats.events_per_s),
    }
    reads: dict[str, Callable[[], dict[str, Any]]] = {
        "bare": lambda: {"seconds": bare(bootstrap, topic, messages, args.check_crcs)},
        "source": lambda: {"seconds": source_only(bootstrap, topic, messages, args)},
        "decode": lambda: through_source(bootstrap, topic, messages, args, mode="decode"),
        "pipeline": lambda: through_source(bootstrap, topic, messages, args, mode="pipeline"),
    }
    best: dict[str, dict[str, Any]] = {}
    for _ in range(args.repeat):
        for mode, read in reads.items():
            gc.collect()
            run = read()
            assert run.get("events_decoded", n) == n, f"{mode} saw {run} of {n} events"
            if mode not in best or run["seconds"] < best[mode]["seconds"]:
                best[mode] = run
    bare_s = best["bare"]["seconds"]
    for mode, run in best.items():
        out[f"{mode}_events_per_s"] = round(n / run["seconds"])
        if mode != "bare":
            out[f"{mode}_overhead"] = round(run["seconds"] / bare_s, 3)
    out["jagged_batches"] = best["pipeline"]["batches"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap-servers", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    parser.add_argument("--events", type=int, default=1_000_000, help="Arrow-batched events")
    parser.add_argument("--json-events", type=int, default=100_000, help="JSON events")
    parser.add_argument("--events-per-message", type=int, default=10_000, help="Arrow batch size")
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--batch-events", type=int, default=8192, help="events per jagged batch")
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3, help="best of N reads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-check-crcs",
        dest="check_crcs",
        action="store_false",
        help="skip kafka-python's record CRC check (pure Python unless 'crc32c' is installed)",
    )
    parser.add_argument(
        "--default-gc",
        action="store_true",
        help="CPython's default GC thresholds instead of genrec train's (pipeline/runtime/gcpolicy.py)",
    )
    args = parser.parse_args(argv)

    import pyarrow as pa
    import torch

    torch.set_num_threads(1)
    pa.set_cpu_count(1)
    from pipeline.lake.synthetic import SyntheticConfig, generate_events

    users = max(1, args.events // 60)
    log = generate_events(
        SyntheticConfig(num_users=users, num_items=max(1000, users // 2), seed=args.seed)
    ).sorted_by_time()
    arrow_events = log.take(slice(0, args.events))
    json_events = log.take(slice(0, args.json_events))

    from pipeline.runtime.gcpolicy import streaming_gc

    broker = None
    bootstrap = args.bootstrap_servers
    if not bootstrap:
        from connectors.kafka.broker import LocalKafkaBroker

        broker = LocalKafkaBroker(tempfile.mkdtemp(prefix="bench-kafka-"), heap="1g")
        bootstrap = broker.start(timeout_s=180)
    # The GC settings of `genrec train`'s loop (pipeline/runtime/gcpolicy.py) unless --default-gc;
    # either way the bare loop runs in the same process under the same settings.
    policy = contextlib.nullcontext() if args.default_gc else streaming_gc()
    try:
        with policy:
            result = {
                "bootstrap_servers": bootstrap,
                "batch_events": args.batch_events,
                "partitions": args.partitions,
                "check_crcs": args.check_crcs,
                "gc_threshold": list(gc.get_threshold()),
                "arrow": {
                    "events_per_message": args.events_per_message,
                    **run_codec(bootstrap, "arrow", arrow_events, args),
                },
                "json": run_codec(bootstrap, "json", json_events, args),
            }
    finally:
        if broker is not None:
            broker.stop()
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
