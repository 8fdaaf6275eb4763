"""genrec's CPU thread policy (pipeline/runtime/threads.py): as many intra-op torch threads as other
processes leave cores free, one inter-op thread, unless --threads, train.threads or
OMP_NUM_THREADS says otherwise (issue 23, item 12).

The command cases run the real commands in a fresh process (inter-op threads can be set once
per process, and OMP_NUM_THREADS is read when torch is imported), then read torch's counts
there; the rule itself is checked on given CPU-time samples.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.runtime.threads import FollowFreeCores, Sample

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


def test_beside_a_busy_neighbour_the_default_is_one_thread_and_flags_override(
    tmp_path: Path,
) -> None:
    """On 2 cores with a CPU-bound process beside it, the default leaves torch at one thread
    (at most one core is free); a count given on the command line holds."""
    if (os.cpu_count() or 1) != 2:
        pytest.skip("one busy neighbour leaves one core free on a 2-core machine only")
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        counts = thread_counts(
            [
                [*TRAIN, "--checkpoint-dir", "a/ckpt", "--run-dir", "a/run"],
                [*TRAIN, "--checkpoint-dir", "b/ckpt", "--run-dir", "b/run", "--threads", "2"],
                [*OFFLINE, "--out", "c"],
                [*OFFLINE, "--out", "d", "--threads", "2"],
            ],
            tmp_path,
        )
    finally:
        neighbour.kill()
        neighbour.wait(timeout=30)
    # default, --threads 2, default again (the policy sets it back), --threads 2
    assert counts == {"intra": [1, 2, 1, 2], "interop": 1}


def samples(*points: tuple[float, float, float]) -> object:
    """A ``sample`` function giving (machine busy s, own s, at s) points in turn."""
    feed = iter([Sample(*p) for p in points])
    return lambda: next(feed)


@pytest.mark.parametrize(
    ("busy", "own", "threads"),
    [
        (0.1, 0.0, 2),  # an idle 2-core machine: both cores
        (1.9, 1.8, 2),  # our own two threads' work (and spinning) does not count against us
        (1.0, 0.0, 1),  # a CPU-bound neighbour: one core left
        (2.0, 0.9, 1),  # a neighbour that got ~1.1 cores while we ran two threads
        (2.0, 0.4, 1),  # three neighbours
        (0.6, 0.0, 1),  # a neighbour on 60% of a core: no second whole core
    ],
)
def test_the_threads_follow_the_cores_other_processes_leave(busy, own, threads) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # where set_torch_threads starts the policy
    try:
        policy = FollowFreeCores(
            most=2, cores=2, sample=samples((0, 0, 0), (busy, own, 1.0)), first_look_s=0
        )
        policy.step()
        assert policy.threads == threads == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_the_threads_go_back_down_when_a_neighbour_starts_and_stay_within_bounds() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # where set_torch_threads starts the policy
    try:
        policy = FollowFreeCores(
            most=2,
            cores=4,
            sample=samples((0, 0, 0), (0, 0, 1), (3.5, 0.5, 2), (3.6, 0.5, 3)),
            first_look_s=0,
            look_every_s=0,
        )
        policy.step()
        assert policy.threads == 2  # 4 free cores, capped at torch's own default (most)
        policy.step()
        assert policy.threads == 1  # others took 3 of the 4 cores
        policy.step()
        assert policy.threads == 2  # they stopped
    finally:
        torch.set_num_threads(before)


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
        "number >= 1, or unset it for genrec's default (the free cores)"
    ]
    assert "Traceback" not in done.stderr
