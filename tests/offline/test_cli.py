"""``genrec train-offline`` / ``genrec evaluate`` end to end on tiny data."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest

from pipeline.cli import main

TINY_DATA = [
    "--synthetic-users",
    "40",
    "--synthetic-items",
    "200",
    "--synthetic-events-per-user",
    "12",
]
TINY_MODEL = [
    "--embedding-dim",
    "16",
    "--num-layers",
    "1",
    "--max-len",
    "10",
    "--num-negatives",
    "16",
]
METRIC_KEYS = {
    "hr@10", "hr@50", "hr@100", "hr@200", "ndcg@10", "ndcg@50", "ndcg@100", "ndcg@200", "mrr"
}  # fmt: skip


def last_json_line(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


@pytest.mark.parametrize("model", ["hstu", "sasrec", "popular"])
def test_train_offline_json_then_evaluate_reproduces(model: str, tmp_path, capsys) -> None:
    out = tmp_path / model
    argv = ["train-offline", "--model", model, "--epochs", "2", "--seed", "1", "--out", str(out)]
    assert main([*argv, "--json", "--no-progress", *TINY_DATA, *TINY_MODEL]) == 0
    result = last_json_line(capsys.readouterr().out)
    assert result.keys() >= METRIC_KEYS
    assert result["model"] == model and result["count"] == 40
    assert all(0.0 <= result[k] <= 1.0 for k in METRIC_KEYS)
    assert result["hr@10"] <= result["hr@50"] <= result["hr@200"]
    assert (out / "metrics.json").exists()

    assert main(["evaluate", "--checkpoint", str(out / "checkpoint"), "--json"]) == 0
    again = last_json_line(capsys.readouterr().out)
    assert {k: again[k] for k in METRIC_KEYS} == {k: result[k] for k in METRIC_KEYS}
    assert again["epoch"] == result["epoch"]


def test_train_offline_reads_a_ratings_file(tmp_path, capsys) -> None:
    rows = ["userId,movieId,rating,timestamp"]
    for user in range(1, 13):
        rows += [f"{user},{(user + step) % 9 + 1},4.0,{1000 + step}" for step in range(6)]
    rows.append("3,oops")  # malformed: wrong field count
    data = tmp_path / "ratings.csv"
    data.write_text("\n".join(rows) + "\n")
    argv = ["train-offline", "--model", "hstu", "--data", str(data), "--epochs", "1"]
    argv += ["--out", str(tmp_path / "o"), "--json", "--no-progress", *TINY_MODEL]
    assert main(argv) == 2  # the CLI reports the bad line instead of a traceback
    assert re.search(r"ratings\.csv:\d+", capsys.readouterr().err)
    assert main([*argv, "--skip-malformed"]) == 0
    result = last_json_line(capsys.readouterr().out)
    assert result["count"] == 12
    meta = json.loads((tmp_path / "o" / "checkpoint" / "model.json").read_text())["meta"]
    assert meta["data"]["skipped_rows"] == 1


def test_model_choices_match_the_checkpointable_models() -> None:
    from model.serialize import MODEL_KINDS
    from pipeline.commands.offline import MODEL_NAMES

    assert sorted(MODEL_NAMES) == sorted(MODEL_KINDS)


def test_building_the_parser_does_not_import_torch_or_kafka() -> None:
    """`genrec --help` must stay fast: heavy libraries load only when a command runs."""
    code = (
        "import sys; from pipeline.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'kafka', 'apache_beam') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_protocol_option_round_trips_through_evaluate(tmp_path, capsys) -> None:
    out = tmp_path / "ref"
    argv = ["train-offline", "--model", "sasrec", "--epochs", "1", "--out", str(out)]
    argv += ["--exclude-seen", "--adam-beta2", "0.98"]
    assert main([*argv, "--json", "--no-progress", *TINY_DATA, *TINY_MODEL]) == 0
    result = last_json_line(capsys.readouterr().out)
    assert result["protocol"] == "exclude-seen" and result["train_split"] == "paper"
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved["test_by_protocol"]) == {"all-items", "exclude-seen"}
    # evaluate defaults to the checkpoint's protocol and can switch to the other one
    assert main(["evaluate", "--checkpoint", str(out / "checkpoint"), "--json"]) == 0
    again = last_json_line(capsys.readouterr().out)
    assert again["protocol"] == "exclude-seen"
    assert {k: again[k] for k in METRIC_KEYS} == {k: result[k] for k in METRIC_KEYS}
    ck = str(out / "checkpoint")
    assert main(["evaluate", "--checkpoint", ck, "--no-exclude-seen", "--json"]) == 0
    other = last_json_line(capsys.readouterr().out)
    assert other["protocol"] == "all-items"
    expected = saved["test_by_protocol"]["all-items"]
    assert {k: other[k] for k in METRIC_KEYS} == {k: expected[k] for k in METRIC_KEYS}


def test_architecture_choices_match_the_model() -> None:
    from typing import get_args

    from model.hstu import LAYER_NORMS
    from model.sasrec import SASREC_STYLES
    from pipeline.offline.config import HSTULayerNorm, SASRecStyle

    assert get_args(SASRecStyle) == SASREC_STYLES
    assert get_args(HSTULayerNorm) == LAYER_NORMS


def _parsed(flags: list[str]) -> tuple[Any, Any]:
    """The train config and HSTU / SASRec model configs ``train-offline FLAGS`` would run."""
    from pipeline.cli import build_parser
    from pipeline.commands.offline import model_config_from_args, train_config_from_args
    from pipeline.offline.config import load_preset

    args = build_parser().parse_args(["train-offline", "--out", "unused", *flags])
    preset = load_preset(args.preset)
    models = {kind: model_config_from_args(kind, args, preset) for kind in ("hstu", "sasrec")}
    return train_config_from_args(args, preset, seed=0, progress=False), models


def test_a_preset_sets_the_fields_that_have_no_flag() -> None:
    from bench.offline_quality import parse_args
    from pipeline.commands.offline import train_config_from_args
    from pipeline.offline.config import TrainConfig, load_preset

    cfg, models = _parsed(["--preset", "issue12-row0"])
    assert (cfg.split, cfg.per_position_negatives, cfg.init) == ("holdout", False, "genrec")
    assert (cfg.epochs, cfg.adam_beta2, cfg.train_windows) == (10, 0.999, "last")
    assert (cfg.lr, cfg.num_negatives) == (TrainConfig.lr, TrainConfig.num_negatives)
    assert models["hstu"]["layer_norm"] == "affine" and models["sasrec"]["style"] == "genrec"
    # the bench reads the same flags and presets
    bench = parse_args(["--preset", "issue12-row0"])
    assert train_config_from_args(bench, load_preset(bench.preset), 0, False) == cfg
    # no preset: the defaults, and the reference's layers
    cfg, models = _parsed([])
    assert cfg == TrainConfig(progress=False)
    assert models["hstu"]["layer_norm"] == "plain" and models["sasrec"]["style"] == "reference"


def test_flags_given_override_the_preset_even_at_their_default() -> None:
    flags = ["--preset", "issue12-row0", "--epochs", "3", "--train-windows", "all"]
    cfg, models = _parsed([*flags, "--adam-beta2", "0.98", "--sparse-embeddings"])
    assert (cfg.epochs, cfg.train_windows, cfg.adam_beta2) == (3, "all", 0.98)
    assert cfg.sparse_embeddings and (cfg.split, cfg.init) == ("holdout", "genrec")
    assert models["hstu"]["layer_norm"] == "affine"


def test_tail_average_flag_and_the_presets_of_rows_before_it() -> None:
    assert _parsed(["--tail-average", "0.5"])[0].tail_average == 0.5
    assert _parsed([])[0].averaged_epochs() == 10
    # rows 2-4 kept the last epoch's weights; rows 0-1 select an epoch (holdout)
    for row in (2, 3, 4):
        assert _parsed(["--preset", f"issue12-row{row}"])[0].tail_average == 0.0


def test_every_shipped_preset_loads_and_sets_only_train_config_fields() -> None:
    from dataclasses import fields

    from pipeline.offline.config import Preset, TrainConfig, load_preset, preset_names

    assert preset_names() == [f"issue12-row{row}" for row in range(5)]
    for name in preset_names():
        assert load_preset(name) != Preset()
    run_fields = {"seed", "device", "progress"}  # how a run runs, not what it trains
    train_fields = {f.name for f in fields(TrainConfig)} - run_fields
    assert set(Preset.model_fields) == train_fields | {"hstu_layer_norm", "sasrec_style"}


def test_an_unknown_preset_is_one_error_line_listing_the_known_ones(tmp_path, capsys) -> None:
    argv = ["train-offline", "--out", str(tmp_path), "--preset", "nope", *TINY_DATA]
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "'nope'" in err[0] and "issue12-row0, issue12-row1" in err[0]


@pytest.mark.parametrize(
    ("text", "key"),
    [("epochs: 10\nlr_schedule: cosine\n", "lr_schedule"), ("split: nope\n", "split")],
)
def test_a_bad_preset_key_or_value_is_one_error_line(
    text: str, key: str, tmp_path, monkeypatch, capsys
) -> None:
    import pipeline.offline.config

    (tmp_path / "bad.yaml").write_text(text)
    monkeypatch.setattr(pipeline.offline.config, "PRESET_DIR", tmp_path)
    assert main(["train-offline", "--out", str(tmp_path / "o"), "--preset", "bad"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"genrec train-offline: error: {tmp_path / 'bad.yaml'}: {key}: ")
    assert not (tmp_path / "o").exists()


def test_evaluate_takes_the_out_directory_or_its_checkpoint_folder(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["train-offline", "--model", "hstu", "--epochs", "1", "--out", str(out), "--json"]
    assert main([*argv, "--no-progress", *TINY_DATA, *TINY_MODEL]) == 0
    capsys.readouterr()
    results = []
    for given in (out, out / "checkpoint"):  # as backfill bootstrap --weights takes them
        assert main(["evaluate", "--checkpoint", str(given), "--json"]) == 0
        results.append(last_json_line(capsys.readouterr().out))
    assert {k: results[0][k] for k in METRIC_KEYS} == {k: results[1][k] for k in METRIC_KEYS}


@pytest.mark.parametrize(
    "task", [["--task", "retrieval"], ["--task", "ranking", "--ranking-tasks", "like:value>=4"]]
)
def test_an_out_that_is_a_file_is_refused_before_training(task, tmp_path, capsys) -> None:
    out = tmp_path / "a-file"
    out.write_text("keep me")
    assert main(["train-offline", *task, "--out", str(out), *TINY_DATA, *TINY_MODEL]) == 2
    assert f"--out {out} is a file; give a directory" in capsys.readouterr().err
    assert out.read_text() == "keep me"
    under = out / "run"
    assert main(["train-offline", *task, "--out", str(under), *TINY_DATA, *TINY_MODEL]) == 2
    assert f"--out {under} lies under the file {out}; give a directory" in capsys.readouterr().err
