"""``genrec scaling``: the envelope and fits on toy grids with known answers, the teacher
stream, and a 4-run grid end to end (fresh processes), resumed."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.lake.datasets import SequenceDataset, read_event_log
from pipeline.lake.synthetic_teacher import (
    TeacherConfig,
    generate_teacher,
    teacher_ceiling,
    write_teacher_lake,
)
from pipeline.offline.scaling.fit import envelope, envelope_fits, fit_saturating
from pipeline.offline.scaling.grid import (
    GridSettings,
    GridStopped,
    eta_seconds,
    grid_specs,
    parse_size,
    read_result,
    run_grid,
)
from pipeline.offline.splits import make_splits
from pipeline.offline.training import TrainingWindows, load_sequences


def test_envelope_keeps_the_runs_that_raise_the_best_quality() -> None:
    flops = [1e9, 2e9, 2e9, 4e9, 8e9, 16e9]
    quality = [0.10, 0.08, 0.12, 0.11, 0.15, 0.15]
    # 2e9 twice: the better one; 4e9 is below 0.12; 16e9 only ties 8e9
    assert envelope(flops, quality) == [0, 2, 4]


def test_log_linear_fit_recovers_a_known_line_on_the_envelope() -> None:
    c = np.geomspace(1e9, 1e12, 8)
    on_line = 0.15 + 0.0195 * np.log(c)  # the paper's reading, exactly
    below = on_line - 0.05  # dominated runs at the same computes: not on the envelope
    fit = envelope_fits([*c, *c * 1.01], [*on_line, *below])
    assert len(fit["envelope"]) == 8
    assert fit["log_linear"]["a"] == pytest.approx(0.15, abs=1e-9)
    assert fit["log_linear"]["b"] == pytest.approx(0.0195, abs=1e-12)
    assert fit["log_linear"]["r2"] == pytest.approx(1.0)
    assert fit["range"] == [pytest.approx(1e9), pytest.approx(1e12)]


def test_saturating_fit_recovers_a_known_power_law() -> None:
    c = np.geomspace(1e8, 1e11, 12)
    q = 0.30 - 0.2 * (c / 1e8) ** -0.35
    fit = fit_saturating(c, q)
    assert fit is not None
    assert fit["q_inf"] == pytest.approx(0.30, abs=1e-4)
    assert fit["A"] == pytest.approx(0.2, abs=1e-4)
    assert fit["alpha"] == pytest.approx(0.35, abs=1e-3)
    assert fit["r2"] == pytest.approx(1.0, abs=1e-8)
    assert not fit["alpha_at_bound"]
    # a straight line in ln C never saturates: the power law's alpha runs to its lower bound
    line = envelope_fits(c, 0.1 + 0.02 * np.log(c))
    assert line["log_linear"]["r2"] == pytest.approx(1.0)
    assert line["saturating"]["alpha_at_bound"]


def test_eta_is_overhead_plus_flop_rate() -> None:
    assert eta_seconds([], [1]) is None
    # overhead 10 s (the least wall seen), then 1 s per 1e9 FLOPs: (20 - 10) / 10e9
    done = [(0, 10.0), (10_000_000_000, 20.0)]
    assert eta_seconds(done, [5_000_000_000, 0]) == pytest.approx(10 + 5 + 10)


def test_parse_size_names_the_expected_form() -> None:
    assert parse_size("32x2x100") == (32, 2, 100)
    with pytest.raises(ValueError, match=r"'8x1' is not DxLxN"):
        parse_size("8x1")
    specs = grid_specs(["hstu"], [(8, 1, 20)], [1, 3], [0.1, 1.0])
    assert [s.key for s in specs] == [
        "hstu-d8-l1-n20-e1-f0.1", "hstu-d8-l1-n20-e1", "hstu-d8-l1-n20-e3-f0.1", "hstu-d8-l1-n20-e3"
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"--data-fractions: each share"):
        grid_specs(["hstu"], [(8, 1, 20)], [1], [0.0])


def test_teacher_stream_is_seeded_and_its_ceiling_beats_chance(tmp_path: Path) -> None:
    cfg = TeacherConfig(num_users=30, num_items=80, events_per_user=10, latent_dim=8, seed=3)
    a, b = generate_teacher(cfg), generate_teacher(cfg)
    assert np.array_equal(a.item, b.item) and np.array_equal(a.timestamp, b.timestamp)
    assert np.all(np.diff(a.timestamp) >= 0) and len(a) == 300
    other = generate_teacher(TeacherConfig(**{**cfg.__dict__, "seed": 4}))
    assert not np.array_equal(a.item, other.item)
    ceiling = teacher_ceiling(cfg)
    assert 10 / 80 < ceiling["hr@10"] <= 1.0  # far above ranking at random
    path = tmp_path / "teacher.parquet"
    assert write_teacher_lake(cfg, path) == 300
    read, _ = read_event_log(path)
    assert np.array_equal(read.item.astype(np.int64), a.item)
    assert np.array_equal(read.user.astype(np.int64), a.user)


def error_lines(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The stderr lines of a command that must fail as a user error (exit 2)."""
    capsys.readouterr()
    assert main(argv) == 2
    return capsys.readouterr().err.strip().splitlines()


