"""What ``backfill sequences`` (and ``backfill recommend``'s ``--out``) refuse, and how text
inputs that are not UTF-8 text are read: an ``--out`` that is a file or lies inside an input
is refused before anything is read; a lake without one valid row is an error; a CSV line
that is not UTF-8 or holds a NUL byte is a dead letter of its own, the rows around it stay;
a backfill command prints genrec's lines only, none of Beam's root-logger warnings."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from backfill import memfs
from test_formats import dead_letters, histories

from pipeline.backfill import sequences
from pipeline.backfill.sequences import SequencesJob, run_sequences
from pipeline.cli import main

REPO = Path(__file__).resolve().parents[2]
T0 = 1_600_000_000
HEADER = "user_id,item_id,action,timestamp"


def small_lake(root: Path) -> Path:
    """root/lake/a.parquet: 3 users, 6 valid events."""
    lake = root / "lake"
    lake.mkdir(parents=True)
    rows = {
        "user_id": [1, 2, 3, 1, 2, 3],
        "item_id": [10, 20, 30, 11, 21, 31],
        "action": ["view"] * 6,
        "timestamp": [T0 + k for k in range(6)],
    }
    pq.write_table(pa.table(rows), lake / "a.parquet")
    return lake


def sequences_args(inputs: str, out: Path | str) -> list[str]:
    return ["backfill", "sequences", "--input", inputs, "--out", str(out), "--shards", "2"]


def one_error(capsys: pytest.CaptureFixture[str], expected: str) -> str:
    """The CLI's error line (and only its own lines: no traceback); returns it."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("genrec backfill: error: ")]
    assert len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err
    return lines[0]


def test_an_out_that_is_a_file_is_refused_before_reading(tmp_path: Path, capsys) -> None:
    lake = small_lake(tmp_path)
    out = tmp_path / "out.txt"
    out.write_text("keep me\n")
    assert main(sequences_args(str(lake / "*.parquet"), out)) == 2
    one_error(capsys, f"--out {out} is a file; give a directory")
    assert out.read_text() == "keep me\n"
    # on object storage: an object of that name
    memfs.FILES["memfs://bucket/out"] = b"an object"
    try:
        assert main(sequences_args(str(lake / "*.parquet"), "memfs://bucket/out")) == 2
        one_error(capsys, "--out memfs://bucket/out is a file")
    finally:
        memfs.FILES.clear()


@pytest.mark.parametrize(
    ("inputs", "out"),
    [
        ("lake/**", "lake/out"),  # the glob would read the output of an earlier run
        ("lake/*", "lake/out"),  # matches the output directory itself
        ("lake", "lake/out"),  # a directory
        ("lake/", "lake/./out"),  # a directory's files (Beam: lake/*), another spelling
        ("lake/a.parquet,lake/*.json", "lake"),  # would read the manifest it writes
        ("lake/a.parquet", "lake/a.parquet/x"),  # under an input file
        ("link/**", "lake/out"),  # the same directory through a symbolic link
    ],
)
def test_an_out_inside_an_input_is_refused(
    tmp_path: Path, capsys, monkeypatch, inputs: str, out: str
) -> None:
    small_lake(tmp_path)
    (tmp_path / "link").symlink_to(tmp_path / "lake")
    monkeypatch.chdir(tmp_path)
    assert main(sequences_args(inputs, out)) == 2
    one_error(capsys, f"--out {out} lies inside --input ")
    assert not (tmp_path / "lake" / "out").exists()


def test_an_out_beside_the_inputs_and_on_object_storage(tmp_path: Path, capsys) -> None:
    lake = small_lake(tmp_path)
    # a glob that matches none of the output's files: allowed, and a rerun replaces it
    for _ in range(2):
        assert main(sequences_args(str(lake / "*.parquet"), lake / "out")) == 0
    assert json.loads((lake / "out" / "manifest.json").read_text())["counts"]["rows"] == 6
    memfs.FILES["memfs://bucket/lake/a.parquet"] = (lake / "a.parquet").read_bytes()
    try:
        args = sequences_args("memfs://bucket/lake/**", "memfs://bucket/lake/out")
        assert main(args) == 2
        one_error(capsys, "lies inside --input memfs://bucket/lake/**")
        assert sorted(memfs.FILES) == ["memfs://bucket/lake/a.parquet"]
    finally:
        memfs.FILES.clear()


def test_recommend_refuses_an_out_inside_histories_or_a_file(tmp_path: Path, capsys) -> None:
    lake = small_lake(tmp_path)
    histories = tmp_path / "histories"
    run_sequences(SequencesJob((str(lake / "a.parquet"),), str(histories), shards=2))
    before = {p.name: p.read_bytes() for p in histories.iterdir()}
    args = ["backfill", "recommend", "--registry", str(tmp_path / "registry"),
            "--histories", str(histories), "--k", "3"]  # fmt: skip
    for out in (histories, histories / "top"):
        assert main([*args, "--out", str(out)]) == 2
        one_error(capsys, f"--out {out} lies inside --histories {histories}")
    assert main([*args, "--out", str(lake / "a.parquet")]) == 2
    one_error(capsys, "is a file; give a directory")
    assert {p.name: p.read_bytes() for p in histories.iterdir()} == before


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_a_lake_without_a_valid_row_is_an_error(tmp_path: Path, capsys, fmt: str) -> None:
    path = tmp_path / "events.csv"
    path.write_text(f"{HEADER}\n1,10,view,{T0}\n2,20,view,{T0}\n")
    out = tmp_path / "out"
    args = sequences_args(str(path), out)
    assert main([*args, "--format", fmt]) == 2
    line = one_error(capsys, f"--input {path}: no valid row in 1 file(s)")
    reason = "unreadable_file" if fmt == "parquet" else "bad_json"
    assert f"the first: {path}" in line and f": {reason}: " in line
    assert f"check the files and --format (now {fmt})" in line
    assert {r for _, _, r in dead_letters(out)} == {reason}  # kept, to look into
    assert main(args) == 0  # the format that fits it


