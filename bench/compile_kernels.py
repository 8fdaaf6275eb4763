"""Compile the HSTU Triton kernels for a GPU architecture without a GPU; print JSON.

Triton compiles ahead of time for an explicit target: this script captures the exact launch
arguments that ``hstu_attention_triton`` passes for a small jagged batch (forward and both
backward kernels, with both bias tables, without and with candidate tokens), then compiles every autotuning config of each kernel
for ``--arch`` (default 90, H100) through Triton's own pipeline and ptxas. Per kernel, dtype,
head dim and config it reports shared memory (the launch fails above the architecture's
limit, 227 KiB per block on sm_90), registers per thread and spilled bytes from ``ptxas -v``.

CI (no GPU) runs a small selection in ``tests/kernels/test_compile_kernels.py``, so a kernel
that the interpreter accepts but the GPU compiler rejects fails there. The numbers also guide
the autotuning configs: a config that spills heavily or exceeds shared memory is wasted.

Example::

    python3 bench/compile_kernels.py --dtypes bf16,fp16,fp32 --head-dims 64,50
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("compile_kernels.py: unset TRITON_INTERPRET; the interpreter has nothing to compile")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource

import kernels.triton_hstu as th

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
POINTER_TYPES = {
    torch.bfloat16: "*bf16",
    torch.float16: "*fp16",
    torch.float32: "*fp32",
    torch.int64: "*i64",
}
SHARED_LIMIT = {90: 232_448, 80: 166_912, 89: 101_376}  # bytes per block (opt-in maximum)
KERNELS = ("_hstu_fwd", "_hstu_bwd_dq", "_hstu_bwd_dkdv")


class _Capture:
    """Stands in for an autotuned kernel: records ``kernel[grid](*args, **kwargs)``."""

    def __init__(self, name: str, calls: dict[str, tuple[Any, tuple, dict]]) -> None:
        self.name, self.calls, self.tuner = name, calls, getattr(th, name)

    def __getitem__(self, grid: Any) -> Any:
        def launch(*args: Any, **kwargs: Any) -> None:
            self.calls[self.name] = (self.tuner, args, kwargs)

        return launch


def capture_launches(
    dtype: torch.dtype, d_qk: int, d_v: int, candidates: bool
) -> dict[str, tuple[Any, tuple, dict]]:
    """The launch arguments of the three kernels for one forward + backward (CPU tensors);
    with ``candidates``, the last rows of two sequences are candidate tokens (num_targets)."""
    calls: dict[str, tuple[Any, tuple, dict]] = {}
    stand_ins = {name: _Capture(name, calls) for name in KERNELS}
    # Capture on CPU: the device check is the interpreter's escape hatch.
    with mock.patch.multiple(th, INTERPRETED=True, **stand_ins):
        heads, offsets = 2, torch.tensor([0, 100, 100, 300])  # a length-0 sequence included
        total = int(offsets[-1])
        q = torch.randn(total, heads, d_qk, dtype=dtype, requires_grad=True)
        k = torch.randn(total, heads, d_qk, dtype=dtype, requires_grad=True)
        v = torch.randn(total, heads, d_v, dtype=dtype, requires_grad=True)
        stamps = 1_600_000_000 + torch.arange(total) * 1000
        pos = torch.zeros(200, requires_grad=True)
        time_bias = torch.zeros(th.NUM_TIME_BUCKETS, requires_grad=True)
        out = th.hstu_attention_triton(
            q, k, v, offsets, max_len=200, query_timestamps=stamps, key_timestamps=stamps,
            pos_bias=pos, time_bias=time_bias,
            num_targets=torch.tensor([30, 0, 50]) if candidates else None,
        )  # fmt: skip
        out.float().sum().backward()
    missing = set(KERNELS) - set(calls)
    if missing:
        raise RuntimeError(f"no launch captured for {sorted(missing)}")
    return calls


def _source(fn: Any, bound: dict[str, Any]) -> ASTSource:
    """Signature, constants and alignment hints as Triton's launcher would specialise them."""
    signature: dict[str, str] = {}
    constants: dict[str, Any] = {}
    attrs: dict[tuple[int], list] = {}
    for i, name in enumerate(fn.arg_names):
        value = bound[name]
        # Constexprs, None pointers and ints equal to 1 become compile-time constants.
        if isinstance(value, torch.Tensor):
            signature[name] = POINTER_TYPES[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]  # CUDA allocations are 256-byte aligned
        elif i in fn.constexprs or value is None or isinstance(value, bool) or value == 1:
            signature[name], constants[name] = "constexpr", value
        elif isinstance(value, int):
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: cannot specialise {name}={value!r}")
    return ASTSource(fn=fn, signature=signature, constexprs=constants, attrs=attrs)


