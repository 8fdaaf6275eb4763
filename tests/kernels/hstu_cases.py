"""Seeded jagged attention batches and a forward+backward runner shared by the kernel tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class AttentionCase:
    """One seeded jagged batch; tensors are fp32 leaves, cast per test."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    offsets: torch.Tensor
    query_timestamps: torch.Tensor
    key_timestamps: torch.Tensor
    pos_bias: torch.Tensor
    time_bias: torch.Tensor
    grad_out: torch.Tensor
    max_len: int


def build_case(
    lengths: list[int],
    heads: int,
    d_qk: int,
    d_v: int,
    *,
    pos_len: int,
    seed: int,
    max_len: int | None = None,
    device: torch.device = DEVICE,
) -> AttentionCase:
    """A random batch whose diagonal time gaps sit exactly on bucket boundaries.

    Keys get sorted random times; every query time is its key time plus a bucket threshold
    (or one second less), so the kernel's log-then-correct bucketing is checked where a bare
    float log could round to the neighbouring bucket.
    """
    from kernels.triton_hstu import time_bucket_thresholds

    gen = torch.Generator().manual_seed(seed)
    lengths_t = torch.tensor(lengths, dtype=torch.int64)
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    offsets[1:] = lengths_t.cumsum(0)
    total = int(offsets[-1])
    key_ts = torch.randint(0, 10**8, (total,), generator=gen).sort().values
    thresholds = time_bucket_thresholds(torch.device("cpu"))
    picks = torch.randint(1, 40, (total,), generator=gen)
    query_ts = key_ts + thresholds[picks] - torch.randint(0, 2, (total,), generator=gen)

    def rand(*shape: int, scale: float = 0.5) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale).to(device)

    return AttentionCase(
        q=rand(total, heads, d_qk),
        k=rand(total, heads, d_qk),
        v=rand(total, heads, d_v),
        offsets=offsets.to(device),
        query_timestamps=query_ts.to(device),
        key_timestamps=key_ts.to(device),
        pos_bias=rand(pos_len, scale=0.3),
        time_bias=rand(129, scale=0.3),
        grad_out=rand(total, heads, d_v, scale=1.0),
        max_len=max_len if max_len is not None else max(max(lengths, default=1), 1),
    )


def run_attention(
    fn: Callable[..., torch.Tensor],
    case: AttentionCase,
    dtype: torch.dtype,
    *,
    alpha: float,
    use_pos: bool,
    use_time: bool,
    num_targets: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Forward + backward of ``fn``; returns fp32 copies of out and every gradient."""
    q, k, v = (t.to(dtype).requires_grad_() for t in (case.q, case.k, case.v))
    pos = case.pos_bias.clone().requires_grad_() if use_pos else None
    time = case.time_bias.clone().requires_grad_() if use_time else None
    out = fn(
        q,
        k,
        v,
        case.offsets,
        max_len=case.max_len,
        alpha=alpha,
        query_timestamps=case.query_timestamps,
        key_timestamps=case.key_timestamps,
        pos_bias=pos,
        time_bias=time,
        num_targets=num_targets,
    )
    leaves = {"q": q, "k": k, "v": v, "pos_bias": pos, "time_bias": time}
    leaves = {name: t for name, t in leaves.items() if t is not None}
    if out.numel():
        grads = torch.autograd.grad(out, list(leaves.values()), case.grad_out.to(dtype))
    else:
        grads = tuple(torch.zeros_like(t) for t in leaves.values())
    result = {"out": out.detach().float()}
    result.update({f"d{name}": g.float() for name, g in zip(leaves, grads, strict=True)})
    return result
