"""``genrec train-offline`` / ``genrec evaluate`` end to end on tiny data."""

from __future__ import annotations

import json
import re
import subprocess
import sys

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
METRIC_KEYS = {"hr@10", "hr@50", "hr@200", "ndcg@10", "ndcg@50", "ndcg@200", "mrr"}


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


def test_protocol_and_split_options_round_trip_through_evaluate(tmp_path, capsys) -> None:
    out = tmp_path / "ref"
    argv = ["train-offline", "--model", "sasrec", "--epochs", "1", "--out", str(out)]
    argv += ["--split", "paper", "--exclude-seen", "--per-position-negatives"]
    argv += ["--init", "reference", "--sasrec-style", "reference", "--adam-beta2", "0.98"]
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
    from model.hstu import LAYER_NORMS
    from model.sasrec import SASREC_STYLES as MODEL_STYLES
    from pipeline.commands.offline import HSTU_LAYER_NORMS, SASREC_STYLES

    assert SASREC_STYLES == MODEL_STYLES
    assert HSTU_LAYER_NORMS == LAYER_NORMS


def test_weight_average_and_warmup_options_reach_the_train_config() -> None:
    from bench.offline_quality import parse_args
    from pipeline.cli import build_parser
    from pipeline.commands.offline import train_config_from_args

    flags = ["--weight-average", "ema", "--ema-decay", "0.9", "--lr-warmup-steps", "20"]
    cli = build_parser().parse_args(["train-offline", "--out", "unused", *flags])
    bench = parse_args(flags)
    for args in (cli, bench):
        cfg = train_config_from_args(args, seed=0, progress=False)
        assert (cfg.weight_average, cfg.ema_decay, cfg.lr_warmup_steps) == ("ema", 0.9, 20)
    default = train_config_from_args(parse_args([]), seed=0, progress=False)
    assert (default.weight_average, default.lr_warmup_steps) == ("none", 0)


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
