"""Online learning under an abrupt preference drift; prints one JSON object.

The synthetic stream redraws every user's preferences at ``--drift-at`` (a fraction of the
time span). Two models see the same post-drift events:

- **online**: the trainer keeps testing then training on every event;
- **frozen**: a copy of the online model taken at the drift point (restored from the
  checkpoint written there), which keeps scoring every event (test only: ``train.learn =
  false``; its store and vocabulary keep following the stream, like a deployed model whose
  weights are never refreshed).

Reported (progressive NDCG@K / HR@K over blocks of ``--window`` targets): the online level just
before the drift, the online and frozen levels in the first block after it (the dip) and in
the last block of the stream (recovered). Acceptance: online recovers to >= 90% of its
pre-drift level while the frozen model stays clearly lower.

Example::

    python3 bench/drift.py --users 500 --items 1000 --events-per-user 100
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipeline.lake.synthetic import SyntheticConfig
from pipeline.sources.synthetic import SyntheticSource
from pipeline.stream.checkpoint import CheckpointStore
from pipeline.stream.config import deep_merge, dotted_overrides, load_config
from pipeline.stream.deadletter import MemoryDeadLetterSink
from pipeline.stream.trainer import OnlineTrainer


def block_metrics(ranks: np.ndarray, k: int) -> dict[str, float]:
    if ranks.size == 0:
        return {f"ndcg@{k}": float("nan"), f"hr@{k}": float("nan"), "targets": 0}
    hit = ranks <= k
    ndcg = np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0)
    return {
        f"ndcg@{k}": float(ndcg.mean()),
        f"hr@{k}": float(hit.mean()),
        "targets": int(ranks.size),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--events-per-user", type=int, default=100)
    parser.add_argument("--drift-at", type=float, default=0.5)
    parser.add_argument("--window", type=int, default=3000, help="targets per reported block")
    parser.add_argument("--batch-events", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="trainer setting over the bench's (repeatable), e.g. train.per_position_negatives=false",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    synthetic = SyntheticConfig(
        num_users=args.users,
        num_items=args.items,
        events_per_user=args.events_per_user,
        drift_at=args.drift_at,
        seed=args.seed,
    )
    drift_time = synthetic.drift_time
    assert drift_time is not None
    with tempfile.TemporaryDirectory(prefix="genrec-drift-") as workdir:
        result = run(args, synthetic, drift_time, workdir)
    print(json.dumps(result, indent=2))
    return 0


def run(
    args: argparse.Namespace, synthetic: SyntheticConfig, drift_time: int, workdir: str
) -> dict[str, Any]:
    """Feed the stream to the online model and, from the drift on, to a frozen copy."""
    k = 10
    overrides: dict[str, Any] = {
        "run_dir": workdir,
        "vocab": {"capacity": args.items + 1},
        "store": {"max_len": args.max_len},
        "model": {"embedding_dim": args.dim},
        "train": {"lr": args.lr, "batch_events": args.batch_events, "seed": args.seed},
        "eval": {"k": k, "window": args.window},
        "checkpoint": {"dir": f"{workdir}/checkpoints"},
        "observability": {"prometheus_port": 0},
    }
    overrides = deep_merge(overrides, dotted_overrides(args.set))
    online_cfg = load_config(overrides=overrides, environ={})
    frozen_cfg = load_config(
        overrides={**overrides, "train": {**overrides["train"], "learn": False}}, environ={}
    )
    source = SyntheticSource(synthetic, events_per_record=args.batch_events)
    checkpoints = CheckpointStore(online_cfg.checkpoint.dir)
    online = OnlineTrainer(online_cfg, source, MemoryDeadLetterSink(), checkpoints=checkpoints)
    frozen: OnlineTrainer | None = None
    ranks: dict[str, list[np.ndarray]] = {"online_pre": [], "online_post": [], "frozen_post": []}
    started = time.perf_counter()
    total_records = source.num_records
    with tqdm(total=total_records, desc="drift bench", unit="rec", file=sys.stderr) as bar:
        while not source.exhausted():
            records = source.poll(1, 0.0)
            first_ts = records and int(
                source.event_log.timestamp[records[0].offset * args.batch_events]
            )
            if frozen is None and first_ts and first_ts >= drift_time:
                # Freeze a copy at the drift point through a real checkpoint round trip.
                online.checkpoint()
                frozen = OnlineTrainer(
                    frozen_cfg,
                    SyntheticSource(synthetic, events_per_record=args.batch_events),
                    MemoryDeadLetterSink(),
                    checkpoints=checkpoints,
                )
                frozen.restore()
            for step in online.process_records(records):
                after = step.target_times >= drift_time
                ranks["online_pre"].append(step.ranks[~after])
                ranks["online_post"].append(step.ranks[after])
            if frozen is not None:
                for step in frozen.process_records(records):
                    ranks["frozen_post"].append(step.ranks[step.target_times >= drift_time])
            bar.update(len(records))
    elapsed = time.perf_counter() - started
    pre = np.concatenate(ranks["online_pre"])
    post = np.concatenate(ranks["online_post"])
    frozen_post = np.concatenate(ranks["frozen_post"])
    w = args.window
    result = {
        "config": vars(args),
        "events": int(online.state.counters["events_trained"]),
        "targets_pre_drift": int(pre.size),
        "targets_post_drift": int(post.size),
        "pre_drift_online": block_metrics(pre[-w:], k),
        "first_block_after_drift": {
            "online": block_metrics(post[:w], k),
            "frozen": block_metrics(frozen_post[:w], k),
        },
        "recovered_last_block": {
            "online": block_metrics(post[-w:], k),
            "frozen": block_metrics(frozen_post[-w:], k),
        },
        "elapsed_s": round(elapsed, 1),
    }
    pre_ndcg = result["pre_drift_online"][f"ndcg@{k}"]
    online_end = result["recovered_last_block"]["online"][f"ndcg@{k}"]
    frozen_end = result["recovered_last_block"]["frozen"][f"ndcg@{k}"]
    result["online_recovery_ratio"] = online_end / pre_ndcg
    result["frozen_ratio"] = frozen_end / pre_ndcg
    result["accepted"] = bool(online_end >= 0.9 * pre_ndcg and frozen_end < 0.75 * online_end)
    return result


if __name__ == "__main__":
    sys.exit(main())
