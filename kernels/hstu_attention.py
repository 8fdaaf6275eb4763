"""One entry point for jagged HSTU attention, dispatching to the best backend.

``backend="auto"`` picks the Triton kernel for CUDA tensors when Triton is importable, and
the PyTorch reference otherwise; ``"reference"`` and ``"triton"`` force one. The
``GENREC_ATTENTION_BACKEND`` environment variable overrides ``"auto"`` process-wide.
"""

from __future__ import annotations

import os
from typing import Literal

import torch

from kernels.offsets import num_targets_problem
from kernels.reference import hstu_attention_reference

Backend = Literal["auto", "reference", "triton"]
BACKENDS: tuple[str, ...] = ("auto", "reference", "triton")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: Backend, device: torch.device) -> str:
    if backend == "auto":
        backend = os.environ.get("GENREC_ATTENTION_BACKEND", "auto")  # type: ignore[assignment]
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        interpreted = os.environ.get("TRITON_INTERPRET") == "1"
        use_triton = (device.type == "cuda" or interpreted) and triton_available()
        return "triton" if use_triton else "reference"
    return backend


def hstu_attention(
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
    backend: Backend = "auto",
) -> torch.Tensor:
    """Causal pointwise (SiLU) attention over jagged sequences.

    Args:
        q, k: [T, H, d_qk]; v: [T, H, d_v]; rows of sequence b are ``offsets[b]:offsets[b+1]``.
        offsets: int64 [B+1].
        max_len: N, the fixed normaliser (attention weights are divided by it, never by the
            batch's own max length) and the size of the position-bias table.
        alpha: scale applied to q.k before the bias.
        query_timestamps: int64 [T], the time of the event each row predicts.
        key_timestamps: int64 [T], each row's own event time.
        pos_bias: [max_len] bias indexed by i - j (shared across heads), or None.
        time_bias: [129] bias indexed by the log-bucketed gap tq_i - tk_j, or None.
        num_targets: int64 [B] or None: the last num_targets[b] rows of sequence b are
            candidates. A candidate attends to every history row of its sequence and to
            itself, never to another candidate, and sits at position n_hist (the history
            length) for the position bias; history rows stay causal among themselves.
        backend: "auto", "reference" or "triton".

    Returns:
        [T, H, d_v] in v's dtype.
    """
    if q.dim() != 3 or k.shape != q.shape or v.shape[:2] != q.shape[:2]:
        raise ValueError(
            f"expected q, k [T, H, d] and v [T, H, dv] with matching T and H, got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if offsets.dtype != torch.int64 or int(offsets[-1]) != q.shape[0]:
        raise ValueError(f"offsets must be int64 with offsets[-1] == T={q.shape[0]}")
    if num_targets is not None:
        problem = num_targets_problem(offsets, num_targets)
        if problem is not None:
            raise ValueError(problem)
    chosen = resolve_backend(backend, q.device)
    kwargs = dict(
        max_len=max_len,
        alpha=alpha,
        query_timestamps=query_timestamps,
        key_timestamps=key_timestamps,
        pos_bias=pos_bias,
        time_bias=time_bias,
        num_targets=num_targets,
    )
    if chosen == "triton":
        from kernels.triton_hstu import hstu_attention_triton  # lazy: needs triton

        return hstu_attention_triton(q, k, v, offsets, **kwargs)
    return hstu_attention_reference(q, k, v, offsets, **kwargs)
