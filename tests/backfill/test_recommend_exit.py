"""``backfill recommend`` exits 0 every time it succeeded: Arrow's native threads never call
into the interpreter (which they could do while it finalizes, aborting the process with
"terminate called without an active exception"), and repeated CLI runs all exit 0."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems
from registry.tiny_version import ITEMS, publish

from connectors.registry import Registry
from pipeline.backfill.recommend import RecommendJob, run_recommend
from pipeline.cli import main

REPO = Path(__file__).resolve().parents[2]
RUNS = 3
T0 = 1_700_000_000


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A registry with a small version and a `backfill sequences` output of 30 users."""
    root = tmp_path_factory.mktemp("exit")
    publish(Registry.open(root / "registry", create=True))
    users = [u for u in range(30) for _ in range(4)]
    events = {
        "user_id": users,
        "item_id": [ITEMS[(u + n) % len(ITEMS)] for n, u in enumerate(users)],
        "action": ["view"] * len(users),
        "timestamp": [T0 + n for n in range(len(users))],
    }
    pq.write_table(pa.table(events), root / "events.parquet")
    args = ["backfill", "sequences", "--input", str(root / "events.parquet")]
    assert main([*args, "--out", str(root / "histories"), "--shards", "2"]) == 0
    return {"registry": root / "registry", "histories": root / "histories", "root": root}


class _ThreadProbe:
    """A file whose every call records the calling thread (without creating a Python thread
    object for it, as threading.current_thread would)."""

    def __init__(self, handle: Any, callers: set[int]) -> None:
        self._handle = handle
        self._callers = callers

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._handle, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self._callers.add(threading.get_ident())
            return attribute(*args, **kwargs)

        return call

    def __enter__(self) -> _ThreadProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


def test_arrow_threads_never_call_into_python(job, tmp_path, monkeypatch) -> None:
    """Every file the job opens through Beam is used by the Python thread that opened it."""
    callers: set[int] = set()
    open_file, create_file = FileSystems.open, FileSystems.create
    monkeypatch.setattr(
        FileSystems, "open", staticmethod(lambda *a, **k: _ThreadProbe(open_file(*a, **k), callers))
    )
    monkeypatch.setattr(
        FileSystems,
        "create",
        staticmethod(lambda *a, **k: _ThreadProbe(create_file(*a, **k), callers)),
    )
    recommend = RecommendJob(
        str(job["registry"]), "latest", str(job["histories"]), 3, str(tmp_path / "out")
    )
    manifest = run_recommend(recommend)
    assert manifest["users"] == 30
    # the direct runner runs in this thread: any other caller is one of Arrow's pool threads
    assert callers <= {threading.get_ident()}, "an Arrow thread called a Python file"


def test_repeated_runs_all_exit_0(job) -> None:
    command = [
        sys.executable, "-m", "pipeline.cli", "backfill", "recommend",
        "--registry", str(job["registry"]), "--histories", str(job["histories"]),
        "--k", "3", "--out", str(job["root"] / "out"), "--batch-users", "4",
    ]  # fmt: skip
    for run in range(RUNS):
        done = subprocess.run(
            command,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"run {run}: rc {done.returncode}: {done.stderr[-2000:]}"
