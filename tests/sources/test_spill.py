"""External sort for file replay: equals the in-memory stable sort, in bounded chunks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.events import EventBatch, decode_records
from pipeline.lake.datasets import EventLog, iter_event_log, read_event_log
from pipeline.sources import spill
from pipeline.sources.files import FileSource


def random_log(rng: np.random.Generator, n: int, str_keys: bool) -> EventLog:
    users = rng.integers(0, 50, n)
    items = rng.integers(0, 30, n)
    return EventLog(
        user=users.astype(str).astype(object) if str_keys else users,
        item=items,
        timestamp=rng.integers(0, 40, n),  # few distinct times: many ties across chunks
        action=rng.integers(0, 3, n),
    )


def chunks(event_log: EventLog, size: int) -> list[EventLog]:
    return [event_log.slice(lo, lo + size) for lo in range(0, len(event_log), size)]


def canonical(event_log: EventLog) -> tuple:
    batch = EventBatch.from_event_log(event_log)
    return tuple(getattr(batch, c).tolist() for c in ("user_id", "item_id", "timestamp", "action"))


@pytest.mark.parametrize("seed", range(4))
def test_the_merge_equals_the_stable_sort_of_the_whole_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    # tiny merge buffers: runs are read in many blocks and ties span block boundaries
    monkeypatch.setattr(spill, "MERGE_BUFFER_ROWS", 16)
    monkeypatch.setattr(spill, "MIN_BLOCK_ROWS", 3)
    rng = np.random.default_rng(seed)
    whole = random_log(rng, 1000, str_keys=False)
    parts = chunks(whole, 97)
    if seed % 2:  # one chunk with str keys: the spill file then holds str keys
        parts[3] = random_log(rng, 97, str_keys=True)
        whole = EventLog(*(np.concatenate([getattr(p, c) for p in parts]) for c in spill.COLUMNS))
    spilled = spill.spill_sorted(parts, batch_rows=64, directory=tmp_path)
    assert len(spilled) == len(whole)
    expected = canonical(whole.sorted_by_time())
    assert canonical(spilled.slice(0, len(whole))) == expected
    # any slice reads the right rows, across batch boundaries too
    for start, stop in [(0, 1), (63, 65), (128, 300), (990, 2000)]:
        rows = canonical(spilled.slice(start, stop))
        assert rows == tuple(column[start:stop] for column in expected)
    assert [p.name for p in spilled.directory.iterdir()] == ["sorted.arrow"]
    spilled.close()
    assert not spilled.directory.exists()


def test_an_empty_log_and_a_single_run(tmp_path: Path) -> None:
    empty = spill.spill_sorted([], batch_rows=8, directory=tmp_path)
    assert len(empty) == 0 and len(empty.slice(0, 10)) == 0
    one = random_log(np.random.default_rng(0), 20, str_keys=False)
    single = spill.spill_sorted([one], batch_rows=8, directory=tmp_path)
    assert canonical(single.slice(0, 20)) == canonical(one.sorted_by_time())


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_iter_event_log_chunks_the_file_and_counts_like_read_event_log(
    tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"log{suffix}"
    rows = [(u % 7, f"i{u % 5}", 1_600_000_000 + (u * 37) % 11) for u in range(50)]
    if suffix == ".parquet":
        users, items, times = zip(*rows, strict=True)
        pq.write_table(
            pa.table({"user_id": users, "item_id": items, "timestamp": times}),
            path,
            row_group_size=8,
        )
    else:
        path.write_text(
            "user_id,item_id,timestamp\n"
            + "".join(f"{u},{i},{t}\n" for u, i, t in rows)
            + "9,x,not-a-time\n"
        )
    whole, whole_stats = read_event_log(path, skip_malformed=True)
    parts, stats = iter_event_log(path, skip_malformed=True, chunk_rows=6)
    got = list(parts)
    assert max(len(p) for p in got) <= 6 and sum(len(p) for p in got) == len(whole) == 50
    assert stats.rows == whole_stats.rows and stats.skipped == whole_stats.skipped
    joined = EventLog(*(np.concatenate([getattr(p, c) for p in got]) for c in spill.COLUMNS))
    assert canonical(joined) == canonical(whole)


def test_file_replay_in_small_chunks_gives_the_same_records_and_cleans_up(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(5)
    path = tmp_path / "events.csv"
    n = 3000
    times = rng.integers(0, 200, n) + 1_600_000_000
    path.write_text(
        "user_id,item_id,timestamp\n"
        + "".join(
            f"{u},{i},{t}\n"
            for u, i, t in zip(rng.integers(0, 90, n), rng.integers(0, 40, n), times, strict=True)
        )
    )
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()

    def replay(chunk_rows: int) -> list[tuple]:
        source = FileSource(path, events_per_record=128, spill_dir=spill_dir, chunk_rows=chunk_rows)
        source.seek({source.partition: 5})  # a resumed replay starts at record 5
        records = []
        while not source.exhausted():
            records.extend(source.poll(4, 0.0))
        events = decode_records(records).events
        source.close()
        return list(
            zip(
                events.user_id.tolist(),
                events.item_id.tolist(),
                events.timestamp.tolist(),
                strict=True,
            )
        )

    whole_file = replay(1 << 20)  # one run
    assert replay(100) == whole_file  # 30 runs merged
    assert len(whole_file) == n - 5 * 128
    assert [t for _, _, t in whole_file] == sorted(t for _, _, t in whole_file)
    assert list(spill_dir.iterdir()) == []
