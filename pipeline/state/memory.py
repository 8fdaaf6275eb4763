"""Large zero-filled arrays whose memory is backed page by page, on first write.

The sequence store reserves rows for many users up front and the vocabulary sizes its tables
for its capacity; both fill them gradually. ``np.zeros`` would give the same lazy zero pages,
but numpy asks the kernel for transparent huge pages on every array of 4 MiB or more, so the
first write into each 2 MiB region zeroes all of it at once. On the development VM that showed
as 13-22 ms stalls in single store commits (0.2 vs 0.7 µs per event over a 100k-event cold
start, depending on which physical memory the kernel handed out); with an anonymous ``mmap``
the kernel's default page policy applies and the cost is an even ~0.1 µs per event.
"""

from __future__ import annotations

import math
import mmap

import numpy as np
from numpy.typing import DTypeLike

# Below this, np.zeros (no huge-page advice under 4 MiB, and a malloc'd block is cheaper).
_MIN_MAPPED_BYTES = 1 << 20


def lazy_zeros(shape: int | tuple[int, ...], dtype: DTypeLike) -> np.ndarray:
    """A writable, C-contiguous array of zeros; large ones live in their own anonymous mapping,
    released when the array (and every view of it) is gone."""
    dt = np.dtype(dtype)
    if dt.hasobject:
        raise TypeError(f"lazy_zeros holds plain numbers, not {dt}")
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    nbytes = math.prod(dims) * dt.itemsize
    if nbytes < _MIN_MAPPED_BYTES:
        return np.zeros(dims, dtype=dt)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dt).reshape(dims)
