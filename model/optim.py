"""Optimisers of the online trainer: Adam everywhere, or lazy Adam for the item table.

Dense Adam updates every row of the item table and both of its moments at every step, so a
step costs O(capacity x D) however few items it touched. ``RowSparseAdam`` keeps Adam for
the dense parameters and gives the table ``torch.optim.SparseAdam`` (lazy Adam): with the
table's gradient sparse (``nn.Embedding(sparse=True)``), only the rows a step looked up (its
inputs, targets, negatives) change, with their moments; untouched rows keep theirs as they
were instead of decaying. The same code runs on CPU and CUDA (SparseAdam has both kernels),
so no device falls back to dense updates. Weight decay applies to the dense parameters only.

It also remembers which rows changed since ``clear_changed`` (the rows a step updated, and
those the caller reset through ``mark_changed``), so that a checkpoint can write only those,
and, separately (``since=PUBLISHED``), since the last published version, so that a version can
hold only those (checkpoints and versions are written on their own schedules).
"""

from __future__ import annotations

from typing import Any

import torch

from model.base import SequentialEncoder

DENSE, ROWS = "dense", "rows"
# What ``changed_rows`` counts from: the last checkpoint, or the last published version.
CHECKPOINTED, PUBLISHED = "checkpointed", "published"


def is_row_sparse_state(state: object) -> bool:
    """Whether ``state`` is a ``RowSparseAdam.state_dict()`` (else: one optimizer's)."""
    return isinstance(state, dict) and set(state) == {DENSE, ROWS}


class RowSparseAdam:
    """Adam on the dense parameters, SparseAdam on ``model.item_emb.weight``.

    Quacks like the part of ``torch.optim.Optimizer`` the trainer uses: ``zero_grad``,
    ``step``, ``state`` (per parameter), ``state_dict`` / ``load_state_dict``.
    """

    def __init__(
        self,
        model: SequentialEncoder,
        lr: float,
        betas: tuple[float, float],
        weight_decay: float = 0.0,
    ) -> None:
        if not model.item_emb.sparse:
            raise ValueError("RowSparseAdam needs the item table's gradient sparse (sparse=True)")
        table = model.item_emb.weight
        dense = [p for p in model.parameters() if p is not table]
        self.dense = torch.optim.Adam(dense, lr=lr, betas=betas, weight_decay=weight_decay)
        self.rows = torch.optim.SparseAdam([table], lr=lr, betas=betas)
        self._table = table
        # One flag per row and mark: O(rows touched) to set each step, one scan per save.
        self._changed = {
            since: torch.zeros(table.shape[0], dtype=torch.bool, device=table.device)
            for since in (CHECKPOINTED, PUBLISHED)
        }

    @property
    def state(self) -> dict[torch.Tensor, dict[str, Any]]:
        return {**self.dense.state, **self.rows.state}

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        self.rows.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.dense.step()
        grad = self._table.grad
        if grad is not None:
            # _indices(): the looked-up rows, duplicates included (SparseAdam coalesces).
            self.mark_changed(grad._indices()[0])
        self.rows.step()

    def mark_changed(self, rows: torch.Tensor) -> None:
        """Record rows changed outside ``step`` (re-initialised for a new item)."""
        for flags in self._changed.values():
            flags[rows.to(flags.device)] = True

    def changed_rows(self, since: str = CHECKPOINTED) -> torch.Tensor:
        """The rows changed since the last ``clear_changed(since)`` (sorted int64)."""
        return torch.nonzero(self._changed[since]).flatten()

    def clear_changed(self, since: str = CHECKPOINTED) -> None:
        self._changed[since].zero_()

    def state_dict(self) -> dict[str, Any]:
        return {DENSE: self.dense.state_dict(), ROWS: self.rows.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not is_row_sparse_state(state):
            raise ValueError(
                "this optimizer state was written by dense Adam (train.sparse_embeddings: "
                "false); resume it with --set train.sparse_embeddings=false"
            )
        self.dense.load_state_dict(state[DENSE])
        self.rows.load_state_dict(state[ROWS])
