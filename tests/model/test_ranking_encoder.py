"""Ranking heads inside the encoders: logits per candidate and task, no label leak through a
candidate's own action, checkpoints with and without heads."""

from __future__ import annotations

import pytest
import torch

from model.hstu import HSTU, HSTUConfig
from model.jagged import JaggedBatch
from model.ranking_heads import check_tasks
from model.sasrec import SASRec, SASRecConfig
from model.serialize import load_checkpoint, save_checkpoint

TASKS = (
    {"name": "click", "actions": [2, 5], "min_value": None, "weight": 1.0},
    {"name": "like", "actions": [], "min_value": 4.0, "weight": 0.5},
)


def make(kind: str, tasks=TASKS, action_inputs: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    common = dict(embedding_dim=16, max_len=10, action_inputs=action_inputs, ranking_tasks=tasks)
    if kind == "hstu":
        return HSTU(HSTUConfig(40, attention_backend="reference", **common)).eval()
    return SASRec(SASRecConfig(40, **common)).eval()


def batch(actions: list[int], values: list[float]) -> JaggedBatch:
    # one user: 4 history events, then 2 candidates
    return JaggedBatch.from_lists(
        [[3, 7, 9, 11, 20, 21]],
        [[10, 20, 30, 40, 50, 50]],
        action_types=[actions],
        values=[values],
        num_targets=[2],
    )


@pytest.mark.parametrize("kind", ["hstu", "sasrec"])
def test_rank_gives_one_logit_per_candidate_and_task(kind: str) -> None:
    model = make(kind)
    b = batch([2, 1, 3, 2, 0, 0], [5.0, float("nan"), 3.0, 4.0, float("nan"), float("nan")])
    with torch.no_grad():
        logits = model.rank(b, model.encode(b))
    assert logits.shape == (2, 2)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("kind", ["hstu", "sasrec"])
def test_a_candidates_own_action_and_value_never_reach_its_logits(kind: str) -> None:
    model = make(kind)
    base = [2, 1, 3, 2]
    nan = float("nan")
    plain = batch([*base, 0, 0], [5.0, nan, 3.0, 4.0, nan, nan])
    labelled = batch([*base, 5, 2], [5.0, nan, 3.0, 4.0, 5.0, 1.0])  # the labels themselves
    other_history = batch([1, 1, 1, 1, 0, 0], [nan, nan, nan, nan, nan, nan])
    with torch.no_grad():
        a = model.rank(plain, model.encode(plain))
        b = model.rank(labelled, model.encode(labelled))
        c = model.rank(other_history, model.encode(other_history))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c, atol=1e-5)  # the history's actions are inputs


def test_a_model_without_tasks_has_the_parameters_it_had_and_cannot_rank() -> None:
    model = make("hstu", tasks=(), action_inputs=False)
    assert not any(name.startswith("ranking_head") for name, _ in model.named_parameters())
    b = batch([0] * 6, [float("nan")] * 6)
    with pytest.raises(ValueError, match="no ranking tasks"):
        model.rank(b, model.encode(b))


@pytest.mark.parametrize("kind", ["hstu", "sasrec"])
def test_checkpoints_carry_the_heads_and_old_ones_load_retrieval_only(kind: str, tmp_path) -> None:
    model = make(kind)
    save_checkpoint(tmp_path / "ranked", model, {})
    loaded, _ = load_checkpoint(tmp_path / "ranked")
    assert loaded.cfg.ranking_tasks == model.cfg.ranking_tasks
    b = batch([2, 1, 3, 2, 0, 0], [5.0] * 6)
    with torch.no_grad():
        torch.testing.assert_close(loaded.rank(b, loaded.encode(b)), model.rank(b, model.encode(b)))
    old = make(kind, tasks=(), action_inputs=False)
    save_checkpoint(tmp_path / "old", old, {})
    assert load_checkpoint(tmp_path / "old")[0].ranking_head is None


def test_task_lists_are_checked() -> None:
    assert check_tasks([{"name": "a", "actions": [2]}])[0]["weight"] == 1.0
    for bad, match in (
        ([{"name": "a", "actions": [2]}, {"name": "a", "min_value": 4}], "unique"),
        ([{"name": "a"}], "exactly one positive rule"),
        ([{"name": "a", "actions": [2], "min_value": 4}], "exactly one positive rule"),
        ([{"name": "a", "actions": ["click"]}], "int codes"),
        ([{"name": "a", "actions": [2], "colour": 1}], "only the keys"),
    ):
        with pytest.raises(ValueError, match=match):
            check_tasks(bad)
