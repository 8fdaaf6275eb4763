"""``backfill bootstrap`` folds the lake in event-time order, whatever order the files hold
it in, and counts the lake as ``backfill sequences`` does (issue 23, items 7 and 15)."""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from handoff_lake import SCHEMA, Lake, make_lake
from test_bootstrap import LakeStream, config, state, stream

from pipeline.backfill import bootstrap
from pipeline.backfill.bootstrap import BootstrapJob, run_bootstrap
from pipeline.backfill.sequences import SequencesJob, run_sequences
from pipeline.stream.checkpoint import CheckpointStore
from pipeline.stream.config import TrainerConfig
from pipeline.stream.deadletter import MemoryDeadLetterSink
from pipeline.stream.trainer import OnlineTrainer

COUNTED = ("rows", "valid", "rejected", "after_cutoff", "unreadable_files")


def write_lake(directory: Path, rows: list[dict], files: int) -> list[Path]:
    directory.mkdir(parents=True)
    paths = []
    for f in range(files):
        path = directory / f"part-{f}.parquet"
        pq.write_table(pa.Table.from_pylist(rows[f::files], schema=SCHEMA), path)
        paths.append(path)
    return paths


def valid_rows_one_per_time(lake: Lake) -> list[dict]:
    """The lake's valid rows, in time order, without ties between different events (lake
    order decides those; copies of one event stay)."""
    first: dict[int, dict] = {}
    for row, bad in zip(lake.rows, lake.bad, strict=True):
        if not bad:
            first.setdefault(row["timestamp"], row)
    rows = [r for r, bad in zip(lake.rows, lake.bad, strict=True) if not bad]
    return sorted((r for r in rows if first[r["timestamp"]] == r), key=lambda r: r["timestamp"])


def restored(cfg: TrainerConfig) -> OnlineTrainer:
    """The trainer a bootstrap's checkpoint restores (its source: an empty stream)."""
    source = LakeStream(Lake([], [], [], 0))
    trainer = OnlineTrainer(
        cfg, source, MemoryDeadLetterSink(), CheckpointStore(cfg.checkpoint.dir)
    )
    assert trainer.restore()
    return trainer


def test_a_shuffled_lake_gives_the_state_of_the_lake_in_time_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # small sorted runs and record batches: the sort merges runs, micro-batches span batches
    monkeypatch.setattr(bootstrap, "RUN_ROWS", 100)
    monkeypatch.setattr(bootstrap, "SORTED_BATCH_ROWS", 50)
    lake = make_lake(tmp_path / "source")
    rows = valid_rows_one_per_time(lake)
    shuffled = list(rows)
    random.Random(3).shuffle(shuffled)
    in_order = write_lake(tmp_path / "ordered", rows, files=1)
    out_of_order = write_lake(tmp_path / "shuffled", shuffled, files=3)

    ordered_cfg, shuffled_cfg = config(tmp_path, "ordered"), config(tmp_path, "shuffled")
    run_bootstrap(BootstrapJob([str(p) for p in in_order], lake.until, ordered_cfg))
    with caplog.at_level(logging.INFO):
        manifest = run_bootstrap(
            BootstrapJob([str(p) for p in out_of_order], lake.until, shuffled_cfg)
        )
    got, want = state(restored(shuffled_cfg)), state(restored(ordered_cfg))
    assert got["store"] == want["store"]
    assert got == want
    assert "late" not in got["rejected"] and got["rejected"]["duplicate"] > 0
    # and a stream trainer over the events before T, in time order, holds the same
    before = [r for r in rows if r["timestamp"] < lake.until]
    streamed = stream(
        config(tmp_path, "stream"), Lake(before, [False] * len(before), [], lake.until), False
    )
    assert state(streamed) == got
    # the report's figures are the checkpoint's, and the log says the same
    trainer = restored(shuffled_cfg)
    assert manifest["users"] == trainer.state.store.num_users > 0
    assert manifest["items_held"] == len(trainer.state.vocab) > 0
    runs = re.search(r"sorted \d+ rows by event time in (\d+) run", caplog.text)
    assert runs is not None and int(runs[1]) > 1
    folded = f"{manifest['users']} users, {manifest['items_held']} items held"
    assert any(folded in record.getMessage() for record in caplog.records)


def test_both_jobs_count_the_same_files_alike(tmp_path: Path) -> None:
    lake = make_lake(tmp_path / "lake")
    # 30 rows before T in a file without user_id: one reject of the whole chunk
    no_user = pa.schema([f for f in SCHEMA if f.name != "user_id"])
    early = [{**r, "timestamp": r["timestamp"] - 86_400} for r in lake.rows[:30]]
    assert all(r["timestamp"] < lake.until for r in early)
    pq.write_table(
        pa.Table.from_pylist(early, schema=no_user), lake.files[0].parent / "no-user.parquet"
    )
    (lake.files[0].parent / "corrupt.parquet").write_bytes(b"not parquet")
    inputs = [str(lake.files[0].parent / "*.parquet")]

    boot = run_bootstrap(BootstrapJob(inputs, lake.until, config(tmp_path, "boot")))
    seq = run_sequences(SequencesJob(tuple(inputs), str(tmp_path / "seq"), until=lake.until))

    for manifest in (boot, seq):
        counts, by_reason = manifest["counts"], manifest["rejected_by_reason"]
        assert counts["rows"] == len(lake.rows) + 30 and counts["unreadable_files"] == 1
        assert counts["rows"] == counts["valid"] + counts["rejected"] + counts["after_cutoff"]
        assert counts["rejected"] == sum(lake.bad) + 30 == sum(by_reason.values())
        assert counts["after_cutoff"] == sum(
            r["timestamp"] >= lake.until for r, bad in zip(lake.rows, lake.bad, strict=True)
            if not bad
        )  # fmt: skip
    assert {k: boot["counts"][k] for k in COUNTED} == {k: seq["counts"][k] for k in COUNTED}
    assert boot["rejected_by_reason"] == seq["rejected_by_reason"]
