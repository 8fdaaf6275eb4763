"""Benchmark jagged HSTU attention (forward + backward); prints one JSON document.

Compares, per (max_len, length distribution):
  (a) ``sdpa_padded``: causal softmax attention via ``torch.nn.functional.scaled_dot_product_attention``
      on the batch padded to max_len (FlashAttention backend forced on CUDA): the cost of a
      padded, bias-free attention of the same shapes;
  (b) ``reference``: the PyTorch HSTU reference (pads internally, materialises [B, H, n, n]);
  (c) ``triton_bias``: the Triton kernel with position and time bias (gradients for all);
  (d) ``triton_nobias``: the Triton kernel without bias;
plus speed ratios. Triton runs on CUDA, or on CPU when TRITON_INTERPRET=1 (interpreter: only
for smoke tests with tiny shapes); otherwise its rows say why they were skipped.

Example (GPU): python3 bench/attention.py --max-lens 1024,2048,4096,8192 --dist uniform,powerlaw
Smoke (CPU):   python3 bench/attention.py --device cpu --max-lens 64 --batch 2 --heads 1 --reps 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from kernels import NUM_TIME_BUCKETS, hstu_attention, hstu_attention_reference

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
METHODS = ("sdpa_padded", "reference", "triton_bias", "triton_nobias")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device)
    parser.add_argument("--max-lens", default="1024,2048,4096,8192")
    parser.add_argument("--dist", default="uniform,powerlaw")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument(
        "--powerlaw-exponent",
        type=float,
        default=2.0,
        help="powerlaw lengths are max_len * u**exponent, u ~ U(0, 1), clipped to [1, max_len]",
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def sample_lengths(
    dist: str, batch: int, max_len: int, exponent: float, gen: torch.Generator
) -> torch.Tensor:
    """[batch] int64 lengths; the first is max_len so every batch pads to the same shape."""
    if dist == "uniform":
        lengths = torch.randint(1, max_len + 1, (batch,), generator=gen)
    elif dist == "powerlaw":
        u = torch.rand(batch, generator=gen, dtype=torch.float64)
        lengths = (max_len * u**exponent).round().clamp(1, max_len).to(torch.int64)
    else:
        raise ValueError(f"unknown --dist {dist!r}; choose uniform or powerlaw")
    lengths[0] = max_len
    return lengths


def time_ms(fn: Callable[[], None], device: torch.device, warmup: int, reps: int) -> float:
    """Median wall time of ``fn`` in milliseconds (synchronising around each call on CUDA)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def sdpa_step(
    batch: int, heads: int, max_len: int, dim: int, dtype: torch.dtype, device: torch.device
) -> Callable[[], None]:
    """Forward + backward of causal SDPA on [B, H, max_len, d] (padded batch)."""
    q, k, v = (
        torch.randn(batch, heads, max_len, dim, dtype=dtype, device=device, requires_grad=True)
        for _ in range(3)
    )
    grad = torch.randn(batch, heads, max_len, dim, dtype=dtype, device=device)

    def step() -> None:
        if device.type == "cuda":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.autograd.grad(out, (q, k, v), grad)

    return step


