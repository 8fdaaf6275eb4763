"""Ranking tasks: label rules (action sets, value thresholds, NaN values), the head's shapes and
the weighted BCE loss against torch's."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model.ranking_heads import (
    RankingHead,
    RankingHeadConfig,
    RankingTask,
    labels_from_events,
    ranking_loss,
    task_weights,
)

CLICK = RankingTask("click", actions=frozenset({2, 5}), weight=1.0)  # click or purchase
LIKE = RankingTask("like", min_value=4.0, weight=0.5)  # rating >= 4


def test_action_set_and_value_threshold_rules() -> None:
    actions = torch.tensor([2, 1, 5, 0, 2])
    values = torch.tensor([4.0, 4.5, 3.9, float("nan"), float("nan")])
    labels = labels_from_events(actions, values, [CLICK, LIKE])
    assert labels.dtype == torch.float32 and labels.shape == (5, 2)
    # click: action 2 or 5        like: value >= 4, a threshold met exactly counts, NaN negative
    assert labels.tolist() == [
        [1.0, 1.0],  # action 2, value 4.0 (>= 4: positive)
        [0.0, 1.0],  # action 1 (view), value 4.5
        [1.0, 0.0],  # action 5, value 3.9
        [0.0, 0.0],  # action 0, no value: negative
        [1.0, 0.0],  # action 2, no value: negative for like
    ]


def test_a_value_task_needs_values_and_a_task_needs_exactly_one_rule() -> None:
    with pytest.raises(ValueError, match="no values"):
        labels_from_events(torch.tensor([2]), None, [LIKE])
    assert labels_from_events(torch.tensor([2]), None, [CLICK]).tolist() == [[1.0]]
    with pytest.raises(ValueError, match="exactly one positive rule"):
        RankingTask("both", actions=frozenset({2}), min_value=4.0)
    with pytest.raises(ValueError, match="exactly one positive rule"):
        RankingTask("none")
    with pytest.raises(ValueError, match="min_value must be finite"):
        RankingTask("nan", min_value=math.nan)


def test_loss_matches_torch_bce_by_task_with_weights() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 2, requires_grad=True)
    labels = torch.tensor([[1, 0], [0, 0], [1, 1], [0, 1], [1, 0], [0, 0]], dtype=torch.float32)
    # unweighted: sum_k task_weight_k * mean_n BCE
    expected = sum(
        w * F.binary_cross_entropy_with_logits(logits[:, k], labels[:, k])
        for k, w in enumerate(task_weights([CLICK, LIKE]))
    )
    got = ranking_loss(logits, labels, task_weights([CLICK, LIKE]))
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    # example weights: per task sum(w * bce) / sum(w)
    ew = torch.tensor([2.0, 1.0, 0.0, 1.0, 3.0, 1.0])
    expected_w = sum(
        w
        * F.binary_cross_entropy_with_logits(logits[:, k], labels[:, k], weight=ew, reduction="sum")
        / ew.sum()
        for k, w in enumerate([1.0, 0.5])
    )
    got_w = ranking_loss(logits, labels, torch.tensor([1.0, 0.5]), example_weights=ew)
    assert got_w.item() == pytest.approx(expected_w.item(), rel=1e-6)
    got_w.backward()
    assert logits.grad is not None and logits.grad[2].abs().sum() == 0  # weight 0: no gradient


def test_loss_by_hand_and_edge_cases() -> None:
    # logit 0 -> p = 0.5 -> BCE ln 2 whatever the label; two tasks weighted 1 and 0.5: 1.5 ln 2
    loss = ranking_loss(torch.zeros(3, 2), torch.tensor([[1.0, 0.0]] * 3), [1.0, 0.5])
    assert loss.item() == pytest.approx(1.5 * math.log(2), rel=1e-6)
    assert ranking_loss(torch.zeros(0, 2), torch.zeros(0, 2), [1.0, 1.0]).item() == 0.0
    with pytest.raises(ValueError, match="one weight per task"):
        ranking_loss(torch.zeros(3, 2), torch.zeros(3, 2), [1.0])
    with pytest.raises(ValueError, match=r"\[N, num_tasks\]"):
        ranking_loss(torch.zeros(3, 2), torch.zeros(3, 1), [1.0, 1.0])


def test_head_outputs_one_logit_per_task() -> None:
    head = RankingHead(RankingHeadConfig(state_dim=8, item_dim=4, num_tasks=3, hidden=(16,)))
    out = head(torch.randn(5, 8), torch.randn(5, 4))
    assert out.shape == (5, 3)
    loss = ranking_loss(out, torch.ones(5, 3), [1.0, 1.0, 1.0])
    loss.backward()
    assert all(p.grad is not None for p in head.parameters())
