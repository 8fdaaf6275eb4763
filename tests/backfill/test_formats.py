"""``backfill sequences`` on text inputs (csv, MovieLens ratings.csv / ratings.dat): the
histories hold the right events, every kind of bad row or file lands in dead letters with
its file and line, the counts add up, and long runs report progress."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.backfill import sequences
from pipeline.backfill.sequences import SequencesJob, run_sequences
from pipeline.cli import main

T0 = 1_600_000_000


def histories(out: Path) -> dict:
    """user -> [(item, timestamp, action, value)] as stored (keys as strings: a shard with
    one string key stores all of its keys as strings)."""
    got: dict = {}
    for shard in sorted(out.glob("shard-*.parquet")):
        for row in pq.read_table(shard).to_pylist():
            events = zip(row["item"], row["timestamp"], row["action"], row["value"], strict=True)
            got[str(row["user"])] = [(str(i), t, a, None if v != v else v) for i, t, a, v in events]
    return got


def dead_letters(out: Path) -> list[tuple[str, int | None, str]]:
    lines = (out / "deadletters.jsonl").read_text().splitlines()
    return [(Path(d["file"]).name, d["file_row"], d["reason"]) for d in map(json.loads, lines)]


def test_each_format_by_name_and_header(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    lake.mkdir()
    (lake / "events.csv").write_text(
        "user_id,item_id,action,timestamp,value,event_id\n"
        f"u1,7,view,{T0 + 5},,e1\n"
        f"u1,8,click,{T0 + 1}.9,2.5,\n"  # float seconds are floored, as in the stream
        f'u2,"x,y",purchase,{T0},1,e3\n'  # a quoted field holds the delimiter
    )
    (lake / "codes.csv").write_text(  # codes and names in one column
        f"action,timestamp,item_id,user_id\n2,{T0 + 2},9,u2\nview,{T0 + 3},9,u2\n"
    )
    # MovieLens, as ml-latest's ratings.csv and ml-1m's ratings.dat write it
    (lake / "ratings.csv").write_text(
        f"userId,movieId,rating,timestamp\n1,31,2.5,{T0 + 9}\n1,1029,3.0,{T0 + 7}\n"
    )
    (lake / "ratings.dat").write_text(f"1::1193::5::{T0 + 8}\r\n2::661::3::{T0 + 4}\r\n")
    manifest = run_sequences(SequencesJob((str(lake / "*"),), str(tmp_path / "out"), shards=2))
    assert {Path(f["path"]).name: f["format"] for f in manifest["inputs"]} == {
        "codes.csv": "csv", "events.csv": "csv",
        "ratings.csv": "movielens-csv", "ratings.dat": "movielens-dat",
    }  # fmt: skip
    assert manifest["counts"] == {
        "rows": 9, "valid": 9, "rejected": 0, "after_cutoff": 0, "users": 4,
        "unreadable_files": 0,
    }  # fmt: skip
    view, click, purchase, interaction = 1, 2, 5, 0  # MovieLens: no action, as for training
    assert histories(tmp_path / "out") == {
        "u1": [("8", T0 + 1, click, 2.5), ("7", T0 + 5, view, None)],
        "u2": [("x,y", T0, purchase, 1.0), ("9", T0 + 2, click, None), ("9", T0 + 3, view, None)],
        "1": [
            ("1029", T0 + 7, interaction, 3.0),
            ("1193", T0 + 8, interaction, 5.0),
            ("31", T0 + 9, interaction, 2.5),
        ],  # the rating is the event's value
        "2": [("661", T0 + 4, interaction, 3.0)],
    }
    assert dead_letters(tmp_path / "out") == []


def test_bad_rows_and_files_of_every_format(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    lake.mkdir()
    good = f"1,10,view,{T0}"
    (lake / "a.csv").write_bytes(
        "\n".join(
            [
                "user_id,item_id,action,timestamp",  # line 1
                good,
                f"2,20,view,{T0}z",  # 3: bad_type (not a number)
                "3,30,view",  # 4: wrong field count (too few)
                f"4,40,view,{T0},5",  # 5: wrong field count (too many)
                "5,50,view,inf",  # 6: non-finite time
                f",60,view,{T0}",  # 7: empty id
                "",  # 8: an empty line: every field empty (no action)
                f'7,"a\nb",view,{T0}',  # 9-10: one row over two lines (valid)
                f"8,80,teleport,{T0}",  # 11: unknown action
                f"9,80,,{T0}",  # 12: no action
                f"10,100,view,{T0 - 10**9}",  # 13: time out of range
                good,
            ]
        ).encode()
        + f"\n11,\xff\xfe,view,{T0}\n{good}\n".encode("latin-1")  # 15: not UTF-8
    )
    (lake / "ratings.dat").write_text(
        f"1::1::4::{T0}\n1::2::3\n1:x:3::3::{T0}\n1::4::four::{T0}\n1::5::5::{T0}\n"
    )  # 2: field count; 3: fields in the wrong place; 4: a rating that is not a number
    (lake / "wrong.csv").write_text(f"who,what,when\n1,2,{T0}\n")  # no event columns
    (lake / "corrupt.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff binary")
    (tmp_path / "folder.csv").mkdir()  # a path that cannot be read as a file
    out = tmp_path / "out"
    inputs = (str(lake / "*"), str(tmp_path / "folder.csv"))
    manifest = run_sequences(SequencesJob(inputs, str(out), shards=2))
    letters = dead_letters(out)
    assert sorted(letters, key=str) == sorted(
        [
            ("a.csv", 3, "bad_type"),
            ("a.csv", 4, "field_count"),
            ("a.csv", 5, "field_count"),
            ("a.csv", 6, "bad_timestamp"),
            ("a.csv", 7, "empty_id"),
            ("a.csv", 8, "missing_field"),
            ("a.csv", 11, "bad_action"),
            ("a.csv", 12, "missing_field"),
            ("a.csv", 13, "timestamp_out_of_range"),
            ("a.csv", 15, "undecodable"),
            ("ratings.dat", 2, "field_count"),
            ("ratings.dat", 3, "field_count"),
            ("ratings.dat", 4, "bad_type"),
            ("corrupt.csv", None, "unreadable_file"),
            ("folder.csv", None, "unreadable_file"),
            ("wrong.csv", None, "unreadable_file"),
        ],
        key=str,
    )
    counts = manifest["counts"]
    assert counts["rows"] == 14 + 5 and counts["valid"] == 4 + 2
    assert counts["rows"] == counts["valid"] + counts["rejected"]
    assert counts["unreadable_files"] == 3
    # by reason: the rejected rows; an unreadable file's rows are unknown (its own count)
    assert sum(manifest["rejected_by_reason"].values()) == counts["rejected"] == len(letters) - 3
    lines = (out / "deadletters.jsonl").read_text().splitlines()
    by_place = {(Path(d["file"]).name, d["file_row"]): d for d in map(json.loads, lines)}
    assert by_place["a.csv", 3]["message"] == f"timestamp '{T0}z' is not a number"
    assert by_place["a.csv", 4]["message"] == "3 fields where the header has 4"
    assert by_place["a.csv", 4]["payload"] == "3,30,view"  # the line, to fix and replay
    assert by_place["a.csv", 15]["payload_encoding"] == "base64"
    assert "UserID::MovieID::Rating::Timestamp" in by_place["ratings.dat", 3]["message"]
    assert (
        "the header row ['who', 'what', 'when'] has no user_id, item_id, timestamp column"
        in (by_place["wrong.csv", None]["message"])
    )
    assert histories(out) == {
        "1": [("10", T0, 1, None)] * 3 + [("1", T0, 0, 4.0), ("5", T0, 0, 5.0)],  # lake order
        "7": [("a\nb", T0, 1, None)],
    }


def test_line_numbers_across_chunks(tmp_path: Path, monkeypatch) -> None:
    """Chunks of 3 rows: rows the reader leaves out, rows rejected after it and a row over
    two lines shift the lines of the rows after them, in any chunk."""
    monkeypatch.setattr(sequences, "CHUNK_ROWS", 3)
    bad = {4: "1,2", 5: f"x,1,view,{T0}q", 9: "1,2,3,4,5", 10: "1,2", 17: f"y,1,view,{T0}q"}
    text, line, expected = "user_id,item_id,action,timestamp\n", 2, []
    for u in range(20):
        if u in bad:
            reason = "bad_type" if bad[u].count(",") == 3 else "field_count"
            text, line = text + bad[u] + "\n", line + 1
            expected.append((line - 1, reason))
        item = f'"{u}\n"' if u == 12 else str(u)  # row 12 spans two lines
        text, line = text + f"{u},{item},view,{T0 + u}\n", line + 1 + (u == 12)
    (tmp_path / "a.csv").write_text(text)
    out = tmp_path / "out"
    manifest = run_sequences(SequencesJob((str(tmp_path / "a.csv"),), str(out), shards=1))
    assert [(row, reason) for _, row, reason in dead_letters(out)] == expected
    assert manifest["counts"]["valid"] == 20
    assert manifest["counts"]["rows"] == 20 + len(bad)
    got = histories(out)
    assert sorted(got) == sorted(str(u) for u in range(20))
    assert got["12"] == [("12\n", T0 + 12, 1, None)]


def test_progress_line_and_cli_format(tmp_path: Path, caplog, capsys) -> None:
    path = tmp_path / "ratings.dat"
    path.write_text("".join(f"{u}::{u % 7}::4::{T0 + u}\n" for u in range(50)))
    with caplog.at_level(logging.INFO, logger="pipeline.backfill.sequences"):
        run_sequences(SequencesJob((str(path),), str(tmp_path / "a"), progress_every_s=0))
    progress = [r.getMessage() for r in caplog.records if "rows=" in r.getMessage()]
    assert progress and "rows=50 (" in progress[-1] and "100% of" in progress[-1]
    assert "ETA 0:00:00" in progress[-1]
    renamed = tmp_path / "ratings.log"  # no format by name: --format says which
    path.rename(renamed)
    args = ["backfill", "sequences", "--input", str(renamed), "--out", str(tmp_path / "b")]
    assert main(args) == 2
    assert "cannot tell the format from the name; pass --format" in capsys.readouterr().err
    assert main([*args, "--format", "movielens-dat"]) == 0
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["counts"]["valid"] == 50


@pytest.mark.parametrize("fmt", ["csv", "movielens-csv"])
def test_a_header_only_or_empty_file_has_no_rows(tmp_path: Path, fmt: str) -> None:
    header = {
        "csv": "user_id,item_id,action,timestamp",
        "movielens-csv": "userId,movieId,rating,timestamp",
    }
    (tmp_path / "header.csv").write_text(header[fmt] + "\n")
    (tmp_path / "empty.csv").write_text("")
    manifest = run_sequences(
        SequencesJob((str(tmp_path / "*.csv"),), str(tmp_path / "out"), format=fmt)
    )
    assert manifest["counts"]["rows"] == manifest["counts"]["unreadable_files"] == 0
