"""Memory of file replay: a large CSV replayed through ``FileSource`` vs read whole; one JSON.

Writes ``--rows`` synthetic events as CSV (users and items uniform, times shuffled so that the
replay must sort), then, each in a fresh process so that peak RSS is its own:

- ``replay``: ``FileSource`` (the trainer's file source, default settings: chunked parsing,
  external sort into a spill file) polled to the end, records decoded as the trainer does;
- ``whole``: ``read_event_log`` + ``sorted_by_time`` (what file replay did before: the whole
  table in memory).

Reported: events/s, peak RSS, and for the replay the spill file's size.

Example::

    python3 bench/file_replay.py --rows 5000000
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


def write_csv(path: Path, rows: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with path.open("w") as out:
        out.write("user_id,item_id,timestamp\n")
        for lo in range(0, rows, 1_000_000):
            n = min(1_000_000, rows - lo)
            users = rng.integers(0, 1_000_000, n)
            items = rng.integers(0, 100_000, n)
            times = 1_600_000_000 + rng.integers(0, 10**7, n)
            out.writelines(
                f"{u},{i},{t}\n"
                for u, i, t in zip(users.tolist(), items.tolist(), times.tolist(), strict=True)
            )


def run_mode(mode: str, path: Path) -> dict[str, Any]:
    from pipeline.events import decode_records

    started = time.perf_counter()
    out: dict[str, Any] = {"mode": mode}
    if mode == "replay":
        from pipeline.sources.files import FileSource

        source = FileSource(path)
        events = 0
        while not source.exhausted():
            events += len(decode_records(source.poll(16, 0.0)).events)
        spill = source.spilled
        out["spill_bytes"] = spill.path.stat().st_size if spill is not None else 0
        source.close()
    else:
        from pipeline.lake.datasets import read_event_log

        event_log, _ = read_event_log(path)
        events = len(event_log.sorted_by_time())
    seconds = time.perf_counter() - started
    out |= {
        "events": events,
        "seconds": round(seconds, 1),
        "events_per_s": round(events / seconds),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=5_000_000, help="events in the CSV")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", choices=("replay", "whole"), help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.mode:
        print(json.dumps(run_mode(args.mode, Path(args.path))))
        return 0
    with tempfile.TemporaryDirectory(prefix="genrec-file-replay-") as tmp:
        path = Path(tmp) / "events.csv"
        print(f"writing {args.rows} rows to {path} ...", file=sys.stderr, flush=True)
        write_csv(path, args.rows, args.seed)
        results = {"rows": args.rows, "csv_bytes": path.stat().st_size, "modes": []}
        for mode in ("replay", "whole"):
            print(f"{mode} ...", file=sys.stderr, flush=True)
            done = subprocess.run(
                [sys.executable, __file__, "--mode", mode, "--path", str(path)],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode:
                results["modes"].append({"mode": mode, "error": done.stderr[-2000:]})
            else:
                results["modes"].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
