"""Offline ranking quality: HSTU vs SASRec vs the DLRM baseline, per task, several seeds.

Every model and seed trains on the same time-ordered split (``genrec train-offline --task
ranking``: the events before a cutoff train, each user's later events are scored after its
history; docs/quality.md, "Ranking (offline)") with the same budget, and is tested after its
last epoch. Prints a table to stderr (per model and task: AUC, NE, log loss, accuracy as mean
± std over seeds, each seed's value, and which model has the best AUC per seed) and one JSON
object to stdout: settings, every run, the summary.

    python3 bench/ranking_quality.py --data ../shared/data/ml-latest-small/ratings.csv \\
        --ranking-tasks 'like:value>=4' --seeds 0

The defaults are the ``genrec train-offline --task ranking`` ones; without ``--data`` the data
is the synthetic impression stream (pipeline/lake/synthetic_actions.py, its defaults).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.offline_quality import add_encoder_options, encoder_config, mean_std
from pipeline.commands.offline import add_training_options, train_config_from_args
from pipeline.lake.synthetic_actions import ActionStreamConfig
from pipeline.offline.config import load_preset
from pipeline.offline.ranking import train_ranking
from pipeline.offline.splits import time_split
from pipeline.offline.training import load_sequences
from pipeline.runtime.threads import set_torch_threads

METRICS = ("auc", "ne", "log_loss", "accuracy")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", help="event log (default: the synthetic impression stream)")
    p.add_argument("--format", default="auto", help="event log format (default: auto)")
    p.add_argument("--models", default="hstu,sasrec,dlrm", help="comma-separated models")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    add_training_options(p)
    add_encoder_options(
        p, action_inputs=True, max_len_help="N: history + candidates", dim_help="D (DLRM too)"
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: as train-offline)")
    p.add_argument("--progress", action="store_true", help="show per-epoch progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    print(json.dumps(run(args), indent=1))
    return 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every model and seed of ``args`` on one split; the table goes to stderr, the result
    (settings, runs, summary) is returned."""
    set_torch_threads(args.threads)
    preset = load_preset(args.preset)
    args.task = "ranking"
    base = train_config_from_args(args, preset, seed=0, progress=args.progress)
    ds, source = load_sequences(
        args.data, args.format, synthetic=ActionStreamConfig(), min_length=1
    )
    split = time_split(ds, base.test_fraction)
    encoder = encoder_config(args)
    configs = {
        "hstu": {**encoder, "layer_norm": preset.hstu_layer_norm},
        "sasrec": {**encoder, "style": preset.sasrec_style},
        "dlrm": {"dim": args.embedding_dim},
    }
    models = args.models.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    runs: list[dict[str, Any]] = []
    for kind in models:
        for seed in seeds:
            cpu0, wall0 = time.process_time(), time.perf_counter()
            result = train_ranking(
                kind, configs.get(kind, {}), split, replace(base, seed=seed), args.max_len
            )
            runs.append(
                {
                    "model": kind,
                    "seed": seed,
                    "epoch": result.epoch,
                    "cpu_seconds": round(time.process_time() - cpu0, 2),
                    "wall_seconds": round(time.perf_counter() - wall0, 2),
                    "test": result.test,
                }
            )
            print(
                f"[{len(runs)}/{len(models) * len(seeds)}] {kind} seed {seed}: "
                + " ".join(f"{k}={v:.4f}" for k, v in result.test.items() if k.endswith("/auc"))
                + f" ({runs[-1]['wall_seconds']:.0f} wall s)",
                file=sys.stderr,
                flush=True,
            )
    tasks = [task["name"] for task in base.ranking_task_list()]
    summary = summarise(runs, tasks)
    print_table(summary, runs, tasks, seeds)
    return {
        "benchmark": "ranking_quality",
        "data": source,
        "users": ds.num_users,
        "items": ds.num_items,
        "events": ds.num_events,
        "split": {"cutoff": split.cutoff, "test_events": split.test_events()},
        "settings": {
            **vars(args),
            **{k: v for k, v in asdict(base).items() if k not in ("seed", "progress")},
            "torch_threads": torch.get_num_threads(),
        },
        "runs": runs,
        "summary": summary,
        "winner_by_seed": winners(runs, tasks, seeds),
    }


def summarise(runs: list[dict[str, Any]], tasks: list[str]) -> dict[str, Any]:
    """Per model (in order of first appearance): each task's metrics and the run times as
    mean, std and 95% interval over the model's seeds."""
    out: dict[str, Any] = {}
    for kind in dict.fromkeys(r["model"] for r in runs):
        mine = [r for r in runs if r["model"] == kind]
        out[kind] = {
            f"{task}/{m}": mean_std([r["test"][f"{task}/{m}"] for r in mine])
            for task in tasks
            for m in METRICS
        } | {key: mean_std([r[key] for r in mine]) for key in ("cpu_seconds", "wall_seconds")}
    return out


def winners(runs: list[dict[str, Any]], tasks: list[str], seeds: list[int]) -> dict[str, Any]:
    """The model with the highest AUC per task and seed."""
    return {
        task: {
            str(seed): max(
                (r for r in runs if r["seed"] == seed), key=lambda r: r["test"][f"{task}/auc"]
            )["model"]
            for seed in seeds
        }
        for task in tasks
    }


def print_table(
    summary: dict[str, Any], runs: list[dict[str, Any]], tasks: list[str], seeds: list[int]
) -> None:
    """Per model and task: each metric's mean ± std over seeds and the per-seed values; then
    the best AUC's model per seed."""
    err = sys.stderr
    err.write(f"\n{'model':<8} {'metric':<16} {'mean ± std':<18} per seed ({seeds})\n")
    for kind, cells in summary.items():
        for task in tasks:
            for m in METRICS:
                key = f"{task}/{m}"
                s = cells[key]
                per_seed = " ".join(f"{r['test'][key]:.4f}" for r in runs if r["model"] == kind)
                err.write(f"{kind:<8} {key:<16} {s['mean']:.4f} ± {s['std']:.4f}    {per_seed}\n")
    for task, by_seed in winners(runs, tasks, seeds).items():
        err.write(f"best {task}/auc per seed: {by_seed}\n")
    err.flush()


if __name__ == "__main__":
    sys.exit(main())
