"""Most-popular baseline: every user gets the items ranked by training-event counts."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class PopularConfig:
    """Only the item table capacity R (row 0 is padding and never recommended)."""

    num_rows: int


class MostPopular(nn.Module):
    """Scores = number of training events per item row (a buffer, so it checkpoints)."""

    def __init__(self, cfg: PopularConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("counts", torch.zeros(cfg.num_rows, dtype=torch.float32))

    @torch.no_grad()
    def fit(self, item_ids: torch.Tensor) -> None:
        """Count the training events (flat item rows); replaces earlier counts."""
        counts = torch.bincount(item_ids.to(torch.int64), minlength=self.cfg.num_rows)
        if counts.numel() > self.cfg.num_rows:
            raise ValueError(
                f"item row {counts.numel() - 1} is outside the item table (R={self.cfg.num_rows})"
            )
        counts[0] = 0  # padding is not an item
        self.counts.copy_(counts.to(self.counts.dtype))

    def scores(self, num_queries: int) -> torch.Tensor:
        """[num_queries, R] the same count vector for every query."""
        return self.counts.unsqueeze(0).expand(num_queries, -1)
