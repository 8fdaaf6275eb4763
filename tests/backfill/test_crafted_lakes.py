"""Crafted lake files through ``genrec backfill sequences`` and ``genrec backfill bootstrap``
(issue 23's acceptance; ``test_crafted_inputs.py`` does the same for the backfill's output
read by ``train-offline --data`` and ``backfill recommend``).

Each case is a lake of one good Parquet file beside one crafted file (or the crafted file
alone). Both commands run through the real CLI entry point in one interpreter
(``cli_runs.py``) with a deadline. For every case and command: no Python traceback; a non-zero
exit comes with exactly one error line; a zero exit keeps the good file's events and its counts
add up (``rows = valid + rejected + after_cutoff``, the reasons sum to ``rejected``) and equal
the other job's; the lake and a decoy directory beside it are unchanged and nothing is written
outside the case's own output paths.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from backfill.cli_runs import error_lines, outcome
from tree_snapshot import snapshot

REPO = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("cli_runs.py")
T0 = 1_700_000_000
UNTIL = T0 + 1_000
DEADLINE_S = 400
GOOD_ROWS = 6
HEADER = "user_id,item_id,action,timestamp\n"

Craft = Callable[[Path, Path], None]  # (lake, decoy directory beside it)


def good_file(lake: Path) -> None:
    rows = {
        "user_id": [1, 2, 3, 1, 2, 3],
        "item_id": [10, 20, 30, 11, 21, 31],
        "action": ["view"] * GOOD_ROWS,
        "timestamp": [T0 + k for k in range(GOOD_ROWS)],
    }
    pq.write_table(pa.table(rows), lake / "good.parquet")


def text(name: str, data: bytes) -> Craft:
    def craft(lake: Path, _: Path) -> None:
        (lake / name).write_bytes(data)

    return craft


def table(name: str, columns: dict[str, Any]) -> Craft:
    def craft(lake: Path, _: Path) -> None:
        pq.write_table(pa.table(columns), lake / name)

    return craft


def truncated_parquet(lake: Path, _: Path) -> None:
    table("whole.parquet", {"user_id": list(range(50)), "item_id": list(range(50)),
                            "timestamp": [T0] * 50})(lake, _)  # fmt: skip
    whole = (lake / "whole.parquet").read_bytes()
    (lake / "whole.parquet").unlink()
    (lake / "bad.parquet").write_bytes(whole[: len(whole) // 2])


def directory_named_csv(lake: Path, _: Path) -> None:
    (lake / "dir.csv").mkdir()
    (lake / "dir.csv" / "inner.csv").write_text(HEADER + f"9,9,view,{T0}\n")


def symlink_to_decoy(lake: Path, decoy: Path) -> None:
    """A lake file that links out of the lake: the inputs name it, so it is read (a user's
    lake may be a tree of links); the decoy itself must stay unchanged."""
    (decoy / "linked.csv").write_text(HEADER + f"7,70,view,{T0 + 7}\n")
    (lake / "linked.csv").symlink_to(decoy / "linked.csv")


CSV_ROWS = f"4,40,view,{T0 + 1}\n"
CASES: dict[str, Craft] = {
    "parquet_without_user_id": table(
        "bad.parquet", {"item_id": list(range(30)), "timestamp": [T0] * 30}
    ),
    "parquet_null_users": table(
        "bad.parquet", {"user_id": [1, None, None], "item_id": [1, 2, 3], "timestamp": [T0] * 3}
    ),
    "parquet_string_timestamps": table(
        "bad.parquet", {"user_id": [1, 2], "item_id": [1, 2], "timestamp": ["abc", "1e30"]}
    ),
    "parquet_list_users": table(
        "bad.parquet", {"user_id": [[1], [2]], "item_id": [1, 2], "timestamp": [T0, T0]}
    ),
    "parquet_truncated": truncated_parquet,
    "parquet_not_parquet": text("bad.parquet", b"this is not a parquet file\n" * 10),
    "parquet_empty_file": text("bad.parquet", b""),
    "csv_latin1_row": text(
        "bad.csv", HEADER.encode() + CSV_ROWS.encode() + f"5,caf\xe9,view,{T0}\n".encode("latin-1")
    ),
    "csv_nul_in_ids": text("bad.csv", HEADER.encode() + f"1\x00,50,view,{T0}\n".encode()),
    "csv_field_counts": text("bad.csv", (HEADER + CSV_ROWS + "1,2\n1,2,view,3,4,5\n").encode()),
    "csv_bad_timestamps": text(
        "bad.csv",
        (HEADER + "".join(f"1,2,view,{t}\n" for t in ("abc", "1e30", "-5", 2**70, ""))).encode(),
    ),
    "csv_no_timestamp_column": text("bad.csv", b"user_id,item_id,action\n1,2,view\n"),
    "csv_empty_file": text("bad.csv", b""),
    "csv_gzip_bytes": text("bad.csv", gzip.compress((HEADER + CSV_ROWS).encode())),
    "csv_utf16": text("bad.csv", (HEADER + CSV_ROWS).encode("utf-16")),
    "csv_directory": directory_named_csv,
    "jsonl_bad_lines": text(
        "bad.jsonl",
        b'{"user_id": 1, "item_id": 2, "timestamp": '
        + str(T0).encode()
        + b"}\n{not json\n[1, 2, 3]\n"
        + b'{"user_id": {"a": 1}, "item_id": 2, "timestamp": 1}\n'
        + b'{"user_id": 1, "item_id": 2, "timestamp": 1'
        + b"0" * 40
        + b"}\n",
    ),
    "jsonl_long_key": text(
        "bad.jsonl", json.dumps({"user_id": "u" * 100_000, "item_id": 1, "timestamp": T0}).encode()
    ),
    "dat_wrong_separator": text("ratings.dat", b"1,2,3,4\n1;2;3;4\n"),
    "symlink_out_of_the_lake": symlink_to_decoy,
    "only_bad_rows": text("bad.jsonl", b"{not json\n[]\n"),
    "only_rows_after_the_cutoff": table(
        "late.parquet",
        {"user_id": [1, 2], "item_id": [1, 2], "action": ["view"] * 2, "timestamp": [UNTIL] * 2},
    ),
}
ALONE = {"only_bad_rows", "only_rows_after_the_cutoff"}  # no good file beside them: both
# jobs refuse a lake with no valid row before the cut-off


def commands(case: Path) -> list[list[str]]:
    lake = str(case / "lake" / "*")
    return [
        ["backfill", "sequences", "--input", lake, "--out", str(case / "out"), "--shards", "2",
         "--until", str(UNTIL)],
        ["backfill", "bootstrap", "--input", lake, "--until", str(UNTIL),
         "--set", f"checkpoint.dir={case / 'ckpt'}", "--set", f"run_dir={case / 'run'}",
         "--set", "model.embedding_dim=16", "--set", "train.num_negatives=4",
         "--set", "train.threads=1"],
    ]  # fmt: skip


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("crafted-lakes")
    runs, cases = [], {}
    for name, craft in CASES.items():
        case = root / name
        lake, decoy = case / "lake", case / "decoy"
        lake.mkdir(parents=True)
        decoy.mkdir()
        if name not in ALONE:
            good_file(lake)
        craft(lake, decoy)
        first = len(runs)
        runs += [{"cwd": str(case), "argv": argv} for argv in commands(case)]
        cases[name] = {
            "case": case,
            "runs": range(first, len(runs)),
            "before": (snapshot(lake), snapshot(decoy)),
        }
    spec = root / "runs.json"
    spec.write_text(json.dumps(runs))
    done = subprocess.run(
        [sys.executable, str(RUNNER), str(spec)],
        cwd=root, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=DEADLINE_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for info in cases.values():
        case = info["case"]
        info["after"] = (snapshot(case / "lake"), snapshot(case / "decoy"))
        info["results"] = [
            (rc, out + err) for rc, out, err in (outcome(case, i) for i in info["runs"])
        ]
    assert sorted(p.name for p in root.iterdir()) == sorted([*CASES, "runs.json"])
    return cases


def add_up(counts: dict[str, Any], by_reason: dict[str, int]) -> None:
    assert counts["rows"] == counts["valid"] + counts["rejected"] + counts["after_cutoff"], counts
    assert sum(by_reason.values()) == counts["rejected"], (counts, by_reason)


@pytest.mark.parametrize("name", CASES)
def test_a_crafted_lake_is_dead_letters_or_one_error_line(results, name) -> None:
    info = results[name]
    case = info["case"]
    figures = {}
    for (rc, output), command in zip(info["results"], ("sequences", "bootstrap"), strict=True):
        where = f"{name} / {command}"
        assert "Traceback" not in output, f"{where}:\n{output[-3000:]}"
        lines = error_lines(output)
        if rc != 0 or name in ALONE:
            assert rc == 2 and len(lines) == 1, f"{where} (rc {rc}):\n{output[-2000:]}"
            continue
        assert not lines, f"{where}:\n{output[-2000:]}"
        if command == "sequences":
            manifest = json.loads((case / "out" / "manifest.json").read_text())
            figures[command] = (manifest["counts"], manifest["rejected_by_reason"])
        else:
            report = json.loads((case / "ckpt" / "bootstrap.json").read_text())
            figures[command] = (report["counts"], report["rejected_by_reason"])
        counts, by_reason = figures[command]
        add_up(counts, by_reason)
        if name not in ALONE:  # the good file's events are kept beside the crafted one
            assert counts["valid"] >= GOOD_ROWS, f"{where}: {counts}"
    if len(figures) == 2:  # the same files counted alike by both jobs
        (seq_counts, seq_reasons), (boot_counts, boot_reasons) = figures.values()
        assert {k: seq_counts[k] for k in boot_counts} == boot_counts, figures
        assert seq_reasons == boot_reasons, figures
    assert info["after"] == info["before"], f"{name}: the lake or the decoy changed"
    made = {p.name for p in case.iterdir()} - {"lake", "decoy"}
    assert {n for n in made if not n.startswith(("rc-", "stdout-", "stderr-"))} <= {
        "out",
        "ckpt",
        "run",
    }, made


def test_the_crafted_lakes_exercise_both_outcomes(results) -> None:
    """The harness is not vacuous: some cases are refused with a line, most are read with
    their bad rows as dead letters."""
    outcomes = {rc for info in results.values() for rc, _ in info["results"]}
    assert outcomes == {0, 2}
    rejected = [
        json.loads((info["case"] / "out" / "manifest.json").read_text())["counts"]["rejected"]
        for info in results.values()
        if info["results"][0][0] == 0
    ]
    assert sum(1 for n in rejected if n > 0) >= 10, rejected
