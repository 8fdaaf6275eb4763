"""``kernels.hstu_attention`` picks the right backend and rejects unknown ones."""

from __future__ import annotations

import importlib

import pytest
import torch
from hstu_cases import build_case

import kernels.triton_hstu as triton_hstu
from kernels import hstu_attention, hstu_attention_reference

# The package re-exports the function under the submodule's name, so fetch the module itself.
dispatch = importlib.import_module("kernels.hstu_attention")


def _spy(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[str]:
    calls: list[str] = []
    real = getattr(module, name)

    def wrapper(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def _attend(device: torch.device, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    case = build_case([5, 0, 9], heads=2, d_qk=16, d_v=16, pos_len=9, seed=11, device=device)
    kwargs = {
        "max_len": case.max_len,
        "alpha": 0.5,
        "query_timestamps": case.query_timestamps,
        "key_timestamps": case.key_timestamps,
        "pos_bias": case.pos_bias,
        "time_bias": case.time_bias,
    }
    out = hstu_attention(case.q, case.k, case.v, case.offsets, backend=backend, **kwargs)
    expected = hstu_attention_reference(case.q, case.k, case.v, case.offsets, **kwargs)
    return out, expected


def test_auto_dispatches_to_triton_on_cuda_or_under_the_interpreter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GENREC_ATTENTION_BACKEND", raising=False)
    if torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        device = torch.device("cpu")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    triton_calls = _spy(monkeypatch, triton_hstu, "hstu_attention_triton")
    out, expected = _attend(device, "auto")
    assert triton_calls == ["hstu_attention_triton"]
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_auto_dispatches_to_reference_on_plain_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GENREC_ATTENTION_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    reference_calls = _spy(monkeypatch, dispatch, "hstu_attention_reference")
    triton_calls = _spy(monkeypatch, triton_hstu, "hstu_attention_triton")
    _attend(torch.device("cpu"), "auto")
    assert reference_calls == ["hstu_attention_reference"]
    assert triton_calls == []


def test_unknown_backend_raises() -> None:
    with pytest.raises(ValueError, match="unknown attention backend 'cudnn'"):
        _attend(torch.device("cpu"), "cudnn")
