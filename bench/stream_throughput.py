"""Streaming throughput on ONE core, stage by stage; prints one JSON object.

Stages (each a function ``stage_<name>(args, data) -> dict`` taking prepared payloads):

- ``arrow_decode``: decode + validate Arrow IPC payloads of ``--events-per-payload`` events
  (int ids, the synthetic generator's keys);
- ``arrow_decode_str_ids``: the same with string ids (exercises key canonicalisation);
- ``json_decode``: decode + validate one JSON event per payload (the codec's fast path);
- ``json_pydantic``: the same events through ``Event.model_validate_json`` (the alternative
  the JSON codec does not use; kept to show why);
- ``store``: the sequence store alone (late/duplicate checks + commit) per ``--batch-events``;
- ``arrow_to_batches``: decode + validate + store + item vocabulary + jagged batch assembly
  (everything before the model; micro-batches of ``--batch-events`` cut from each payload);
- ``full_training``: the whole online step (decode, store, batch, test, train) on the first
  ``--train-events`` events with the trainer's default configuration (``--set`` changes it;
  ``--batch-events`` and ``--max-len`` are for the other stages); ``--ranking-tasks`` turns
  the ranking heads on, ``--actions`` streams click/view impressions with ratings instead.

Example::

    python3 bench/stream_throughput.py --events 500000 --events-per-payload 10000
    python3 bench/stream_throughput.py --actions --stages full_training \
        --ranking-tasks click:action:click
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


def single_core() -> None:
    """Pin every thread pool we use to one thread, so numbers mean 'per core'."""
    import pyarrow as pa
    import torch

    torch.set_num_threads(1)
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)


@dataclass
class Data:
    """Encoded payloads shared by the stages (built once, outside the timings)."""

    arrow: list[bytes]
    arrow_str_ids: list[bytes]
    json: list[bytes]
    events: int
    json_events: int


def prepare(args: argparse.Namespace) -> Data:
    from pipeline.events import EventBatch, encode_arrow, encode_json_rows
    from pipeline.lake.synthetic import SyntheticConfig, generate_events
    from pipeline.lake.synthetic_actions import ActionStreamConfig, generate_action_events

    users = max(1, args.events // 60)
    items = max(1000, users // 2)
    if args.actions:  # impressions with click/view actions and ratings: data for ranking
        log = generate_action_events(ActionStreamConfig(users, items, seed=args.seed))
    else:
        log = generate_events(SyntheticConfig(num_users=users, num_items=items, seed=args.seed))
    batch = EventBatch.from_event_log(log)
    batch = batch.take(slice(0, args.events))
    step = args.events_per_payload
    chunks = [batch.take(slice(i, i + step)) for i in range(0, len(batch), step)]
    as_str = [
        EventBatch(
            user_id=np.array([f"user-{u}" for u in c.user_id.tolist()], dtype=object),
            item_id=np.array([f"item-{i}" for i in c.item_id.tolist()], dtype=object),
            timestamp=c.timestamp,
            action=c.action,
            value=c.value,
        )
        for c in chunks
    ]
    json_events = min(args.json_events, len(batch))
    return Data(
        arrow=[encode_arrow(c) for c in chunks],
        arrow_str_ids=[encode_arrow(c) for c in as_str],
        json=encode_json_rows(batch.take(slice(0, json_events))),
        events=len(batch),
        json_events=json_events,
    )


def timed(run: Callable[[], int], repeat: int) -> dict[str, Any]:
    """Best-of-``repeat`` rate of ``run`` (which returns the number of events it handled),
    in wall seconds and in this process's CPU seconds (steadier on a shared machine: time
    the process waits for a core is not counted)."""
    best = best_cpu = float("inf")
    events = 0
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        events = run()
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - start_cpu)
    return {
        "events": events,
        "seconds": round(best, 4),
        "events_per_s": round(events / best),
        "cpu_seconds": round(best_cpu, 4),
        "events_per_cpu_s": round(events / best_cpu),
    }


def records(payloads: list[bytes], codec: str) -> Any:
    """The payloads as a source's poll returns them."""
    from pipeline.events.records import Records

    return Records.run(payloads, codec, "bench", 0)


def stage_arrow_decode(args: argparse.Namespace, data: Data) -> dict[str, Any]:
    from pipeline.events import decode

    recs = records(data.arrow, "arrow")

    def run() -> int:
        return sum(len(decode(r).events) for r in recs)

    out = timed(run, args.repeat)
    out["events_per_payload"] = args.events_per_payload
    out["payload_bytes_per_event"] = round(sum(map(len, data.arrow)) / data.events, 1)
    return out


def stage_arrow_decode_str_ids(args: argparse.Namespace, data: Data) -> dict[str, Any]:
    from pipeline.events import decode

    recs = records(data.arrow_str_ids, "arrow")
    out = timed(lambda: sum(len(decode(r).events) for r in recs), args.repeat)
    out["events_per_payload"] = args.events_per_payload
    return out


def stage_json_decode(args: argparse.Namespace, data: Data) -> dict[str, Any]:
    from pipeline.events import decode_records

    recs = records(data.json, "json")
    return timed(lambda: len(decode_records(recs).events), args.repeat)


def stage_json_pydantic(args: argparse.Namespace, data: Data) -> dict[str, Any]:
    from pipeline.events import Event

    def run() -> int:
        return len([Event.model_validate_json(p) for p in data.json])

    return timed(run, args.repeat)


def decoded_batches(data: Data) -> list:
    """The Arrow payloads decoded once (outside the timings of the later stages)."""
    from pipeline.events import decode

    return [decode(r).events for r in records(data.arrow, "arrow")]


