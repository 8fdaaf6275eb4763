"""Pieces shared by the sequential encoders (HSTU, SASRec).

The interface the trainers (offline and online) rely on:

* ``model.encode(batch) -> [T, D]``: one L2-normalised state per event; the state at
  position i summarises events 0..i of its own sequence and predicts event i+1.
* ``model.item_embeddings() -> [R, D]``: the L2-normalised item table (row 0 = padding).
* ``model.item_rows() -> ItemRows``: the same table computed only for the rows indexed
  (``rows[ids]``), so a step costs O(rows touched), not O(R); with ``item_emb.sparse`` the
  table's gradient is sparse too (the online trainer's ``train.sparse_embeddings``).
* ``select_targets(batch, states)``: the (query state, target row) pairs of the batch's
  targets, the input of ``model.losses.sampled_softmax_loss`` and ``model.metrics``.
* ``last_states(batch, states)``: the state at each sequence's last history event, used to
  score the next (unseen) event in evaluation and serving.
* ``candidate_states(batch, states)``: the states of the candidate rows (``batch.num_targets``),
  the input of a ranking head.
* ``model.reset_item_rows(rows)``: re-initialise embedding rows handed to new items.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from kernels.offsets import positions_in_sequence, token_positions
from model.actions import DEFAULT_VALUE_BOUNDARIES, ActionValueInputs
from model.jagged import JaggedBatch
from model.ranking_heads import RankingHead, RankingHeadConfig, RankingTask, task_from_dict

ITEM_INIT_STD = 0.02  # item embeddings start small; the input layer scales them by sqrt(D)
INIT_BLOCK_ROWS = 1 << 20


class Targets(NamedTuple):
    """Targets of a batch and the states that predict them (all length M)."""

    queries: torch.Tensor  # [M, D] state at the position before each target
    items: torch.Tensor  # [M] int64 target rows
    weights: torch.Tensor | None  # [M] per-target weights (batch.weights), or None
    positions: torch.Tensor  # [M] int64 flat row of each target in the batch


def select_targets(
    batch: JaggedBatch, states: torch.Tensor, mask: torch.Tensor | None = None
) -> Targets:
    """Pair each target event with the state at the previous position of its sequence.

    Targets are the ``mask`` rows (default ``batch.target_mask()``) whose item row is not
    0: row 0 is the padding/unknown row (e.g. an item the vocabulary has not admitted),
    which the model cannot predict, so those targets are left out. A layout whose candidate
    rows are also next-item targets passes its own mask (``batch.is_target``).

    Raises:
        ValueError: a target is the first event of its sequence (nothing precedes it).
    """
    mask = (batch.target_mask() if mask is None else mask) & (batch.item_ids > 0)
    positions = torch.nonzero(mask).squeeze(1)
    first = positions_in_sequence(batch.offsets)[positions] == 0
    if bool(first.any()):
        row = int(positions[first][0])
        raise ValueError(
            f"is_target marks row {row}, the first event of its sequence; a target needs a "
            "preceding event to predict it from (put history before it or unmark it)"
        )
    weights = None if batch.weights is None else batch.weights[positions]
    return Targets(states[positions - 1], batch.item_ids[positions], weights, positions)


def last_states(batch: JaggedBatch, states: torch.Tensor) -> torch.Tensor:
    """[B, D] state at the last history event of each sequence (its last event when there
    are no candidates); every sequence needs a history event."""
    history = batch.history_lengths()
    if bool((history == 0).any()):
        b = int(torch.nonzero(history == 0)[0])
        raise ValueError(f"sequence {b} is empty; it has no last state to score from")
    return states[batch.offsets[:-1] + history - 1]


def candidate_states(batch: JaggedBatch, states: torch.Tensor) -> torch.Tensor:
    """[sum(num_targets), D] states of the candidate rows, sequence by sequence in row order
    (empty when ``batch.num_targets`` is None)."""
    return states[batch.candidate_mask()]


def query_timestamps(batch: JaggedBatch) -> torch.Tensor:
    """[T] the time of the event each position predicts.

    History position i uses t_{i+1} of the same sequence; a sequence's last history position
    and all its candidates use ``batch.query_time`` (the request time) when given, else their
    own timestamps. So history rows get the same query times with or without candidates.
    """
    ts = batch.timestamps
    out = torch.empty_like(ts)
    out[:-1] = ts[1:]
    history = batch.history_lengths()
    nonempty = history > 0
    last = (batch.offsets[:-1] + history - 1)[nonempty]
    if batch.query_time is not None:
        out[last] = batch.query_time[nonempty]
    else:
        out[last] = ts[last]
    if batch.num_targets is not None:
        candidates = batch.candidate_mask()
        asked = ts
        if batch.query_time is not None:
            asked = batch.query_time.repeat_interleave(batch.lengths())
        out = torch.where(candidates, asked, out)
    return out


class ItemRows:
    """The L2-normalised item table, evaluated only at the rows asked for.

    ``rows[ids]`` equals ``model.item_embeddings()[ids]`` (same values and gradients), but
    gathers before normalising; ``shape`` is the full table's. Losses and rankers take it
    wherever they take the table.
    """

    def __init__(self, embedding: nn.Embedding) -> None:
        self._embedding = embedding

    @property
    def shape(self) -> torch.Size:
        return self._embedding.weight.shape

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        return F.normalize(self._embedding(rows), dim=-1)


def trunc_normal_rows_(
    weight: torch.Tensor, std: float, a: float = -2.0, b: float = 2.0
) -> torch.Tensor:
    """A truncated normal N(0, std) cut to [a, b] for a (large) table, row block by block.

    A table of up to ``INIT_BLOCK_ROWS`` rows is drawn by ``nn.init.trunc_normal_``, exactly
    as before (so every figure measured on such tables stays reproducible). A larger one is
    drawn ``INIT_BLOCK_ROWS`` rows at a time by the inverse CDF (uniform in [F(a), F(b)],
    then erfinv: the same distribution): torch's sampler resamples with full-size temporaries
    and took 66 s and gigabytes of extra memory for a 10M x 64 table; this takes seconds.
    """
    rows = weight.shape[0]
    with torch.no_grad():
        if rows <= INIT_BLOCK_ROWS:
            nn.init.trunc_normal_(weight, std=std, a=a, b=b)
            return weight
        # F(x) of N(0, std), mapped to erfinv's domain (-1, 1)
        lo, hi = (math.erf(x / (std * math.sqrt(2.0))) for x in (a, b))
        for start in range(0, rows, INIT_BLOCK_ROWS):
            block = weight[start : start + INIT_BLOCK_ROWS]
            block.uniform_(lo, hi).erfinv_().mul_(std * math.sqrt(2.0)).clamp_(a, b)
    return weight


def encoder_inputs(cfg: Any) -> dict[str, Any]:
    """``SequentialEncoder``'s arguments from a model config (HSTU's, SASRec's: same fields)."""
    return {
        "num_rows": cfg.num_rows,
        "embedding_dim": cfg.embedding_dim,
        "max_len": cfg.max_len,
        "input_dropout": cfg.input_dropout,
        "action_inputs": cfg.action_inputs,
        "value_boundaries": cfg.value_boundaries,
        "ranking_tasks": [task_from_dict(task) for task in cfg.ranking_tasks],
        "ranking_hidden": cfg.ranking_hidden,
    }


