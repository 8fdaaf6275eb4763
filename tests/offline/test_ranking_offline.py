"""Offline generative ranking: the time split, the training and test windows, ranking task
specs, and ``genrec train-offline --task ranking`` end to end on the synthetic impressions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model.ranking_heads import task_from_dict
from model.serialize import load_checkpoint, model_kind
from pipeline.cli import main
from pipeline.events.ranking_tasks import parse_ranking_tasks
from pipeline.lake.datasets import SequenceDataset
from pipeline.lake.synthetic_actions import ActionStreamConfig
from pipeline.offline.config import TrainConfig
from pipeline.offline.ranking import (
    build_ranking_model,
    evaluation_windows,
    ranking_batch,
    train_ranking,
    training_windows,
)
from pipeline.offline.splits import time_split
from pipeline.offline.training import load_sequences

NAN = np.nan
LIKE = tuple(task_from_dict(t) for t in parse_ranking_tasks("like:value>=4,click:action:click"))


def two_users() -> SequenceDataset:
    """user 0: 6 events at t = 10..60, user 1: 4 events at t = 15, 35, 55, 65; item row =
    index + 1; events 0, 2, 7 are clicks (action 2) rated 5, 3, 4; the others views."""
    actions = np.array([2, 1, 2, 1, 1, 1, 1, 2, 1, 1])
    return SequenceDataset(
        item_ids=np.arange(1, 11),
        timestamps=np.array([10, 20, 30, 40, 50, 60, 15, 35, 55, 65]),
        actions=actions,
        offsets=np.array([0, 6, 10]),
        item_keys=np.array([None, *range(100, 110)], dtype=object),
        user_keys=np.array([0, 1]),
        values=np.where(actions == 2, [5, 0, 3, 0, 0, 0, 0, 4, 0, 0], NAN).astype(np.float32),
    )


def test_time_split_trains_before_the_cutoff_and_tests_after_it() -> None:
    ds = two_users()
    split = time_split(ds, 0.3)  # times sorted: the 7th of 10 (index 7) is 55
    assert split.cutoff == 55
    assert split.before.tolist() == [5, 2]
    assert (split.train.timestamps < split.cutoff).all()
    test = evaluation_windows(split, max_len=10, per_window=8)
    batch, _ = ranking_batch(ds, test, LIKE)
    cand = batch.candidate_mask().numpy()
    times = batch.timestamps.numpy()
    assert (times[cand] >= split.cutoff).all() and (times[~cand] < split.cutoff).all()
    assert sorted(batch.item_ids[batch.candidate_mask()].tolist()) == [6, 9, 10]
    with pytest.raises(ValueError, match="test_fraction"):
        time_split(ds, 1.0)


def test_test_history_is_the_last_pre_cutoff_events_and_candidates_are_chunked() -> None:
    split = time_split(two_users(), 0.3)
    test = evaluation_windows(split, max_len=3, per_window=1)  # history: 2 events, 1 candidate
    assert test.users.tolist() == [0, 1, 1]
    assert test.hist_lo.tolist() == [3, 6, 6] and test.hist_hi.tolist() == [5, 8, 8]
    assert sorted(zip(test.cand_lo.tolist(), test.cand_hi.tolist(), strict=True)) == [
        (5, 6),
        (8, 9),
        (9, 10),
    ]


def test_training_windows_label_candidates_from_their_events_and_keep_them_out_of_history():
    ds = two_users()
    split = time_split(ds, 0.3)
    windows = training_windows(split, max_len=10, per_window=2)
    # user 0 trains on events 0..4: candidates [3, 5) then [1, 3) (event 0 has no history);
    # user 1 on 6, 7: [7, 8)
    pairs = list(zip(windows.cand_lo.tolist(), windows.cand_hi.tolist(), strict=True))
    assert pairs == [(3, 5), (1, 3), (7, 8)]
    assert (windows.hist_hi == windows.cand_lo).all() and windows.hist_lo.tolist() == [0, 0, 6]
    batch, labels = ranking_batch(ds, windows, LIKE)
    assert batch.num_targets.tolist() == [2, 2, 1]
    assert batch.item_ids.tolist() == [1, 2, 3, 4, 5, 1, 2, 3, 7, 8]
    assert batch.item_ids[batch.candidate_mask()].tolist() == [4, 5, 2, 3, 8]
    # (like = value >= 4, click): events 3, 4, 1 are views, 2 a click rated 3, 7 one rated 4
    assert labels.tolist() == [[0, 0], [0, 0], [0, 0], [0, 1], [1, 1]]
    # history rows after each window's first are retrieval targets; candidates never
    assert batch.target_mask().nonzero().flatten().tolist() == [1, 2]
    # a short max_len keeps only the events just before the candidates
    short = training_windows(split, max_len=2, per_window=2)
    assert short.hist_lo.tolist() == [2, 0, 6]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("value>=4", "not NAME:RULE"),
        ("like:value>4", "cannot label a ranking task"),
        ("like:all", "cannot label a ranking task"),
        ("like:value>=4@x", "weight 'x' is not a number"),
        ("like:action:nope", "'nope' is neither an action name"),
        ("like:value>=4,like:action:click", "names must be unique"),
        ("", "no ranking task"),
    ],
)
def test_bad_ranking_task_specs_name_the_setting(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        parse_ranking_tasks(spec)
    assert str(err.value).startswith("--ranking-tasks: ")


def test_ranking_task_specs_share_the_positives_grammar() -> None:
    tasks = parse_ranking_tasks("like:value >= 4.5@0.5,buy:action:click, 5")
    assert tasks == (
        {"name": "like", "actions": [], "min_value": 4.5, "weight": 0.5},
        {"name": "buy", "actions": [2, 5], "min_value": None, "weight": 1.0},
    )


TINY = [
    "--synthetic-users", "150", "--synthetic-items", "40", "--synthetic-events-per-user", "30",
    "--embedding-dim", "16", "--num-layers", "1", "--max-len", "12", "--num-negatives", "8",
    "--epochs", "6", "--batch-size", "8", "--threads", "1", "--json", "--no-progress",
]  # fmt: skip
TASKS = ["--task", "ranking", "--ranking-tasks", "click:action:click,like:value>=4@0.5"]


def test_without_validation_every_epoch_trains_and_the_last_is_tested(tmp_path, capsys):
    out = tmp_path / "dlrm"
    argv = ["train-offline", "--model", "dlrm", "--out", str(out), "--validation-fraction", "0"]
    assert main([*argv, *TASKS, *TINY]) == 0
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["epoch"] == 6 and len(saved["train_history"]) == 6
    assert "calibration" not in saved and "validation_auc" not in saved["train_history"][0]


@pytest.mark.parametrize("model", ["hstu", "sasrec", "dlrm"])
def test_train_offline_ranking_end_to_end(model: str, tmp_path, capsys) -> None:
    out = tmp_path / model
    assert main(["train-offline", "--model", model, "--out", str(out), *TASKS, *TINY]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["model"] == model and result["task"] == "ranking" and result["split"] == "time"
    for task in ("click", "like"):
        assert 0.0 <= result[f"{task}/auc"] <= 1.0 and result[f"{task}/count"] > 100
        low, high = result[f"{task}/auc_ci95"]
        assert low <= result[f"{task}/auc"] <= high
        assert {f"{task}/{m}" for m in ("ne", "log_loss", "accuracy", "base_rate")} <= set(result)
    saved = json.loads((out / "metrics.json").read_text())
    # the epoch tested is the best on the validation slice, its logits calibrated there
    history = saved["train_history"]
    assert 1 <= len(history) <= 6 and all("validation_auc" in h for h in history)
    best = max(history, key=lambda h: h["validation_auc"])
    assert saved["epoch"] == best["epoch"] and len(history) in (6, best["epoch"] + 3)
    assert set(saved["calibration"]) == {"click", "like"}
    loaded, meta = load_checkpoint(out / "checkpoint")
    assert meta["epoch"] == best["epoch"] and meta["calibration"] == saved["calibration"]
    assert model_kind(loaded) == model and meta["train_config"]["task"] == "ranking"
    assert [t["name"] for t in loaded.cfg.ranking_tasks] == ["click", "like"]
    assert main(["evaluate", "--checkpoint", str(out)]) == 2
    assert "a ranking model" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task", "ranking"], "--ranking-tasks: --task ranking needs at least one task"),
        ([*TASKS[:3], "like:value>4"], "cannot label a ranking task"),
        ([*TASKS, "--model", "popular"], "--model popular cannot rank"),
        ([*TASKS, "--test-fraction", "0"], "--test-fraction must be in"),
        ([*TASKS, "--validation-fraction", "1"], "--validation-fraction must be in"),
        ([*TASKS, "--patience", "0"], "--patience must be >= 1"),
        (["--model", "dlrm"], "--model dlrm ranks only"),
        (TASKS[2:], "ranking tasks need --task ranking"),
    ],
)
def test_train_offline_ranking_bad_settings(argv: list[str], message: str, tmp_path, capsys):
    assert main(["train-offline", "--out", str(tmp_path), *argv, *TINY]) == 2
    assert message in capsys.readouterr().err


# The acceptance test's stream: the documented generator with its label driven by the last
# click (memory 0: the short-term taste is the last clicked item; no long-term part), a sharp
# preference, few items (each seen often) and interests that jump now and then. Only the
# order of the history says which click was last; a pooled history mixes several interests.
LAST_CLICK_STREAM = ActionStreamConfig(
    num_users=600, num_items=50, events_per_user=60, dim=4, long_term_weight=0.0, memory=0.0,
    shift_prob=0.05, sharpness=20.0, seed=0,
)  # fmt: skip


@pytest.mark.timeout(600)
def test_hstu_ranks_the_synthetic_stream_well_above_the_dlrm_baseline() -> None:
    """The issue's acceptance test: HSTU's click AUC at least 0.1 above DLRM's, on the same
    time split (the last 3% of events test: a few events per user, soon after its history),
    and their 95% user-bootstrap intervals apart, and HSTU's calibrated NE below 1. Measured
    (the default epoch selection and calibration on the latest 10% of the training events,
    HSTU in its ranking form): HSTU 0.786 [0.743, 0.824], NE 0.825; DLRM 0.566 [0.502,
    0.624], NE 0.996; 26 s alone, 285 s beside a load of 8 on 2 cores (hence the timeout). The auxiliary retrieval loss is off:
    impressions are drawn regardless of the user, so the next one cannot be predicted."""
    torch.set_num_threads(1)
    ds, _ = load_sequences(None, synthetic=LAST_CLICK_STREAM, min_length=1)
    split = time_split(ds, 0.03)
    cfg = TrainConfig(
        task="ranking", ranking_tasks="click:action:click", epochs=10, lr=3e-3, batch_size=16,
        candidates_per_window=4, aux_retrieval_weight=0.0, progress=False,
    )  # fmt: skip
    encoder = {"embedding_dim": 32, "num_layers": 1, "max_len": 30, "dropout": 0.1}
    hstu = {**encoder, "input_dropout": 0.1, "action_inputs": True, "layer_norm": "plain"}
    results = {
        kind: train_ranking(kind, config, split, cfg, max_len=30).test
        for kind, config in (("hstu", hstu), ("dlrm", {"dim": 32}))
    }
    print(
        {kind: (r["click/auc"], r["click/auc_ci95"], r["click/ne"]) for kind, r in results.items()}
    )
    assert results["hstu"]["click/auc"] >= results["dlrm"]["click/auc"] + 0.1
    assert results["hstu"]["click/auc_ci95"][0] > results["dlrm"]["click/auc_ci95"][1]
    assert results["hstu"]["click/ne"] < 1.0  # calibrated on the validation slice


def test_offline_hstu_ranks_in_its_ranking_form_unless_told_otherwise() -> None:
    tasks = parse_ranking_tasks("like:value>=4", setting=None)
    model = build_ranking_model("hstu", {"embedding_dim": 32, "num_heads": 2}, 10, tasks)
    assert (model.cfg.output, model.cfg.alpha, model.cfg.attention_bias_init) == (
        "concat",
        0.25,  # 1/sqrt(32 / 2)
        1.0,
    )
    told = build_ranking_model("hstu", {"output": "gated", "alpha": 1.0}, 10, tasks)
    assert (told.cfg.output, told.cfg.alpha) == ("gated", 1.0)
    assert build_ranking_model("sasrec", {}, 10, tasks).cfg.ranking_tasks
