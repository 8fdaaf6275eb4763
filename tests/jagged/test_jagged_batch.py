"""JaggedBatch construction and validation."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from kernels.offsets import positions_in_sequence, segment_ids
from model.jagged import JaggedBatch, JaggedError, offsets_from_lengths


def test_from_lists_layout() -> None:
    b = JaggedBatch.from_lists([[3, 5, 9], [], [4]], [[1, 2, 3], [], [7]])
    assert b.offsets.tolist() == [0, 3, 3, 4]
    assert b.item_ids.tolist() == [3, 5, 9, 4]
    assert b.lengths().tolist() == [3, 0, 1]
    assert b.max_length() == 3
    assert b.action_types.tolist() == [0, 0, 0, 0]
    assert b.target_mask().tolist() == [False, True, True, False]
    assert b.sequence(2)["item_ids"].tolist() == [4]


def test_helpers() -> None:
    offsets = offsets_from_lengths([2, 0, 3])
    assert offsets.tolist() == [0, 2, 2, 5]
    assert segment_ids(offsets).tolist() == [0, 0, 2, 2, 2]
    assert positions_in_sequence(offsets).tolist() == [0, 1, 0, 1, 2]


def test_from_numpy_and_to() -> None:
    b = JaggedBatch.from_numpy(
        item_ids=np.array([1, 2, 3], np.int32),
        timestamps=np.array([5, 6, 7]),
        offsets=np.array([0, 1, 3]),
        weights=np.array([1.0, 0.5, 2.0]),
        query_time=np.array([9, 9]),
    )
    assert b.item_ids.dtype == torch.int64 and b.weights is not None
    moved = b.to("cpu")
    assert torch.equal(moved.item_ids, b.item_ids) and moved.weights.dtype == torch.float32


def test_from_arrow_slices_and_offsets() -> None:
    items = pa.array([[1, 2], [3], [], [4, 5, 6]], type=pa.list_(pa.int64())).slice(1)
    ts = pa.array([[10, 11], [12], [], [13, 14, 15]], type=pa.list_(pa.int64())).slice(1)
    b = JaggedBatch.from_arrow(items, ts)
    assert b.offsets.tolist() == [0, 1, 1, 4]
    assert b.item_ids.tolist() == [3, 4, 5, 6]
    assert b.timestamps.tolist() == [12, 13, 14, 15]


def test_read_only_arrays_are_copied_not_aliased() -> None:
    items = np.array([3, 4, 5])
    items.flags.writeable = False  # as zero-copy views of Arrow buffers are
    b = JaggedBatch.from_numpy(items, np.array([1, 2, 3]), np.array([0, 3]))
    b.item_ids[0] = 9  # a tensor torch may write to, without touching the source
    assert items.tolist() == [3, 4, 5]
    writable = np.array([1, 2, 3])
    shared = JaggedBatch.from_numpy(writable, writable, np.array([0, 3]))
    assert shared.item_ids.data_ptr() == writable.ctypes.data  # writable arrays stay zero-copy


def test_from_arrow_length_mismatch() -> None:
    items = pa.array([[1, 2]], type=pa.list_(pa.int64()))
    ts = pa.array([[1]], type=pa.list_(pa.int64()))
    with pytest.raises(JaggedError, match="different sequence lengths"):
        JaggedBatch.from_arrow(items, ts)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"offsets": torch.tensor([0, 2, 1, 3])}, "non-decreasing"),
        ({"offsets": torch.tensor([1, 3])}, r"offsets\[0\] must be 0"),
        ({"offsets": torch.tensor([0, 2])}, "values have 3 rows"),
        ({"offsets": torch.tensor([0, 3], dtype=torch.int32)}, "offsets must be int64"),
        ({"item_ids": torch.tensor([1, -2, 3])}, r"item_ids\[1\] = -2"),
        ({"timestamps": torch.tensor([1.0, 2.0, 3.0])}, "timestamps must be int64"),
        ({"action_types": torch.tensor([0, 0])}, "action_types must have shape"),
        ({"weights": torch.tensor([1, 2, 3])}, "weights must be floating"),
        ({"is_target": torch.tensor([1, 0, 1])}, "is_target must be bool"),
        ({"query_time": torch.tensor([1, 2])}, "query_time must be int64"),
        ({"num_targets": torch.tensor([1, 0])}, r"num_targets must be int64 \[1\]"),
        ({"num_targets": torch.tensor([1], dtype=torch.int32)}, "num_targets must be int64"),
        ({"num_targets": torch.tensor([3])}, r"num_targets\[0\] = 3 but sequence 0 has 3 rows"),
        ({"num_targets": torch.tensor([-1])}, r"num_targets\[0\] = -1"),
    ],
)
def test_validation_errors(change: dict, message: str) -> None:
    fields = {
        "item_ids": torch.tensor([1, 2, 3]),
        "timestamps": torch.tensor([1, 2, 3]),
        "action_types": torch.tensor([0, 0, 0]),
        "offsets": torch.tensor([0, 3]),
    }
    fields.update(change)
    with pytest.raises(JaggedError, match=message):
        JaggedBatch(**fields)


def test_from_lists_length_mismatch_names_sequence() -> None:
    with pytest.raises(JaggedError, match="sequence 1: item_ids has 2 events but timestamps has 1"):
        JaggedBatch.from_lists([[1], [2, 3]], [[1], [2]])


def test_float_ids_rejected() -> None:
    with pytest.raises(JaggedError, match="must hold integers"):
        JaggedBatch.from_numpy(np.array([1.5]), np.array([1]), np.array([0, 1]))


def test_num_targets_travels_with_the_batch() -> None:
    b = JaggedBatch.from_lists(
        [[1, 2, 3], [], [4, 5]], [[1, 2, 3], [], [4, 5]], num_targets=[2, 0, 1]
    )
    assert b.num_targets is not None and b.num_targets.tolist() == [2, 0, 1]
    assert b.candidate_mask().tolist() == [False, True, True, False, True]
    assert b.history_lengths().tolist() == [1, 0, 1]
    assert b.to("cpu").num_targets.tolist() == [2, 0, 1]
    assert int(b.sequence(2)["num_targets"]) == 1
    assert b.sequence(2)["item_ids"].tolist() == [4, 5]
    flat = JaggedBatch.from_numpy(
        np.array([1, 2, 3]), np.array([1, 2, 3]), np.array([0, 3]), num_targets=np.array([2])
    )
    assert flat.num_targets.tolist() == [2]
    items = pa.array([[1, 2], [3, 4, 5]], type=pa.list_(pa.int64()))
    arrow = JaggedBatch.from_arrow(items, items, num_targets=pa.array([1, 2]))
    assert arrow.candidate_mask().tolist() == [False, True, False, True, True]
    with pytest.raises(JaggedError, match=r"num_targets\[1\] = 3 but sequence 1 has 3 rows"):
        JaggedBatch.from_arrow(items, items, num_targets=np.array([1, 3]))
