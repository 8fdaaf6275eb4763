"""Ranking metrics (log loss, NE, AUC, accuracy) on hand-computed cases, the progressive
accumulator against the batch functions, and the bootstrap over users."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.ranking_metrics import (
    EPS,
    ProgressiveMetrics,
    accuracy,
    auc,
    binary_metrics,
    log_loss,
    normalized_entropy,
    task_metrics,
    user_bootstrap_intervals,
)


def brute_auc(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> float:
    """Every (positive, negative) pair: 1 if the positive scores higher, 0.5 on a tie."""
    pos, neg = y == 1, y == 0
    sp, sn = s[pos][:, None], s[neg][None, :]
    pair_w = w[pos][:, None] * w[neg][None, :]
    wins = (pair_w * ((sp > sn) + 0.5 * (sp == sn))).sum()
    return float(wins / pair_w.sum())


def test_log_loss_and_ne_by_hand() -> None:
    # -(ln 0.8 + ln 0.6) / 2 = (0.223144 + 0.510826) / 2 = 0.366985
    assert log_loss([1, 0], [0.8, 0.4]) == pytest.approx(0.366985, abs=1e-6)
    # base rate 1/2 -> base entropy ln 2 = 0.693147; NE = 0.366985 / 0.693147 = 0.529447
    assert normalized_entropy([1, 0], [0.8, 0.4]) == pytest.approx(0.529447, abs=1e-6)
    # base rate 1/4: H = -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.346574 + 0.215762 = 0.562335;
    # predicting the base rate everywhere has log loss H, so NE = 1
    assert normalized_entropy([1, 0, 0, 0], [0.25] * 4) == pytest.approx(1.0, abs=1e-12)
    # torch tensors work the same
    assert log_loss(torch.tensor([1, 0]), torch.tensor([0.8, 0.4])) == pytest.approx(
        0.366985, abs=1e-6
    )


def test_probabilities_are_clipped() -> None:
    # p = 0 for a positive: -ln(EPS) = -ln(1e-7) = 16.118096, not infinity
    assert log_loss([1], [0.0]) == pytest.approx(-math.log(EPS), rel=1e-6)
    assert log_loss([0], [1.0]) == pytest.approx(-math.log(EPS), rel=1e-3)


def test_all_equal_labels_leave_ne_and_auc_undefined() -> None:
    m = binary_metrics([1, 1, 1], [0.9, 0.8, 0.7])
    assert math.isnan(m["ne"]) and math.isnan(m["auc"])
    # log loss stays defined: -(ln 0.9 + ln 0.8 + ln 0.7) / 3 = (0.105361 + 0.223144 + 0.356675) / 3
    assert m["log_loss"] == pytest.approx(0.228393, abs=1e-6)
    assert m["accuracy"] == 1.0 and m["base_rate"] == 1.0 and m["count"] == 3.0


def test_auc_ties_count_half() -> None:
    assert auc([1, 1, 0, 0], [0.5, 0.5, 0.5, 0.5]) == 0.5  # every pair a tie
    # positive 0.3 vs negatives 0.3 (tie: 0.5) and 0.1 (win: 1) -> 1.5 / 2
    assert auc([1, 0, 0], [0.3, 0.3, 0.1]) == 0.75
    assert auc([1, 0], [0.9, 0.1]) == 1.0 and auc([0, 1], [0.9, 0.1]) == 0.0
    # logits or probabilities: only the order matters
    assert auc([1, 0, 1, 0], [2.0, -1.0, 0.0, 0.0]) == 0.875


def test_weights() -> None:
    # weighted AUC: the positive (0.5) beats the negative at 0.1 (w 1), loses to 0.7 (w 3): 1/4
    assert auc([1, 0, 0], [0.5, 0.7, 0.1], [1, 3, 1]) == 0.25
    # weight 2 = the example twice
    y, p, w = [1, 0, 0], [0.8, 0.4, 0.1], [2, 1, 1]
    dup_y, dup_p = [1, 1, 0, 0], [0.8, 0.8, 0.4, 0.1]
    for fn in (log_loss, normalized_entropy, auc, accuracy):
        assert fn(y, p, w) == pytest.approx(fn(dup_y, dup_p), abs=1e-12)
    # (2 * 0.223144 + 0.510826 + 0.105361) / 4 = 0.265619; base rate 2/4 -> / ln 2
    assert log_loss(y, p, w) == pytest.approx(0.265619, abs=1e-6)
    assert normalized_entropy(y, p, w) == pytest.approx(0.265619 / math.log(2), abs=1e-6)
    # weight 0 ignores an example: the wrong one at 0.9 no longer counts
    assert accuracy([1, 0, 0], [0.8, 0.9, 0.1], [1, 0, 1]) == 1.0


def test_accuracy_threshold_is_inclusive() -> None:
    assert accuracy([1, 0, 0], [0.5, 0.5, 0.49]) == pytest.approx(2 / 3)


def test_exact_auc_matches_every_pair_on_random_data() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.3).astype(float)
    s = np.round(rng.random(400) + 0.3 * y, 2)  # rounded: many ties
    w = rng.random(400) * 2
    assert auc(y, s) == pytest.approx(brute_auc(y, s, np.ones(400)), abs=1e-12)
    assert auc(y, s, w) == pytest.approx(brute_auc(y, s, w), abs=1e-12)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        log_loss([2, 0], [0.5, 0.5])
    with pytest.raises(ValueError, match="one value per example"):
        auc([1, 0], [0.5])
    with pytest.raises(ValueError, match="weights must be finite and >= 0"):
        accuracy([1, 0], [0.5, 0.5], [1, -1])


def random_stream(n: int, seed: int, ties: bool = False) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 2)) < [0.1, 0.4]).astype(float)
    p = 1 / (1 + np.exp(-(rng.normal(size=(n, 2)) + 1.5 * y - 1.0)))
    if ties:
        p = np.round(p, 2)
    w = rng.random(n) + 0.5
    return y, p, w


@pytest.mark.parametrize("ties", [False, True])
def test_progressive_equals_the_batch_functions_over_the_concatenation(ties: bool) -> None:
    y, p, w = random_stream(5000, seed=1, ties=ties)
    acc = ProgressiveMetrics(["click", "like"])
    for lo in range(0, 5000, 700):  # uneven batches
        acc.update(y[lo : lo + 700], p[lo : lo + 700], w[lo : lo + 700])
    result = acc.result()
    batch_all = task_metrics(y, p, ["click", "like"], w)
    for t, task in enumerate(("click", "like")):
        assert batch_all[f"{task}/ne"] == binary_metrics(y[:, t], p[:, t], w)["ne"]
        batch = binary_metrics(y[:, t], p[:, t], w)
        for name in ("log_loss", "ne", "accuracy", "base_rate", "count"):
            assert result[f"{task}/{name}"] == pytest.approx(batch[name], rel=1e-10)
        error = abs(result[f"{task}/auc"] - batch["auc"])
        bound = result[f"{task}/auc_error_bound"]
        assert error <= bound + 1e-12
        if not ties:
            assert bound < 1e-3  # 16,384 logit bins: few pairs share a bin
    # exact ties land in one bin, counted half like the exact AUC
    tied = ProgressiveMetrics()
    tied.update([1, 0, 0], [0.3, 0.3, 0.1])
    assert tied.result()["label/auc"] == 0.75


def test_progressive_before_any_update_and_with_one_class() -> None:
    acc = ProgressiveMetrics(["click"])
    assert math.isnan(acc.result()["click/log_loss"]) and acc.result()["click/count"] == 0.0
    acc.update([0, 0], [0.2, 0.3])
    r = acc.result()
    assert math.isnan(r["click/ne"]) and math.isnan(r["click/auc"])
    assert r["click/log_loss"] == pytest.approx(log_loss([0, 0], [0.2, 0.3]))
    acc.reset()
    assert acc.result()["click/count"] == 0.0
    with pytest.raises(ValueError, match=r"\[N, 1\]"):
        acc.update(np.zeros((2, 3)), np.zeros((2, 3)))


def test_bootstrap_over_users_is_seeded_and_covers_the_estimate() -> None:
    rng = np.random.default_rng(2)
    users = rng.integers(0, 200, 3000)
    skill = rng.normal(size=200)  # per-user effect: examples of a user are correlated
    y = (rng.random(3000) < 0.3).astype(float)
    p = 1 / (1 + np.exp(-(1.2 * y - 1.0 + skill[users])))
    a = user_bootstrap_intervals(y, p, users, num_resamples=200, seed=5)
    b = user_bootstrap_intervals(y, p, users, num_resamples=200, seed=5)
    assert a == b
    point = binary_metrics(y, p)
    for name, (lo, hi) in a.items():
        assert lo < point[name] < hi, name
    few = user_bootstrap_intervals(
        y[users < 20], p[users < 20], users[users < 20], num_resamples=200
    )
    assert few["auc"][1] - few["auc"][0] > a["auc"][1] - a["auc"][0]
    undefined = user_bootstrap_intervals([1, 1], [0.2, 0.3], ["u", "v"], num_resamples=10)
    assert all(math.isnan(x) for x in undefined["auc"])
