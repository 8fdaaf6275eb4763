"""Loss, metrics, retrieval and the most-popular baseline on hand-computed tiny cases."""

from __future__ import annotations

import math

import pytest
import torch

from model.losses import sample_negatives, sampled_softmax_loss
from model.metrics import RankingAccumulator, ranking_metrics, target_ranks
from model.popular import MostPopular, PopularConfig
from model.retrieval import top_k

# 5 rows (row 0 padding), unit vectors in 2-D
TABLE = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8]])


def test_sampled_softmax_matches_hand_computation_with_accidental_hit_masked() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([1, 2])
    negatives = torch.tensor([2, 3, 1])  # row 1 is target 0's accidental hit, row 2 target 1's
    temp = 0.5
    loss = sampled_softmax_loss(q, targets, TABLE, negatives=negatives, temperature=temp)
    # query 0: pos 1.0; negatives 2 -> 0.0, 3 -> -1.0, 1 -> masked
    l0 = -math.log(math.exp(1 / temp) / (math.exp(1 / temp) + math.exp(0) + math.exp(-1 / temp)))
    # query 1: pos 1.0; negatives 2 -> masked, 3 -> 0.0, 1 -> 0.0
    l1 = -math.log(math.exp(1 / temp) / (math.exp(1 / temp) + 2 * math.exp(0)))
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    weighted = sampled_softmax_loss(
        q, targets, TABLE, negatives=negatives, temperature=temp, weights=torch.tensor([3.0, 1.0])
    )
    assert weighted.item() == pytest.approx((3 * l0 + l1) / 4, rel=1e-6)


def test_temperature_sharpens_the_softmax() -> None:
    q = torch.tensor([[0.6, 0.8]])
    args = (q, torch.tensor([4]), TABLE)
    negs = torch.tensor([1, 2])
    hot = sampled_softmax_loss(*args, negatives=negs, temperature=1.0).item()
    cold = sampled_softmax_loss(*args, negatives=negs, temperature=0.05).item()
    expected_hot = -math.log(math.e / (math.e + math.exp(0.6) + math.exp(0.8)))
    assert hot == pytest.approx(expected_hot, rel=1e-6)
    assert cold < hot


def test_sampled_softmax_draws_negatives_reproducibly_and_backpropagates() -> None:
    q = torch.tensor([[1.0, 0.0]], requires_grad=True)
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    a = sampled_softmax_loss(q, torch.tensor([1]), TABLE, num_negatives=4, generator=gen())
    b = sampled_softmax_loss(q, torch.tensor([1]), TABLE, num_negatives=4, generator=gen())
    assert a.item() == b.item()
    a.backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    empty = sampled_softmax_loss(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), TABLE)
    assert empty.item() == 0.0


def test_sample_negatives_respects_rows() -> None:
    gen = torch.Generator().manual_seed(0)
    drawn = sample_negatives(2000, 5, generator=gen)
    assert set(drawn.tolist()) == {1, 2, 3, 4}
    live = torch.tensor([2, 4])
    assert set(sample_negatives(500, 5, live, generator=gen).tolist()) == {2, 4}
    with pytest.raises(ValueError, match="empty"):
        sample_negatives(3, 5, torch.tensor([], dtype=torch.long))


def test_target_ranks_are_pessimistic_and_ignore_padding() -> None:
    scores = torch.tensor(
        [
            [9.0, 0.5, 0.3, 0.5, 0.1],  # target 1 ties row 3 -> rank 2; row 0 never counts
            [9.0, 0.1, 0.2, 0.3, 0.4],  # target 4 is best -> 1
            [0.0, 1.0, 1.0, 1.0, 1.0],  # all tied -> worst rank 4
        ]
    )
    ranks = target_ranks(scores, torch.tensor([1, 4, 2]))
    assert ranks.tolist() == [2, 1, 4]
    sub = target_ranks(scores, torch.tensor([1, 4, 2]), candidate_rows=torch.tensor([1, 2]))
    assert sub.tolist() == [1, 1, 2]


def test_ranking_metrics_hand_values() -> None:
    m = ranking_metrics(torch.tensor([1, 3, 20]), ks=(1, 10))
    assert m["hr@1"] == pytest.approx(1 / 3)
    assert m["hr@10"] == pytest.approx(2 / 3)
    assert m["ndcg@10"] == pytest.approx((1.0 + 1 / math.log2(4)) / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 20) / 3)
    acc = RankingAccumulator(ks=(1, 10))
    acc.update(torch.tensor([1]))
    acc.update(torch.tensor([3, 20]))
    assert acc.result() == pytest.approx(m)


def test_top_k_excludes_history_and_padding() -> None:
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0], [5.0, 1.0, 2.0, 3.0, 4.0]])
    vals, rows = top_k(
        scores, 2, exclude_items=torch.tensor([1, 4]), exclude_offsets=torch.tensor([0, 1, 2])
    )
    assert rows.tolist() == [[2, 3], [3, 2]]
    assert vals.tolist() == [[3.0, 2.0], [3.0, 2.0]]
    _, rows = top_k(scores, 10, candidate_rows=torch.tensor([2, 4]))
    assert rows[:, :2].tolist() == [[2, 4], [4, 2]]


