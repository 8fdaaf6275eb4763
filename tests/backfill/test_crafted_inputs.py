"""Crafted and damaged ``backfill sequences`` output through every command that reads it:
``train-offline --data DIR`` and ``backfill recommend --histories DIR``.

Each case copies a real output (the ``world`` of test_recommend.py: a registry version from a
real ``genrec train`` and histories from ``backfill sequences``) into a root of its own and
breaks one thing. Every command must then exit non-zero with exactly one error line that
names the broken file, print no traceback, leave the input untouched and write nothing
outside the case's root (a symlink's target outside the output is never read: the
commands refuse it). ``backfill bootstrap`` reads lake files, never this output.

The cases run through ``pipeline.cli.main`` in one subprocess (tests/backfill/cli_runs.py:
one interpreter, so 78 runs cost seconds of imports, not minutes); two of them also run
as ``python -m pipeline.cli`` processes of their own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from backfill.cli_runs import error_lines, outcome
from backfill.test_recommend import world  # noqa: F401  (the shared, module-scoped fixture)
from tree_snapshot import snapshot

REPO = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("cli_runs.py")
SHARD = "shard-00000-of-00003.parquet"
MANIFEST = "manifest.json"
DEADLINE_S = 240

Craft = Callable[[Path, Path], None]  # (histories dir, a dir outside it)


def shard_table(histories: Path) -> pa.Table:
    return pq.read_table(histories / SHARD)


def rewrite(histories: Path, change: Callable[[pa.Table], pa.Table]) -> None:
    pq.write_table(change(shard_table(histories)), histories / SHARD)


def set_column(name: str, values: Any, kind: Any = None) -> Callable[[pa.Table], pa.Table]:
    def change(table: pa.Table) -> pa.Table:
        column = values(table) if callable(values) else values
        array = pa.array(column, kind)
        return table.set_column(table.schema.get_field_index(name), name, array)

    return change


def first_row(table: pa.Table, name: str, change: Callable[[list], list]) -> list:
    rows = table.column(name).to_pylist()
    rows[0] = change(rows[0])
    return rows


def manifest_field(name: str, value: Any) -> Craft:
    def craft(histories: Path, _: Path) -> None:
        manifest = json.loads((histories / MANIFEST).read_text())
        manifest[name] = value
        (histories / MANIFEST).write_text(json.dumps(manifest))  # NaN as JSON's NaN literal

    return craft


def write(name: str, data: bytes) -> Craft:
    return lambda histories, _: (histories / name).write_bytes(data)


def rewrite_shard(change: Callable[[pa.Table], pa.Table]) -> Craft:
    return lambda histories, _: rewrite(histories, change)


def truncate(histories: Path, _: Path) -> None:
    data = (histories / SHARD).read_bytes()
    (histories / SHARD).write_bytes(data[: len(data) // 2])


def directory_shard(histories: Path, _: Path) -> None:
    (histories / SHARD).unlink()
    (histories / SHARD).mkdir()
    pq.write_table(pa.table({"x": [1]}), histories / SHARD / "part.parquet")


def symlink_out(name: str) -> Craft:
    def craft(histories: Path, outside: Path) -> None:
        (histories / name).rename(outside / name)
        (histories / name).symlink_to(outside / name)

    return craft


def stray_shard(histories: Path, _: Path) -> None:
    shutil.copy(histories / SHARD, histories / "shard-00007-of-00009.parquet")


def swap_shards(histories: Path, _: Path) -> None:
    """Two shards' contents exchanged: each holds users that hash to the other."""
    other = histories / "shard-00001-of-00003.parquet"
    first = (histories / SHARD).read_bytes()
    (histories / SHARD).write_bytes(other.read_bytes())
    other.write_bytes(first)


def string_items(table: pa.Table) -> pa.Table:
    items = [[str(i) for i in row] for row in table.column("item").to_pylist()]
    items[0][0] = ""
    return set_column("item", items, pa.list_(pa.string()))(table)


def duplicate_item(table: pa.Table) -> pa.Table:
    return table.append_column("item", table.column("item"))


