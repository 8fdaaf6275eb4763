"""PyTorch reference for jagged HSTU attention: the oracle for every fast path.

Pads to [B, n, H, d] only inside this reference (an explicit boundary); the math follows
DESIGN.md: ``a_ij = SiLU(alpha * q_i.k_j + rab_pos(i-j) + rab_time(bucket(tq_i - tk_j))) / N``
for j <= i, zero otherwise, and ``out_i = sum_j a_ij v_j``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.offsets import positions_in_sequence, segment_ids

NUM_TIME_BUCKETS = 129  # buckets 0..128 after clamping
TIME_BUCKET_DIVISOR = 0.301  # ~log(2): one bucket per doubling of the time gap
MAX_TIME_BUCKET = NUM_TIME_BUCKETS - 1


def time_bucket(dt: torch.Tensor) -> torch.Tensor:
    """floor(ln(max(|dt|, 1)) / 0.301), clamped to [0, 128]; dt in seconds (any int/float dtype)."""
    gap = dt.abs().clamp(min=1).to(torch.float32)
    return (torch.log(gap) / TIME_BUCKET_DIVISOR).floor().clamp(0, MAX_TIME_BUCKET).to(torch.int64)


def relative_bias(
    n: int,
    pos_bias: torch.Tensor | None,
    time_bias: torch.Tensor | None,
    q_ts: torch.Tensor | None,
    k_ts: torch.Tensor | None,
) -> torch.Tensor | None:
    """[B, n, n] (or [n, n]) additive bias for padded sequences; None when there is no bias.

    ``q_ts``/``k_ts`` are [B, n] padded timestamps; the position table is indexed by i - j
    (clamped to its last entry), the time table by the bucketed gap tq_i - tk_j.
    """
    bias: torch.Tensor | None = None
    if pos_bias is not None:
        idx = torch.arange(n, device=pos_bias.device)
        rel = (idx[:, None] - idx[None, :]).clamp(0, pos_bias.numel() - 1)
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
) -> torch.Tensor:
    """Jagged HSTU attention, computed in the inputs' dtype (differentiable)."""
    total, heads, _ = q.shape
    if total == 0:
        return v.new_zeros((0, heads, v.shape[-1]))
    n = int((offsets[1:] - offsets[:-1]).max())
    qp, kp, vp = (pad_jagged(t, offsets, n) for t in (q, k, v))  # [B, n, H, d]
    scores = torch.einsum("bihd,bjhd->bhij", qp, kp) * alpha
    qts = None if query_timestamps is None else pad_jagged(query_timestamps, offsets, n)
    kts = None if key_timestamps is None else pad_jagged(key_timestamps, offsets, n)
    bias = relative_bias(n, pos_bias, time_bias, qts, kts)
    if bias is not None:
        scores = scores + (bias if bias.dim() == 2 else bias[:, None]).to(scores.dtype)
    causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    attn = torch.where(causal, F.silu(scores), torch.zeros((), dtype=scores.dtype, device=q.device))
    attn = attn / max_len
    out = torch.einsum("bhij,bjhd->bihd", attn, vp)  # padded keys have v = 0
    return unpad_jagged(out, offsets)
