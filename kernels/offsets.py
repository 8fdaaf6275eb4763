"""Row <-> sequence maps of jagged offsets ([B+1], int64), shared by the kernels and model/.

Here rather than in ``model.jagged`` (which re-exports them) because the attention reference
needs them and the kernels sit below the model in the import order.
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
