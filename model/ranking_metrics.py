"""Ranking metrics for binary tasks: log loss, normalised entropy (NE), AUC, accuracy.

Inputs are binary labels (0/1) and predicted probabilities (pass ``sigmoid(logits)``), with
optional per-example weights (weighted BCE; weight 0 ignores an example). Arrays may be numpy
or torch; the arithmetic is float64 numpy.

* **log loss**: weighted mean of ``-(y log p + (1 - y) log(1 - p))`` with ``p`` clipped to
  ``[EPS, 1 - EPS]``, so a confident wrong prediction costs a finite ``-log(EPS)``.
* **NE** (He et al., "Practical lessons from predicting clicks on ads at Facebook", 2014):
  log loss divided by the entropy of the base rate, the weighted label mean *of the labels
  evaluated* (in a progressive accumulator: of every label seen so far). NE < 1 beats always
  predicting the base rate. When all labels are equal the base entropy is 0 and NE is
  undefined: it is NaN.
* **AUC**: probability that a random positive scores above a random negative, ties counted
  half (the Mann-Whitney statistic), from one sort: O(n log n). NaN without both classes.
* **accuracy**: predictions ``p >= 0.5`` against the labels.

>>> labels, probs = [1, 0, 1, 0], [0.9, 0.2, 0.6, 0.6]
>>> round(auc(labels, probs), 4)  # pairs: 0.9>0.2, 0.9>0.6, 0.6>0.2, 0.6=0.6 (half)
0.875
>>> round(accuracy(labels, probs), 4)  # 0.6 for the last negative is >= 0.5: wrong
0.75
>>> math.isnan(normalized_entropy([1, 1], [0.9, 0.8]))  # one class: base entropy 0
True

``ProgressiveMetrics`` accumulates the same figures over a stream of batches (test-then-train
validation) in bounded memory; ``user_bootstrap_intervals`` gives 95% intervals over users.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

EPS = 1e-7  # probability clip: log loss of a certain wrong prediction is -log(EPS) ~ 16.1
DEFAULT_BINS = 16_384
METRICS = ("log_loss", "ne", "auc", "accuracy")


def _array(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per example), got shape {arr.shape}")
    return arr


def _inputs(
    labels: Any, probs: Any, weights: Any | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y, p = _array(labels, "labels"), _array(probs, "probs")
    w = np.ones_like(y) if weights is None else _array(weights, "weights")
    if not y.shape == p.shape == w.shape:
        raise ValueError(
            f"labels, probs and weights must have one value per example, got shapes "
            f"{y.shape}, {p.shape}, {w.shape}"
        )
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 or 1; derive them with a task's positive rule first")
    if np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite and >= 0")
    if np.any(np.isnan(p)):
        raise ValueError("probs holds NaN; check the model's output")
    return y, p, w


def binary_entropy(rate: float) -> float:
    """Entropy (nats) of a Bernoulli(rate); 0 at rate 0 or 1."""
    if rate <= 0.0 or rate >= 1.0:
        return 0.0
    return -(rate * math.log(rate) + (1.0 - rate) * math.log(1.0 - rate))


def _pointwise_log_loss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1.0 - EPS)
    return -(y * np.log(p) + (1.0 - y) * np.log1p(-p))


def log_loss(labels: Any, probs: Any, weights: Any | None = None) -> float:
    """Weighted mean binary cross-entropy (nats), probabilities clipped to [EPS, 1-EPS].

    >>> round(log_loss([1, 0], [0.8, 0.4]), 6)  # (-ln 0.8 - ln 0.6) / 2
    0.366985
    """
    y, p, w = _inputs(labels, probs, weights)
    total = w.sum()
    return float((w * _pointwise_log_loss(y, p)).sum() / total) if total > 0 else math.nan


def normalized_entropy(labels: Any, probs: Any, weights: Any | None = None) -> float:
    """Log loss / entropy of the (weighted) label mean; NaN when all labels are equal.

    >>> round(normalized_entropy([1, 0], [0.8, 0.4]), 6)  # 0.366985 / ln 2
    0.529447
    """
    y, p, w = _inputs(labels, probs, weights)
    total = w.sum()
    if total <= 0:
        return math.nan
    base = binary_entropy(float((w * y).sum() / total))
    if base == 0.0:
        return math.nan
    return float((w * _pointwise_log_loss(y, p)).sum() / total) / base


def accuracy(labels: Any, probs: Any, weights: Any | None = None) -> float:
    """Weighted share of examples where ``probs >= 0.5`` equals the label."""
    y, p, w = _inputs(labels, probs, weights)
    total = w.sum()
    return float((w * ((p >= 0.5) == (y == 1))).sum() / total) if total > 0 else math.nan


def auc(labels: Any, scores: Any, weights: Any | None = None) -> float:
    """Exact weighted AUC, ties counted half; NaN without positive and negative weight.

    Scores may be probabilities or logits (only their order matters).
    """
    y, s, w = _inputs(labels, scores, weights)
    order = np.argsort(s, kind="stable")
    s, y, w = s[order], y[order], w[order]
    # One row per distinct score: the positive and negative weight that share it.
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    return _auc_from_groups(
        np.add.reduceat(w * y, starts) if s.size else np.zeros(0),
        np.add.reduceat(w * (1 - y), starts) if s.size else np.zeros(0),
    )


def _auc_from_groups(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUC from positive/negative weight per score group, groups in increasing score order:
    a positive beats every negative of a lower group and ties half of its own group's."""
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos <= 0 or total_neg <= 0:
        return math.nan
    neg_below = np.cumsum(neg) - neg
    wins = (pos * (neg_below + 0.5 * neg)).sum()
    return float(wins / (total_pos * total_neg))


