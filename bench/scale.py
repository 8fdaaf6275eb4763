"""Cost per event at production-like sizes: item capacity x distinct users; prints one JSON.

Every point runs the trainer's **default configuration** with only ``vocab.capacity`` set
to the point's C (checkpoints go to a temporary directory, the registry is off), in a fresh
process so that its peak RSS is its own. The stream is synthetic: users uniform over U
distinct keys, items drawn from a power law (Zipf, exponent ``--zipf``) over C - 1 keys so
that the table fills (or over ``--items`` keys at every point: the same stream for every
capacity), event times increasing, Arrow records of 4,096 events. Reported per
point: events/s over ``--events`` timed events (after ``--warmup`` untimed ones), the step
time split (store + batch assembly, evaluation, forward + backward, optimizer; seconds
over the timed events), the bytes and seconds of the run's first checkpoint (full) and of
the next one after ``--delta-events`` more events (a delta: the rows changed since), and peak
RSS.

A store holds at most ``store.max_users`` users (default 1,000,000). To time a full store
without streaming a million users through the model first, ``--prefill-users N`` commits
one event for each of N users straight into the store (no training) before the warm-up.

Example (the issue's sweep; the 10M-row points need ~8 GB of memory each)::

    python3 bench/scale.py --capacities 30000,1000000,10000000 --users 10000,1000000,5000000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RECORD_EVENTS = 4096


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--capacities", default="30000,1000000,10000000", help="vocab.capacity values")
    p.add_argument("--users", default="10000,1000000,5000000", help="distinct users values")
    p.add_argument("--events", type=int, default=20_000, help="timed events per point")
    p.add_argument("--warmup", type=int, default=4096, help="untimed events first")
    p.add_argument("--prefill-users", type=int, default=0, help="users put in the store first")
    p.add_argument(
        "--delta-events", type=int, default=10_000, help="events between the full and the delta"
    )
    p.add_argument("--zipf", type=float, default=1.1, help="item popularity exponent")
    p.add_argument(
        "--items",
        type=int,
        default=0,
        help="distinct item keys of the stream (0: C - 1 at each point, so that the table "
        "fills; a fixed N gives every capacity the same stream)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--point", nargs=2, type=int, metavar=("C", "U"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


class Stream:
    """Arrow records of synthetic events: uniform users, power-law items, rising times."""

    def __init__(self, num_items: int, num_users: int, zipf: float, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        weights = 1.0 / np.arange(1, num_items + 1, dtype=np.float64) ** zipf
        self.cdf = np.cumsum(weights) / weights.sum()
        self.num_users = num_users
        self.clock = 1_600_000_000

    def events(self, n: int) -> Any:
        from pipeline.events import EventBatch

        items = np.searchsorted(self.cdf, self.rng.random(n)).astype(np.int64)
        times = self.clock + np.arange(n, dtype=np.int64)
        self.clock += n
        return EventBatch(
            user_id=self.rng.integers(0, self.num_users, n).astype(np.int64),
            item_id=items,
            timestamp=times,
            action=np.zeros(n, np.int64),
            value=np.zeros(n, np.float32),
        )

    def records(self, n: int) -> Any:
        from pipeline.events import encode_arrow
        from pipeline.events.records import Records

        payloads = [encode_arrow(self.events(RECORD_EVENTS)) for _ in range(-(-n // RECORD_EVENTS))]
        return Records.run(payloads, "arrow", "scale", 0)


def run_point(args: argparse.Namespace, capacity: int, users: int) -> dict[str, Any]:
    import torch

    from pipeline.lake.synthetic import SyntheticConfig
    from pipeline.sources.synthetic import SyntheticSource
    from pipeline.stream.checkpoint import CheckpointStore
    from pipeline.stream.config import load_config
    from pipeline.stream.deadletter import MemoryDeadLetterSink
    from pipeline.stream.trainer import OnlineTrainer

    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="genrec-scale-"))
    cfg = load_config(
        overrides={
            "run_dir": str(workdir / "run"),
            "vocab": {"capacity": capacity},
            "checkpoint": {"dir": str(workdir / "checkpoints")},
            "registry": {"enabled": False},
            "observability": {"prometheus_port": 0},
        },
        environ={},
    )
    stream = Stream(args.items or capacity - 1, users, args.zipf, args.seed)
    built = time.perf_counter()
    # records are fed to process_records directly; the source only answers positions()
    idle = SyntheticSource(SyntheticConfig(num_users=1, num_items=40, events_per_user=3))
    trainer = OnlineTrainer(
        cfg, idle, MemoryDeadLetterSink(), checkpoints=CheckpointStore(cfg.checkpoint.dir)
    )
    build_s = time.perf_counter() - built
    if args.prefill_users:
        prefill(trainer, stream, args.prefill_users)
    for record in stream.records(args.warmup):
        trainer.process_records([record])
    trainer.state.step_seconds.clear()
    timed = stream.records(args.events)
    started = time.perf_counter()
    trained_before = trainer.state.counters["events_trained"]
    for record in timed:
        trainer.process_records([record])
    seconds = time.perf_counter() - started
    trained = trainer.state.counters["events_trained"] - trained_before
    step_seconds = dict(trainer.state.step_seconds)  # of the timed events only
    full_bytes, full_s = timed_checkpoint(trainer)  # the first one of a run is full
    for record in stream.records(args.delta_events):
        trainer.process_records([record])
    delta_bytes, delta_s = timed_checkpoint(trainer)  # the rows changed since: a delta
    return {
        "capacity": capacity,
        "distinct_users": users,
        "events": trained,
        "events_per_s": round(trained / seconds),
        "step_seconds": {k: round(v, 3) for k, v in sorted(step_seconds.items())},
        "other_seconds": round(seconds - sum(step_seconds.values()), 3),
        "store_users": trainer.state.store.num_users,
        "users_evicted": trainer.state.store.counters["users_evicted_lru"],
        "vocab_rows_live": len(trainer.state.vocab),
        "build_seconds": round(build_s, 2),
        "checkpoint_bytes": full_bytes,
        "checkpoint_seconds": round(full_s, 2),
        "delta_checkpoint_after_events": args.delta_events,
        "delta_checkpoint_bytes": delta_bytes,
        "delta_checkpoint_seconds": round(delta_s, 2),
        "delta_over_full": round(delta_bytes / full_bytes, 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def timed_checkpoint(trainer: Any) -> tuple[int, float]:
    """(bytes, seconds) of one checkpoint of ``trainer`` as it decides to write it."""
    started = time.perf_counter()
    path = trainer.checkpoint()
    return sum(f.stat().st_size for f in path.iterdir()), time.perf_counter() - started


def prefill(trainer: Any, stream: Stream, num_users: int) -> None:
    """One event per user straight into the store, ``num_users`` users (no training)."""
    store = trainer.state.store
    for lo in range(0, num_users, 100_000):
        n = min(100_000, num_users - lo)
        users = np.arange(lo, lo + n, dtype=np.int64)
        times = np.full(n, stream.clock, dtype=np.int64)
        plan = store.plan(users, times, None)
        store.commit(plan, np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.float32))
    stream.clock += 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.point:
        print(json.dumps(run_point(args, *args.point)))
        return 0
    points = []
    passthrough = list(argv if argv is not None else sys.argv[1:])
    for capacity in (int(c) for c in args.capacities.split(",")):
        for users in (int(u) for u in args.users.split(",")):
            cmd = [sys.executable, __file__, *passthrough, "--point", str(capacity), str(users)]
            print(f"point C={capacity} U={users} ...", file=sys.stderr, flush=True)
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                points.append(
                    {"capacity": capacity, "distinct_users": users, "error": done.stderr[-2000:]}
                )
                print(done.stderr[-2000:], file=sys.stderr)
                continue
            points.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(points[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "scale", "config": vars(args), "points": points}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
