"""A trainer group against one trainer: throughput, communication and quality; prints JSON.

One synthetic stream (with a preference drift) is written to a topic of ``--partitions``
partitions on a real broker (a temporary local one unless ``--bootstrap-servers`` or
``KAFKA_BOOTSTRAP_SERVERS`` names a cluster). Then, for every seed, ``genrec train`` reads
the whole topic with the trainer's default settings (learning on, no publishing):

* **1 rank**: one process;
* **N ranks**: ``genrec train --workers N`` (torchrun, gloo);

each rank with ``--threads-per-rank`` torch threads (default 1: on a 2-core machine, 2 ranks
of 1 thread use the cores a 2-thread process would, and torch's threads, which wait for each
other at every operation, slow down badly when another process takes a core).

Reported per run: events/s of the stream (events / the slowest rank's time from its first
record to its end: process start, imports, restore and Kafka's group join are not in it),
progressive NDCG@10 over every target of
the stream (all ranks' targets for a group), and for a group the communication time per
step (flags, the vocabulary's item exchange, the gradient sum and the checkpoint barrier,
per rank and group step; it includes waiting for the slower rank). Then mean ± std over the
seeds, whether the group's mean NDCG lies within the single trainer's seed range, and the
difference of the means in the single trainer's seed stds (the issue's equivalence check).

Example (the figures in docs/benchmarks.md)::

    python3 bench/trainer_group.py --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from connectors.kafka.admin import TopicAdmin
from connectors.kafka.producer import EventReplayer
from pipeline.lake.synthetic import SyntheticConfig, generate_events

KEY = "ndcg@10"


def produce(bootstrap: str, topic: str, args: argparse.Namespace) -> int:
    events = generate_events(
        SyntheticConfig(
            num_users=args.users,
            num_items=args.items,
            events_per_user=args.events_per_user,
            drift_at=0.5,
            seed=args.data_seed,
        )
    )
    with TopicAdmin(bootstrap) as admin:
        admin.create_topic(topic, partitions=args.partitions)
    with EventReplayer(bootstrap, topic, codec="arrow", batch_events=2048) as replayer:
        return replayer.replay(events, progress=False).events


def train(
    bootstrap: str, topic: str, total: int, ranks: int, seed: int, threads: int, root: Path
) -> dict[str, Any]:
    """One ``genrec train`` over the whole topic; its summary figures."""
    run = root / f"ranks{ranks}-seed{seed}"
    cmd = [
        sys.executable, "-m", "pipeline.cli", "--log-level", "WARNING", "train",
        "--source", "kafka", "--topic", topic, "--bootstrap-servers", bootstrap,
        "--set", f"source.kafka.group_id=bench-{run.name}-{time.time_ns()}",
        "--max-events", str(total), "--seed", str(seed), "--no-publish", "--no-resume",
        "--threads", str(threads), "--metrics-port", "0",
        "--checkpoint-dir", str(run / "ckpt"), "--run-dir", str(run / "run"),
    ]  # fmt: skip
    if ranks > 1:
        cmd += ["--workers", str(ranks)]
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=False)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    if ranks == 1:
        summary = json.loads((run / "run" / "summary.json").read_text())
        return {
            "ranks": 1,
            "seed": seed,
            "events": summary["events_seen"],
            "events_per_s": summary["events_seen"] / summary["stream_s"],
            "targets": summary["targets"],
            "steps": summary["steps"],
            KEY: summary["progressive_cumulative"][KEY],
            "wall_s": wall,
        }
    parts = [
        json.loads((run / "run" / f"rank-{r}" / "summary.json").read_text()) for r in range(ranks)
    ]
    group = parts[0]["group"]
    return {
        "ranks": ranks,
        "seed": seed,
        "events": group["events_seen"],
        "events_per_s": group["events_seen"] / max(p["stream_s"] for p in parts),
        "targets": group["targets"],
        KEY: group[f"progressive_cumulative_{KEY}"],
        "communicate_s_per_step": statistics.mean(
            sum(p["group"]["communicate_s"].values()) / max(1, p["group"]["group_steps"])
            for p in parts
        ),
        "communicate_s_per_step_by_part": {
            part: statistics.mean(
                p["group"]["communicate_s"][part] / max(1, p["group"]["group_steps"]) for p in parts
            )
            for part in parts[0]["group"]["communicate_s"]
        },
        "steps": group["group_steps"],
        "wall_s": wall,
    }


def spread(runs: list[dict[str, Any]], name: str) -> dict[str, float]:
    values = [r[name] for r in runs]
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap-servers", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--events-per-user", type=int, default=40)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--ranks", type=int, default=2, help="ranks of the group")
    parser.add_argument("--threads-per-rank", type=int, default=1)
    parser.add_argument("--seeds", default="0,1,2", help="training seeds")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    broker = None
    bootstrap = args.bootstrap_servers
    if not bootstrap:
        from connectors.kafka.broker import LocalKafkaBroker

        broker = LocalKafkaBroker(tempfile.mkdtemp(prefix="bench-kafka-"), heap="1g")
        bootstrap = broker.start(timeout_s=180)
    try:
        topic = f"bench-distributed-{time.time_ns()}"
        total = produce(bootstrap, topic, args)
        with tempfile.TemporaryDirectory(prefix="bench-distributed-") as tmp:
            runs = {1: [], args.ranks: []}
            for seed in seeds:  # interleaved: machine load drifts alike for both
                for ranks in runs:
                    runs[ranks].append(
                        train(
                            bootstrap, topic, total, ranks, seed, args.threads_per_rank, Path(tmp)
                        )
                    )
                    print(json.dumps(runs[ranks][-1]), file=sys.stderr)
    finally:
        if broker is not None:
            broker.stop()
    one, many = runs[1], runs[args.ranks]
    quality_1, quality_n = spread(one, KEY), spread(many, KEY)
    out = {
        "stream": {
            "events": total,
            "users": args.users,
            "items": args.items,
            "partitions": args.partitions,
            "codec": "arrow",
        },
        "settings": "genrec train defaults (learning on), --no-publish",
        "cores": os.cpu_count(),
        "threads_per_rank": args.threads_per_rank,
        "seeds": seeds,
        "runs": one + many,
        "ranks_1": {"events_per_s": spread(one, "events_per_s"), KEY: quality_1},
        f"ranks_{args.ranks}": {
            "events_per_s": spread(many, "events_per_s"),
            KEY: quality_n,
            "communicate_s_per_step": spread(many, "communicate_s_per_step"),
        },
        "speedup": statistics.mean(r["events_per_s"] for r in many)
        / statistics.mean(r["events_per_s"] for r in one),
        f"{KEY}_group_mean_within_1_rank_seed_range": quality_1["min"]
        <= quality_n["mean"]
        <= quality_1["max"],
        # the difference of the means in the single trainer's seed std (|z| <= 2: within
        # its seed spread)
        f"{KEY}_group_mean_minus_1_rank_mean_in_1_rank_stds": (
            (quality_n["mean"] - quality_1["mean"]) / quality_1["std"] if quality_1["std"] else None
        ),
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