def hstu_step(
    method: str,
    lengths: torch.Tensor,
    heads: int,
    dim: int,
    max_len: int,
    dtype: torch.dtype,
    device: torch.device,
) -> Callable[[], None]:
    """Forward + backward of jagged HSTU attention (reference or Triton, with/without bias)."""
    offsets = torch.zeros(lengths.numel() + 1, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    offsets = offsets.to(device)
    total = int(offsets[-1])
    q, k, v = (
        (torch.randn(total, heads, dim, device=device) * 0.5).to(dtype).requires_grad_()
        for _ in range(3)
    )
    grad = torch.randn(total, heads, dim, dtype=dtype, device=device)
    with_bias = method != "triton_nobias"
    key_ts = torch.randint(0, 10**7, (total,), device=device).sort().values
    query_ts = key_ts + torch.randint(0, 10**4, (total,), device=device)
    pos_bias = torch.zeros(max_len, device=device, requires_grad=True) if with_bias else None
    time_bias = (
        torch.zeros(NUM_TIME_BUCKETS, device=device, requires_grad=True) if with_bias else None
    )
    leaves = [t for t in (q, k, v, pos_bias, time_bias) if t is not None]
    kwargs = {
        "max_len": max_len,
        "alpha": 1.0 / dim**0.5,
        "query_timestamps": query_ts,
        "key_timestamps": key_ts,
        "pos_bias": pos_bias,
        "time_bias": time_bias,
    }

    def step() -> None:
        if method == "reference":
            out = hstu_attention_reference(q, k, v, offsets, **kwargs)
        else:
            out = hstu_attention(q, k, v, offsets, backend="triton", **kwargs)
        torch.autograd.grad(out, leaves, grad)

    return step


def triton_skip_reason(device: torch.device) -> str | None:
    if device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return None
    return "Triton kernels need a CUDA device (or TRITON_INTERPRET=1 for tiny smoke runs)"


def make_step(
    name: str, args: argparse.Namespace, lengths: torch.Tensor, max_len: int
) -> Callable[[], None]:
    dtype, device = DTYPES[args.dtype], torch.device(args.device)
    if name == "sdpa_padded":
        return sdpa_step(args.batch, args.heads, max_len, args.dim, dtype, device)
    return hstu_step(name, lengths, args.heads, args.dim, max_len, dtype, device)


def run_method(name: str, args: argparse.Namespace, lengths: torch.Tensor, max_len: int) -> dict:
    """Time one method; an out-of-memory failure becomes an ``error`` entry, not a crash."""
    device = torch.device(args.device)
    try:
        step = make_step(name, args, lengths, max_len)
        return {"ms": round(time_ms(step, device, args.warmup, args.reps), 4)}
    except torch.OutOfMemoryError as exc:
        return {"error": f"out of memory: {str(exc).splitlines()[0]}"}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def ratio(numerator: dict, denominator: dict) -> float | None:
    if "ms" in numerator and "ms" in denominator and numerator["ms"] > 0:
        return round(denominator["ms"] / numerator["ms"], 3)
    return None


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    max_lens = [int(x) for x in args.max_lens.split(",") if x]
    dists = [x for x in args.dist.split(",") if x]
    gen = torch.Generator().manual_seed(args.seed)
    skip = triton_skip_reason(device)
    cases = [(n, d) for n in max_lens for d in dists]
    results = []
    for index, (max_len, dist) in enumerate(cases, start=1):
        lengths = sample_lengths(dist, args.batch, max_len, args.powerlaw_exponent, gen)
        methods: dict[str, dict] = {}
        for name in METHODS:
            if skip is not None and name.startswith("triton"):
                methods[name] = {"skipped": skip}
                continue
            methods[name] = run_method(name, args, lengths, max_len)
            print(
                f"[{index}/{len(cases)}] max_len={max_len} dist={dist} {name}: {methods[name]}",
                file=sys.stderr,
                flush=True,
            )
        results.append(
            {
                "max_len": max_len,
                "dist": dist,
                "tokens": int(lengths.sum()),
                "padded_tokens": args.batch * max_len,
                "mean_length": round(float(lengths.float().mean()), 1),
                "methods": methods,
                "speedup": {
                    "triton_bias_vs_reference": ratio(methods["triton_bias"], methods["reference"]),
                    "triton_bias_vs_sdpa_padded": ratio(
                        methods["triton_bias"], methods["sdpa_padded"]
                    ),
                    "triton_nobias_vs_sdpa_padded": ratio(
                        methods["triton_nobias"], methods["sdpa_padded"]
                    ),
                    "triton_nobias_vs_triton_bias": ratio(
                        methods["triton_nobias"], methods["triton_bias"]
                    ),
                },
            }
        )
    report = {
        "benchmark": "hstu_attention_fwd_bwd",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "config": {
            "batch": args.batch,
            "heads": args.heads,
            "dim": args.dim,
            "dtype": args.dtype,
            "warmup": args.warmup,
            "reps": args.reps,
            "powerlaw_exponent": args.powerlaw_exponent,
            "seed": args.seed,
        },
        "units": "median milliseconds per forward+backward; speedup = other_ms / this_ms",
        "triton_note": skip,
        "results": results,
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
