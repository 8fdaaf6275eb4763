"""Who owns a checkpoint directory, signals at start-up, idle rounds and ``--max-events``
across torchrun's restarts, for one trainer and for a trainer group.

The group runs as two real ``genrec train`` rank processes joined over gloo, with the
variables torchrun would set (``RANK``, ``WORLD_SIZE``, ``TORCHELASTIC_RUN_ID``,
``TORCHELASTIC_RESTART_COUNT``, ...); their source is ``Share`` (share_source.py), a
partitioned stand-in for a Kafka topic that goes quiet once its records are read, so no
broker is needed. SIGTERM to a group under ``genrec train --workers`` (torchrun) is tested
on a real broker in tests/kafka/test_trainer_group.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from test_group import _write_group_checkpoint
from test_hardening import REPO, SMALL_FLAGS, genrec

from pipeline.stream.checkpoint import CheckpointError
from pipeline.stream.distributed.checkpoints import GroupCheckpoints

WORLD = 2
HERE = Path(__file__).resolve().parent


def _rank_script(available: int, term_at_start: bool) -> str:
    """``genrec`` with ``Share(available)`` as its source; SIGTERM to itself before the
    parser is built (the first slow step) when ``term_at_start``."""
    return textwrap.dedent(f"""
        import os, signal, sys
        sys.path[:0] = [{str(REPO)!r}, {str(HERE)!r}]
        from pipeline import cli
        from pipeline.commands import train
        from share_source import Share
        train.make_source = lambda cfg: Share({available})
        if {term_at_start!r}:
            build = cli.build_parser
            def term_then_build():
                os.kill(os.getpid(), signal.SIGTERM)
                return build()
            cli.build_parser = term_then_build
        sys.exit(cli.main(sys.argv[1:]))
    """)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_group(
    root: Path,
    available: int,
    args: list[str],
    *,
    run_id: str,
    restarts: int = 0,
    term_rank: int | None = None,
    timeout_s: float = 150,
) -> list[dict]:
    """Both ranks of one group start to the end; every rank's summary."""
    port = _free_port()
    procs = []
    for rank in range(WORLD):
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(WORLD),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "TORCHELASTIC_RUN_ID": run_id,
            "TORCHELASTIC_RESTART_COUNT": str(restarts),
        }
        script = _rank_script(available, term_rank == rank)
        with (root / f"rank-{rank}.log").open("ab") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", script, "train", *SMALL_FLAGS, *args],
                    cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=log,
                )
            )  # fmt: skip
    deadline = time.monotonic() + timeout_s
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=30)
    logs = [(root / f"rank-{r}.log").read_text(errors="replace")[-3000:] for r in range(WORLD)]
    assert [p.returncode for p in procs] == [0] * WORLD, logs
    return [
        json.loads((root / "run" / f"rank-{r}" / "summary.json").read_text()) for r in range(WORLD)
    ]


# distributed.timeout_s: how long a rank waits for a peer that joins late (a loaded machine)
GROUP_FLAGS = [
    "--checkpoint-dir", "ckpt", "--no-publish", "--checkpoint-every-events", "1000000",
    "--checkpoint-every-s", "0.5", "--set", "source.poll_timeout_s=0.05",
    "--set", "distributed.timeout_s=90", "--log-every", "60",
]  # fmt: skip


def _newest_group_checkpoint(root: Path) -> int:
    marker = next(GroupCheckpoints(root / "ckpt", 0, WORLD, keep=3).markers(), None)
    return 0 if marker is None else marker.n


# ------------------------------------------------------------------- ownership (item 9)
def test_a_single_trainer_refuses_a_groups_directory(tmp_path):
    _write_group_checkpoint(tmp_path / "ckpt", 1)  # a group of 2 stopped here
    done = genrec(
        "train", *SMALL_FLAGS, "--checkpoint-dir", "ckpt", "--no-publish",
        "--max-events", "100", cwd=tmp_path, timeout_s=120,
    )  # fmt: skip
    assert done.returncode != 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    error = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(error) == 1 and "trainer group of 2 ranks" in error[0], done.stderr[-2000:]
    assert "--workers 2" in error[0]
    assert not list((tmp_path / "ckpt").glob("ckpt-*"))  # nothing written next to the group's


def test_the_owner_is_recorded_and_refuses_the_other_kinds(tmp_path):
    from pipeline.stream.distributed.checkpoints import OWNER, claim_directory

    claim_directory(tmp_path / "a", 2, record=True)  # a fresh group's directory
    assert json.loads((tmp_path / "a" / OWNER).read_text()) == {"world": 2}
    claim_directory(tmp_path / "a", 2)  # the same group: fine
    with pytest.raises(CheckpointError, match=r"trainer group of 2 ranks.*--workers 2"):
        claim_directory(tmp_path / "a", 1)  # even before any checkpoint exists
    with pytest.raises(CheckpointError, match=r"group of 2 ranks; this group has 3"):
        claim_directory(tmp_path / "a", 3)
    claim_directory(tmp_path / "b", 1, record=True)
    with pytest.raises(CheckpointError, match="single trainer process"):
        GroupCheckpoints(tmp_path / "b", 0, WORLD, keep=3)
    (tmp_path / "b" / OWNER).write_text('{"world": "two"}')
    with pytest.raises(CheckpointError, match=r"owner.json is damaged"):
        claim_directory(tmp_path / "b", 1)


# ------------------------------------------------------------ signals at start-up (item 10)
def test_sigterm_while_the_parser_is_built_stops_a_trainer_cleanly(tmp_path):
    # the first slow step of `genrec train`: before the fix the default action ended it (-15)
    script = _rank_script(10**6, term_at_start=True)
    done = subprocess.run(
        [sys.executable, "-c", script, "train", *SMALL_FLAGS, "--checkpoint-dir", "ckpt",
         "--no-publish", "--max-events", "100000"],
        cwd=tmp_path, capture_output=True, text=True, timeout=180,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout[done.stdout.index("{") :])
    assert summary["events_seen"] == 0  # stopped before training anything


def test_a_rank_signalled_at_start_up_stops_the_group_after_a_checkpoint(tmp_path):
    summaries = _run_group(
        tmp_path, 10**6, GROUP_FLAGS, run_id=uuid.uuid4().hex, term_rank=1, timeout_s=150
    )
    # the stop is the group's at its first round: every rank checkpoints and exits 0
    assert _newest_group_checkpoint(tmp_path) == 1
    assert sum(s["events_seen"] for s in summaries) <= 2 * 64


# ------------------------------------------- idle rounds, --max-events after a restart (10)
def test_an_idle_group_writes_no_checkpoints_and_a_restart_keeps_the_bound(tmp_path):
    run_id = uuid.uuid4().hex
    bound = ["--max-events", "1000"]
    # the first start reads 300 records a rank, then idles at 0.5 s checkpoint periods
    first = _run_group(tmp_path, 300, [*GROUP_FLAGS, *bound, "--duration", "5"], run_id=run_id)
    assert [s["events_seen"] for s in first] == [300, 300]
    assert _newest_group_checkpoint(tmp_path) <= 4  # the data's, and the final one
    # torchrun restarts the group (same launch): 400 more events end the run's 1000
    second = _run_group(
        tmp_path, 600, [*GROUP_FLAGS, *bound, "--duration", "40"], run_id=run_id, restarts=1
    )
    total = sum(s["events_seen"] for s in second)
    assert 1000 <= total <= 1000 + 2 * 64, total
    assert all(s["elapsed_s"] < 35 for s in second), [s["elapsed_s"] for s in second]
