"""Full-ranking metrics: HR@K, NDCG@K and MRR from the rank of each target.

Ranks are 1-based and pessimistic: an item that ties the target's score ranks ahead of
it, so a model that scores everything equally gets the worst rank, not the best. Row 0
(padding), and rows outside an optional candidate subset, never compete. With the paper's
protocol (``exclude_items``) the user's history is removed first, and a target the user
had consumed before counts as a miss.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from kernels.offsets import segment_ids
from model.retrieval import mask_unavailable

DEFAULT_KS: tuple[int, ...] = (10, 50, 100, 200)  # 100: the paper's HR@100


def target_ranks(
    scores: torch.Tensor,
    targets: torch.Tensor,
    candidate_rows: torch.Tensor | None = None,
    *,
    exclude_items: torch.Tensor | None = None,
    exclude_offsets: torch.Tensor | None = None,
) -> torch.Tensor:
    """[M] int64 rank of each target among all (candidate) rows, 1 = best.

    Args:
        scores: [M, R] scores of every item row for each query.
        targets: [M] target rows.
        candidate_rows: optional subset of rows that compete with the target (the target
            itself is always ranked, whether or not it is a candidate).
        exclude_items, exclude_offsets: optional jagged rows removed before ranking, per
            query (the paper's protocol: the user's history items): query m excludes
            ``exclude_items[exclude_offsets[m]:exclude_offsets[m+1]]``. A target that is
            itself excluded (the user consumed it before) is a miss: its rank is R, past
            every real rank, so it counts 0 in HR@K and NDCG@K.
    """
    target_scores = scores.gather(1, targets.unsqueeze(1))  # [M, 1]
    others = mask_unavailable(scores, candidate_rows)
    excluded_target = torch.zeros_like(targets, dtype=torch.bool)
    if exclude_items is not None:
        if exclude_offsets is None or exclude_offsets.numel() != scores.shape[0] + 1:
            raise ValueError(f"exclude_offsets must have M+1 = {scores.shape[0] + 1} entries")
        owners = segment_ids(exclude_offsets.to(scores.device))
        exclude_items = exclude_items.to(scores.device)
        others[owners, exclude_items] = float("-inf")
        hit = exclude_items == targets[owners]
        excluded_target[owners[hit]] = True
    others.scatter_(1, targets.unsqueeze(1), float("-inf"))
    ranks = 1 + (others >= target_scores).sum(dim=1)
    return ranks.masked_fill(excluded_target, scores.shape[1])


def ranking_metrics(ranks: torch.Tensor, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean HR@K, NDCG@K (one relevant item: 1/log2(rank+1) if rank <= K) and MRR."""
    acc = RankingAccumulator(ks)
    acc.update(ranks)
    return acc.result()


class RankingAccumulator:
    """Running sums of the ranking metrics over many batches (offline eval, streaming)."""

    def __init__(self, ks: Iterable[int] = DEFAULT_KS):
        self.ks = tuple(ks)
        self.count = 0
        self.sums: dict[str, float] = {}
        self.squares: dict[str, float] = {}
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.sums = {f"{m}@{k}": 0.0 for k in self.ks for m in ("hr", "ndcg")} | {"mrr": 0.0}
        self.squares = dict.fromkeys(self.sums, 0.0)

    def update(self, ranks: torch.Tensor) -> None:
        """Add a batch of 1-based ranks."""
        ranks = ranks.to(torch.float64)
        self.count += ranks.numel()
        gains = 1.0 / torch.log2(ranks + 1.0)
        per_target = {"mrr": 1.0 / ranks}
        for k in self.ks:
            hit = ranks <= k
            per_target[f"hr@{k}"] = hit.to(torch.float64)
            per_target[f"ndcg@{k}"] = gains * hit
        for name, values in per_target.items():
            self.sums[name] += float(values.sum())
            self.squares[name] += float((values * values).sum())

    def result(self) -> dict[str, float]:
        """Means so far (NaN before any update) plus ``count``."""
        denom = self.count or math.nan
        out = {name: total / denom for name, total in self.sums.items()}
        out["count"] = float(self.count)
        return out

    def ci95(self) -> dict[str, float]:
        """``{metric}_ci95``: half-width of the normal 95% interval of each mean over the
        targets (1.96 standard errors; NaN with fewer than 2 targets)."""
        n = self.count
        out = {}
        for name, total in self.sums.items():
            if n < 2:
                out[f"{name}_ci95"] = math.nan
                continue
            variance = max(self.squares[name] - total * total / n, 0.0) / (n - 1)
            out[f"{name}_ci95"] = 1.96 * math.sqrt(variance / n)
        return out
