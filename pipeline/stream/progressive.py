"""Progressive (test-then-train) ranking metrics: sliding window and cumulative.

Every target is ranked by the model *before* the model trains on it, so these are honest
out-of-sample numbers on a non-stationary stream (river's progressive validation). The
window holds the last ``window`` targets' ranks; cumulative sums cover the whole run, and
both are saved in checkpoints so a restart continues the same curves.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from model.base import ItemRows
from pipeline.state.vocab import pack_arrays, unpack_arrays


def ranks_over_catalogue(
    queries: torch.Tensor,
    targets: torch.Tensor,
    item_table: torch.Tensor | ItemRows,
    live_rows: torch.Tensor,
    chunk: int = 1024,
) -> torch.Tensor:
    """[M] 1-based pessimistic rank of each target among the live rows (ties rank ahead).

    Args:
        queries: [M, D] states; targets: [M] rows, each of which must be in ``live_rows``.
        item_table: [R, D] (or ``model.item_rows()``: only the live rows are computed);
            live_rows: sorted int64 rows that compete (the catalogue).
    """
    candidates = item_table[live_rows]  # [V, D]
    column = torch.searchsorted(live_rows, targets)
    if bool((live_rows[column.clamp(max=live_rows.numel() - 1)] != targets).any()):
        raise ValueError("a target row is not in the live catalogue")
    out = torch.empty(targets.numel(), dtype=torch.int64, device=queries.device)
    for lo in range(0, targets.numel(), chunk):
        scores = queries[lo : lo + chunk] @ candidates.T  # [m, V]
        own = scores.gather(1, column[lo : lo + chunk, None])
        # The target's own column compares equal to itself: that is its "1 +".
        out[lo : lo + chunk] = (scores >= own).sum(dim=1)
    return out


class ProgressiveMetrics:
    """HR@K, NDCG@K and MRR over the last ``window`` targets and over all targets."""

    def __init__(self, k: int = 10, window: int = 2000) -> None:
        self.k = k
        self.window = window
        self._ranks = np.zeros(window, dtype=np.int64)  # ring buffer of the latest ranks
        self._filled = 0
        self._next = 0
        self.count = 0
        self._sums = {"hr": 0.0, "ndcg": 0.0, "mrr": 0.0}

    def update(self, ranks: np.ndarray) -> None:
        """Add the 1-based ranks of a batch of targets (in stream order)."""
        ranks = np.asarray(ranks, dtype=np.int64)
        if ranks.size == 0:
            return
        hr, ndcg, rr = self._per_target(ranks)
        self._sums["hr"] += float(hr.sum())
        self._sums["ndcg"] += float(ndcg.sum())
        self._sums["mrr"] += float(rr.sum())
        self.count += int(ranks.size)
        tail = ranks[-self.window :]
        idx = (self._next + np.arange(tail.size)) % self.window
        self._ranks[idx] = tail
        self._next = int((self._next + tail.size) % self.window)
        self._filled = min(self.window, self._filled + tail.size)

    def _per_target(self, ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        hit = ranks <= self.k
        ndcg = np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0)
        return hit.astype(np.float64), ndcg, 1.0 / ranks

    def windowed(self) -> dict[str, float]:
        """Means over the last ``window`` targets (NaN before any)."""
        if self._filled == 0:
            return {f"hr@{self.k}": math.nan, f"ndcg@{self.k}": math.nan, "mrr": math.nan}
        hr, ndcg, rr = self._per_target(self._ranks[: self._filled])
        return {
            f"hr@{self.k}": float(hr.mean()),
            f"ndcg@{self.k}": float(ndcg.mean()),
            "mrr": float(rr.mean()),
        }

    def cumulative(self) -> dict[str, float]:
        """Means over every target so far (NaN before any)."""
        n = self.count or math.nan
        return {
            f"hr@{self.k}": self._sums["hr"] / n,
            f"ndcg@{self.k}": self._sums["ndcg"] / n,
            "mrr": self._sums["mrr"] / n,
        }

    def snapshot(self) -> bytes:
        return pack_arrays(
            {
                "params": np.array([self.k, self.window, self._filled, self._next, self.count]),
                "ranks": self._ranks,
                "sums": np.array([self._sums["hr"], self._sums["ndcg"], self._sums["mrr"]]),
            }
        )

    @classmethod
    def restore(cls, data: bytes) -> ProgressiveMetrics:
        k, window = unpack_arrays(data)["params"].tolist()[:2]
        metrics = cls(k, window)
        metrics.load(data)
        return metrics

    def load(self, data: bytes) -> None:
        """Take the state of ``snapshot`` bytes of the same ``k`` and ``window``."""
        z = unpack_arrays(data)
        k, window, filled, nxt, count = z["params"].tolist()
        assert (k, window) == (self.k, self.window)
        self._ranks[:] = z["ranks"]
        self._filled, self._next, self.count = filled, nxt, count
        hr, ndcg, mrr = z["sums"].tolist()
        self._sums = {"hr": hr, "ndcg": ndcg, "mrr": mrr}
