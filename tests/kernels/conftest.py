"""Kernel tests: run the Triton kernels on CPU through Triton's interpreter when CUDA is absent.

``triton.jit`` decides between compiling and interpreting when a function is *defined* (Triton's
own library functions included), so ``TRITON_INTERPRET=1`` must be set before triton and
``kernels.triton_hstu`` are imported, and it must stay set while interpreted kernels run.
It is set for the import and, through an autouse fixture, for every test in this directory,
and restored in between: left set for the whole session it would make
``hstu_attention(backend="auto")`` pick the slow interpreter in every other test package.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator

import pytest
import torch

INTERPRET = not torch.cuda.is_available()


def _import_kernels_interpreted() -> None:
    if "triton" in sys.modules:
        from triton.runtime.interpreter import InterpretedFunction

        if not isinstance(sys.modules["triton"].language.standard.cdiv, InterpretedFunction):
            raise RuntimeError(
                "tests/kernels: triton was imported before this conftest could set "
                "TRITON_INTERPRET=1, so its kernels cannot run on CPU; run with "
                "TRITON_INTERPRET=1 in the environment or run tests/kernels on its own"
            )
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        importlib.import_module("kernels.triton_hstu")
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


if INTERPRET:
    _import_kernels_interpreted()


@pytest.fixture(autouse=True)
def _triton_interpreter(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep TRITON_INTERPRET=1 while a kernel test runs on CPU (Triton reads it lazily)."""
    if INTERPRET:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield
