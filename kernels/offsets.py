"""Per-row maps of jagged offsets ([B+1] int64, ``offsets[0] == 0``): for each of the
T = ``offsets[-1]`` rows, the sequence that owns it (``segment_ids``) and its position inside
that sequence (``positions_in_sequence``).

They live here, below model/, because the attention reference (``kernels/reference.py``)
needs them and the kernels sit below the model in the import order; model/ (``jagged``,
``base``, ``metrics``, ``retrieval``) imports them from this module.

>>> offsets = torch.tensor([0, 3, 3, 5])  # sequences of 3, 0 and 2 rows
>>> segment_ids(offsets).tolist(), positions_in_sequence(offsets).tolist()
([0, 0, 0, 2, 2], [0, 1, 2, 0, 1])
"""

from __future__ import annotations

import torch


def segment_ids(offsets: torch.Tensor) -> torch.Tensor:
    """[T] index of the sequence that owns each row."""
    lengths = offsets[1:] - offsets[:-1]
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=offsets.device), lengths)


def positions_in_sequence(offsets: torch.Tensor) -> torch.Tensor:
    """[T] 0-based position of each row inside its own sequence."""
    total = int(offsets[-1])
    rows = torch.arange(total, device=offsets.device)
    return rows - offsets[:-1].repeat_interleave(offsets[1:] - offsets[:-1])


def history_lengths(offsets: torch.Tensor, num_targets: torch.Tensor | None) -> torch.Tensor:
    """[B] rows of each sequence that are history (all of them when ``num_targets`` is None)."""
    lengths = offsets[1:] - offsets[:-1]
    return lengths if num_targets is None else lengths - num_targets


def candidate_rows(offsets: torch.Tensor, num_targets: torch.Tensor | None) -> torch.Tensor:
    """[T] bool: True for the last ``num_targets[b]`` rows of each sequence b (candidates)."""
    hist = history_lengths(offsets, num_targets)
    return positions_in_sequence(offsets) >= hist.repeat_interleave(offsets[1:] - offsets[:-1])


def token_positions(offsets: torch.Tensor, num_targets: torch.Tensor | None) -> torch.Tensor:
    """[T] position of each row for position embeddings and biases: a history row's index in
    its sequence; every candidate sits at n_hist (the history length), as a single candidate
    appended after the history would.

    >>> token_positions(torch.tensor([0, 4, 6]), torch.tensor([2, 0])).tolist()
    [0, 1, 2, 2, 0, 1]
    """
    hist = history_lengths(offsets, num_targets)
    positions = positions_in_sequence(offsets)
    return torch.minimum(positions, hist.repeat_interleave(offsets[1:] - offsets[:-1]))


def num_targets_problem(offsets: torch.Tensor, num_targets: torch.Tensor) -> str | None:
    """What is wrong with ``num_targets`` for these offsets, or None when it is valid.

    It must be int64 [B] with 0 <= num_targets[b], and num_targets[b] < length of sequence b
    whenever it is > 0: a candidate needs at least one history row to attend to.
    """
    batch = offsets.numel() - 1
    if num_targets.dtype != torch.int64 or num_targets.shape != (batch,):
        return (
            f"num_targets must be int64 [{batch}], got {num_targets.dtype} "
            f"{tuple(num_targets.shape)}"
        )
    lengths = offsets[1:] - offsets[:-1]
    bad = (num_targets < 0) | ((num_targets > 0) & (num_targets >= lengths))
    if bool(bad.any()):
        b = int(torch.nonzero(bad)[0])
        return (
            f"num_targets[{b}] = {int(num_targets[b])} but sequence {b} has {int(lengths[b])} "
            "rows; it must be >= 0 and leave at least one history row before the candidates"
        )
    return None
