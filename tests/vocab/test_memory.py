"""``lazy_zeros``: zero-filled arrays, large ones in their own lazily backed mapping."""

from __future__ import annotations

import mmap

import numpy as np
import pytest

from pipeline.state.memory import lazy_zeros


@pytest.mark.parametrize("shape", [7, (3, 5), (1 << 18, 8), 0])
def test_behaves_like_np_zeros(shape: int | tuple[int, ...]) -> None:
    arr = lazy_zeros(shape, np.int64)
    want = np.zeros(shape, dtype=np.int64)
    assert arr.shape == want.shape and arr.dtype == want.dtype
    assert arr.flags.c_contiguous and arr.flags.writeable
    np.testing.assert_array_equal(arr, want)
    if arr.size:
        arr.ravel()[-1] = 5  # writes go through the flat view
        assert arr.reshape(-1)[-1] == 5 and int(arr.sum()) == 5


def test_large_arrays_are_mapped_and_small_ones_are_not() -> None:
    large = lazy_zeros((1 << 18, 8), np.float32)  # 8 MiB
    base = large
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    assert isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)
    assert lazy_zeros(16, np.int32).base is None  # plain np.zeros


def test_object_arrays_are_refused() -> None:
    with pytest.raises(TypeError, match="plain numbers"):
        lazy_zeros(3, object)
