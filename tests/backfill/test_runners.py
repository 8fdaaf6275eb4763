"""The backfill jobs' runners: ``direct`` never starts Beam's Prism (a download), any other Beam
runner is passed through with its ``--beam-option`` flags untouched (run here with Beam's own
in-process runners, by name and by class path: Flink, Spark and Dataflow cannot run on these
machines), and a malformed option or an unknown runner fails before anything is written."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_sequences import make_lake

from pipeline.backfill.sequences import (
    SequencesJob,
    describe_runner,
    pipeline_flags,
    runner_options,
)
from pipeline.cli import main


@pytest.fixture
def lake(tmp_path: Path) -> tuple[Path, list[dict], int]:
    return make_lake(tmp_path)


@pytest.fixture
def prism_starts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Every PrismRunner made (Beam's DirectRunner makes one first, and it would download its
    binary): a stand-in that fails at once, as the download does offline, so that Beam falls
    back to its in-process runner."""
    from apache_beam.runners.portability import prism_runner

    made: list[Any] = []

    class NoPrism:
        def __init__(self) -> None:
            made.append(self)

        def run_pipeline(self, pipeline: Any, options: Any) -> None:
            raise RuntimeError("no Prism in these tests")

    monkeypatch.setattr(prism_runner, "PrismRunner", NoPrism)
    yield made


def sequences_cli(lake_dir: Path, out: Path, *runner: str) -> int:
    inputs = f"{lake_dir}/*.parquet,{lake_dir}/*.jsonl"
    return main(["backfill", "sequences", "--input", inputs, "--out", str(out), "--shards", "3",
                 *runner])  # fmt: skip


def outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != "manifest.json"}


@pytest.mark.parametrize(
    ("runner", "described"),
    [
        (
            ["--runner", "DirectRunner", "--beam-option", "direct_num_workers=1"],
            "DirectRunner with --direct_num_workers=1",
        ),
        (
            [
                "--runner=apache_beam.runners.portability.fn_api_runner.FnApiRunner",
                "--beam-option=--direct_running_mode=in_memory",
            ],
            "apache_beam.runners.portability.fn_api_runner.FnApiRunner with "
            "--direct_running_mode=in_memory",
        ),
    ],
    ids=["name", "class-path"],
)
def test_a_beam_runner_runs_the_pipeline_with_its_options(
    runner, described, lake, tmp_path, prism_starts
) -> None:
    lake_dir, _, _ = lake
    assert sequences_cli(lake_dir, tmp_path / "direct") == 0
    assert prism_starts == []  # the default never tries Prism (nor its download)
    assert sequences_cli(lake_dir, tmp_path / "passed", *runner) == 0
    manifest = json.loads((tmp_path / "passed" / "manifest.json").read_text())
    default = json.loads((tmp_path / "direct" / "manifest.json").read_text())
    assert manifest["runner"] == described
    assert default["runner"] == "DirectRunner (in-process)"
    assert manifest["counts"] == default["counts"] and default["counts"]["users"] > 0
    assert outputs(tmp_path / "passed") == outputs(tmp_path / "direct")  # byte for byte


def test_options_are_passed_to_pipeline_options_untouched(tmp_path) -> None:
    from apache_beam.options.pipeline_options import (
        DirectOptions,
        FlinkRunnerOptions,
        PortableOptions,
        SetupOptions,
        StandardOptions,
    )

    flink = SequencesJob(
        ("lake/*.parquet",),
        str(tmp_path),
        runner="FlinkRunner",
        beam_options=(
            "flink_master=host:8081",
            "--environment_type=LOOPBACK",
            "--save_main_session",
        ),
    )
    assert pipeline_flags(flink) == [
        "--runner=FlinkRunner",
        "--flink_master=host:8081",
        "--environment_type=LOOPBACK",
        "--save_main_session",
    ]
    with runner_options(flink) as options:
        assert options.view_as(StandardOptions).runner == "FlinkRunner"
        assert options.view_as(FlinkRunnerOptions).flink_master == "host:8081"
        assert options.view_as(PortableOptions).environment_type == "LOOPBACK"
        assert options.view_as(SetupOptions).save_main_session is True
    assert describe_runner(flink) == (
        "FlinkRunner with --flink_master=host:8081 --environment_type=LOOPBACK --save_main_session"
    )
    # direct: genrec's defaults first, so that an option given overrides them
    direct = SequencesJob((), str(tmp_path), beam_options=("direct_num_workers=2",))
    with runner_options(direct) as options:
        assert options.view_as(StandardOptions).runner == "FnApiRunner"
        assert options.view_as(DirectOptions).direct_num_workers == 2
    assert describe_runner(direct) == "DirectRunner (in-process) with --direct_num_workers=2"
    dask = SequencesJob((), str(tmp_path), runner="dask", dask_address="tcp://h:8786")
    assert describe_runner(dask) == "DaskRunner on tcp://h:8786"


@pytest.mark.parametrize(
    ("runner", "message"),
    [
        (
            ["--beam-option", "flink_master"],
            "--beam-option 'flink_master' is neither KEY=VALUE nor --FLAG[=VALUE] (a Beam "
            "pipeline option), e.g. --beam-option flink_master=HOST:8081 or "
            "--beam-option=--save_main_session",
        ),
        (
            ["--beam-option", "=1"],
            "--beam-option '=1' is neither KEY=VALUE nor --FLAG[=VALUE] (a Beam pipeline "
            "option), e.g. --beam-option flink_master=HOST:8081 or "
            "--beam-option=--save_main_session",
        ),
        (
            ["--runner", "dask", "--beam-option=--dask_client_address=tcp://h:1"],
            "--beam-option '--dask_client_address=tcp://h:1': set dask_client_address with "
            "--dask-address",
        ),
        (
            ["--beam-option", "runner=FlinkRunner"],
            "--beam-option 'runner=FlinkRunner': set runner with --runner",
        ),
    ],
    ids=["no-value", "no-key", "dask-address", "runner"],
)
def test_a_malformed_or_owned_beam_option_is_a_clear_error(
    runner, message, lake, tmp_path, capsys
) -> None:
    assert sequences_cli(lake[0], tmp_path / "out", *runner) == 2
    assert capsys.readouterr().err.splitlines()[0] == f"genrec backfill: error: {message}"
    assert not (tmp_path / "out").exists()  # before anything is written


def test_an_unknown_runner_is_a_clear_error(lake, tmp_path, capsys) -> None:
    assert sequences_cli(lake[0], tmp_path / "out", "--runner", "NoSuchRunner") == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(
        "genrec backfill: error: --runner 'NoSuchRunner' is neither direct, dask nor a Beam "
        "runner that can be loaded: Unexpected pipeline runner: NoSuchRunner."
    ), err
    assert "FlinkRunner" in err[0] and len(err) == 2  # the names Beam knows, on one line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("job", ["sequences", "recommend"])
def test_help_explains_the_runner_flags(job, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["backfill", job, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for words in ("--runner direct|dask|RUNNER", "FlinkRunner", "--beam-option KEY=VALUE",
                  "=--FLAG[=VALUE]", "untested", "gs://"):  # fmt: skip
        assert words in text, words
