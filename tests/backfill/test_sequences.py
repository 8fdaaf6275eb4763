"""``backfill sequences`` on Beam's direct runner: histories equal an in-Python oracle, every
bad row lands in dead letters with its file and row, and the counts add up."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.backfill.histories import event_logs
from pipeline.backfill.sequences import SequencesJob, run_sequences, shard_of
from pipeline.cli import main
from pipeline.lake.synthetic import SyntheticConfig, generate_events
from pipeline.offline.training import load_sequences

T0 = 1_600_000_000


def lake_rows(n_users: int = 40) -> list[dict]:
    log = generate_events(SyntheticConfig(num_users=n_users, num_items=60, events_per_user=12))
    rows = [
        {
            "user_id": int(u),
            "item_id": int(i),
            "action": "view",
            "timestamp": int(t) // 604_800 * 604_800,
        }
        for u, i, t in zip(
            log.user.tolist(), log.item.tolist(), log.timestamp.tolist(), strict=True
        )
    ]  # coarse times: many ties, across files too
    rng = np.random.default_rng(0)
    order = rng.permutation(len(rows))  # the lake is not in time order
    return [rows[k] for k in order]


def write_parquet(path: Path, rows: list[dict]) -> None:
    columns = {k: [r.get(k) for r in rows] for k in ("user_id", "item_id", "action", "timestamp")}
    pq.write_table(pa.table(columns), path)


def oracle(valid: list[dict], until: int) -> dict:
    """Per user (canonical key): (item, timestamp) in time order, ties in lake order."""
    out: dict = {}
    for row in valid:
        if row["timestamp"] < until:
            out.setdefault(row["user_id"], []).append((row["item_id"], row["timestamp"]))
    return {u: sorted(v, key=lambda e: e[1]) for u, v in out.items()}


def make_lake(root: Path) -> tuple[Path, list[dict], int]:
    """root/lake: 2 Parquet files, a JSON Lines file (6 bad rows across them) and a corrupt
    Parquet file; returns (lake, the valid rows in lake order, a cut-off)."""
    rows = lake_rows()
    third = len(rows) // 3
    lake = root / "lake"
    lake.mkdir()
    good_a, good_b, tail = rows[:third], rows[third : 2 * third], rows[2 * third :]
    bad_parquet = [  # each: one bad row in the stream's terms
        {**good_a[0], "user_id": None},  # missing_field
        {**good_a[1], "action": "teleport"},  # bad_action
        {**good_a[2], "timestamp": 10},  # timestamp_out_of_range
    ]
    write_parquet(lake / "part-0.parquet", good_a[:5] + bad_parquet + good_a[5:])
    write_parquet(lake / "part-1.parquet", good_b)
    lines = [json.dumps(r) for r in tail]
    lines[3:3] = [
        "{not json",
        json.dumps({"user_id": 1, "item_id": 2}),
        json.dumps({**tail[0], "user_id": ""}),
    ]
    (lake / "part-2.jsonl").write_text("\n".join(lines) + "\n")
    (lake / "part-3.parquet").write_bytes(b"PAR1 this is not parquet")
    valid = good_a + good_b + tail  # lake order: part-0, part-1, part-2
    until = sorted(r["timestamp"] for r in valid)[int(0.8 * len(valid))]
    return lake, valid, until


@pytest.fixture
def lake(tmp_path: Path) -> tuple[Path, list[dict], int]:
    return make_lake(tmp_path)


def read_shards(out: Path) -> dict:
    got: dict = {}
    for shard in sorted(out.glob("shard-*.parquet")):
        for row in pq.read_table(shard).to_pylist():
            assert row["user"] not in got
            got[row["user"]] = list(zip(row["item"], row["timestamp"], strict=True))
    return got


def test_histories_dead_letters_and_counts(lake, tmp_path: Path) -> None:
    lake_dir, valid, until = lake
    out = tmp_path / "out"
    manifest = run_sequences(
        SequencesJob(
            (str(lake_dir / "*.parquet"), str(lake_dir / "*.jsonl")),
            str(out),
            until=until,
            shards=4,
        )
    )
    expected = oracle(valid, until)
    assert read_shards(out) == expected
    tied = sum(
        len({i for i, t in events if t == time}) > 1
        for events in expected.values()
        for time in {t for _, t in events}
    )
    assert tied > 10  # lake order decides many ties
    counts = manifest["counts"]
    assert counts["rows"] == len(valid) + 3 + 3
    assert counts["after_cutoff"] == sum(r["timestamp"] >= until for r in valid) > 0
    assert counts["valid"] == len(valid) - counts["after_cutoff"] and counts["rejected"] == 6
    assert counts["users"] == len(oracle(valid, until)) and counts["unreadable_files"] == 1
    assert manifest["rejected_by_reason"] == {
        "bad_action": 1, "bad_json": 1, "empty_id": 1, "missing_field": 2,
        "timestamp_out_of_range": 1,
    }  # fmt: skip
    letters = [json.loads(line) for line in (out / "deadletters.jsonl").read_text().splitlines()]
    where = sorted((Path(d["file"]).name, d["file_row"], d["reason"]) for d in letters)
    assert where == [
        ("part-0.parquet", 5, "missing_field"),
        ("part-0.parquet", 6, "bad_action"),
        ("part-0.parquet", 7, "timestamp_out_of_range"),
        ("part-2.jsonl", 4, "bad_json"),
        ("part-2.jsonl", 5, "missing_field"),
        ("part-2.jsonl", 6, "empty_id"),
        ("part-3.parquet", None, "unreadable_file"),
    ]
    # every user's shard is the stable hash of its key
    for shard in out.glob("shard-*.parquet"):
        number, total = (int(x) for x in shard.stem.removeprefix("shard-").split("-of-"))
        users = np.array(pq.read_table(shard).column("user").to_pylist())
        assert total == 4 and set(shard_of(users, 4).tolist()) == {number}
    assert json.loads((out / "manifest.json").read_text())["counts"] == counts
    # train-offline --data reads the output directory (auto-detected): the same sequences
    ds, source = load_sequences(str(out), read_output=event_logs)
    assert source["format"] == "backfill"
    long_enough = {u: e for u, e in expected.items() if len(e) >= 3}
    assert ds.num_users == len(long_enough)
    for k, user in enumerate(ds.user_keys.tolist()):
        lo, hi = ds.offsets[k], ds.offsets[k + 1]
        items = [ds.item_keys[r] for r in ds.item_ids[lo:hi]]
        assert list(zip(items, ds.timestamps[lo:hi].tolist(), strict=True)) == long_enough[user]


def test_cli_runs_and_reruns_into_the_same_directory(lake, tmp_path: Path, capsys) -> None:
    lake_dir, valid, _ = lake
    out = tmp_path / "cli"
    args = [
        "backfill",
        "sequences",
        "--input",
        f"{lake_dir}/part-1.parquet,{lake_dir}/part-2.jsonl",
        "--out",
        str(out),
        "--shards",
        "2",
    ]
    assert main(args) == 0
    assert main([*args[:-2], "--shards", "3"]) == 0  # fewer users per shard; old shards go
    printed = json.loads(capsys.readouterr().out.split("\n}\n")[-2] + "\n}")
    assert printed["shards"] == [f"shard-0000{i}-of-00003.parquet" for i in range(3)]
    tail = valid[len(valid) // 3 :]
    assert read_shards(out) == oracle(tail, 2**62)
    assert (
        main(
            [
                "backfill",
                "sequences",
                "--input",
                str(lake_dir / "nothing-*.parquet"),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "matches no file" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_dask_runner_gives_the_same_outputs(lake, tmp_path: Path) -> None:
    lake_dir, _, until = lake
    inputs = (str(lake_dir / "*.parquet"), str(lake_dir / "*.jsonl"))
    direct = run_sequences(SequencesJob(inputs, str(tmp_path / "direct"), until=until, shards=3))
    dask = run_sequences(
        SequencesJob(
            inputs, str(tmp_path / "dask"), until=until, shards=3, runner="dask", dask_workers=2
        )
    )
    assert dask["runner"] == "DaskRunner on a local cluster of 2 worker processes"
    assert (dask["counts"], dask["rejected_by_reason"], dask["shards"]) == (
        direct["counts"], direct["rejected_by_reason"], direct["shards"],
    )  # fmt: skip
    for name in [*direct["shards"], "deadletters.jsonl"]:
        a, b = tmp_path / "direct" / name, tmp_path / "dask" / name
        if name.endswith(".parquet"):  # (json: NaN values compare equal, as "NaN")
            ta, tb = pq.read_table(a), pq.read_table(b)
            assert ta.schema == tb.schema and ta.num_rows == tb.num_rows > 0, name
            assert json.dumps(ta.to_pylist()) == json.dumps(tb.to_pylist()), name
        else:
            assert a.read_bytes() == b.read_bytes()
