"""A table file's replay spills to ``genrec-replay-*`` in the temporary directory; the spill
goes away even when nobody closes the source (a test, a source dropped after an error)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pipeline.sources.files import FileSource


def write_csv(path: Path) -> Path:
    path.write_text("user_id,item_id,timestamp\n1,a,30\n2,b,10\n1,c,20\n")
    return path


def spills(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("genrec-replay-*"))


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The system temporary directory, for this test alone (in and out of process)."""
    directory = tmp_path / "systmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    monkeypatch.setenv("TMPDIR", str(directory))
    return directory


def test_an_unclosed_source_leaves_no_spill_once_collected(tmp_path: Path, private_tmp: Path):
    source = FileSource(write_csv(tmp_path / "log.csv"), events_per_record=1)
    assert len(source.poll(10, 0.0)) == 3
    assert len(spills(private_tmp)) == 1  # the spill exists while the source is in use
    del source
    gc.collect()
    assert spills(private_tmp) == []


def test_a_process_that_never_closes_its_source_leaves_no_spill(tmp_path: Path, private_tmp):
    csv = write_csv(tmp_path / "log.csv")
    script = (
        "import sys\n"
        "from pipeline.sources.files import FileSource\n"
        "keep = FileSource(sys.argv[1], events_per_record=1)\n"
        "assert len(keep.poll(10, 0.0)) == 3\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(csv)],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert spills(private_tmp) == []


def test_close_removes_the_spill(tmp_path: Path, private_tmp: Path):
    source = FileSource(write_csv(tmp_path / "log.csv"), events_per_record=1)
    source.poll(10, 0.0)
    source.close()
    assert spills(private_tmp) == []
