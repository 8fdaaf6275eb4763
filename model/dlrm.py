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

The input is a ranking batch (``model.candidates``): the last ``batch.num_targets[b]`` rows
of sequence b are candidates, the rest its history; the output is [sum(num_targets),
num_tasks] logits in candidate (batch) order, one column per ``cfg.ranking_tasks`` task.

>>> from model.jagged import JaggedBatch
>>> torch.manual_seed(0) and None
>>> tasks = ({"name": "click", "actions": [2]}, {"name": "like", "min_value": 4.0})
>>> model = DLRM(DLRMConfig(num_rows=10, num_user_rows=8, dim=4, hidden=(8,), ranking_tasks=tasks))
>>> batch = JaggedBatch.from_lists(
...     [[3, 5, 9], [4, 6]], timestamps=[[1, 2, 3], [1, 2]], num_targets=[2, 1]
... )
>>> model(batch, user_rows=torch.tensor([11, 2])).shape
torch.Size([3, 2])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from model.candidates import split_candidates
from model.jagged import JaggedBatch
from model.ranking_heads import check_tasks, task_from_dict


@dataclass
class DLRMConfig:
    num_rows: int  # item table rows (row 0: padding/unknown), as the encoders' num_rows
    num_user_rows: int = 4096  # hashed user table
    num_actions: int = 256  # action codes 0..255 (pipeline.events.MAX_ACTION_CODE)
    dim: int = 32
    hidden: tuple[int, ...] = (64, 32)
    # the tasks (model.ranking_heads JSON form), one logit each; at least one is needed
    ranking_tasks: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if min(self.num_rows, self.num_user_rows, self.num_actions, self.dim) < 1:
            raise ValueError(f"table sizes and dim must be >= 1, got {self}")
        self.ranking_tasks = check_tasks(self.ranking_tasks)
        if not self.ranking_tasks:
            raise ValueError("DLRMConfig.ranking_tasks needs at least one task (what to predict)")
        self.hidden = tuple(self.hidden)  # JSON gives a list


class DLRM(nn.Module):
    """User, candidate and pooled-history embeddings -> MLP -> one logit per task."""

    def __init__(self, cfg: DLRMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.ranking_tasks = tuple(task_from_dict(doc) for doc in cfg.ranking_tasks)
        self.items = nn.Embedding(cfg.num_rows, cfg.dim)
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
        layers.append(nn.Linear(width, len(self.ranking_tasks)))
        self.mlp = nn.Sequential(*layers)

    def reset_item_rows(self, rows: torch.Tensor) -> None:
        """Fresh item embeddings (drawn as at init, from torch's global generator) for
        ``rows``, e.g. rows a vocabulary hands to new items."""
        weight = self.items.weight
        rows = rows.to(weight.device)
        fresh = torch.randn(rows.numel(), self.cfg.dim) * self.cfg.dim**-0.5
        with torch.no_grad():
            weight[rows] = fresh.to(weight.device, weight.dtype)

    def forward(self, batch: JaggedBatch, user_rows: torch.Tensor) -> torch.Tensor:
        """[sum(num_targets), num_tasks] logits; ``user_rows`` int64 [B], any >= 0 keys."""
        num_seq = batch.num_sequences
        if user_rows.shape != (num_seq,):
            raise ValueError(
                f"user_rows must have one entry per sequence ({num_seq}), got "
                f"{tuple(user_rows.shape)}"
            )
        split = split_candidates(batch)
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
