"""The Triton kernels compile for an H100 (sm_90) on a machine without a GPU.

The CPU suite runs the kernels through Triton's interpreter, which accepts some programs the
GPU compiler rejects (tile shapes, dtype mixes, layouts). ``bench/compile_kernels.py`` compiles
the kernels ahead of time through Triton's real pipeline and ptxas, so such a kernel fails
here, in CI, instead of on the first GPU. A subprocess: the interpreter is set for this test
directory, and a kernel defined under it cannot be compiled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "compile_kernels.py"


def test_each_kernel_compiles_for_sm90_within_shared_memory() -> None:
    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # bf16 (the training dtype) and fp32 (ieee dots); head dim 50 is not a power of two.
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dtypes", "bf16,fp32", "--head-dims", "50", "--first-config-only"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    rows = report["kernels"]
    assert {(r["kernel"], r["dtype"], r["candidates"]) for r in rows} == {
        (kernel, dtype, candidates)
        for kernel in ("_hstu_fwd", "_hstu_bwd_dq", "_hstu_bwd_dkdv")
        for dtype in ("bf16", "fp32")
        for candidates in (False, True)
    }
    for row in rows:
        assert row["cubin_bytes"] > 0 and row["fits_shared"], row
        assert 0 < row["registers"] <= 255, row
