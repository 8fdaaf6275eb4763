"""Smoke test: bench/attention.py runs on tiny CPU shapes and prints the documented JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "attention.py"
TINY = ["--device", "cpu", "--max-lens", "16", "--batch", "2", "--heads", "1", "--dim", "16"]
TINY += ["--reps", "1", "--warmup", "0"]


def _load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_attention", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_run_times_reference_and_sdpa_and_skips_triton(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    report = _load_bench().main([*TINY, "--dist", "uniform,powerlaw"])
    assert json.loads(capsys.readouterr().out) == report
    assert [(r["max_len"], r["dist"]) for r in report["results"]] == [
        (16, "uniform"),
        (16, "powerlaw"),
    ]
    for row in report["results"]:
        assert row["methods"]["sdpa_padded"]["ms"] > 0
        assert row["methods"]["reference"]["ms"] > 0
        assert "CUDA" in row["methods"]["triton_bias"]["skipped"]
        assert row["speedup"]["triton_bias_vs_reference"] is None
        assert 1 <= row["tokens"] <= row["padded_tokens"] == 32


@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter path is the CPU-only path")
def test_interpreted_run_times_the_triton_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    report = _load_bench().main([*TINY, "--dist", "powerlaw", "--dtype", "fp32"])
    (row,) = report["results"]
    assert report["triton_note"] is None
    for name in ("triton_bias", "triton_nobias"):
        assert row["methods"][name]["ms"] > 0
    assert row["speedup"]["triton_bias_vs_reference"] > 0