class SequentialEncoder(nn.Module):
    """Item table, learned absolute positions and the input layer shared by HSTU and SASRec.

    Args:
        num_rows: item table capacity R (row 0 is padding; items use rows 1..R-1).
        embedding_dim: D.
        max_len: N, the longest sequence the model accepts (the position table size).
        input_dropout: dropout applied to the input embeddings.
        action_inputs: add each event's action and value embeddings to its input token
            (``model.actions``); False keeps the parameters and outputs of models before it.
        value_boundaries: the value buckets of ``action_inputs``.
        ranking_tasks: the tasks of a ranking head (``model.ranking_heads``) over candidate
            rows (``rank``); none: a retrieval-only model, with the parameters it had before.
        ranking_hidden: the head MLP's hidden widths.
    """

    def __init__(
        self,
        num_rows: int,
        embedding_dim: int,
        max_len: int,
        input_dropout: float,
        action_inputs: bool = False,
        value_boundaries: Sequence[float] = DEFAULT_VALUE_BOUNDARIES,
        ranking_tasks: Sequence[RankingTask] = (),
        ranking_hidden: Sequence[int] = (64,),
    ):
        super().__init__()
        if num_rows < 2:
            raise ValueError(f"num_rows must be >= 2 (row 0 is padding), got {num_rows}")
        self.max_len = max_len
        self.embedding_dim = embedding_dim
        self.item_emb = nn.Embedding(num_rows, embedding_dim, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, embedding_dim)
        self.input_dropout = nn.Dropout(input_dropout)
        trunc_normal_rows_(self.item_emb.weight, std=ITEM_INIT_STD)
        nn.init.trunc_normal_(self.pos_emb.weight, std=1.0 / math.sqrt(embedding_dim))
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        # created after the tables above so that their init draws stay what they were
        self.event_inputs = (
            ActionValueInputs(embedding_dim, value_boundaries) if action_inputs else None
        )
        self.ranking_tasks = tuple(ranking_tasks)
        self.ranking_head = (
            RankingHead(
                RankingHeadConfig(
                    embedding_dim, embedding_dim, len(self.ranking_tasks), tuple(ranking_hidden)
                )
            )
            if self.ranking_tasks
            else None
        )

    @property
    def num_rows(self) -> int:
        return self.item_emb.num_embeddings

    def item_embeddings(self) -> torch.Tensor:
        """[R, D] L2-normalised item table; row 0 (padding) is all zeros."""
        return F.normalize(self.item_emb.weight, dim=-1)

    def item_rows(self) -> ItemRows:
        """The normalised item table, computed per indexed row (see ``ItemRows``)."""
        return ItemRows(self.item_emb)

    @torch.no_grad()
    def reset_item_rows(self, rows: torch.Tensor) -> None:
        """Re-initialise the embedding rows given (e.g. rows reassigned to new items).

        Row 0 (padding) is never touched. Resetting the optimizer state of those rows is
        the caller's job (it owns the optimizer).
        """
        rows = rows[rows > 0].to(self.item_emb.weight.device)
        if rows.numel() == 0:
            return
        if int(rows.max()) >= self.num_rows:
            raise ValueError(f"row {int(rows.max())} is outside the item table (R={self.num_rows})")
        fresh = torch.empty(rows.numel(), self.embedding_dim, device=rows.device)
        nn.init.trunc_normal_(fresh, std=ITEM_INIT_STD)
        self.item_emb.weight[rows] = fresh.to(self.item_emb.weight.dtype)

    def embed_inputs(self, batch: JaggedBatch) -> torch.Tensor:
        """[T, D] item_emb * sqrt(D) + position embedding (+ the event's action and value
        embeddings with ``action_inputs``), with input dropout.

        Candidate rows all take position n_hist (their history's length).

        Raises:
            ValueError: an item row is outside the table or a sequence spans more than N
                positions (history, plus one for its candidates).
        """
        if batch.total and int(batch.item_ids.max()) >= self.num_rows:
            raise ValueError(
                f"item row {int(batch.item_ids.max())} is outside the item table "
                f"(R={self.num_rows}); map keys through the vocabulary first"
            )
        # Candidates share position n_hist: a sequence spans its history plus one position.
        spans = batch.history_lengths()
        if batch.num_targets is not None:
            spans = spans + (batch.num_targets > 0)
        if batch.num_sequences and int(spans.max()) > self.max_len:
            raise ValueError(
                f"a sequence spans {int(spans.max())} positions (its events, candidates "
                f"counting as one) but the model's max_len is {self.max_len}; keep only the "
                f"last {self.max_len} positions of each sequence"
            )
        positions = token_positions(batch.offsets, batch.num_targets)
        x = self.item_emb(batch.item_ids) * math.sqrt(self.embedding_dim)
        if self.event_inputs is not None:
            events = self.event_inputs(batch.action_types, batch.values)
            if batch.num_targets is not None:
                # a candidate's action and value are what ranking predicts, never its input
                events = events.masked_fill(batch.candidate_mask()[:, None], 0.0)
            x = x + events
        return self.input_dropout(x + self.pos_emb(positions))

    def rank(self, batch: JaggedBatch, states: torch.Tensor) -> torch.Tensor:
        """[sum(num_targets), num_tasks] logits of the ranking tasks for the candidate rows
        of ``batch`` (in row order), from their states (``encode(batch)``) and items."""
        if self.ranking_head is None:
            raise ValueError(
                "this model has no ranking tasks; train it with ranking tasks configured to rank"
            )
        rows = batch.candidate_mask()
        return self.ranking_head(states[rows], self.item_rows()[batch.item_ids[rows]])

    def encode(self, batch: JaggedBatch) -> torch.Tensor:
        """[T, D] L2-normalised states; implemented by each model."""
        raise NotImplementedError

    @torch.no_grad()
    def reference_init(self) -> None:
        """Re-initialise as Meta's research code does: the item table truncated normal
        (std ITEM_INIT_STD, cut at 2 std, padding row zero), every other parameter with >= 2 dims
        (the position table too) xavier normal; 1-D parameters keep their init. The action
        and value tables keep their small init (``model.actions``): the reference has none.
        HSTU overrides this for its own layers."""
        for name, param in self.named_parameters():
            if name.startswith("event_inputs."):
                continue
            if name == "item_emb.weight":
                # truncated at 2 std as the reference (torch's default cuts at +-2 absolute)
                cut = 2 * ITEM_INIT_STD
                trunc_normal_rows_(param, std=ITEM_INIT_STD, a=-cut, b=cut)
                param[0].zero_()
            elif param.dim() >= 2:
                nn.init.xavier_normal_(param)