def stage_store(args: argparse.Namespace, data: Data) -> dict[str, Any]:
    """Sequence store alone: plan (late/duplicate checks) + commit, per micro-batch."""
    from pipeline.events import EventBatch
    from pipeline.state.store import SequenceStore

    events = EventBatch.concat(decoded_batches(data))
    size = args.batch_events
    refs = np.ones(len(events), dtype=np.int64)

    def run() -> int:
        store = SequenceStore(max_len=args.max_len, tolerance_s=3600)
        for lo in range(0, len(events), size):
            chunk = events.take(slice(lo, lo + size))
            plan = store.plan(chunk.user_id, chunk.timestamp, chunk.event_id)
            store.commit(plan, refs[: len(chunk)], chunk.action, chunk.value)
        return len(events)

    out = timed(run, args.repeat)
    out.update(batch_events=size, max_len=args.max_len)
    return out


def stage_arrow_to_batches(args: argparse.Namespace, data: Data) -> dict[str, Any]:
    """Arrow payloads -> decode + validate -> store + vocabulary -> jagged batches (no model)."""
    from pipeline.events import decode
    from pipeline.state.store import SequenceStore
    from pipeline.state.vocab import ItemVocabulary
    from pipeline.stream.batching import BatchBuilder
    from pipeline.stream.config import VocabSection

    recs = records(data.arrow, "arrow")
    size = args.batch_events

    def run() -> int:
        store = SequenceStore(max_len=args.max_len, tolerance_s=3600)
        capacity = VocabSection().capacity  # the default table, not one sized to the data
        builder = BatchBuilder(store, ItemVocabulary(capacity=capacity), args.max_len // 2)
        seen = 0
        for r in recs:
            events = decode(r).events
            seen += len(events)
            for lo in range(0, len(events), size):
                builder.commit(builder.build(events.take(slice(lo, lo + size))))
        return seen

    out = timed(run, args.repeat)
    out.update(batch_events=size, max_len=args.max_len, events_per_payload=args.events_per_payload)
    return out


def stage_full_training(args: argparse.Namespace, data: Data) -> dict[str, Any]:
    """The whole online step on Arrow records: decode, store, batch, test, train (CPU)."""
    import tempfile

    from pipeline.events import EventBatch, encode_arrow
    from pipeline.stream.config import deep_merge, dotted_overrides, load_config
    from pipeline.stream.deadletter import MemoryDeadLetterSink
    from pipeline.stream.trainer import OnlineTrainer

    events = EventBatch.concat(decoded_batches(data)).take(slice(0, args.train_events))
    # The trainer's default configuration, nothing fitted to this data (the item table at
    # its default capacity, not the stream's ~1,000 items); change it with --set only.
    overrides = {
        "run_dir": tempfile.gettempdir(),  # unused: process_records writes no files
        "observability": {"prometheus_port": 0},
    }
    if args.ranking_tasks:
        overrides["model"] = {"ranking_tasks": args.ranking_tasks}
    cfg = load_config(overrides=deep_merge(overrides, dotted_overrides(args.set)), environ={})
    step = cfg.train.batch_events
    payloads = [encode_arrow(events.take(slice(i, i + step))) for i in range(0, len(events), step)]
    recs = records(payloads, "arrow")

    def run() -> int:
        trainer = OnlineTrainer(cfg, source=None, dead_letters=MemoryDeadLetterSink())
        for r in recs:
            trainer.process_records([r])
        return int(trainer.state.counters["events_trained"])

    out = timed(run, 1)
    out.update(
        batch_events=step,
        max_len=cfg.store.max_len,
        capacity=cfg.vocab.capacity,
        model="hstu d=64 L=2 (defaults)",
        ranking_tasks=[task["name"] for task in cfg.model.ranking_tasks],
    )
    return out


STAGES: dict[str, Callable[[argparse.Namespace, Data], dict[str, Any]]] = {
    "arrow_decode": stage_arrow_decode,
    "arrow_decode_str_ids": stage_arrow_decode_str_ids,
    "json_decode": stage_json_decode,
    "json_pydantic": stage_json_pydantic,
    "store": stage_store,
    "arrow_to_batches": stage_arrow_to_batches,
    "full_training": stage_full_training,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000, help="events for Arrow stages")
    parser.add_argument("--events-per-payload", type=int, default=10_000)
    parser.add_argument("--json-events", type=int, default=100_000, help="events for JSON stages")
    parser.add_argument("--repeat", type=int, default=3, help="timings per stage; best is kept")
    parser.add_argument("--stages", nargs="+", choices=list(STAGES), default=list(STAGES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-events", type=int, default=4096, help="store/training batch")
    parser.add_argument("--max-len", type=int, default=50, help="history length N")
    parser.add_argument("--train-events", type=int, default=20_000, help="full_training events")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="full_training: trainer setting over the bench's (repeatable)",
    )
    parser.add_argument(
        "--actions",
        action="store_true",
        help="the synthetic action stream (clicks/views with ratings) instead of item sequences",
    )
    parser.add_argument(
        "--ranking-tasks",
        metavar="SPEC",
        help="full_training: ranking heads on, e.g. 'click:action:click' (';' between tasks)",
    )
    args = parser.parse_args(argv)

    single_core()
    print(f"preparing {args.events} events ...", file=sys.stderr, flush=True)
    data = prepare(args)
    results: dict[str, Any] = {"config": vars(args) | {"threads": 1}}
    for name in args.stages:
        print(f"stage {name} ...", file=sys.stderr, flush=True)
        results[name] = STAGES[name](args, data)
        print(f"  {results[name]['events_per_s']:,} events/s", file=sys.stderr, flush=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