def test_most_popular_counts_training_events() -> None:
    model = MostPopular(PopularConfig(num_rows=5))
    model.fit(torch.tensor([2, 2, 3, 2, 0, 3, 1]))
    assert model.counts.tolist() == [0.0, 1.0, 3.0, 2.0, 0.0]
    ranks = target_ranks(model.scores(2), torch.tensor([2, 4]))
    assert ranks.tolist() == [1, 4]
    with pytest.raises(ValueError, match="outside the item table"):
        model.fit(torch.tensor([5]))


def test_per_position_negatives_have_shape_positions_by_r() -> None:
    from model.losses import sample_negatives_per_position

    gen = torch.Generator().manual_seed(0)
    drawn = sample_negatives_per_position(7, 5, 4, generator=gen)
    assert drawn.shape == (7, 5)
    assert drawn.min() >= 1 and drawn.max() <= 3
    # independent per position: rows are not all copies of one shared set
    assert len({tuple(row) for row in drawn.tolist()}) > 1
    live = torch.tensor([2, 4])
    assert set(sample_negatives_per_position(3, 50, 5, live, gen).flatten().tolist()) == {2, 4}


def test_per_position_loss_matches_hand_computation_with_hits_masked() -> None:
    from model.losses import ACCIDENTAL_HIT_LOGIT

    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([1, 2])
    # query 0's own negatives: 2 (0.0), 1 (accidental hit); query 1's: 3 (0.0), 2 (hit)
    negatives = torch.tensor([[2, 1], [3, 2]])
    temp = 0.5
    loss = sampled_softmax_loss(
        q, targets, TABLE, negatives=negatives, temperature=temp, per_position=True
    )
    hit = math.exp(ACCIDENTAL_HIT_LOGIT)  # the masked logit: exp(-5e4) == 0 in float64
    l0 = -math.log(math.exp(1 / temp) / (math.exp(1 / temp) + math.exp(0) + hit))
    l1 = -math.log(math.exp(1 / temp) / (math.exp(1 / temp) + math.exp(0) + hit))
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    # unmasked, a hit would add exp(1 / temp) to the denominator: the loss would be larger
    assert loss.item() < math.log(2 + math.exp(-1 / temp))
    # query 1 against negatives [1, 4]: cos 0.0 and 0.8, no hits
    weighted = sampled_softmax_loss(
        q,
        targets,
        TABLE,
        negatives=torch.tensor([[2, 1], [1, 4]]),
        temperature=temp,
        weights=torch.tensor([1.0, 3.0]),
        per_position=True,
    )
    l1b = -math.log(math.exp(2) / (math.exp(2) + math.exp(0) + math.exp(1.6)))
    assert weighted.item() == pytest.approx((l0 + 3 * l1b) / 4, rel=1e-6)
    with pytest.raises(ValueError, match=r"\[M=2, K\]"):
        sampled_softmax_loss(q, targets, TABLE, negatives=torch.tensor([2, 3]), per_position=True)


def test_per_position_loss_draws_reproducibly_and_backpropagates() -> None:
    q = torch.tensor([[1.0, 0.0], [0.6, 0.8]], requires_grad=True)
    targets = torch.tensor([1, 4])
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a = sampled_softmax_loss(q, targets, TABLE, num_negatives=6, generator=gen(), per_position=True)
    b = sampled_softmax_loss(q, targets, TABLE, num_negatives=6, generator=gen(), per_position=True)
    assert a.item() == b.item()
    a.backward()
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_exclude_seen_makes_a_previously_consumed_target_a_miss() -> None:
    # query 0: history [1, 2], target 2 (consumed before) -> a miss under the paper's protocol
    # query 1: history [4], target 1; item 4 scores above the target but is excluded
    scores = torch.tensor([[0.0, 0.9, 0.8, 0.1, 0.2], [0.0, 0.5, 0.1, 0.2, 0.9]])
    targets = torch.tensor([2, 1])
    assert target_ranks(scores, targets).tolist() == [2, 2]
    excluded = target_ranks(
        scores,
        targets,
        exclude_items=torch.tensor([1, 2, 4]),
        exclude_offsets=torch.tensor([0, 2, 3]),
    )
    assert excluded.tolist() == [5, 1]  # rank R (= 5) is past every real rank: a miss
    metrics = ranking_metrics(excluded, ks=(1, 3))
    assert metrics["hr@3"] == pytest.approx(0.5) and metrics["ndcg@3"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="M\\+1"):
        target_ranks(scores, targets, exclude_items=torch.tensor([1]), exclude_offsets=None)


def test_accumulator_ci95_is_the_normal_interval_over_targets() -> None:
    acc = RankingAccumulator(ks=(1,))
    acc.update(torch.tensor([1, 2, 1, 3]))  # hr@1 per target: 1, 0, 1, 0
    ci = acc.ci95()
    std = math.sqrt(((0.5**2) * 4) / 3)  # sample std of [1, 0, 1, 0]
    assert ci["hr@1_ci95"] == pytest.approx(1.96 * std / 2)
    assert set(ci) == {"hr@1_ci95", "ndcg@1_ci95", "mrr_ci95"}
    assert math.isnan(RankingAccumulator(ks=(1,)).ci95()["mrr_ci95"])
