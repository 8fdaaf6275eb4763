"""Streaming throughput on ONE core, stage by stage; prints one JSON object.

Stages (each a function ``stage_<name>(args, data) -> dict`` taking prepared payloads):

- ``arrow_decode``: decode + validate Arrow IPC payloads of ``--events-per-payload`` events
  (int ids, the synthetic generator's keys);
- ``arrow_decode_str_ids``: the same with string ids (exercises key canonicalisation);
- ``json_decode``: decode + validate one JSON event per payload (the codec's fast path);
- ``json_pydantic``: the same events through ``Event.model_validate_json`` (the alternative
  the JSON codec does not use; kept to show why).

Example::

    python3 bench/stream_throughput.py --events 500000 --events-per-payload 10000
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
    from pipeline.synthetic import SyntheticConfig, generate_events

    users = max(1, args.events // 60)
    cfg = SyntheticConfig(num_users=users, num_items=max(1000, users // 2), seed=args.seed)
    batch = EventBatch.from_event_log(generate_events(cfg))
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
    """Best-of-``repeat`` rate of ``run`` (which returns the number of events it handled)."""
    best = float("inf")
    events = 0
    for _ in range(repeat):
        start = time.perf_counter()
        events = run()
        best = min(best, time.perf_counter() - start)
    return {"events": events, "seconds": round(best, 4), "events_per_s": round(events / best)}


def records(payloads: list[bytes], codec: str) -> list:
    from pipeline.sources.base import SourceRecord

    return [SourceRecord(p, codec, "bench", i) for i, p in enumerate(payloads)]


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


STAGES: dict[str, Callable[[argparse.Namespace, Data], dict[str, Any]]] = {
    "arrow_decode": stage_arrow_decode,
    "arrow_decode_str_ids": stage_arrow_decode_str_ids,
    "json_decode": stage_json_decode,
    "json_pydantic": stage_json_pydantic,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000, help="events for Arrow stages")
    parser.add_argument("--events-per-payload", type=int, default=10_000)
    parser.add_argument("--json-events", type=int, default=100_000, help="events for JSON stages")
    parser.add_argument("--repeat", type=int, default=3, help="timings per stage; best is kept")
    parser.add_argument("--stages", nargs="+", choices=list(STAGES), default=list(STAGES))
    parser.add_argument("--seed", type=int, default=0)
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
