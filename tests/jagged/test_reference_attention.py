"""The PyTorch reference attention against a direct per-sequence transcription of the math."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kernels import NUM_TIME_BUCKETS, hstu_attention, time_bucket
from kernels.hstu_attention import resolve_backend


def naive(q, k, v, offsets, max_len, alpha, tq, tk, pos_bias, time_bias):
    """Loops over sequences and pairs (i, j): the formula as written in DESIGN.md."""
    out = torch.zeros(q.shape[0], q.shape[1], v.shape[2], dtype=torch.float64)
    for b in range(offsets.numel() - 1):
        lo, hi = int(offsets[b]), int(offsets[b + 1])
        for i in range(lo, hi):
            for j in range(lo, i + 1):
                s = alpha * (q[i].double() * k[j].double()).sum(-1)
                s = s + float(pos_bias[min(i - j, pos_bias.numel() - 1)])
                gap = abs(int(tq[i]) - int(tk[j]))
                bucket = min(math.floor(math.log(max(gap, 1)) / 0.301), 128)
                s = s + float(time_bias[bucket])
                out[i] += (F.silu(s) / max_len)[:, None] * v[j].double()
    return out


def test_time_bucket_values() -> None:
    dt = torch.tensor([0, 1, -1, 2, 3, 10, 10**6, -(10**9), 10**30], dtype=torch.float64)
    expected = [min(math.floor(math.log(max(abs(x), 1)) / 0.301), 128) for x in dt.tolist()]
    assert time_bucket(dt).tolist() == expected
    assert time_bucket(torch.tensor([10**18])).item() <= NUM_TIME_BUCKETS - 1


def test_reference_matches_formula() -> None:
    g = torch.Generator().manual_seed(0)
    offsets = torch.tensor([0, 3, 3, 4, 9])
    t, h, d = 9, 2, 5
    q, k, v = (torch.randn(t, h, d, generator=g) for _ in range(3))
    ts = torch.cumsum(torch.randint(0, 5000, (t,), generator=g), 0)
    tq = ts + 7
    pos_bias = torch.randn(6, generator=g)
    time_bias = torch.randn(NUM_TIME_BUCKETS, generator=g)
    got = hstu_attention(
        q,
        k,
        v,
        offsets,
        max_len=6,
        alpha=0.5,
        query_timestamps=tq,
        key_timestamps=ts,
        pos_bias=pos_bias,
        time_bias=time_bias,
        backend="reference",
    )
    want = naive(q, k, v, offsets, 6, 0.5, tq, ts, pos_bias, time_bias)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_empty_batch_and_shape_errors() -> None:
    q = torch.zeros(0, 2, 4)
    out = hstu_attention(q, q, q, torch.tensor([0, 0]), max_len=4, backend="reference")
    assert out.shape == (0, 2, 4)
    with pytest.raises(ValueError, match="offsets must be int64"):
        hstu_attention(q, q, q, torch.tensor([0, 1]), max_len=4)
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_backend("cuda-magic", torch.device("cpu"))  # type: ignore[arg-type]
