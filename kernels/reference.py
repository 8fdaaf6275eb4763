"""PyTorch reference for jagged HSTU attention: the oracle for every fast path.

Pads to [B, n, H, d] only inside this reference (an explicit boundary); the math follows
DESIGN.md: ``a_ij = SiLU(alpha * q_i.k_j + rab_pos(i-j) + rab_time(bucket(tq_i - tk_j))) / N``
for j <= i, zero otherwise, and ``out_i = sum_j a_ij v_j``.

Candidates (``num_targets``): the last ``num_targets[b]`` rows of sequence b attend to every
history row and to themselves only, and sit at position n_hist (the history length) for the
position bias, so each sees exactly what one candidate appended after the history would.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.offsets import candidate_rows, positions_in_sequence, segment_ids, token_positions

NUM_TIME_BUCKETS = 129  # buckets 0..128 after clamping
TIME_BUCKET_DIVISOR = 0.301  # ~log(2): one bucket per doubling of the time gap
MAX_TIME_BUCKET = NUM_TIME_BUCKETS - 1


def time_bucket(dt: torch.Tensor) -> torch.Tensor:
    """floor(ln(max(|dt|, 1)) / 0.301), clamped to [0, 128]; dt in seconds (any int/float dtype)."""
    gap = dt.abs().clamp(min=1).to(torch.float32)
    return (torch.log(gap) / TIME_BUCKET_DIVISOR).floor().clamp(0, MAX_TIME_BUCKET).to(torch.int64)


def attention_mask(
    n: int, key_is_candidate: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """bool mask of the (query i, key j) pairs that attend, for padded sequences of width n.

    Without candidates (``key_is_candidate`` None) it is causal, [n, n]: j <= i. With a [B, n]
    candidate flag per row it is [B, n, n]: the diagonal, plus j < i where row j is history.
    So history rows stay causal, and a candidate sees the history and itself, never another
    candidate. A padded key j >= length is never seen by a real row i < length (j > i).
    """
    idx = torch.arange(n, device=device)
    if key_is_candidate is None:
        return idx[None, :] <= idx[:, None]
    earlier = idx[None, :] < idx[:, None]
    diagonal = idx[None, :] == idx[:, None]
    return diagonal | (earlier & ~key_is_candidate[:, None, :])


def relative_bias(
    n: int,
    pos_bias: torch.Tensor | None,
    time_bias: torch.Tensor | None,
    q_ts: torch.Tensor | None,
    k_ts: torch.Tensor | None,
    positions: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """[B, n, n] (or [n, n]) additive bias for padded sequences; None when there is no bias.

    ``q_ts``/``k_ts`` are [B, n] padded timestamps; the position table is indexed by
    p_i - p_j (clamped to [0, P - 1]), where p is ``positions`` ([B, n], see
    ``kernels.offsets.token_positions``) or, when None, the row index; the time table is
    indexed by the bucketed gap tq_i - tk_j.
    """
    bias: torch.Tensor | None = None
    if pos_bias is not None:
        p = torch.arange(n, device=pos_bias.device) if positions is None else positions
        rel = (p[..., :, None] - p[..., None, :]).clamp(0, pos_bias.numel() - 1)
        bias = pos_bias[rel]
    if time_bias is not None:
        if q_ts is None or k_ts is None:
            raise ValueError("time_bias needs query and key timestamps")
        buckets = time_bucket(q_ts[:, :, None] - k_ts[:, None, :])
        tb = time_bias[buckets]
        bias = tb if bias is None else bias + tb
    return bias


def pad_jagged(values: torch.Tensor, offsets: torch.Tensor, n: int) -> torch.Tensor:
    """[T, ...] -> [B, n, ...] zero-padded (reference code only)."""
    b = offsets.numel() - 1
    out = values.new_zeros((b, n, *values.shape[1:]))
    out[segment_ids(offsets), positions_in_sequence(offsets)] = values
    return out


def unpad_jagged(padded: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """[B, n, ...] -> [T, ...]."""
    return padded[segment_ids(offsets), positions_in_sequence(offsets)]


def hstu_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    offsets: torch.Tensor,
    *,
    max_len: int,
    alpha: float = 1.0,
    query_timestamps: torch.Tensor | None = None,
    key_timestamps: torch.Tensor | None = None,
    pos_bias: torch.Tensor | None = None,
    time_bias: torch.Tensor | None = None,
    num_targets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Jagged HSTU attention, computed in the inputs' dtype (differentiable).

    ``num_targets`` (int64 [B] or None): the last num_targets[b] rows of sequence b are
    candidates (see the module docstring).
    """
    total, heads, _ = q.shape
    if total == 0:
        return v.new_zeros((0, heads, v.shape[-1]))
    n = int((offsets[1:] - offsets[:-1]).max())
    qp, kp, vp = (pad_jagged(t, offsets, n) for t in (q, k, v))  # [B, n, H, d]
    scores = torch.einsum("bihd,bjhd->bhij", qp, kp) * alpha
    qts = None if query_timestamps is None else pad_jagged(query_timestamps, offsets, n)
    kts = None if key_timestamps is None else pad_jagged(key_timestamps, offsets, n)
    positions = is_candidate = None
    if num_targets is not None:
        positions = pad_jagged(token_positions(offsets, num_targets), offsets, n)
        is_candidate = pad_jagged(candidate_rows(offsets, num_targets), offsets, n)
    bias = relative_bias(n, pos_bias, time_bias, qts, kts, positions)
    if bias is not None:
        scores = scores + (bias if bias.dim() == 2 else bias[:, None]).to(scores.dtype)
    mask = attention_mask(n, is_candidate, q.device)
    mask = mask if mask.dim() == 2 else mask[:, None]
    attn = torch.where(mask, F.silu(scores), torch.zeros((), dtype=scores.dtype, device=q.device))
    attn = attn / max_len
    out = torch.einsum("bhij,bjhd->bihd", attn, vp)  # padded keys have v = 0
    return unpad_jagged(out, offsets)