def binary_metrics(labels: Any, probs: Any, weights: Any | None = None) -> dict[str, float]:
    """``log_loss``, ``ne``, ``auc``, ``accuracy``, ``base_rate`` and ``count`` of one task."""
    y, _, w = _inputs(labels, probs, weights)
    total = w.sum()
    return {
        "log_loss": log_loss(labels, probs, weights),
        "ne": normalized_entropy(labels, probs, weights),
        "auc": auc(labels, probs, weights),
        "accuracy": accuracy(labels, probs, weights),
        "base_rate": float((w * y).sum() / total) if total > 0 else math.nan,
        "count": float(y.size),
    }


def task_metrics(
    labels: Any, probs: Any, tasks: Sequence[str], weights: Any | None = None
) -> dict[str, float]:
    """``binary_metrics`` of every task, keyed ``{task}/{metric}``: labels and probs [N, K]
    (one column per task, in ``tasks`` order), weights [N] or [N, K].

    >>> m = task_metrics([[1, 0], [0, 1]], [[0.8, 0.3], [0.4, 0.6]], ["click", "like"])
    >>> m["click/auc"], m["like/accuracy"]
    (1.0, 1.0)
    """
    k = len(tasks)
    y, p = _columns(labels, "labels", k), _columns(probs, "probs", k)
    w = np.ones_like(y) if weights is None else _columns(weights, "weights", k)
    return {
        f"{task}/{name}": value
        for t, task in enumerate(tasks)
        for name, value in binary_metrics(y[:, t], p[:, t], w[:, t]).items()
    }


