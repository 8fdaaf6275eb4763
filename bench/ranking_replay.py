"""Online ranking quality: HSTU vs SASRec vs the DLRM baseline on a replayed event log.

Each model and seed runs ``genrec train --source file`` (a fresh process, nothing resumed or
published) over the whole log once, in event-time order: every event is scored by the ranking
heads before the trainer learns from it (test-then-train), so the figures are the run's
progressive NE / AUC / log loss / accuracy per task (docs/quality.md, "Ranking (online)").
Prints a table to stderr (per model and task: mean ± std over seeds, each seed's value, and
which model has the best AUC and NE per seed) and one JSON object to stdout.

    python3 bench/ranking_replay.py --data ../shared/data/ml-latest-small/ratings.csv \\
        --ranking-tasks 'like:value>=4' --positives 'value>=4' --seeds 0,1,2

Models run with the trainer's defaults plus ``--set`` overrides given here; HSTU and SASRec
read actions and values as inputs (``--action-inputs``) unless ``--no-action-inputs``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.offline_quality import mean_std

METRICS = ("auc", "ne", "log_loss", "accuracy")
REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True, help="event log to replay (genrec train --path)")
    p.add_argument("--ranking-tasks", required=True, help="model.ranking_tasks, e.g. like:value>=4")
    p.add_argument("--positives", default="all", help="train.positives (default: all)")
    p.add_argument("--models", default="hstu,sasrec,dlrm", help="comma-separated model.kind")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated train.seed values")
    p.add_argument("--threads", type=int, default=1, help="train.threads (default: 1)")
    p.add_argument(
        "--no-action-inputs", action="store_true", help="HSTU/SASRec without action inputs"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="extra genrec train --set for every run (repeatable)",
    )
    return p.parse_args(argv)


def replay(args: argparse.Namespace, kind: str, seed: int, work: Path) -> dict[str, Any]:
    """One ``genrec train`` run; its summary.json."""
    run_dir = work / f"{kind}-s{seed}"
    cmd = [
        sys.executable, "-m", "pipeline.cli", "train", "--source", "file", "--path", args.data,
        "--seed", str(seed), "--threads", str(args.threads), "--positives", args.positives,
        "--run-dir", str(run_dir), "--checkpoint-dir", str(run_dir / "checkpoints"),
        "--no-resume", "--no-publish", "--log-level", "WARNING",
        "--set", f"model.kind={kind}", "--set", f"model.ranking_tasks={args.ranking_tasks}",
        "--set", "observability.prometheus_port=0",
    ]  # fmt: skip
    if kind != "dlrm" and not args.no_action_inputs:
        cmd.append("--action-inputs")
    for extra in args.set:
        cmd += ["--set", extra]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"model": kind, "seed": seed, "seconds": round(time.perf_counter() - started, 1),
            "ranking": summary["ranking"], "events": summary.get("events")}  # fmt: skip


def summarise(runs: list[dict[str, Any]], tasks: list[str]) -> dict[str, Any]:
    """Per model and task: mean ± std of each metric; per seed, the best model by AUC / NE."""
    out: dict[str, Any] = {"models": {}, "best_per_seed": {}}
    for kind in sorted({r["model"] for r in runs}):
        mine = [r for r in runs if r["model"] == kind]
        out["models"][kind] = {
            f"{t}/{m}": {**mean_std([r["ranking"][f"{t}/{m}"] for r in mine]),
                         "per_seed": [r["ranking"][f"{t}/{m}"] for r in mine]}
            for t in tasks for m in METRICS
        }  # fmt: skip
    for seed in sorted({r["seed"] for r in runs}):
        mine = [r for r in runs if r["seed"] == seed]
        out["best_per_seed"][str(seed)] = {
            f"{t}/auc": max(mine, key=lambda r: r["ranking"][f"{t}/auc"])["model"] for t in tasks
        } | {f"{t}/ne": min(mine, key=lambda r: r["ranking"][f"{t}/ne"])["model"] for t in tasks}
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    models, seeds = args.models.split(","), [int(s) for s in args.seeds.split(",")]
    runs = []
    with tempfile.TemporaryDirectory(prefix="genrec-ranking-replay-") as work:
        for i, (kind, seed) in enumerate((k, s) for k in models for s in seeds):
            runs.append(replay(args, kind, seed, Path(work)))
            print(f"[{i + 1}/{len(models) * len(seeds)}] {kind} seed {seed}: "
                  f"{ {k: round(v, 4) for k, v in runs[-1]['ranking'].items()} } "
                  f"({runs[-1]['seconds']} s)", file=sys.stderr, flush=True)  # fmt: skip
    tasks = sorted({key.split("/")[0] for key in runs[0]["ranking"]})
    summary = summarise(runs, tasks)
    for kind, figures in summary["models"].items():
        for key, f in figures.items():
            print(f"{kind:7s} {key:18s} {f['mean']:.4f} ± {f['std']:.4f}  {f['per_seed']}",
                  file=sys.stderr)  # fmt: skip
    print(json.dumps({"settings": vars(args), "runs": runs, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
