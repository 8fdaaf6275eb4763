"""Jagged batches: many variable-length event sequences packed without padding.

A batch of B sequences stores every per-event field as one flat tensor of length
T = sum(lengths), plus ``offsets`` of shape [B+1] (int64, ``offsets[0] == 0``,
non-decreasing): sequence b owns rows ``offsets[b]:offsets[b+1]``. This is the layout
that TorchRec calls a jagged tensor and that the HSTU kernels consume directly.

This module imports only torch and numpy so that ``model/`` runs on a GPU box without
the streaming stack; the Arrow constructor imports pyarrow lazily.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch

from kernels.offsets import (
    candidate_rows,
    history_lengths,
    num_targets_problem,
    positions_in_sequence,
)


class JaggedError(ValueError):
    """A jagged batch is malformed; the message names the field and the first bad index."""


def offsets_from_lengths(lengths: torch.Tensor | np.ndarray | Sequence[int]) -> torch.Tensor:
    """[B] lengths -> [B+1] int64 offsets."""
    lengths_t = torch.as_tensor(np.asarray(lengths, dtype=np.int64))
    out = torch.zeros(lengths_t.numel() + 1, dtype=torch.int64)
    torch.cumsum(lengths_t, dim=0, out=out[1:])
    return out


def validate_offsets(offsets: torch.Tensor, total: int | None = None) -> None:
    """Check the offsets invariants; raise JaggedError naming the first violation."""
    if offsets.dtype != torch.int64:
        raise JaggedError(f"offsets must be int64, got {offsets.dtype}")
    if offsets.dim() != 1 or offsets.numel() < 1:
        raise JaggedError(
            f"offsets must be 1-D with B+1 >= 1 entries, got shape {tuple(offsets.shape)}"
        )
    if int(offsets[0]) != 0:
        raise JaggedError(f"offsets[0] must be 0, got {int(offsets[0])}")
    diffs = offsets[1:] - offsets[:-1]
    # any() first: nonzero() is several times slower and only needed to name the culprit.
    if bool((diffs < 0).any()):
        i = int(torch.nonzero(diffs < 0)[0])
        raise JaggedError(
            f"offsets must be non-decreasing: offsets[{i}]={int(offsets[i])} > "
            f"offsets[{i + 1}]={int(offsets[i + 1])}"
        )
    if total is not None and int(offsets[-1]) != total:
        raise JaggedError(f"offsets[-1]={int(offsets[-1])} but the values have {total} rows")


PER_SEQUENCE_FIELDS = ("query_time", "num_targets")  # [B]; every other field but offsets is [T]


@dataclass(frozen=True)
class JaggedBatch:
    """B event sequences as flat [T] tensors plus [B+1] offsets.

    Fields:
        item_ids: int64 [T], embedding rows (>= 0; 0 is reserved for padding/unknown).
        timestamps: int64 [T], event time in seconds.
        action_types: int64 [T], small non-negative action codes (0 when unused).
        offsets: int64 [B+1].
        weights: optional float32 [T], per-event loss weight.
        is_target: optional bool [T]; True marks an event the model must predict (from the
            output at the previous position of the same sequence). ``None`` means every
            event but the first of each sequence (offline autoregressive training).
        query_time: optional int64 [B], the time at which the *next*, not yet seen event is
            requested (serving); used as the last history position's query timestamp and as
            every candidate's.
        values: optional float32 [T], each event's value (e.g. a rating); NaN where an event
            has none. ``None`` means no event has one.
        num_targets: optional int64 [B]; the last num_targets[b] rows of sequence b are
            candidate tokens (items to rank, M-FALCON style), the rows before them its history.
            0 <= num_targets[b], and num_targets[b] < length of sequence b when it is > 0 (a
            candidate needs a history row). A candidate attends to the history and itself only
            and sits at position n_hist; candidates are never autoregressive targets.

    Two sequences, of 3 events and 1, packed into 4 rows:

    >>> batch = JaggedBatch.from_lists([[3, 5, 9], [4]], timestamps=[[10, 20, 30], [15]])
    >>> batch.offsets.tolist(), batch.lengths().tolist(), batch.item_ids.tolist()
    ([0, 3, 4], [3, 1], [3, 5, 9, 4])
    >>> batch.sequence(0)["timestamps"].tolist()
    [10, 20, 30]
    >>> batch.target_mask().tolist()  # every event but each sequence's first
    [False, True, True, False]

    The same events with sequence 0's last two rows as candidates (its history is one row):

    >>> ranked = batch.with_fields(num_targets=torch.tensor([2, 0]))
    >>> ranked.candidate_mask().tolist(), ranked.history_lengths().tolist()
    ([False, True, True, False], [1, 1])
    >>> ranked.target_mask().tolist()  # candidates are not next-item targets
    [False, False, False, False]
    >>> JaggedBatch.from_lists([[3, -1]], timestamps=[[10, 20]])
    Traceback (most recent call last):
        ...
    model.jagged.JaggedError: item_ids must be >= 0: item_ids[1] = -1
    """

    item_ids: torch.Tensor
    timestamps: torch.Tensor
    action_types: torch.Tensor
    offsets: torch.Tensor
    weights: torch.Tensor | None = None
    is_target: torch.Tensor | None = None
    query_time: torch.Tensor | None = None
    values: torch.Tensor | None = None
    num_targets: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------- checks
    def validate(self) -> None:
        total = self.item_ids.numel()
        validate_offsets(self.offsets, total)
        int_fields = {
            "item_ids": self.item_ids,
            "timestamps": self.timestamps,
            "action_types": self.action_types,
        }
        for name, t in int_fields.items():
            if t.dtype != torch.int64:
                raise JaggedError(f"{name} must be int64, got {t.dtype}")
            if t.dim() != 1 or t.numel() != total:
                raise JaggedError(f"{name} must have shape [{total}], got {tuple(t.shape)}")
        for name in ("item_ids", "action_types"):
            t = int_fields[name]
            if t.numel() and int(t.min()) < 0:
                i = int(torch.nonzero(t < 0)[0])
                raise JaggedError(f"{name} must be >= 0: {name}[{i}] = {int(t[i])}")
        if self.weights is not None:
            if not self.weights.is_floating_point():
                raise JaggedError(f"weights must be floating point, got {self.weights.dtype}")
            if self.weights.shape != (total,):
                raise JaggedError(
                    f"weights must have shape [{total}], got {tuple(self.weights.shape)}"
                )
        if self.is_target is not None and (
            self.is_target.dtype != torch.bool or self.is_target.shape != (total,)
        ):
            raise JaggedError(
                f"is_target must be bool [{total}], got {self.is_target.dtype} "
                f"{tuple(self.is_target.shape)}"
            )
        if self.query_time is not None and (
            self.query_time.dtype != torch.int64 or self.query_time.shape != (self.num_sequences,)
        ):
            raise JaggedError(
                f"query_time must be int64 [{self.num_sequences}], got {self.query_time.dtype} "
                f"{tuple(self.query_time.shape)}"
            )
        if self.values is not None and (
            self.values.dtype != torch.float32 or self.values.shape != (total,)
        ):
            raise JaggedError(
                f"values must be float32 [{total}] (NaN = no value), got {self.values.dtype} "
                f"{tuple(self.values.shape)}"
            )
        if self.num_targets is not None:
            problem = num_targets_problem(self.offsets, self.num_targets)
            if problem is not None:
                raise JaggedError(problem)

    # ------------------------------------------------------------- accessors
    @property
    def num_sequences(self) -> int:
        return self.offsets.numel() - 1

    @property
    def total(self) -> int:
        return self.item_ids.numel()

    @property
    def device(self) -> torch.device:
        return self.item_ids.device

    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def max_length(self) -> int:
        return int(self.lengths().max()) if self.num_sequences else 0

    def history_lengths(self) -> torch.Tensor:
        """[B] rows of each sequence before its candidates (the lengths without candidates)."""
        return history_lengths(self.offsets, self.num_targets)

    def candidate_mask(self) -> torch.Tensor:
        """[T] bool: True for candidate rows (the last num_targets[b] rows of sequence b)."""
        return candidate_rows(self.offsets, self.num_targets)

    def target_mask(self) -> torch.Tensor:
        """[T] bool: events to predict (autoregressively, from the previous row's state).

        ``is_target`` when given, else every event but each sequence's first. Candidate rows
        are never targets (``is_target`` marks on them are dropped): they are not events that
        follow the history, and the last history row does not predict the first candidate.
        """
        mask = positions_in_sequence(self.offsets) > 0 if self.is_target is None else self.is_target
        if self.num_targets is None:
            return mask
        return mask & ~self.candidate_mask()

    def sequence(self, b: int) -> dict[str, torch.Tensor]:
        """The fields of sequence b (for tests and debugging): per-row fields as views,
        per-sequence fields (``query_time``, ``num_targets``) as 0-d tensors."""
        lo, hi = int(self.offsets[b]), int(self.offsets[b + 1])
        out = {}
        for f in fields(self):
            t = getattr(self, f.name)
            if f.name == "offsets" or t is None:
                continue
            out[f.name] = t[b] if f.name in PER_SEQUENCE_FIELDS else t[lo:hi]
        return out

    def to(self, device: torch.device | str, non_blocking: bool = False) -> JaggedBatch:
        moved: dict[str, Any] = {}
        for f in fields(self):
            t = getattr(self, f.name)
            moved[f.name] = None if t is None else t.to(device, non_blocking=non_blocking)
        return JaggedBatch(**moved)

    def with_fields(self, **changes: Any) -> JaggedBatch:
        return replace(self, **changes)

    # ---------------------------------------------------------- constructors
    @classmethod
    def from_numpy(
        cls,
        item_ids: np.ndarray,
        timestamps: np.ndarray,
        offsets: np.ndarray,
        action_types: np.ndarray | None = None,
        weights: np.ndarray | None = None,
        is_target: np.ndarray | None = None,
        query_time: np.ndarray | None = None,
        values: np.ndarray | None = None,
        num_targets: np.ndarray | None = None,
    ) -> JaggedBatch:
        """Build from flat numpy arrays (no per-event Python work)."""
        item_ids = _as_int64(item_ids, "item_ids")
        n = item_ids.shape[0]
        return cls(
            item_ids=_tensor(item_ids),
            timestamps=_tensor(_as_int64(timestamps, "timestamps")),
            action_types=_tensor(
                np.zeros(n, np.int64)
                if action_types is None
                else _as_int64(action_types, "action_types")
            ),
            offsets=_tensor(_as_int64(offsets, "offsets")),
            weights=None if weights is None else _tensor(np.ascontiguousarray(weights, np.float32)),
            is_target=None if is_target is None else _tensor(np.ascontiguousarray(is_target, bool)),
            query_time=None if query_time is None else _tensor(_as_int64(query_time, "query_time")),
            values=None if values is None else _tensor(np.ascontiguousarray(values, np.float32)),
            num_targets=(
                None if num_targets is None else _tensor(_as_int64(num_targets, "num_targets"))
            ),
        )

    @classmethod
    def from_lists(
        cls,
        item_ids: Sequence[Sequence[int]],
        timestamps: Sequence[Sequence[int]],
        action_types: Sequence[Sequence[int]] | None = None,
        weights: Sequence[Sequence[float]] | None = None,
        values: Sequence[Sequence[float]] | None = None,
        num_targets: Sequence[int] | None = None,
    ) -> JaggedBatch:
        """Build from one Python list per sequence, e.g. ``[[3, 5, 9], [4]]``; ``num_targets``
        has one count per sequence."""
        if len(timestamps) != len(item_ids):
            raise JaggedError(
                f"item_ids has {len(item_ids)} sequences but timestamps has {len(timestamps)}"
            )
        lengths = [len(s) for s in item_ids]
        for name, seqs in (
            ("timestamps", timestamps),
            ("action_types", action_types),
            ("weights", weights),
            ("values", values),
        ):
            if seqs is None:
                continue
            if len(seqs) != len(item_ids):
                raise JaggedError(
                    f"item_ids has {len(item_ids)} sequences but {name} has {len(seqs)}"
                )
            for b, s in enumerate(seqs):
                if len(s) != lengths[b]:
                    raise JaggedError(
                        f"sequence {b}: item_ids has {lengths[b]} events but {name} has {len(s)}"
                    )

        def flat(seqs: Sequence[Sequence[Any]], dtype: type) -> np.ndarray:
            return np.fromiter((x for s in seqs for x in s), dtype=dtype, count=sum(lengths))

        return cls.from_numpy(
            item_ids=flat(item_ids, np.int64),
            timestamps=flat(timestamps, np.int64),
            offsets=offsets_from_lengths(lengths).numpy(),
            action_types=None if action_types is None else flat(action_types, np.int64),
            weights=None if weights is None else flat(weights, np.float32),
            values=None if values is None else flat(values, np.float32),
            num_targets=None if num_targets is None else np.asarray(num_targets, np.int64),
        )

    @classmethod
    def from_arrow(
        cls,
        item_ids: Any,
        timestamps: Any,
        action_types: Any = None,
        weights: Any = None,
        values: Any = None,
        num_targets: Any = None,
    ) -> JaggedBatch:
        """Build from pyarrow ``ListArray``/``LargeListArray`` columns (one list per sequence).

        The list offsets become the batch offsets; values are converted zero-copy where
        Arrow's layout allows it. ``num_targets`` is one integer per sequence (an Arrow or
        numpy array).
        """
        import pyarrow as pa  # lazy: model/ must import without pyarrow

        def parts(arr: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
            if isinstance(arr, pa.ChunkedArray):
                arr = arr.combine_chunks()
            if not pa.types.is_list(arr.type) and not pa.types.is_large_list(arr.type):
                raise JaggedError(f"{name} must be an Arrow list array, got {arr.type}")
            if arr.null_count:
                raise JaggedError(f"{name} has {arr.null_count} null sequences")
            offs = arr.offsets.to_numpy().astype(np.int64)
            values = arr.values.to_numpy(zero_copy_only=False)[offs[0] : offs[-1]]
            return offs - offs[0], values

        offsets, items = parts(item_ids, "item_ids")
        ts_offsets, ts = parts(timestamps, "timestamps")
        if not np.array_equal(offsets, ts_offsets):
            raise JaggedError("item_ids and timestamps have different sequence lengths")
        optional: dict[str, np.ndarray | None] = {}
        for name, column in (
            ("action_types", action_types),
            ("weights", weights),
            ("values", values),
        ):
            optional[name] = None
            if column is not None:
                col_offsets, optional[name] = parts(column, name)
                if not np.array_equal(offsets, col_offsets):
                    raise JaggedError(f"item_ids and {name} have different sequence lengths")
        return cls.from_numpy(
            items,
            ts,
            offsets,
            **optional,
            num_targets=None if num_targets is None else np.asarray(num_targets),
        )


def _tensor(arr: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy``, copying read-only arrays (zero-copy views of Arrow buffers): a
    tensor shares its array's memory, and torch has no read-only tensors."""
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


def _as_int64(a: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind not in "iu":
        raise JaggedError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise JaggedError(f"{name} must be 1-D, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.int64)