def _columns(x: Any, name: str, num_tasks: int) -> np.ndarray:
    """[N] or [N, K] -> [N, K] float64."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] not in (1, num_tasks):
        raise ValueError(
            f"{name} must be [N] or [N, {num_tasks}] (one column per task), got {arr.shape}"
        )
    return np.broadcast_to(arr, (arr.shape[0], num_tasks))


class ProgressiveMetrics:
    """Log loss, NE, AUC and accuracy per task over every batch seen (progressive validation).

    ``update(labels, probs, weights=None)`` takes [N, K] labels and probabilities (or [N] for
    one task) and optional weights, [N] or [N, K]. ``result()`` may be called at any time.

    Memory is bounded: O(K * num_bins), whatever the stream's length.

    * Log loss, NE and accuracy are exact: running weighted sums. The NE's base rate is the
      weighted label mean of everything seen so far.
    * AUC is computed from weighted score histograms per class: ``num_bins`` bins uniform in
      logit space over the clipped range ``[logit(EPS), logit(1 - EPS)]`` (about +-16.1), so low
      click rates keep their resolution. Pairs in different bins are ordered exactly; a
      positive and a negative in the *same* bin are counted half, as a tie. Hence
      ``|auc - exact auc| <= 0.5 * sum_b pos_b * neg_b / (P * N)``; ``result()`` reports this
      bound as ``auc_error_bound`` (exact ties land in one bin and are counted half by both).

    >>> acc = ProgressiveMetrics(["click"])
    >>> acc.update([1, 0], [0.9, 0.2])
    >>> acc.update([1, 0], [0.6, 0.6])
    >>> r = acc.result()
    >>> r["click/auc"], r["click/accuracy"], r["click/count"]
    (0.875, 0.75, 4.0)
    """

    def __init__(self, tasks: Sequence[str] = ("label",), num_bins: int = DEFAULT_BINS) -> None:
        if not tasks:
            raise ValueError("need at least one task name")
        if num_bins < 2:
            raise ValueError(f"num_bins must be >= 2, got {num_bins}")
        self.tasks = tuple(tasks)
        self.num_bins = num_bins
        self._limit = math.log((1.0 - EPS) / EPS)
        self.reset()

    def reset(self) -> None:
        k = len(self.tasks)
        self.count = np.zeros(k)
        self.weight = np.zeros(k)
        self.positive = np.zeros(k)
        self.loss = np.zeros(k)
        self.correct = np.zeros(k)
        self.pos_hist = np.zeros((k, self.num_bins))
        self.neg_hist = np.zeros((k, self.num_bins))

    def sums(self) -> dict[str, np.ndarray]:
        """The sums behind the metrics (copies): what a checkpoint saves and what the ranks
        of a trainer group add up (``add_sums``)."""
        return {
            "count": self.count.copy(),
            "weight": self.weight.copy(),
            "positive": self.positive.copy(),
            "loss": self.loss.copy(),
            "correct": self.correct.copy(),
            "pos_hist": self.pos_hist.copy(),
            "neg_hist": self.neg_hist.copy(),
        }

    def add_sums(self, sums: dict[str, np.ndarray]) -> None:
        """Add another accumulator's ``sums()`` (same tasks and bins) to this one's."""
        mine = self.sums()
        for name, value in mine.items():
            setattr(self, name, value + sums[name])

    def _bins(self, p: np.ndarray) -> np.ndarray:
        p = np.clip(p, EPS, 1.0 - EPS)
        z = np.log(p) - np.log1p(-p)
        scaled = (z + self._limit) / (2 * self._limit) * self.num_bins
        return np.clip(scaled.astype(np.int64), 0, self.num_bins - 1)

    def update(self, labels: Any, probs: Any, weights: Any | None = None) -> None:
        """Add a batch: labels and probs [N, K] (or [N]), weights [N] or [N, K]."""
        k = len(self.tasks)
        y, p = _columns(labels, "labels", k), _columns(probs, "probs", k)
        w = np.ones_like(y) if weights is None else _columns(weights, "weights", k)
        for t in range(k):
            yt, pt, wt = _inputs(y[:, t], p[:, t], w[:, t])
            self.count[t] += yt.size
            self.weight[t] += wt.sum()
            self.positive[t] += (wt * yt).sum()
            self.loss[t] += (wt * _pointwise_log_loss(yt, pt)).sum()
            self.correct[t] += (wt * ((pt >= 0.5) == (yt == 1))).sum()
            bins = self._bins(pt)
            self.pos_hist[t] += np.bincount(bins, wt * yt, self.num_bins)
            self.neg_hist[t] += np.bincount(bins, wt * (1 - yt), self.num_bins)

    def result(self) -> dict[str, float]:
        """``{task}/{log_loss,ne,auc,auc_error_bound,accuracy,base_rate,count}``; NaN where
        undefined (no examples; NE and AUC with one class only)."""
        out: dict[str, float] = {}
        for t, task in enumerate(self.tasks):
            total = self.weight[t]
            rate = self.positive[t] / total if total > 0 else math.nan
            loss = self.loss[t] / total if total > 0 else math.nan
            base = binary_entropy(rate) if total > 0 else 0.0
            pos, neg = self.pos_hist[t], self.neg_hist[t]
            area = _auc_from_groups(pos, neg)
            both = self.positive[t] * (total - self.positive[t])
            out |= {
                f"{task}/log_loss": float(loss),
                f"{task}/ne": float(loss / base) if base > 0 else math.nan,
                f"{task}/auc": area,
                f"{task}/auc_error_bound": float(0.5 * (pos * neg).sum() / both)
                if both > 0
                else math.nan,
                f"{task}/accuracy": float(self.correct[t] / total) if total > 0 else math.nan,
                f"{task}/base_rate": float(rate),
                f"{task}/count": float(self.count[t]),
            }
        return out


def user_bootstrap_intervals(
    labels: Any,
    probs: Any,
    users: Any,
    weights: Any | None = None,
    num_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """95% percentile-bootstrap intervals of each metric, resampling *users*.

    Examples of one user are correlated, so users (not examples) are the independent units:
    each resample draws as many users as there are, with replacement (numpy's PCG64 seeded by
    ``seed``: the same inputs give the same intervals), and recomputes every metric over their
    examples; a user drawn twice counts twice (its examples' weights are multiplied by the
    draw count). The interval is the 2.5th to 97.5th percentile of the resampled values,
    ignoring resamples where a metric is undefined (one class only). ``users`` holds any
    hashable key per example.

    >>> lo, hi = user_bootstrap_intervals([1, 0, 1, 0], [0.9, 0.2, 0.6, 0.4], [1, 1, 2, 2])["auc"]
    >>> lo <= hi
    True
    """
    y, p, w = _inputs(labels, probs, weights)
    keys = np.asarray(users.detach().cpu().numpy() if hasattr(users, "detach") else users)
    if keys.shape != y.shape:
        raise ValueError(f"users must have one key per example, got shape {keys.shape}")
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
    _, owner = np.unique(keys, return_inverse=True)
    num_users = int(owner.max()) + 1 if owner.size else 0
    rng = np.random.default_rng(seed)
    # Sort once: every resample only reweights, so the AUC's score groups stay the same.
    order = np.argsort(p, kind="stable")
    y, p, w, owner = y[order], p[order], w[order], owner[order]
    starts = np.flatnonzero(np.r_[True, p[1:] != p[:-1]]) if p.size else np.zeros(0, np.int64)
    pointwise = _pointwise_log_loss(y, p)
    right = (p >= 0.5) == (y == 1)
    values: dict[str, list[float]] = {name: [] for name in METRICS}
    for _ in range(num_resamples):
        draws = np.bincount(rng.integers(0, num_users, num_users), minlength=num_users)
        wr = w * draws[owner]
        total = wr.sum()
        if total <= 0:
            continue
        loss = float((wr * pointwise).sum() / total)
        base = binary_entropy(float((wr * y).sum() / total))
        values["log_loss"].append(loss)
        values["ne"].append(loss / base if base > 0 else math.nan)
        values["accuracy"].append(float((wr * right).sum() / total))
        values["auc"].append(
            _auc_from_groups(np.add.reduceat(wr * y, starts), np.add.reduceat(wr * (1 - y), starts))
        )
    out = {}
    for name, samples in values.items():
        finite = np.asarray(samples)[np.isfinite(samples)] if samples else np.zeros(0)
        if finite.size == 0:
            out[name] = (math.nan, math.nan)
        else:
            lo, hi = np.percentile(finite, [2.5, 97.5])
            out[name] = (float(lo), float(hi))
    return out
