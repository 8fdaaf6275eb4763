"""Full-ranking metrics: HR@K, NDCG@K and MRR from the rank of each target.

Ranks are 1-based and pessimistic: an item that ties the target's score ranks ahead of
it, so a model that scores everything equally gets the worst rank, not the best. Row 0
(padding), and rows outside an optional candidate subset, never compete.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from model.retrieval import mask_unavailable

DEFAULT_KS: tuple[int, ...] = (10, 50, 200)


def target_ranks(
    scores: torch.Tensor, targets: torch.Tensor, candidate_rows: torch.Tensor | None = None
) -> torch.Tensor:
    """[M] int64 rank of each target among all (candidate) rows, 1 = best.

    Args:
        scores: [M, R] scores of every item row for each query.
        targets: [M] target rows.
        candidate_rows: optional subset of rows that compete with the target (the target
            itself is always ranked, whether or not it is a candidate).
    """
    target_scores = scores.gather(1, targets.unsqueeze(1))  # [M, 1]
    others = mask_unavailable(scores, candidate_rows)
    others.scatter_(1, targets.unsqueeze(1), float("-inf"))
    return 1 + (others >= target_scores).sum(dim=1)


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
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.sums = {f"{m}@{k}": 0.0 for k in self.ks for m in ("hr", "ndcg")} | {"mrr": 0.0}

    def update(self, ranks: torch.Tensor) -> None:
        """Add a batch of 1-based ranks."""
        ranks = ranks.to(torch.float64)
        self.count += ranks.numel()
        gains = 1.0 / torch.log2(ranks + 1.0)
        for k in self.ks:
            hit = ranks <= k
            self.sums[f"hr@{k}"] += float(hit.sum())
            self.sums[f"ndcg@{k}"] += float((gains * hit).sum())
        self.sums["mrr"] += float((1.0 / ranks).sum())

    def result(self) -> dict[str, float]:
        """Means so far (NaN before any update) plus ``count``."""
        denom = self.count or math.nan
        out = {name: total / denom for name, total in self.sums.items()}
        out["count"] = float(self.count)
        return out
