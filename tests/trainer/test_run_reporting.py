"""What a run says about itself: the max_events bound, the progress total of resumed runs and
finite streams, an exhausted stream, and what a failed run leaves on disk."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.events import EventBatch, encode_arrow
from pipeline.events.records import Records
from pipeline.lake.synthetic import SyntheticConfig, generate_events
from pipeline.sources.synthetic import SyntheticSource
from pipeline.stream.checkpoint import CheckpointStore
from pipeline.stream.config import load_config
from pipeline.stream.deadletter import MemoryDeadLetterSink
from pipeline.stream.trainer import OnlineTrainer

STREAM = SyntheticConfig(num_users=40, num_items=150, events_per_user=20, seed=3)
PER_RECORD = 64


def cfg(tmp_path: Path, **train):
    return load_config(
        overrides={
            "run_dir": str(tmp_path / "run"),
            "store": {"max_len": 10},
            "vocab": {"capacity": 200},
            "model": {"embedding_dim": 16},
            "train": {"batch_events": 64, "num_negatives": 16, "threads": 1, **train},
            "checkpoint": {"dir": str(tmp_path / "ckpt")},
            "registry": {"enabled": False},
            "observability": {"prometheus_port": 0, "log_every_s": 1e-6},
        },
        environ={},
    )


def trainer(tmp_path: Path, **train) -> OnlineTrainer:
    """A trainer on the synthetic stream, resumed from ``tmp_path/ckpt`` if it has any."""
    source = SyntheticSource(STREAM, codec="arrow", events_per_record=PER_RECORD)
    config = cfg(tmp_path, **train)
    assert config.checkpoint.dir is not None
    run = OnlineTrainer(
        config, source, MemoryDeadLetterSink(), checkpoints=CheckpointStore(config.checkpoint.dir)
    )
    run.restore()
    return run


def percents(caplog: pytest.LogCaptureFixture) -> list[int]:
    """The percentages of the progress lines logged so far."""
    lines = [r.getMessage() for r in caplog.records if r.name == "pipeline.stream.trainer"]
    return [int(m.group(1)) for line in lines if (m := re.search(r" (\d+)% ETA ", line))]


class VaryingRecords:
    """Arrow records of alternating sizes, as a producer splitting its batches between
    partitions makes them (a ``Source`` with one partition)."""

    def __init__(self, events: EventBatch, sizes: tuple[int, int] = (10, 200)) -> None:
        self.payloads: list[bytes] = []
        self.sizes: list[int] = []
        lo = 0
        while lo < len(events):
            n = min(sizes[len(self.payloads) % 2], len(events) - lo)
            self.payloads.append(encode_arrow(events.take(slice(lo, lo + n))))
            self.sizes.append(n)
            lo += n
        self.next = 0

    def poll(self, max_records: int, timeout_s: float) -> Records:
        stop = min(self.next + max_records, len(self.payloads))
        got = Records.run(self.payloads[self.next : stop], "arrow", "p", self.next)
        self.next = stop
        return got

    def positions(self) -> dict[str, int]:
        return {"p": self.next}

    def seek(self, positions: Mapping[str, int]) -> None:
        self.next = positions.get("p", 0)

    def commit(self, positions: Mapping[str, int]) -> None:
        """Nothing to tell."""

    def exhausted(self) -> bool:
        return self.next >= len(self.payloads)

    def close(self) -> None:
        """Nothing to release."""


def test_a_bounded_run_ends_less_than_one_record_past_max_events(tmp_path: Path):
    events = EventBatch.from_event_log(generate_events(STREAM).sorted_by_time())
    source = VaryingRecords(events)
    run = OnlineTrainer(cfg(tmp_path, max_events=500), source, MemoryDeadLetterSink())
    seen = run.run()["events_seen"]
    assert 500 <= seen < 500 + max(source.sizes), f"{seen} events for max_events=500"


def test_a_resumed_run_reports_its_own_progress(tmp_path: Path, caplog):
    caplog.set_level(logging.INFO, logger="pipeline.stream.trainer")
    assert trainer(tmp_path, max_events=256).run()["events_seen"] == 256
    caplog.clear()
    resumed = trainer(tmp_path, max_events=256).run()
    assert (resumed["events_seen"], resumed["run_events"]) == (512, 256)
    shown = percents(caplog)
    assert shown[0] < 50 and shown[-1] == 100, shown


def test_a_finite_stream_has_a_total_without_max_events(tmp_path: Path, caplog):
    caplog.set_level(logging.INFO, logger="pipeline.stream.trainer")
    total = trainer(tmp_path).run()["events_seen"]
    assert total == len(generate_events(STREAM))
    shown = percents(caplog)
    assert shown and shown[0] < 50 and shown[-1] == 100, shown
    # Once exhausted, a resumed run says that there is nothing left, in one line.
    caplog.clear()
    caplog.set_level(logging.WARNING)
    assert trainer(tmp_path).run()["events_seen"] == total
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 1 and said[0].startswith("nothing to train"), said
    assert "--no-resume" in said[0]


def test_a_failed_run_leaves_no_empty_directories(tmp_path: Path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,timestamp\n1,2,not-a-time\n")
    checkpoints = tmp_path / "checkpoints" / "run-1"
    code = main(
        ["train", "--source", "file", "--path", str(bad), "--no-publish", "--metrics-port", "0",
         "--run-dir", str(tmp_path / "run"), "--checkpoint-dir", str(checkpoints)]
    )  # fmt: skip
    assert code == 2
    assert "bad.csv" in capsys.readouterr().err
    assert not (tmp_path / "checkpoints").exists()  # the run created both levels
    assert not (tmp_path / "run").exists()  # and its run directory, left with empty files
    # A directory that was there before stays, without the failed run's lock file.
    kept = tmp_path / "kept"
    kept.mkdir()
    code = main(
        ["train", "--source", "file", "--path", str(bad), "--no-publish", "--metrics-port", "0",
         "--run-dir", str(tmp_path / "run"), "--checkpoint-dir", str(kept)]
    )  # fmt: skip
    assert code == 2
    assert kept.is_dir() and list(kept.iterdir()) == []
