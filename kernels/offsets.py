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