def latin1_rows(n: int, eol: bytes) -> tuple[bytes, dict[int, str], dict[str, list]]:
    """A CSV of ``n`` rows (lines ending in ``eol``) where every 7th row is Latin-1 text (its field
    count right, or, every 21st, wrong); returns (file, line -> expected reason, the valid
    rows' histories as ``test_formats.histories`` gives them)."""
    lines: list[bytes] = [HEADER.encode()]
    bad: dict[int, str] = {}
    good: dict[str, list] = {}
    for k in range(n):
        line, user = len(lines) + 1, f"u{k % 50}"
        if k % 7 == 3:
            extra = ",5" if k % 21 == 3 else ""
            lines.append(f"{user},caf\xe9{k},view,{T0 + k}{extra}".encode("latin-1"))
            bad[line] = "field_count" if extra else "undecodable"
        else:
            lines.append(f"{user},caf\xe9{k},view,{T0 + k}".encode())
            good.setdefault(user, []).append((f"caf\xe9{k}", T0 + k, 1, None))
    return eol.join(lines) + eol, bad, good


@pytest.mark.parametrize(
    ("chunk_rows", "n", "eol"),
    [(4, 300, b"\r\n"), (sequences.CHUNK_ROWS, 40_000, b"\n")],
)
def test_lines_that_are_not_utf8_are_dead_letters_of_their_own(
    tmp_path: Path, monkeypatch, chunk_rows: int, n: int, eol: bytes
) -> None:
    """pyarrow decodes a row with a wrong field count as UTF-8: a Latin-1 one used to stop
    the read and make the whole file one unreadable_file, its good rows dropped."""
    monkeypatch.setattr(sequences, "CHUNK_ROWS", chunk_rows)
    data, bad, good = latin1_rows(
        n, eol
    )  # 40,000 rows: over 1 MB, more than one block of the reader
    path = tmp_path / "events.csv"
    path.write_bytes(data)
    out = tmp_path / "out"
    manifest = run_sequences(SequencesJob((str(path),), str(out), shards=1))
    assert [(row, reason) for _, row, reason in dead_letters(out)] == sorted(bad.items())
    assert manifest["counts"]["valid"] == n - len(bad) and manifest["counts"]["rows"] == n
    assert histories(out) == good
    letters = [json.loads(line) for line in (out / "deadletters.jsonl").read_text().splitlines()]
    raw = data.split(eol)
    for letter in letters:  # the line as read, to fix and replay
        assert base64.b64decode(letter["payload"]) == raw[letter["file_row"] - 1]
    undecodable = next(d for d in letters if d["reason"] == "undecodable")
    assert "convert the file to UTF-8" in undecodable["message"]


def test_a_latin1_ratings_dat_with_cr_line_ends(tmp_path: Path) -> None:
    """pyarrow also ends a line at a lone \\r (a file without a header row shows it)."""
    path = tmp_path / "ratings.dat"
    path.write_bytes(
        f"1::10::4::{T0}\r2::caf\xe9::4::{T0}\r3::30::4::{T0}\r4::caf\xe9::4\r5::50::4::{T0}"
        .encode("latin-1")
    )  # fmt: skip
    out = tmp_path / "out"
    run_sequences(SequencesJob((str(path),), str(out), shards=1))
    assert dead_letters(out) == [
        ("ratings.dat", 2, "undecodable"),
        ("ratings.dat", 4, "field_count"),
    ]
    assert sorted(histories(out)) == ["1", "3", "5"]


def test_a_nul_byte_in_a_csv_row_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_bytes(
        f"{HEADER}\n1\0,10,view,{T0}\n2,20,view,{T0}\n3,3\0\0,view,{T0}\n4,40,view\0,{T0}".encode()
    )  # the last line without a line break
    out = tmp_path / "out"
    manifest = run_sequences(SequencesJob((str(path),), str(out), shards=1))
    assert dead_letters(out) == [("events.csv", row, "undecodable") for row in (2, 4, 5)]
    assert histories(out) == {"2": [("20", T0, 1, None)]}
    assert manifest["rejected_by_reason"] == {"undecodable": 3}
    letter = json.loads((out / "deadletters.jsonl").read_text().splitlines()[0])
    assert "NUL byte" in letter["message"] and letter["payload"] == f"1\0,10,view,{T0}"


def genrec(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_sequences_prints_no_beam_warnings(tmp_path: Path) -> None:
    """Beam logs "apitools not found ..." on the root logger when it is imported (and
    "Resource module ..." at every model load: tests/backfill/test_recommend.py), its Dask
    runner a note on its partition size at every run."""
    lake = small_lake(tmp_path)
    args = sequences_args(str(lake / "a.parquet"), tmp_path / "out")
    for runner in ("direct", "dask"):  # Dask: its worker processes' lines too
        done = genrec(*args, "--runner", runner, "--dask-workers", "1", cwd=tmp_path)
        assert done.returncode == 0 and done.stderr == "", done.stderr


def test_bootstrap_prints_no_beam_warnings(tmp_path: Path) -> None:
    lake = small_lake(tmp_path)
    done = genrec(
        "backfill", "bootstrap", "--input", str(lake / "a.parquet"), "--until", str(T0 + 4),
        "--set", "checkpoint.dir=ckpt", "--set", "model.embedding_dim=16",
        "--set", "train.num_negatives=4", "--set", "train.threads=1", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "apache_beam" not in done.stderr and " root: " not in done.stderr, done.stderr
