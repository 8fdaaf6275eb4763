"""genrec's default thread policy against fixed thread counts, beside busy neighbours; prints JSON.

``genrec train`` (the default configuration, the synthetic source, ``--max-events``, fresh
checkpoint, registry and run directories in a temporary directory, each run a fresh process)
with the default policy (``pipeline/runtime/threads.py``), ``--threads 1`` and ``--threads 2``, while
0, 1 and 3 CPU-bound neighbour processes (``python -c "while True: pass"``) run beside it.
Neighbours start before a count's runs and are killed after them, always. The runs of a
count are interleaved (default, 1, 2, then rotated) ``--repeat`` times; a setting's figure
is its best events/s (the trainer's own rate: events over the time from its start to its
end, imports and set-up not included).

Reported per neighbour count: each setting's events/s (best and every run), the best
setting, and ``best / default`` (1.0: the default is the best). The goal (issue 23, item
12): ``best / default`` <= 1.25 for every count (``"accepted"``). The trainers run without
``OMP_NUM_THREADS`` in their environment, so that "default" is genrec's policy, not the
caller's setting.

The figures in docs/benchmarks.md ("Threads") come from a quiet machine::

    python3 bench/threads.py

A quick check that it runs (seconds per run)::

    python3 bench/threads.py --max-events 2000 --repeat 1 --neighbours 0,1

``--command train-offline`` compares the same settings for ``genrec train-offline``
(``--epochs``, ``--data``: its synthetic data unless given; its larger batches are where a
second thread could pay most); the figure there is runs per hour from the command's own
seconds (training and the test ranking)::

    python3 bench/threads.py --command train-offline --data ml-latest-small/ratings.csv
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GOAL = 1.25
SETTINGS: dict[str, list[str]] = {
    "default": [],
    "threads_1": ["--threads", "1"],
    "threads_2": ["--threads", "2"],
}
NEIGHBOUR = "while True: pass"
GENREC = [sys.executable, "-m", "pipeline.cli", "--log-level", "WARNING"]


@contextlib.contextmanager
def neighbours(count: int) -> Iterator[list[subprocess.Popen]]:
    """``count`` CPU-bound processes for the block; killed and reaped after it, always."""
    procs: list[subprocess.Popen] = []
    try:
        for _ in range(count):
            procs.append(subprocess.Popen([sys.executable, "-c", NEIGHBOUR]))
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait(timeout=30)


def trainer_env() -> dict[str, str]:
    """The caller's environment without the thread settings torch and OpenMP read."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def run(cmd: list[str], args: argparse.Namespace) -> float:
    """Run a genrec command line in a fresh process; its wall seconds."""
    started = time.monotonic()
    done = subprocess.run(
        cmd, env=trainer_env(), capture_output=True, text=True, timeout=args.timeout, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return round(time.monotonic() - started, 2)


def train(setting: str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One ``genrec train``; its rate from the run's summary."""
    cmd = [
        *GENREC, "train", "--source", "synthetic", "--max-events", str(args.max_events),
        "--no-resume", "--checkpoint-dir", str(out / "checkpoints"),
        "--registry", str(out / "registry"), "--run-dir", str(out / "run"),
        "--metrics-port", "0", *SETTINGS[setting],
    ]  # fmt: skip
    wall = run(cmd, args)
    summary = json.loads((out / "run" / "summary.json").read_text())
    events_per_s = round(summary["events_per_s"], 1)
    return {"events": summary["events_seen"], "events_per_s": events_per_s, "wall_s": wall}


def train_offline(setting: str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One ``genrec train-offline``; its own seconds (training and the test ranking)."""
    data = ["--data", args.data] if args.data else []
    cmd = [
        *GENREC, "train-offline", *data, "--epochs", str(args.epochs), "--out", str(out),
        "--no-progress", *SETTINGS[setting],
    ]  # fmt: skip
    wall = run(cmd, args)
    seconds = json.loads((out / "metrics.json").read_text())["seconds"]
    return {"seconds": seconds, "per_hour": round(3600 / seconds, 1), "wall_s": wall}


# command -> (one run, the figure compared: higher is faster)
COMMANDS = {"train": (train, "events_per_s"), "train-offline": (train_offline, "per_hour")}


def measure(count: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Every setting ``--repeat`` times, interleaved, beside ``count`` neighbours."""
    one_run, figure = COMMANDS[args.command]
    names = list(SETTINGS)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    with neighbours(count):
        time.sleep(args.settle_s)  # let the neighbours take their cores first
        for rep in range(args.repeat):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                runs[name].append(one_run(name, root / f"n{count}-{name}-{rep}", args))
    best = {name: max(r[figure] for r in rs) for name, rs in runs.items()}
    winner = max(best, key=best.__getitem__)
    ratio = best[winner] / best["default"]
    return {
        "neighbours": count,
        figure: best,
        "runs": runs,
        "best": winner,
        "best_over_default": round(ratio, 3),
        "within_goal": ratio <= GOAL,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--command", choices=list(COMMANDS), default="train")
    parser.add_argument("--max-events", type=int, default=12_000, help="events per train run")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per train-offline run")
    parser.add_argument("--data", help="train-offline's --data (default: its synthetic data)")
    parser.add_argument(
        "--neighbours", default="0,1,3", help="CPU-bound neighbour counts, comma-separated"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per setting and count")
    parser.add_argument("--settle-s", type=float, default=1.0, help="wait after neighbours start")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per run at most")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.neighbours.split(",")]
    with tempfile.TemporaryDirectory(prefix="genrec-threads-") as tmp:
        results = [measure(count, args, Path(tmp)) for count in counts]
    print(
        json.dumps(
            {
                "bench": "threads",
                "command": args.command,
                "cpus": os.cpu_count(),
                "max_events": args.max_events if args.command == "train" else None,
                "epochs": args.epochs if args.command == "train-offline" else None,
                "data": args.data,
                "repeat": args.repeat,
                "goal_best_over_default": GOAL,
                "results": results,
                "accepted": all(r["within_goal"] for r in results),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
