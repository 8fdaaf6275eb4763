"""Ranking batches: the last ``num_targets[b]`` rows of each sequence are candidate items.

A ranking batch is a ``JaggedBatch`` whose sequence b is the user's history followed by
``num_targets[b]`` candidates (impressions to score). ``split_candidates`` finds both parts.
``num_targets`` is passed explicitly (int64 [B]) until ``JaggedBatch`` carries it.

>>> from model.jagged import JaggedBatch
>>> batch = JaggedBatch.from_lists([[3, 5, 9], [4, 7]], timestamps=[[1, 2, 3], [1, 2]])
>>> split = split_candidates(batch, torch.tensor([2, 1]))
>>> split.history_rows.tolist(), split.candidate_rows.tolist()
([0, 3], [1, 2, 4])
>>> split.candidate_sequence.tolist()  # candidates in batch order, with their sequence
[0, 0, 1]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.offsets import positions_in_sequence, segment_ids
from model.jagged import JaggedBatch


@dataclass(frozen=True)
class CandidateSplit:
    """Row indices into the batch's flat [T] fields, each part in batch order."""

    history_rows: torch.Tensor  # [H] int64
    history_sequence: torch.Tensor  # [H] int64, the sequence of each history row
    candidate_rows: torch.Tensor  # [C] int64, C = sum(num_targets)
    candidate_sequence: torch.Tensor  # [C] int64


def split_candidates(batch: JaggedBatch, num_targets: torch.Tensor) -> CandidateSplit:
    """History and candidate rows of a ranking batch (see the module docstring)."""
    lengths = batch.lengths()
    if num_targets.dtype != torch.int64 or num_targets.shape != lengths.shape:
        raise ValueError(
            f"num_targets must be int64 [{lengths.numel()}] (one count per sequence), got "
            f"{num_targets.dtype} {tuple(num_targets.shape)}"
        )
    num_targets = num_targets.to(lengths.device)
    bad = (num_targets < 0) | (num_targets > lengths)
    if bool(bad.any()):
        b = int(torch.nonzero(bad)[0])
        raise ValueError(
            f"num_targets[{b}] = {int(num_targets[b])} is outside [0, {int(lengths[b])}], the "
            f"length of sequence {b}"
        )
    owner = segment_ids(batch.offsets)
    is_candidate = positions_in_sequence(batch.offsets) >= (lengths - num_targets)[owner]
    rows = torch.arange(batch.total, device=lengths.device)
    return CandidateSplit(
        history_rows=rows[~is_candidate],
        history_sequence=owner[~is_candidate],
        candidate_rows=rows[is_candidate],
        candidate_sequence=owner[is_candidate],
    )