CASES: dict[str, tuple[Craft, str]] = {
    "shard_not_parquet": (write(SHARD, b"user,item\n1,2\n"), SHARD),
    "shard_empty": (write(SHARD, b""), SHARD),
    "shard_truncated": (truncate, SHARD),
    "shard_is_a_directory": (directory_shard, SHARD),
    "shard_symlink_outside": (symlink_out(SHARD), SHARD),
    "manifest_symlink_outside": (symlink_out(MANIFEST), MANIFEST),
    "shard_missing": (lambda h, _: (h / SHARD).unlink(), SHARD),
    "shard_not_in_manifest": (stray_shard, "shard-00007-of-00009.parquet"),
    "shards_swapped": (swap_shards, SHARD),
    "user_twice": (
        rewrite_shard(lambda t: pa.concat_tables([t, t.slice(0, 1)])),
        SHARD,
    ),
    "manifest_shard_twice": (manifest_field("shards", [SHARD, SHARD]), MANIFEST),
    "column_item_missing": (rewrite_shard(lambda t: t.drop_columns(["item"])), SHARD),
    "columns_renamed": (
        rewrite_shard(lambda t: t.rename_columns([f"c{i}" for i in range(t.num_columns)])),
        SHARD,
    ),
    "column_item_twice": (rewrite_shard(duplicate_item), SHARD),
    "items_are_floats": (
        rewrite_shard(
            set_column(
                "item",
                lambda t: [[float(i) for i in row] for row in t.column("item").to_pylist()],
            )
        ),
        SHARD,
    ),
    "item_not_a_list": (
        rewrite_shard(
            set_column("item", lambda t: [row[0] for row in t.column("item").to_pylist()])
        ),
        SHARD,
    ),
    "timestamps_are_strings": (
        rewrite_shard(
            set_column(
                "timestamp",
                lambda t: [[str(x) for x in row] for row in t.column("timestamp").to_pylist()],
            )
        ),
        SHARD,
    ),
    "user_is_float": (
        rewrite_shard(
            set_column("user", lambda t: [float(u) for u in t.column("user").to_pylist()])
        ),
        SHARD,
    ),
    "user_null": (
        rewrite_shard(
            set_column("user", lambda t: [None, *t.column("user").to_pylist()[1:]], pa.int64())
        ),
        SHARD,
    ),
    "item_list_null": (
        rewrite_shard(
            set_column(
                "item", lambda t: [None, *t.column("item").to_pylist()[1:]], pa.list_(pa.int64())
            )
        ),
        SHARD,
    ),
    "item_entry_null": (
        rewrite_shard(
            set_column(
                "item",
                lambda t: first_row(t, "item", lambda row: [None, *row[1:]]),
                pa.list_(pa.int64()),
            )
        ),
        SHARD,
    ),
    "item_key_empty": (rewrite_shard(string_items), SHARD),
    "lists_of_different_lengths": (
        rewrite_shard(
            set_column("timestamp", lambda t: first_row(t, "timestamp", lambda r: r[:-1]))
        ),
        SHARD,
    ),
    "action_out_of_range": (
        rewrite_shard(
            set_column("action", lambda t: first_row(t, "action", lambda r: [999] * len(r)))
        ),
        SHARD,
    ),
    "timestamp_negative": (
        rewrite_shard(
            set_column("timestamp", lambda t: first_row(t, "timestamp", lambda r: [-5, *r[1:]]))
        ),
        SHARD,
    ),
    "timestamp_after_until": (
        rewrite_shard(
            set_column(
                "timestamp", lambda t: first_row(t, "timestamp", lambda r: [*r[:-1], 4_000_000_000])
            )
        ),
        SHARD,
    ),
    "timestamps_out_of_order": (
        rewrite_shard(
            set_column("timestamp", lambda t: first_row(t, "timestamp", lambda r: r[::-1]))
        ),
        SHARD,
    ),
    "until_text": (manifest_field("until", "abc"), MANIFEST),
    "until_2_pow_63": (manifest_field("until", 2**63), MANIFEST),
    "until_1e30": (manifest_field("until", 1e30), MANIFEST),
    "until_nan": (manifest_field("until", float("nan")), MANIFEST),
    "until_negative": (manifest_field("until", -1), MANIFEST),
    "until_true": (manifest_field("until", True), MANIFEST),
    "manifest_not_json": (write(MANIFEST, b"{not json"), MANIFEST),
    "manifest_a_list": (write(MANIFEST, b"[]"), MANIFEST),
    "manifest_shard_outside": (manifest_field("shards", ["../../registry/x.parquet"]), MANIFEST),
    "manifest_shards_missing": (manifest_field("shards", None), MANIFEST),
}
# Sizes: a limit set low in the environment refuses the shard from its footer.
LIMITED = {"GENREC_BACKFILL_MAX_SHARD_EVENTS": "10"}


