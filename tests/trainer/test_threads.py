"""genrec's CPU thread policy (pipeline/threads.py): one intra-op and one inter-op torch thread
unless --threads, train.threads or OMP_NUM_THREADS says otherwise (issue 23, item 12).

Each case runs the real commands in a fresh process (inter-op threads can be set once per
process, and OMP_NUM_THREADS is read when torch is imported), then reads torch's counts there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    (os.cpu_count() or 1) < 2, reason="on one core torch's own default is one thread too"
)
REPO = Path(__file__).resolve().parents[2]
# Tiny `genrec train` and `train-offline` runs on the synthetic generator (a few seconds each).
TRAIN = [
    "train", "--source", "synthetic", "--max-events", "256", "--batch-events", "64",
    "--no-resume", "--no-publish", "--metrics-port", "0",
    "--set", "model.embedding_dim=16", "--set", "store.max_len=10",
    "--set", "vocab.capacity=120", "--set", "train.num_negatives=16",
    "--set", "source.synthetic.num_users=60",
]  # fmt: skip
OFFLINE = [
    "train-offline", "--synthetic-users", "40", "--synthetic-items", "80",
    "--synthetic-events-per-user", "12", "--epochs", "1", "--embedding-dim", "16",
    "--max-len", "10", "--num-negatives", "8", "--no-progress",
]  # fmt: skip
# Runs each command line (argv lists, JSON in argv[1]) in this process, in order, and
# prints torch's intra-op thread count after each, then the inter-op count.
SCRIPT = """
import json, sys, torch
from pipeline.cli import main
counts = []
for argv in json.loads(sys.argv[1]):
    rc = main(["--log-level", "WARNING", *argv])
    assert rc == 0, (argv, rc)
    counts.append(torch.get_num_threads())
print(json.dumps({"intra": counts, "interop": torch.get_num_interop_threads()}))
"""


def python(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``python ARGS`` in a fresh process, without the caller's thread settings but ``env``."""
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env={**base, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=240,
    )


def thread_counts(commands: list[list[str]], cwd: Path, **env: str) -> dict:
    """torch's thread counts in a fresh process after each of ``commands`` ran there."""
    done = python(["-c", SCRIPT, json.dumps(commands)], cwd, **env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_default_is_one_thread_and_flags_override(tmp_path: Path) -> None:
    counts = thread_counts(
        [
            [*TRAIN, "--checkpoint-dir", "a/ckpt", "--run-dir", "a/run"],
            [*TRAIN, "--checkpoint-dir", "b/ckpt", "--run-dir", "b/run", "--threads", "2"],
            [*OFFLINE, "--out", "c"],
            [*OFFLINE, "--out", "d", "--threads", "2"],
        ],
        tmp_path,
    )
    # default, --threads 2, default again (the policy sets it back), --threads 2
    assert counts == {"intra": [1, 2, 1, 2], "interop": 1}


def test_omp_num_threads_in_the_environment_wins(tmp_path: Path) -> None:
    counts = thread_counts(
        [[*TRAIN, "--checkpoint-dir", "ckpt", "--run-dir", "run"]], tmp_path, OMP_NUM_THREADS="3"
    )
    assert counts["intra"] == [3]


@pytest.mark.parametrize("value", ["abc", "0"])
def test_omp_num_threads_that_is_no_count_is_refused(tmp_path: Path, value: str) -> None:
    # OpenMP only warns and torch then takes one thread per core: genrec refuses instead.
    done = python(
        ["-m", "pipeline.cli", *TRAIN, "--run-dir", "run"], tmp_path, OMP_NUM_THREADS=value
    )
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("genrec train: error")]
    assert errors == [
        f"genrec train: error: OMP_NUM_THREADS={value!r} is not a thread count: set a whole "
        "number >= 1, or unset it for genrec's default of one thread"
    ]
    assert "Traceback" not in done.stderr
