"""A DLRM-style ranking baseline that ignores the order of the history.

For each candidate: a user embedding, the candidate item's embedding and the mean embedding of
the user's history items, plus their pairwise dot products (DLRM's interaction), concatenated
and fed to an MLP that outputs one logit per task. Nothing depends on the history's order or
timestamps, which is what makes it the non-sequential baseline for the generative ranker.

* **User rows** are hashed into a bounded table: row ``user_rows % num_user_rows`` (users that
  collide share a row), so arbitrary, growing user ids need no vocabulary.
* **History pooling** is a weighted mean: each history event's item embedding is scaled by a
  learned scalar of its action code (initialised to 1), so the model can learn that a click
  says more about the user than a view. An empty history pools to zeros.

The input is a ranking batch (``model.candidates``): the last ``num_targets[b]`` rows of
sequence b are candidates, the rest its history; the output is [sum(num_targets), num_tasks]
logits in candidate (batch) order.

>>> from model.jagged import JaggedBatch
>>> torch.manual_seed(0) and None
>>> model = DLRM(DLRMConfig(num_item_rows=10, num_user_rows=8, dim=4, hidden=(8,), num_tasks=2))
>>> batch = JaggedBatch.from_lists([[3, 5, 9], [4]], timestamps=[[1, 2, 3], [1]])
>>> model(batch, num_targets=torch.tensor([2, 1]), user_rows=torch.tensor([11, 2])).shape
torch.Size([3, 2])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from model.candidates import split_candidates
from model.jagged import JaggedBatch


@dataclass(frozen=True)
class DLRMConfig:
    num_item_rows: int  # item table rows (row 0: padding/unknown)
    num_user_rows: int = 4096  # hashed user table
    num_actions: int = 256  # action codes 0..255 (pipeline.events.MAX_ACTION_CODE)
    dim: int = 32
    hidden: tuple[int, ...] = (64, 32)
    num_tasks: int = 1

    def __post_init__(self) -> None:
        if min(self.num_item_rows, self.num_user_rows, self.num_actions, self.dim) < 1:
            raise ValueError(f"table sizes and dim must be >= 1, got {self}")
        if self.num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {self.num_tasks}")


class DLRM(nn.Module):
    """User, candidate and pooled-history embeddings -> MLP -> one logit per task."""

    def __init__(self, cfg: DLRMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.items = nn.Embedding(cfg.num_item_rows, cfg.dim)
        self.users = nn.Embedding(cfg.num_user_rows, cfg.dim)
        self.action_weight = nn.Embedding(cfg.num_actions, 1)
        nn.init.normal_(self.items.weight, std=cfg.dim**-0.5)
        nn.init.normal_(self.users.weight, std=cfg.dim**-0.5)
        nn.init.ones_(self.action_weight.weight)
        layers: list[nn.Module] = []
        width = 3 * cfg.dim + 3  # [user, history, candidate] and their 3 dot products
        for size in cfg.hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, cfg.num_tasks))
        self.mlp = nn.Sequential(*layers)

    def forward(
        self, batch: JaggedBatch, num_targets: torch.Tensor, user_rows: torch.Tensor
    ) -> torch.Tensor:
        """[sum(num_targets), num_tasks] logits; ``user_rows`` int64 [B], any >= 0 keys."""
        num_seq = batch.num_sequences
        if user_rows.shape != (num_seq,):
            raise ValueError(
                f"user_rows must have one entry per sequence ({num_seq}), got "
                f"{tuple(user_rows.shape)}"
            )
        split = split_candidates(batch, num_targets)
        hist = split.history_rows
        weighted = self.items(batch.item_ids[hist]) * self.action_weight(batch.action_types[hist])
        pooled = torch.zeros(num_seq, self.cfg.dim, device=weighted.device, dtype=weighted.dtype)
        pooled.index_add_(0, split.history_sequence, weighted)
        counts = torch.bincount(split.history_sequence, minlength=num_seq).clamp(min=1)
        pooled = pooled / counts.unsqueeze(1)

        seq = split.candidate_sequence
        user = self.users(user_rows.remainder(self.cfg.num_user_rows))[seq]
        history = pooled[seq]
        candidate = self.items(batch.item_ids[split.candidate_rows])
        dots = torch.stack(
            [
                (user * history).sum(1),
                (user * candidate).sum(1),
                (history * candidate).sum(1),
            ],
            dim=1,
        )
        return self.mlp(torch.cat([user, history, candidate, dots], dim=1))
