"""Ranking batches: the last ``batch.num_targets[b]`` rows of each sequence are candidates.

A ranking batch is a ``JaggedBatch`` whose sequence b is the user's history followed by
``num_targets[b]`` candidates (impressions to score). ``split_candidates`` lists both parts
as row indices, from the candidate mask of ``kernels.offsets`` (``batch.candidate_mask()``).

>>> from model.jagged import JaggedBatch
>>> batch = JaggedBatch.from_lists(
...     [[3, 5, 9], [4, 7]], timestamps=[[1, 2, 3], [1, 2]], num_targets=[2, 1]
... )
>>> split = split_candidates(batch)
>>> split.history_rows.tolist(), split.candidate_rows.tolist()
([0, 3], [1, 2, 4])
>>> split.candidate_sequence.tolist()  # candidates in batch order, with their sequence
[0, 0, 1]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.offsets import segment_ids
from model.jagged import JaggedBatch


@dataclass(frozen=True)
class CandidateSplit:
    """Row indices into the batch's flat [T] fields, each part in batch order."""

    history_rows: torch.Tensor  # [H] int64
    history_sequence: torch.Tensor  # [H] int64, the sequence of each history row
    candidate_rows: torch.Tensor  # [C] int64, C = sum(num_targets)
    candidate_sequence: torch.Tensor  # [C] int64


def split_candidates(batch: JaggedBatch) -> CandidateSplit:
    """History and candidate rows of a ranking batch (no candidates without ``num_targets``)."""
    owner = segment_ids(batch.offsets)
    is_candidate = batch.candidate_mask()
    rows = torch.arange(batch.total, device=batch.device)
    return CandidateSplit(
        history_rows=rows[~is_candidate],
        history_sequence=owner[~is_candidate],
        candidate_rows=rows[is_candidate],
        candidate_sequence=owner[is_candidate],
    )
