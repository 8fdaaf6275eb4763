"""Offline quality: HSTU vs SASRec vs most-popular, leave-one-out, full ranking, several seeds.

Every neural model gets the same budget (epochs, embedding dim, layers, heads, max_len,
lr, batch size, negatives); each picks its best epoch on validation NDCG@10 and reports
test metrics. Prints one JSON object: the settings, every run, and mean/std per model.

    python3 bench/offline_quality.py --data ../shared/data/ml-latest-small/ratings.csv

The defaults are a CPU budget (about 10-15 minutes on 2 busy cores for ml-latest-small):
max_len 100 instead of the paper's 200, 30 epochs, and dropout 0.5, which suits a data set
of 610 users better than the paper's 0.2 for ML-1M.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from typing import Any

import torch

from pipeline.datasets import leave_one_out
from pipeline.offline import TrainConfig, load_sequences, train_offline

METRICS = ("hr@10", "hr@50", "hr@200", "ndcg@10", "ndcg@50", "ndcg@200", "mrr")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", help="event log (default: the synthetic generator)")
    p.add_argument("--format", default="auto")
    p.add_argument("--models", default="hstu,sasrec,popular")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--num-negatives", type=int, default=128)
    p.add_argument("--embedding-dim", type=int, default=64)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--num-heads", type=int, default=1)
    p.add_argument("--max-len", type=int, default=100)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--progress", action="store_true", help="show per-epoch progress bars")
    return p.parse_args(argv)


def mean_std(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    ds, source = load_sequences(args.data, args.format)
    splits = leave_one_out(ds)
    model_config = {
        "embedding_dim": args.embedding_dim,
        "num_layers": args.num_layers,
        "num_heads": args.num_heads,
        "max_len": args.max_len,
        "dropout": args.dropout,
        "input_dropout": args.dropout,
    }
    runs: list[dict[str, Any]] = []
    models = args.models.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    total = len(models) * len(seeds)
    for kind in models:
        for seed in seeds:
            cfg = TrainConfig(
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                weight_decay=args.weight_decay,
                num_negatives=args.num_negatives,
                seed=seed,
                progress=args.progress,
            )
            cpu0, wall0 = time.process_time(), time.perf_counter()
            result = train_offline(kind, {} if kind == "popular" else model_config, splits, cfg)
            run = {
                "model": kind,
                "seed": seed,
                "best_epoch": result.best_epoch,
                "cpu_seconds": round(time.process_time() - cpu0, 2),
                "wall_seconds": round(time.perf_counter() - wall0, 2),
                **{m: result.test[m] for m in METRICS},
                "valid_ndcg@10_by_epoch": [round(h["ndcg@10"], 4) for h in result.valid_history],
            }
            runs.append(run)
            print(
                f"[{len(runs)}/{total}] {kind} seed {seed}: ndcg@10={run['ndcg@10']:.4f} "
                f"hr@10={run['hr@10']:.4f} epoch {run['best_epoch']} "
                f"({run['cpu_seconds']:.0f} cpu s, {run['wall_seconds']:.0f} wall s)",
                file=sys.stderr,
                flush=True,
            )
    summary = {
        kind: {
            key: mean_std([r[key] for r in runs if r["model"] == kind])
            for key in (*METRICS, "cpu_seconds", "wall_seconds")
        }
        for kind in models
    }
    out = {
        "benchmark": "offline_quality",
        "data": source,
        "users": ds.num_users,
        "items": ds.num_items,
        "events": ds.num_events,
        "settings": {**vars(args), "torch_threads": torch.get_num_threads()},
        "runs": runs,
        "summary": summary,
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
