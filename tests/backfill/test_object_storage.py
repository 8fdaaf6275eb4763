"""``backfill sequences`` on a non-local Beam filesystem (``memfs://``, tests/backfill/memfs.py):
inputs and outputs there give the same shards, dead letters and counts as a local run, and a
scheme without an installed filesystem is a one-line error naming the path and the extra."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from backfill import memfs
from test_sequences import make_lake

from pipeline.backfill.sequences import SequencesJob, run_sequences
from pipeline.cli import main


@pytest.fixture
def lake(tmp_path: Path) -> tuple[Path, list[dict], int]:
    return make_lake(tmp_path)


@pytest.fixture
def store() -> Iterator[dict[str, bytes]]:
    """The in-memory filesystem's files, empty for each test."""
    with memfs.empty() as files:
        yield files


def test_inputs_and_outputs_there_equal_a_local_run(lake, store, tmp_path) -> None:
    lake_dir, _, until = lake
    memfs.upload(lake_dir, "memfs://bucket/lake")
    local = run_sequences(
        SequencesJob(
            (str(lake_dir / "*.parquet"), str(lake_dir / "*.jsonl")),
            str(tmp_path / "local"),
            until=until,
            shards=3,
        )
    )
    store["memfs://bucket/out/shard-00007-of-00009.parquet"] = b"an old run's shard"
    remote = run_sequences(
        SequencesJob(
            ("memfs://bucket/lake/*.parquet", "memfs://bucket/lake/*.jsonl"),
            "memfs://bucket/out",
            until=until,
            shards=3,
        )
    )
    moved = [
        {**f, "path": f["path"].replace(str(lake_dir), "memfs://bucket/lake")}
        for f in local["inputs"]
    ]
    assert remote["inputs"] == moved and len(moved) == 4
    assert (remote["counts"], remote["rejected_by_reason"], remote["shards"]) == (
        local["counts"], local["rejected_by_reason"], local["shards"],
    )  # fmt: skip
    assert local["counts"]["rejected"] > 0 and local["counts"]["unreadable_files"] == 1
    written = memfs.names("memfs://bucket/out")
    assert sorted(written) == sorted([*local["shards"], "deadletters.jsonl", "manifest.json"])
    for name in local["shards"]:  # byte for byte (the old run's shard is gone)
        assert written[name] == (tmp_path / "local" / name).read_bytes(), name
    # the dead letters name their file: the same lines with the lake's other address
    local_letters = (tmp_path / "local" / "deadletters.jsonl").read_text()
    assert written["deadletters.jsonl"].decode() == local_letters.replace(
        str(lake_dir), "memfs://bucket/lake"
    )
    assert json.loads(written["manifest.json"])["counts"] == local["counts"]


def test_a_movielens_csv_on_a_beam_filesystem_is_recognised_by_its_header(store) -> None:
    store["memfs://b/ratings.csv"] = (
        b"userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,3.0,1260759179\n"
    )
    manifest = run_sequences(SequencesJob(("memfs://b/*.csv",), "memfs://b/out", shards=1))
    assert [f["format"] for f in manifest["inputs"]] == ["movielens-csv"]
    assert manifest["counts"]["valid"] == 2 and manifest["counts"]["users"] == 1


def test_beam_options_reach_the_filesystem_before_the_pipeline_too(store) -> None:
    """As HDFS needs --beam-option hdfs_host=... for listing the inputs and making --out."""
    event = {"user_id": 1, "item_id": 2, "action": "view", "timestamp": 1_600_000_000}
    store["memfs://b/a.jsonl"] = json.dumps(event).encode() + b"\n"
    note = ("memfs_note=from --beam-option",)
    run_sequences(SequencesJob(("memfs://b/a.jsonl",), "memfs://b/out", beam_options=note))
    assert len(memfs.NOTES) > 5 and set(memfs.NOTES) == {"from --beam-option"}
    assert "memfs://b/out/manifest.json" in store


@pytest.mark.parametrize(
    ("flag", "path", "fix"),
    [
        ("--out", "gs://bucket/out", "install it: pip install 'apache-beam[gcp]'"),
        # Beam has an s3 filesystem without boto3; it fails at its first use
        ("--input", "s3://bucket/lake/*.parquet", "install it: pip install 'apache-beam[aws]'"),
        ("--out", "hdfs://out", "install it: pip install 'apache-beam[hadoop]'"),
        ("--out", "nofs://out", "use a local path or one of gs://, s3://, azfs://, hdfs://"),
    ],
)
def test_a_filesystem_that_is_not_installed_is_a_clear_error(
    flag, path, fix, tmp_path, capsys
) -> None:
    lake_file = tmp_path / "a.jsonl"
    lake_file.write_text("")
    paths = {"--input": str(lake_file), "--out": str(tmp_path / "out"), flag: path}
    args = ["backfill", "sequences", "--input", paths["--input"], "--out", paths["--out"]]
    assert main(args) == 2
    scheme = path.split("://")[0]
    assert capsys.readouterr().err.splitlines() == [
        f"genrec backfill: error: {flag} {path}: no Beam filesystem for {scheme}:// is "
        f"installed; {fix}",
        "(run with --log-level DEBUG for a traceback)",
    ]
    assert not (tmp_path / "out").exists()  # nothing started


def test_recommend_with_histories_on_a_missing_filesystem_is_a_clear_error(
    tmp_path, capsys
) -> None:
    args = ["backfill", "recommend", "--registry", str(tmp_path / "registry"), "--k", "3"]
    assert main([*args, "--histories", "gs://b/histories", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        "genrec backfill: error: --histories gs://b/histories: no Beam filesystem for gs:// "
        "is installed; install it: pip install 'apache-beam[gcp]'"
    )
    assert not (tmp_path / "o").exists()


def test_bootstrap_reads_a_lake_there_like_a_local_one(store, tmp_path) -> None:
    from handoff_lake import make_lake as make_handoff_lake
    from test_bootstrap import config

    from pipeline.backfill.bootstrap import BootstrapJob, run_bootstrap

    lake = make_handoff_lake(tmp_path / "lake")
    memfs.upload(tmp_path / "lake", "memfs://bucket/lake")
    remote_files = [f"memfs://bucket/lake/{p.name}" for p in lake.files]
    local = run_bootstrap(
        BootstrapJob([str(p) for p in lake.files], lake.until, config(tmp_path, "a"))
    )
    note = ("memfs_note=bootstrap",)
    remote = run_bootstrap(
        BootstrapJob(remote_files, lake.until, config(tmp_path, "b"), beam_options=note)
    )
    shown = ("counts", "rejected_by_reason", "trainer_rejected", "users", "items_held")
    assert {k: remote[k] for k in shown} == {k: local[k] for k in shown}
    assert local["counts"]["rows"] == len(lake.rows)
    assert set(memfs.NOTES) == {"bootstrap"}  # the options reached the reads
