"""Offline quality: HSTU vs SASRec vs most-popular, full ranking, several seeds, both protocols.

Every neural model gets the same budget (epochs, embedding dim, layers, heads, max_len,
lr, batch size, negatives). Each run is tested under both evaluation protocols:
"all-items" (every item competes) and "exclude-seen" (the paper's: the user's context
items are removed first, a target consumed before is a miss). With the holdout split (a
``--preset``'s) the epoch is chosen on validation NDCG@10 under ``--exclude-seen``'s
protocol; with the paper's split (the default) the last epoch is kept. Prints a table to
stderr (test users, mean ± std over seeds, 95% intervals) and one JSON object to stdout:
settings, every run, the summary.

    python3 bench/offline_quality.py --data ../shared/data/ml-latest-small/ratings.csv

The defaults and ``--preset`` are the ``genrec train-offline`` ones, so one bench command
with no training flags reproduces the CLI's figures. docs/quality.md has the measured table
and the command of each row.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
from dataclasses import asdict, replace
from typing import Any

import torch

from model.hstu import HSTUConfig
from pipeline.commands.offline import add_training_options, train_config_from_args
from pipeline.events.positives import parse_positives
from pipeline.offline.config import Preset, TrainConfig, load_preset
from pipeline.offline.splits import make_splits
from pipeline.offline.training import PROTOCOLS, load_sequences, train_offline
from pipeline.runtime.threads import set_torch_threads

METRICS = ("hr@10", "hr@50", "hr@200", "ndcg@10", "ndcg@50", "ndcg@200", "mrr")
# the metrics print_table shows, each with its widest per-run interval over users
TABLE_METRICS = ("ndcg@10", "hr@10")
# two-sided 97.5% Student t quantiles by degrees of freedom, for the interval over seeds
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    h = HSTUConfig(num_rows=2)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", help="event log (default: the synthetic generator)")
    p.add_argument("--format", default="auto", help="event log format (default: auto)")
    p.add_argument("--models", default="hstu,sasrec,popular", help="comma-separated models")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    add_training_options(p)
    add_encoder_options(p, action_inputs=h.action_inputs, max_len_help="N: last events per user")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: as train-offline)")
    p.add_argument("--progress", action="store_true", help="show per-epoch progress bars")
    return p.parse_args(argv)


def add_encoder_options(
    p: argparse.ArgumentParser, action_inputs: bool, max_len_help: str, dim_help: str = "D"
) -> None:
    """The model-size options the quality benches share (HSTU's defaults)."""
    h = HSTUConfig(num_rows=2)
    p.add_argument("--embedding-dim", type=int, default=h.embedding_dim, help=dim_help)
    p.add_argument("--num-layers", type=int, default=h.num_layers, help="blocks")
    p.add_argument("--num-heads", type=int, default=h.num_heads, help="attention heads")
    p.add_argument("--max-len", type=int, default=h.max_len, help=max_len_help)
    p.add_argument("--dropout", type=float, default=h.dropout, help="dropout (input too)")
    p.add_argument(
        "--action-inputs",
        action=argparse.BooleanOptionalAction,
        default=action_inputs,
        help="HSTU and SASRec read each (history) event's action and value, as train-offline "
        "does for the task (default: %(default)s)",
    )


def encoder_config(args: argparse.Namespace) -> dict[str, Any]:
    """HSTU/SASRec config fields from ``add_encoder_options``."""
    return {
        "embedding_dim": args.embedding_dim,
        "num_layers": args.num_layers,
        "num_heads": args.num_heads,
        "max_len": args.max_len,
        "dropout": args.dropout,
        "input_dropout": args.dropout,
        "action_inputs": args.action_inputs,
    }


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean, sample std and the 95% Student-t interval half-width over seeds."""
    n = len(values)
    std = statistics.stdev(values) if n > 1 else 0.0
    ci = T975.get(n - 1, 1.96) * std / math.sqrt(n) if n > 1 else math.nan
    return {"mean": statistics.fmean(values), "std": std, "ci95": ci}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    print(json.dumps(run(args), indent=1))
    return 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every model and seed of ``args`` on its data; the table goes to stderr, the result
    (settings, runs, summary) is returned."""
    set_torch_threads(args.threads)
    preset = load_preset(args.preset)
    base = train_config_from_args(args, preset, seed=0, progress=args.progress)
    if base.task != "retrieval":
        raise SystemExit("--task ranking: use bench/ranking_quality.py for ranking")
    ds, source = load_sequences(args.data, args.format)
    splits = make_splits(ds, base.split, parse_positives(base.positives, setting="--positives"))
    model_config = encoder_config(args)
    runs: list[dict[str, Any]] = []
    models = args.models.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    total = len(models) * len(seeds)
    for kind in models:
        config = {
            "hstu": {**model_config, "layer_norm": preset.hstu_layer_norm},
            "sasrec": {**model_config, "style": preset.sasrec_style},
        }.get(kind, {})
        for seed in seeds:
            cfg = replace(base, seed=seed)
            cpu0, wall0 = time.process_time(), time.perf_counter()
            result = train_offline(kind, config, splits, cfg)
            run: dict[str, Any] = {
                "model": kind,
                "seed": seed,
                "epoch": result.best_epoch,
                "cpu_seconds": round(time.process_time() - cpu0, 2),
                "wall_seconds": round(time.perf_counter() - wall0, 2),
                "valid_ndcg@10_by_epoch": [
                    round(h["ndcg@10"], 4) for h in result.valid_history if "ndcg@10" in h
                ],
            }
            for protocol in PROTOCOLS:
                test = result.test_by_protocol[protocol]
                run[protocol] = {"test_users": int(test["count"])} | {
                    key: test[key] for m in METRICS for key in (m, f"{m}_ci95")
                }
            runs.append(run)
            print(
                f"[{len(runs)}/{total}] {kind} seed {seed} epoch {run['epoch']}: "
                + " ".join(
                    f"{p} ndcg@10={run[p]['ndcg@10']:.4f} hr@10={run[p]['hr@10']:.4f}"
                    for p in PROTOCOLS
                )
                + f" ({run['cpu_seconds']:.0f} cpu s, {run['wall_seconds']:.0f} wall s)",
                file=sys.stderr,
                flush=True,
            )
    summary = summarise(runs)
    print_table(summary, runs, len(seeds))
    return {
        "benchmark": "offline_quality",
        "data": source,
        "users": ds.num_users,
        "items": ds.num_items,
        "events": ds.num_events,
        "settings": settings_of(args, preset, base),
        "runs": runs,
        "summary": summary,
    }


def settings_of(args: argparse.Namespace, preset: Preset, base: TrainConfig) -> dict[str, Any]:
    """The settings a run records: the defaults, the preset's, the flags given."""
    return {
        **vars(args),
        **{k: v for k, v in asdict(base).items() if k not in ("seed", "progress")},
        "hstu_layer_norm": preset.hstu_layer_norm,
        "sasrec_style": preset.sasrec_style,
        "torch_threads": torch.get_num_threads(),
    }


def default_settings() -> dict[str, Any]:
    """The settings a run with no flags records. A setting added after a run file was
    written has its default there, unless adding it changed the default behaviour
    (``quality_matrix.ADDED_SETTINGS``)."""
    args = parse_args([])
    preset = load_preset(args.preset)
    return settings_of(args, preset, train_config_from_args(args, preset, seed=0, progress=False))


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model (in order of first appearance): each protocol's metrics and the run times
    as mean, std and 95% interval over the model's runs (its seeds)."""
    models = list(dict.fromkeys(r["model"] for r in runs))
    return {
        kind: {
            protocol: {
                "test_users": runs_of[0][protocol]["test_users"],
                **{m: mean_std([r[protocol][m] for r in runs_of]) for m in METRICS},
            }
            for protocol in PROTOCOLS
        }
        | {key: mean_std([r[key] for r in runs_of]) for key in ("cpu_seconds", "wall_seconds")}
        for kind in models
        for runs_of in [[r for r in runs if r["model"] == kind]]
    }


def print_table(summary: dict[str, Any], runs: list[dict[str, Any]], num_seeds: int) -> None:
    """Human-readable table on stderr: per model and protocol, NDCG@10 and HR@10 as
    mean ± std over seeds, the 95% t-interval over seeds, and the widest per-run 95%
    interval over test users."""
    err = sys.stderr
    err.write(
        f"\n{'model':<8} {'protocol':<13} {'users':>5}  metric   mean ± std (seeds={num_seeds})"
    )
    err.write("   95% CI over seeds   per-run 95% CI (±, over users, max)\n")
    for kind, by_protocol in summary.items():
        for protocol in PROTOCOLS:
            cell = by_protocol[protocol]
            for m in TABLE_METRICS:
                s = cell[m]
                lo, hi = s["mean"] - s["ci95"], s["mean"] + s["ci95"]
                seeds_ci = f"[{lo:.4f}, {hi:.4f}]" if num_seeds > 1 else "n/a (1 seed)    "
                per_run = max(r[protocol][f"{m}_ci95"] for r in runs if r["model"] == kind)
                err.write(
                    f"{kind:<8} {protocol:<13} {cell['test_users']:>5}  {m:<8} "
                    f"{s['mean']:.4f} ± {s['std']:.4f}          {seeds_ci}"
                    f"    ±{per_run:.4f}\n"
                )
    err.flush()


if __name__ == "__main__":
    sys.exit(main())
