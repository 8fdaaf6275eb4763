"""``pipeline.backfill.histories`` beyond the crafted outputs of test_crafted_inputs.py: the
writer's ``--until`` stays in the range its readers accept, and the size limits' settings
are themselves checked."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main

MAX_UNTIL = 253_402_300_799  # 9999-12-31T23:59:59 UTC: pipeline.backfill.histories.MAX_UNTIL


@pytest.mark.parametrize("until", ["-1", str(2**63), str(MAX_UNTIL + 1), "1969-12-31"])
@pytest.mark.parametrize("job", ["sequences", "bootstrap"])
def test_an_until_the_readers_would_refuse_is_a_usage_error(
    job: str, until: str, tmp_path: Path, capsys
) -> None:
    lake = tmp_path / "a.parquet"
    pq.write_table(
        pa.table({"user_id": [1], "item_id": [2], "action": [0], "timestamp": [1]}), lake
    )
    argv = ["backfill", job, "--input", str(lake), "--until", until]
    if job == "sequences":
        argv += ["--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert (
        f"--until {until!r} is outside 1970-01-01..9999-12-31T23:59:59" in capsys.readouterr().err
    )
    assert not (tmp_path / "o").exists()


def test_the_last_second_of_9999_is_an_until(tmp_path: Path) -> None:
    lake = tmp_path / "a.parquet"
    pq.write_table(
        pa.table({"user_id": [1], "item_id": [2], "action": [0], "timestamp": [1_600_000_000]}),
        lake,
    )
    out = tmp_path / "o"
    argv = ["backfill", "sequences", "--input", str(lake), "--out", str(out), "--shards", "1"]
    assert main([*argv, "--until", "9999-12-31T23:59:59"]) == 0
    # and its readers take it: train-offline's reader reads the one event back
    from pipeline.backfill.histories import event_logs
    from pipeline.lake.datasets import read_event_log

    log, stats = read_event_log(out, read_output=event_logs)
    assert (stats.format, log.timestamp.tolist()) == ("backfill", [1_600_000_000])


@pytest.mark.parametrize("value", ["many", "0", "-3", "1e9"])
def test_a_bad_limit_setting_is_one_error_naming_it(value, tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "histories"
    out.mkdir()
    (out / "manifest.json").write_text('{"until": null, "shards": []}')
    monkeypatch.setenv("GENREC_BACKFILL_MAX_SHARD_EVENTS", value)
    assert main(["train-offline", "--data", str(out), "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.splitlines()[0]
    assert err == (
        f"genrec train-offline: error: GENREC_BACKFILL_MAX_SHARD_EVENTS={value!r}: expected a "
        "positive integer (or leave it unset)"
    )


def test_values_survive_a_backfill_output(tmp_path: Path) -> None:
    lake = tmp_path / "a.parquet"
    pq.write_table(
        pa.table(
            {"user_id": [1, 1, 2], "item_id": [2, 3, 2], "action": [0, 2, 0],
             "timestamp": [1_600_000_000, 1_600_000_100, 1_600_000_050], "value": [4.5, None, 2.0]}
        ),
        lake,
    )  # fmt: skip
    out = tmp_path / "o"
    argv = ["backfill", "sequences", "--input", str(lake), "--out", str(out), "--shards", "1"]
    assert main(argv) == 0
    from pipeline.backfill.histories import event_logs
    from pipeline.lake.datasets import read_event_log

    log, _ = read_event_log(out, read_output=event_logs)
    got = dict(
        zip(zip(log.user.tolist(), log.item.tolist(), strict=True), log.value.tolist(), strict=True)
    )
    assert got[(1, 2)] == 4.5 and got[(2, 2)] == 2.0 and got[(1, 3)] != got[(1, 3)]  # NaN
