"""Throughput of ``genrec backfill sequences`` on a synthetic Parquet lake; prints one JSON.

Writes ``--events`` synthetic events (``pipeline.lake.synthetic``: users, items, times; actions
0) into ``--files`` Parquet files with the event schema's columns, then runs the sequences
pipeline with its defaults (16 shards, chunks of 65,536 rows) once per runner in
``--runners``, each in a fresh ``genrec`` process. Reported per runner: events/s over the
pipeline (the manifest's ``wall_seconds``: matching files, the Beam run, the manifest) and
end to end (process start included), peak RSS of the driver process, and the counts.

With ``--movielens PATH`` (a MovieLens ``ratings.csv`` or ``ratings.dat``) it runs the
pipeline on that file instead, format by name and header, defaults otherwise (direct runner
unless ``--runners`` says more), and reports the same plus the users written.

With ``--warm-start`` it runs ``bench/warm_start.py`` (its defaults; the arguments after
``--warm-start`` go to it): progressive NDCG@10 after a cut-off T of a trainer that streamed
all history, a warm-started one (sequences -> train-offline -> bootstrap) and a cold one.

Examples (the issue's size; ml-latest-small; the warm start)::

    python3 bench/backfill.py --events 10000000 --runners direct,dask
    python3 bench/backfill.py --movielens /work/shared/data/ml-latest-small/ratings.csv
    python3 bench/backfill.py --warm-start
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


def write_lake(directory: Path, events: int, files: int, seed: int) -> int:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.lake.synthetic import SyntheticConfig, generate_events

    users = max(1, events // 100)
    log = generate_events(
        SyntheticConfig(
            num_users=users, num_items=max(100, users // 4), events_per_user=100, seed=seed
        )
    )
    n = len(log)
    table = pa.table(
        {
            "user_id": log.user,
            "item_id": log.item,
            "action": np.zeros(n, np.int64),
            "timestamp": log.timestamp,
        }
    )
    step = -(-n // files)
    for k in range(files):
        pq.write_table(table.slice(k * step, step), directory / f"part-{k:04d}.parquet")
    return n


def run(runner: str, inputs: str, out: Path) -> dict:
    """One runner over ``inputs`` (a path or glob) in a fresh process (this script in its
    child mode): its own peak RSS."""
    cmd = [sys.executable, __file__, "--child", runner, inputs, str(out)]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode:
        return {"runner": runner, "error": done.stderr[-2000:]}
    child = json.loads(done.stdout.strip().splitlines()[-1])
    manifest = json.loads((out / "manifest.json").read_text())
    rows = manifest["counts"]["rows"]
    return {
        "runner": manifest["runner"],
        "events": rows,
        "pipeline_seconds": manifest["wall_seconds"],
        "pipeline_events_per_s": round(rows / manifest["wall_seconds"]),
        "end_to_end_seconds": round(seconds, 2),
        "end_to_end_events_per_s": round(rows / seconds),
        "users": manifest["counts"]["users"],
        "peak_rss_mb_driver": child["peak_rss_mb"],
        "counts": manifest["counts"],
    }


def child(runner: str, inputs: str, out: str) -> int:
    from pipeline.cli import main as genrec

    args = ["--log-level", "WARNING", "backfill", "sequences", "--input", inputs]
    code = genrec([*args, "--out", out, "--runner", runner])
    peak = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps({"peak_rss_mb": peak}))
    return code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=10_000_000, help="synthetic events (about)")
    p.add_argument("--files", type=int, default=8, help="Parquet files of the lake")
    p.add_argument(
        "--runners",
        help="comma-separated: direct, dask (default: direct,dask; --movielens: direct)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--movielens", metavar="PATH", help="a MovieLens ratings file, not synthetic")
    p.add_argument("--child", nargs=3, metavar=("RUNNER", "INPUT", "OUT"), help=argparse.SUPPRESS)
    p.add_argument(
        "--warm-start",
        nargs=argparse.REMAINDER,
        metavar="ARGS",
        help="run bench/warm_start.py instead (ARGS go to it)",
    )
    args = p.parse_args(argv)
    if args.warm_start is not None:
        import warm_start  # bench/warm_start.py, next to this script

        return warm_start.main(args.warm_start)
    if args.child:
        return child(*args.child)
    if args.movielens:
        return movielens(args.movielens, (args.runners or "direct").split(","))
    runners = (args.runners or "direct,dask").split(",")
    with tempfile.TemporaryDirectory(prefix="genrec-backfill-bench-") as tmp:
        lake = Path(tmp) / "lake"
        lake.mkdir()
        print(f"writing ~{args.events} events ...", file=sys.stderr, flush=True)
        n = write_lake(lake, args.events, args.files, args.seed)
        results = {"events": n, "files": args.files, "runs": []}
        for runner in runners:
            print(f"{runner} ...", file=sys.stderr, flush=True)
            results["runs"].append(run(runner, f"{lake}/*.parquet", Path(tmp) / f"out-{runner}"))
    print(json.dumps(results, indent=1))
    return 0


def movielens(path: str, runners: list[str]) -> int:
    """The pipeline over one MovieLens ratings file, once per runner."""
    with tempfile.TemporaryDirectory(prefix="genrec-backfill-bench-") as tmp:
        runs = [run(runner, path, Path(tmp) / f"out-{runner}") for runner in runners]
    print(json.dumps({"input": path, "bytes": Path(path).stat().st_size, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
