"""Readers, sequence building and the leave-one-out split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.lake.datasets import (
    DataFormatError,
    EventLog,
    build_sequences,
    detect_format,
    read_event_log,
)
from pipeline.offline.splits import leave_one_out


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_movielens_dat(tmp_path: Path) -> None:
    p = write(tmp_path / "ratings.dat", "1::10::5::300\n1::11::3::100\n2::10::4::200\n")
    log, stats = read_event_log(p)
    assert stats.format == "movielens-dat"
    assert log.user.tolist() == [1, 1, 2]
    assert log.item.tolist() == [10, 11, 10]
    assert log.timestamp.tolist() == [300, 100, 200]


def test_movielens_csv_detected_by_header(tmp_path: Path) -> None:
    p = write(tmp_path / "r.csv", "userId,movieId,rating,timestamp\n1,10,4.0,964982703\n")
    assert detect_format(p) == "movielens-csv"
    log, _ = read_event_log(p)
    assert log.item.tolist() == [10] and log.action.tolist() == [0]


def test_generic_csv_with_string_ids_and_actions(tmp_path: Path) -> None:
    p = write(
        tmp_path / "events.csv",
        "user_id,item_id,timestamp,action\nalice,sku-1,10,click\nbob,sku-2,11.7,5\n",
    )
    log, stats = read_event_log(p)
    assert stats.format == "csv"
    assert log.user.dtype == object and log.user.tolist() == ["alice", "bob"]
    assert log.timestamp.tolist() == [10, 11]
    assert log.action.tolist() == [2, 5]


def test_parquet(tmp_path: Path) -> None:
    p = tmp_path / "events.parquet"
    table = pa.table({"user": [3, 3], "item": [7, 8], "ts": [5, 6]})
    pq.write_table(table, p)
    log, stats = read_event_log(p)
    assert stats.format == "parquet"
    assert log.user.tolist() == [3, 3] and log.item.tolist() == [7, 8]


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    p = write(tmp_path / "ratings.dat", "1::10::5::300\n1::11::3\n")
    with pytest.raises(
        DataFormatError, match=r"ratings\.dat:2: the line is not UserID::MovieID::Rating::Timestamp"
    ):
        read_event_log(p)


def test_malformed_lines_skipped_and_counted(tmp_path: Path) -> None:
    p = write(
        tmp_path / "e.csv",
        "user,item,timestamp\n1,2,3\n1,2\n,2,3\n1,2,abc\n1,2,nan\n4,5,6\n",
    )
    log, stats = read_event_log(p, skip_malformed=True)
    assert len(log) == 2
    # "abc" is not a number (the reader's bad_type), "nan" not a finite time
    assert dict(stats.skipped) == {
        "field_count": 1,
        "empty_id": 1,
        "bad_type": 1,
        "bad_timestamp": 1,
    }
    assert stats.errors[0].startswith(f"{p}:3:")


def test_missing_columns_is_a_clear_error(tmp_path: Path) -> None:
    p = write(tmp_path / "e.csv", "who,what\n1,2\n")
    with pytest.raises(
        DataFormatError,
        match=r"header row \['who', 'what'\] has no user_id, item_id, timestamp column",
    ):
        read_event_log(p)


def test_build_sequences_sorts_stably_and_remaps() -> None:
    log = EventLog(
        user=np.array([5, 9, 5, 5]),
        item=np.array([100, 200, 300, 100]),
        timestamp=np.array([20, 1, 10, 10]),
        action=np.zeros(4, np.int64),
    )
    ds = build_sequences(log)
    assert ds.user_keys.tolist() == [5, 9]
    assert ds.offsets.tolist() == [0, 3, 4]
    # user 5: t=10 (item 300, file row 2), t=10 (item 100, file row 3), t=20 (item 100)
    keys = ds.item_keys[ds.item_ids].tolist()
    assert keys == [300, 100, 100, 200]
    assert ds.timestamps.tolist() == [10, 10, 20, 1]
    assert ds.item_keys[0] is None and set(ds.item_ids.tolist()) <= {1, 2, 3}


def test_leave_one_out() -> None:
    log = EventLog(
        user=np.array([1] * 4 + [2] * 3),
        item=np.arange(7),
        timestamp=np.arange(7),
        action=np.zeros(7, np.int64),
    )
    train, valid, test = leave_one_out(build_sequences(log, min_length=3))
    assert train.lengths().tolist() == [2, 1]
    assert valid.lengths().tolist() == [3, 2]
    assert test.lengths().tolist() == [4, 3]
    assert valid.item_ids[valid.offsets[1:] - 1].tolist() == test.item_ids[[2, 5]].tolist()


def test_leave_one_out_rejects_short_users() -> None:
    log = EventLog(np.array([1, 1]), np.array([1, 2]), np.array([1, 2]), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match=">= 3 events"):
        leave_one_out(build_sequences(log))


def test_an_empty_line_is_a_malformed_row(tmp_path: Path) -> None:
    """As in the backfill and in JSON Lines: never skipped silently (docs/data.md)."""
    p = write(
        tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,5\n\n1,11,3.5,6\n"
    )
    with pytest.raises(DataFormatError, match=r"ratings\.csv:3: an empty row or line"):
        read_event_log(p)
    log, stats = read_event_log(p, skip_malformed=True)
    assert dict(stats.skipped) == {"missing_field": 1}
    assert log.item.tolist() == [10, 11] and log.value.tolist() == [4.0, 3.5]