def test_teacher_data_refuses_a_bad_setting_in_one_line(tmp_path: Path, capsys) -> None:
    argv = ["teacher-data", "--out", str(tmp_path / "t.parquet"), "--memory", "1.5"]
    assert error_lines(argv, capsys) == [
        "genrec teacher-data: error: teacher memory must be in [0, 1), got 1.5"
    ]


TINY_GRID = ["--sizes", "4x1x5", "--epochs", "1,2", "--num-negatives", "8", "--batch-size", "16"]
RUN_TIMEOUT = ["--run-timeout", "240"]


# Four fresh train-offline processes, each importing torch: about 30 s on two idle cores, but
# minutes on a loaded machine; a hung run fails at --run-timeout with its name.
@pytest.mark.timeout(600)
def test_a_four_run_grid_runs_end_to_end_and_resumes(tmp_path: Path, caplog, capsys) -> None:
    data = tmp_path / "teacher.parquet"
    assert main(["teacher-data", "--out", str(data), "--num-users", "30", "--num-items", "40",
                 "--events-per-user", "8", "--latent-dim", "4"]) == 0  # fmt: skip
    out = tmp_path / "grid"
    argv = ["scaling", "--data", str(data), "--out", str(out), *RUN_TIMEOUT, *TINY_GRID]
    with caplog.at_level(logging.INFO, logger="pipeline.commands.scaling"):
        assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    runs = results["runs"]
    assert len(runs) == 4 and {r["model"] for r in runs} == {"hstu", "sasrec"}
    assert [r["flops"] for r in runs] == sorted(r["flops"] for r in runs)  # cheapest first
    for run in runs:
        assert run["embedding_params"] == (results["data"]["items"] + 1) * 4  # row 0: padding
        assert run["flops"] > 0 and run["dense_params"] > 0
        assert len(run["train_loss"]) == run["epochs"] and 1 <= run["best_epoch"] <= run["epochs"]
        for split in ("valid", "test"):
            assert set(run[split]) == {"all-items", "exclude-seen"}
            assert run[split]["all-items"]["count"] == 30
            assert {"ndcg@10", "hr@10", "hr@100"} <= run[split]["exclude-seen"].keys()
    # two epochs cost twice the FLOPs of one
    by_name = {r["run"]: r for r in runs}
    assert by_name["hstu-d4-l1-n5-e2"]["flops"] == 2 * by_name["hstu-d4-l1-n5-e1"]["flops"]
    fit = results["fits"]["hstu"]["test"]["all-items"]["ndcg@10"]
    assert set(fit["envelope"]) <= set(by_name)
    assert (out / "scaling.png").stat().st_size > 1000
    baseline = results["baseline"]
    assert baseline["model"] == "popular" and set(baseline["test"]) == {"all-items", "exclude-seen"}
    assert baseline["valid"]["all-items"]["count"] == 30
    assert sum("grid ETA" in m for m in caplog.messages) == 4

    # resume: finished runs are read back, not trained again (no process starts)
    kept = out / "runs" / "sasrec-d4-l1-n5-e2" / "result.json"
    kept.write_text(json.dumps({**json.loads(kept.read_text()), "wall_seconds": 12345.0}))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipeline.commands.scaling"):
        assert main(argv) == 0
    assert sum("finished before, skipped" in m for m in caplog.messages) == 4
    again = {r["run"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert again["sasrec-d4-l1-n5-e2"]["wall_seconds"] == 12345.0
    assert again["hstu-d4-l1-n5-e1"] == by_name["hstu-d4-l1-n5-e1"]

    # --report-only: a larger grid of which 4 runs finished reports those 4, trains none
    grown = [*argv[: -len(TINY_GRID)], *TINY_GRID[:2], "--epochs", "1,2,3", *TINY_GRID[4:]]
    assert main([*grown, "--report-only"]) == 0
    reported = json.loads((out / "results.json").read_text())["runs"]
    assert sorted(r["run"] for r in reported) == sorted(by_name)
    assert not (out / "runs" / "hstu-d4-l1-n5-e3").exists()

    # the same directory with other training settings would mix incomparable runs
    [line] = error_lines([*argv, "--lr", "0.01"], capsys)
    assert "holds a grid with other settings (lr)" in line
    [line] = error_lines([*argv[: -len(TINY_GRID)], "--sizes", "4x1"], capsys)
    assert "--sizes: '4x1' is not DxLxN" in line
    [line] = error_lines([*argv[: argv.index("--out") + 1], str(data / "grid"), *argv[5:]], capsys)
    assert f"--out {data / 'grid'} lies under the file {data}; give a directory" in line
    [line] = error_lines([*argv, "--epochs", "1,two"], capsys)
    assert (
        line
        == "genrec scaling: error: --epochs: 'two' is not a number; give a comma-separated list"
    )


def test_an_unfinished_or_damaged_run_is_not_finished(tmp_path: Path) -> None:
    run = tmp_path / "hstu-d4-l1-n5-e1"
    run.mkdir()
    (run / "metrics.json").write_text("{}")  # the process ended before the result
    assert read_result(run) is None
    (run / "result.json").write_text('{"run": ')  # torn: trains again
    assert read_result(run) is None
    (run / "result.json").write_text('{"run": "hstu-d4-l1-n5-e1"}')
    assert read_result(run) == {"run": "hstu-d4-l1-n5-e1"}


def test_saturating_fit_needs_three_computes() -> None:
    assert fit_saturating([1.0, 2.0], [0.1, 0.2]) is None
    assert not math.isnan(fit_saturating([1.0, 2.0, 4.0], [0.1, 0.2, 0.25])["alpha"])


def test_a_data_fraction_trains_the_windows_of_that_share_of_the_users() -> None:
    lengths = np.array([3, 9, 4, 7, 5, 6, 2, 8])
    ds = SequenceDataset(
        item_ids=np.arange(1, lengths.sum() + 1),
        timestamps=np.arange(lengths.sum()),
        actions=np.zeros(lengths.sum(), np.int64),
        offsets=np.concatenate([[0], np.cumsum(lengths)]),
        item_keys=np.arange(lengths.sum() + 1, dtype=object),
        user_keys=np.arange(lengths.size),
    )
    windows = TrainingWindows.build(ds, 4, "all")
    assert windows.of_users_fraction(1.0, seed=0) is windows
    half = windows.of_users_fraction(0.5, seed=0)
    kept = np.unique(half.users)
    assert kept.size == 4
    # every window of a kept user stays, none of the others
    assert np.array_equal(half.users, windows.users[np.isin(windows.users, kept)])
    assert np.array_equal(half.lengths, windows.lengths[np.isin(windows.users, kept)])
    assert np.array_equal(windows.of_users_fraction(0.5, seed=0).users, half.users)
    assert windows.of_users_fraction(0.01, seed=0).users.size >= 1


def test_train_offline_trains_on_a_share_of_the_users_and_validates_both_protocols(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    argv = ["train-offline", "--out", str(out), "--split", "holdout", "--epochs", "1"]
    tiny = ["--synthetic-users", "30", "--synthetic-items", "60", "--embedding-dim", "8",
            "--num-layers", "1", "--max-len", "6", "--num-negatives", "8", "--no-progress"]  # fmt: skip
    assert main([*argv, "--train-fraction", "0.5", *tiny]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["valid_by_protocol"]) == {"all-items", "exclude-seen"}
    assert metrics["valid_by_protocol"]["all-items"]["count"] == 30  # every user validates
    half_loss = metrics["valid_history"][0]["train_loss"]
    assert main([*argv, *tiny]) == 0
    assert json.loads((out / "metrics.json").read_text())["valid_history"][0]["train_loss"] != (
        half_loss
    )


def test_a_stop_request_ends_the_running_run_and_leaves_it_unfinished(tmp_path: Path) -> None:
    """SIGTERM / SIGINT set the grid's stop event (pipeline/cli.py): the train-offline
    process running then is ended, not left behind, and its run is not finished."""
    data = tmp_path / "teacher.parquet"
    assert main(["teacher-data", "--out", str(data), "--num-users", "30", "--num-items", "40",
                 "--events-per-user", "8", "--latent-dim", "4"]) == 0  # fmt: skip
    ds, _ = load_sequences(str(data))
    train = make_splits(ds, "holdout")[0]
    specs = grid_specs(["hstu"], [parse_size("4x1x5")], [1], [1.0])
    settings = GridSettings(data=str(data), num_negatives=8, batch_size=16)
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()  # the child is still importing torch then
    started = time.monotonic()
    with pytest.raises(GridStopped):
        run_grid(specs, settings, train, tmp_path / "grid", stop=stop)
    assert time.monotonic() - started < 60  # ended, not waited for
    assert read_result(tmp_path / "grid" / "runs" / specs[0].key) is None