def commands(case: Path, histories: Path, registry: Path) -> list[list[str]]:
    return [
        ["train-offline", "--model", "popular", "--data", str(histories),
         "--out", str(case / "offline"), "--no-progress", "--threads", "1"],
        ["backfill", "recommend", "--registry", str(registry), "--version", "latest",
         "--histories", str(histories), "--k", "5", "--out", str(case / "recommend")],
    ]  # fmt: skip


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def results(world, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:  # noqa: F811
    """Every case (and an intact copy, and the size limit) through both commands, in one
    subprocess with a deadline; the trees before and after."""
    root = tmp_path_factory.mktemp("crafted")
    runs, cases = [], {}
    names = [*CASES, "intact", "events_over_the_limit"]
    for name in names:
        case = root / name
        histories, outside = case / "histories", case / "outside"
        shutil.copytree(world["histories"], histories)
        outside.mkdir()
        craft, culprit = CASES.get(name, (lambda h, o: None, SHARD))
        craft(histories, outside)
        env = LIMITED if name == "events_over_the_limit" else {}
        first = len(runs)
        runs += [
            {"cwd": str(case), "argv": a, "env": env}
            for a in commands(case, histories, world["registry"])
        ]
        cases[name] = {
            "case": case,
            "culprit": culprit,
            "runs": range(first, len(runs)),
            "before": {"histories": snapshot(histories), "outside": snapshot(outside)},
        }
    shared = {k: snapshot(world[k]) for k in ("registry", "histories")}
    spec = root / "runs.json"
    spec.write_text(json.dumps(runs))
    done = subprocess.run(
        [sys.executable, str(RUNNER), str(spec)],
        cwd=root, env=cli_env(), capture_output=True, text=True, timeout=DEADLINE_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert {k: snapshot(world[k]) for k in shared} == shared  # the shared world: untouched
    for info in cases.values():
        case = info["case"]
        info["after"] = {
            "histories": snapshot(case / "histories"),
            "outside": snapshot(case / "outside"),
        }
        info["results"] = [outcome(case, i) for i in info["runs"]]
    # nothing but the case roots (and the run list) appeared in the module's root
    assert sorted(p.name for p in root.iterdir()) == sorted([*names, "runs.json"])
    return cases


@pytest.mark.parametrize("name", [*CASES, "events_over_the_limit"])
def test_a_crafted_output_is_one_error_naming_the_file(results, name) -> None:
    info = results[name]
    for (rc, stdout, stderr), command in zip(
        info["results"], ("train-offline", "recommend"), strict=True
    ):
        where = f"{name} / {command}"
        assert "Traceback" not in stdout + stderr, f"{where}:\n{stderr[-3000:]}"
        assert rc != 0, f"{where}: accepted\n{stderr[-2000:]}"
        lines = error_lines(stderr)
        assert len(lines) == 1, f"{where}:\n{stderr[-2000:]}"
        assert info["culprit"] in lines[0], f"{where}: {lines[0]}"
    assert info["after"] == info["before"], f"{name}: the input or the outside changed"
    # only the commands' own outputs (and the runner's capture files) appeared in the case
    made = {p.name for p in info["case"].iterdir()} - {"histories", "outside"}
    assert {n for n in made if not n.startswith(("rc-", "stdout-", "stderr-"))} <= {
        "offline",
        "recommend",
    }


def test_the_intact_copy_passes_both_commands(results) -> None:
    """The control: the same copy, unbroken, is read and used (rc 0, no error line)."""
    info = results["intact"]
    for rc, stdout, stderr in info["results"]:
        assert rc == 0, stderr[-3000:]
        assert not error_lines(stderr) and "Traceback" not in stdout + stderr
    assert (info["case"] / "recommend" / MANIFEST).is_file()
    assert info["after"] == info["before"]


@pytest.mark.parametrize("name", ["until_2_pow_63", "shard_symlink_outside"])
def test_the_installed_cli_prints_one_line_too(world, tmp_path, name) -> None:  # noqa: F811
    """The same refusal from ``python -m pipeline.cli`` as a process of its own."""
    histories, outside = tmp_path / "histories", tmp_path / "outside"
    shutil.copytree(world["histories"], histories)
    outside.mkdir()
    craft, culprit = CASES[name]
    craft(histories, outside)
    argv = commands(tmp_path, histories, world["registry"])[1]
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *argv],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0 and "Traceback" not in done.stdout + done.stderr, done.stderr
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and culprit in lines[0], done.stderr