def _ptxas_usage(ptx: str, arch: int) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.ptx"
        path.write_text(ptx)
        suffix = "a" if arch >= 90 else ""
        done = subprocess.run(
            [get_ptxas(arch).path, f"-arch=sm_{arch}{suffix}", "-v", str(path), "-o", os.devnull],
            capture_output=True,
            text=True,
            check=True,
        )
    text = done.stdout + done.stderr
    registers = re.search(r"Used (\d+) registers", text)
    spill_stores = re.search(r"(\d+) bytes spill stores", text)
    spill_loads = re.search(r"(\d+) bytes spill loads", text)
    return {
        "registers": int(registers.group(1)) if registers else -1,
        "spill_store_bytes": int(spill_stores.group(1)) if spill_stores else 0,
        "spill_load_bytes": int(spill_loads.group(1)) if spill_loads else 0,
    }


def compile_all(
    arch: int, dtypes: list[str], head_dims: list[int], first_config_only: bool
) -> list[dict[str, Any]]:
    target = GPUTarget("cuda", arch, 32)
    backend = triton.compiler.make_backend(target)
    results = []
    for dtype_name in dtypes:
        for d, candidates in ((d, c) for d in head_dims for c in (False, True)):
            launches = capture_launches(DTYPES[dtype_name], d, d, candidates)
            for name, (tuner, args, kwargs) in launches.items():
                fn = tuner.fn
                bound = {**dict(zip(fn.arg_names, args, strict=False)), **kwargs}
                configs = tuner.configs[:1] if first_config_only else tuner.configs
                for config in configs:
                    started = time.perf_counter()
                    options = backend.parse_options(
                        {
                            "num_warps": config.num_warps,
                            "num_stages": config.num_stages,
                            "enable_fp_fusion": True,  # what a launch uses by default
                        }
                    )
                    compiled = triton.compile(
                        _source(fn, {**bound, **config.kwargs}),
                        target=target,
                        options=options.__dict__,
                    )
                    shared = int(compiled.metadata.shared)
                    results.append(
                        {
                            "kernel": name,
                            "dtype": dtype_name,
                            "head_dim": d,
                            "candidates": candidates,
                            **config.kwargs,
                            "num_warps": config.num_warps,
                            "num_stages": config.num_stages,
                            "shared_bytes": shared,
                            "fits_shared": shared <= SHARED_LIMIT.get(arch, SHARED_LIMIT[90]),
                            "cubin_bytes": len(compiled.asm["cubin"]),
                            **_ptxas_usage(compiled.asm["ptx"], arch),
                            "compile_s": round(time.perf_counter() - started, 2),
                        }
                    )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90, 80")
    parser.add_argument("--dtypes", default="bf16,fp16,fp32", help="comma-separated")
    parser.add_argument("--head-dims", default="64,50", help="comma-separated q/k/v head dims")
    parser.add_argument(
        "--first-config-only", action="store_true", help="one config per kernel (CI's quick check)"
    )
    args = parser.parse_args(argv)
    dtypes = args.dtypes.split(",")
    unknown = sorted(set(dtypes) - set(DTYPES))
    if unknown:
        parser.error(f"unknown dtype(s) {unknown}; choose from {sorted(DTYPES)}")
    head_dims = [int(d) for d in args.head_dims.split(",")]
    results = compile_all(args.arch, dtypes, head_dims, args.first_config_only)
    json.dump({"arch": args.arch, "triton": triton.__version__, "kernels": results}, sys.stdout)
    print()
    return 0 if all(r["fits_shared"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
