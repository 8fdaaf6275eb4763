"""Triton kernels for jagged HSTU attention (forward and backward) with in-kernel biases.

Math (same as ``kernels.reference``): for rows i, j of one sequence with j <= i,
``s_ij = alpha * q_i.k_j + pos_bias[min(i - j, P - 1)] + time_bias[bucket(tq_i - tk_j)]``,
``a_ij = SiLU(s_ij) / N`` and ``out_i = sum_j a_ij v_j``. Nothing of size [n, n] is ever
materialised: both bias terms are gathered from their small tables inside the tiles.

Layout: q, k [T, H, d_qk], v [T, H, d_v], rows of sequence b are ``offsets[b]:offsets[b+1]``.
Grids are (row block, sequence, head); a program whose block starts past its sequence's end
returns at once, and key blocks past the causal diagonal are never visited.

Candidates (``num_targets``): the last num_targets[b] rows of sequence b attend to the history
rows and to themselves only (``_valid_tile``), and sit at position n_hist for the position bias
(``_bias_tile``). Their scores against history keys are therefore indexed by n_hist - j instead
of i - j, so the position gradient takes them out of the diagonal sums and reduces them per key.

Backward (recompute, no saved activations besides the inputs):
  * ``_hstu_bwd_dkdv``: one program per (key block, sequence, head) walks the query blocks at or
    below the diagonal and accumulates dk, dv in registers. It also reduces the bias gradients:
    per tile, the position gradient is a sum along the tile's diagonals (a ``tl.gather`` shears
    the tile so that diagonals become columns) followed by one vector atomic add; the time
    gradient loops over the tile's own bucket range, accumulates into a per-program vector and
    issues one vector atomic add per program. Per-element atomics would put thousands of
    same-address updates per tile on L2, which is orders of magnitude slower.
  * ``_hstu_bwd_dq``: one program per (query block, sequence, head) walks the key blocks like the
    forward and accumulates dq (deterministic, no atomics on dq).

Time buckets must match the reference bit for bit (a bucket off by one moves a gradient to a
neighbouring table entry). The kernel takes the fast fp32 log, which may land one bucket off
next to a boundary, and corrects it with a 130-entry table of exact integer thresholds computed
on the host with the reference's own ``time_bucket`` on the same device.

Importing this module defines the kernels; when ``TRITON_INTERPRET=1`` is set at import time
they run on CPU through Triton's interpreter (used by the CPU test suite) with one small tile
configuration instead of the GPU autotuning space.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import triton
import triton.language as tl

from kernels.offsets import num_targets_problem
from kernels.reference import NUM_TIME_BUCKETS, time_bucket

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TIME_BUCKETS_PADDED = 256  # next power of two above NUM_TIME_BUCKETS, for register vectors
_INT64_MAX = 2**63 - 1


def _config(block_m: int, block_n: int, warps: int, stages: int) -> triton.Config:
    # BLOCK_W: width of the sheared tile used for the position-bias gradient (power of two
    # >= BLOCK_M + BLOCK_N - 1).
    kwargs = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_W": 2 * max(block_m, block_n)}
    return triton.Config(kwargs, num_warps=warps, num_stages=stages)


if INTERPRETED:
    # The interpreter runs every config it is given; one small tile keeps CPU tests fast.
    _ROW_CONFIGS = [_config(16, 16, 1, 1)]
    _KV_CONFIGS = [_config(16, 16, 1, 1)]
else:
    # (BLOCK_M query rows, BLOCK_N key rows, warps, stages); sized for H100 (227 KB smem per
    # block: with both biases a 128x64 tile at 3 stages compiles to ~240 KB, so only 2).
    _ROW_CONFIGS = [
        _config(128, 64, 8, 2),
        _config(128, 64, 4, 2),
        _config(64, 64, 4, 3),
        _config(64, 128, 8, 2),
        _config(64, 32, 4, 3),
        _config(32, 32, 4, 2),
    ]
    _KV_CONFIGS = [
        _config(32, 64, 4, 3),
        _config(64, 64, 4, 3),
        _config(64, 128, 8, 2),
        _config(32, 128, 8, 2),
        _config(128, 64, 8, 2),
        _config(32, 32, 4, 2),
    ]


def _prune_configs(configs: list[triton.Config], named_args: dict, **kwargs: Any) -> list:
    """Drop tiles much longer than the longest sequence (they would be mostly masked)."""
    # The autotuner passes positional launch arguments in ``named_args``, keywords in kwargs.
    longest = max(32, int({**named_args, **kwargs}["LEN_BUCKET"]))
    kept = [c for c in configs if max(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) <= longest]
    return kept or configs[-1:]


_AUTOTUNE_KEY = ["LEN_BUCKET", "BLOCK_D", "BLOCK_DV"]


@triton.jit
def _load_tile(ptr, rows, row_ok, head_offset, cols, n_cols, stride_t, stride_c):
    """[rows, cols] tile of one head of a [T, H, d] tensor; zeros past the sequence and d."""
    return tl.load(
        ptr + rows[:, None] * stride_t + head_offset + cols[None, :] * stride_c,
        mask=row_ok[:, None] & (cols[None, :] < n_cols),
        other=0.0,
    )


@triton.jit
def _history_length(NT, seq, seq_len, HAS_TARGETS: tl.constexpr):
    """Rows of the sequence that are history: all but its last NT[seq] (the candidates)."""
    n_hist = seq_len
    if HAS_TARGETS:
        n_hist -= tl.load(NT + seq).to(tl.int32)
    return n_hist


@triton.jit
def _valid_tile(offs_m, offs_n, seq_len, n_hist, HAS_TARGETS: tl.constexpr):
    """[BLOCK_M, BLOCK_N] pairs that attend: causal with the key in the sequence; with
    candidates, a candidate key (at or past n_hist) is seen by itself only. Rows past the
    sequence are left to the caller (the forward and dq kernels never store them)."""
    valid = (offs_m[:, None] >= offs_n[None, :]) & (offs_n[None, :] < seq_len)
    if HAS_TARGETS:
        valid = valid & ((offs_n[None, :] < n_hist) | (offs_m[:, None] == offs_n[None, :]))
    return valid


@triton.jit
def _candidate_key_gap(m_start, n_end, n_hist, BLOCK_N: tl.constexpr):
    """Key blocks [gap_start, gap_start + gap) that the query block starting at m_start skips:
    candidate keys below its own diagonal block, which none of its rows sees (its history rows
    do not reach them; its candidate rows see only the history and themselves)."""
    gap_start = tl.cdiv(tl.minimum(n_end, n_hist), BLOCK_N) * BLOCK_N
    gap = tl.maximum((m_start // BLOCK_N) * BLOCK_N - gap_start, 0)
    return gap_start, gap


@triton.jit
def _bias_tile(
    offs_m,
    offs_n,
    seq_start,
    seq_len,
    n_hist,
    POS,
    num_pos,
    TQ,
    TK,
    TIME,
    THRESH,
    HAS_POS: tl.constexpr,
    HAS_TIME: tl.constexpr,
    HAS_TARGETS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """fp32 [BLOCK_M, BLOCK_N] bias for one tile, and the time bucket of every entry.

    Rows at or past n_hist (candidates) sit at position n_hist for the position bias.
    """
    in_seq = (offs_m[:, None] < seq_len) & (offs_n[None, :] < seq_len)
    bias = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    bucket = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    if HAS_POS:
        pos_m, pos_n = offs_m, offs_n
        if HAS_TARGETS:
            pos_m, pos_n = tl.minimum(offs_m, n_hist), tl.minimum(offs_n, n_hist)
        rel = pos_m[:, None] - pos_n[None, :]
        rel = tl.minimum(tl.maximum(rel, 0), num_pos - 1)
        bias += tl.load(POS + rel, mask=in_seq, other=0.0).to(tl.float32)
    if HAS_TIME:
        tq = tl.load(TQ + seq_start + offs_m, mask=offs_m < seq_len, other=0)
        tk = tl.load(TK + seq_start + offs_n, mask=offs_n < seq_len, other=0)
        gap = tq[:, None] - tk[None, :]
        gap = tl.maximum(tl.where(gap < 0, -gap, gap), 1)
        approx = tl.floor(tl.log(gap.to(tl.float32)) / 0.301).to(tl.int32)
        approx = tl.minimum(tl.maximum(approx, 0), 128)
        # Exact correction: THRESH[b] is the smallest gap whose reference bucket is >= b.
        low = tl.load(THRESH + approx)
        high = tl.load(THRESH + approx + 1)
        bucket = approx - (gap < low).to(tl.int32) + (gap >= high).to(tl.int32)
        bias += tl.load(TIME + bucket, mask=in_seq, other=0.0).to(tl.float32)
    return bias, bucket


@triton.autotune(
    configs=_ROW_CONFIGS, key=_AUTOTUNE_KEY, prune_configs_by={"early_config_prune": _prune_configs}
)
@triton.jit
def _hstu_fwd(
    Q,
    K,
    V,
    OUT,
    OFFSETS,
    TQ,
    TK,
    POS,
    TIME,
    THRESH,
    NT,
    stride_qt,
    stride_qh,
    stride_qd,
    stride_kt,
    stride_kh,
    stride_kd,
    stride_vt,
    stride_vh,
    stride_vd,
    stride_ot,
    stride_oh,
    stride_od,
    num_pos,
    alpha,
    scale,
    D_QK,
    D_V,
    LEN_BUCKET,
    HAS_POS: tl.constexpr,
    HAS_TIME: tl.constexpr,
    HAS_TARGETS: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    pid_m = tl.program_id(0)
    seq = tl.program_id(1)
    head = tl.program_id(2)
    seq_start = tl.load(OFFSETS + seq)
    seq_len = (tl.load(OFFSETS + seq + 1) - seq_start).to(tl.int32)
    n_hist = _history_length(NT, seq, seq_len, HAS_TARGETS)
    m_start = pid_m * BLOCK_M
    if m_start >= seq_len:
        return
    offs_m = m_start + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    rows_m = seq_start + offs_m
    q = _load_tile(
        Q, rows_m, offs_m < seq_len, head * stride_qh, offs_d, D_QK, stride_qt, stride_qd
    )
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    # Causal skip: only key blocks that start at or before this block's last row (and, with
    # candidates, not the candidate keys below this block's diagonal).
    n_end = tl.minimum(seq_len, m_start + BLOCK_M)
    gap_start = n_end
    gap = 0
    if HAS_TARGETS:
        gap_start, gap = _candidate_key_gap(m_start, n_end, n_hist, BLOCK_N)
    for n_iter in range(0, n_end - gap, BLOCK_N):
        n_start = n_iter
        if HAS_TARGETS:
            n_start = tl.where(n_iter >= gap_start, n_iter + gap, n_iter)
        offs_n = n_start + tl.arange(0, BLOCK_N)
        rows_n = seq_start + offs_n
        k = _load_tile(
            K, rows_n, offs_n < seq_len, head * stride_kh, offs_d, D_QK, stride_kt, stride_kd
        )
        v = _load_tile(
            V, rows_n, offs_n < seq_len, head * stride_vh, offs_dv, D_V, stride_vt, stride_vd
        )
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * alpha
        bias, _ = _bias_tile(
            offs_m,
            offs_n,
            seq_start,
            seq_len,
            n_hist,
            POS,
            num_pos,
            TQ,
            TK,
            TIME,
            THRESH,
            HAS_POS,
            HAS_TIME,
            HAS_TARGETS,
            BLOCK_M,
            BLOCK_N,
        )
        s += bias
        valid = _valid_tile(offs_m, offs_n, seq_len, n_hist, HAS_TARGETS)
        # 1/N is applied once at the end so low-precision operands keep their range.
        a = tl.where(valid, s * tl.sigmoid(s), 0.0)
        acc += tl.dot(a.to(v.dtype), v, input_precision=DOT_PREC)
    out = acc * scale
    tl.store(
        OUT + rows_m[:, None] * stride_ot + head * stride_oh + offs_dv[None, :] * stride_od,
        out.to(OUT.dtype.element_ty),
        mask=(offs_m[:, None] < seq_len) & (offs_dv[None, :] < D_V),
    )


@triton.autotune(
    configs=_ROW_CONFIGS, key=_AUTOTUNE_KEY, prune_configs_by={"early_config_prune": _prune_configs}
)
@triton.jit
def _hstu_bwd_dq(
    Q,
    K,
    V,
    DO,
    DQ,
    OFFSETS,
    TQ,
    TK,
    POS,
    TIME,
    THRESH,
    NT,
    stride_qt,
    stride_qh,
    stride_qd,
    stride_kt,
    stride_kh,
    stride_kd,
    stride_vt,
    stride_vh,
    stride_vd,
    stride_dot,
    stride_doh,
    stride_dod,
    stride_dqt,
    stride_dqh,
    stride_dqd,
    num_pos,
    alpha,
    scale,
    D_QK,
    D_V,
    LEN_BUCKET,
    HAS_POS: tl.constexpr,
    HAS_TIME: tl.constexpr,
    HAS_TARGETS: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    pid_m = tl.program_id(0)
    seq = tl.program_id(1)
    head = tl.program_id(2)
    seq_start = tl.load(OFFSETS + seq)
    seq_len = (tl.load(OFFSETS + seq + 1) - seq_start).to(tl.int32)
    n_hist = _history_length(NT, seq, seq_len, HAS_TARGETS)
    m_start = pid_m * BLOCK_M
    if m_start >= seq_len:
        return
    offs_m = m_start + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    rows_m = seq_start + offs_m
    q = _load_tile(
        Q, rows_m, offs_m < seq_len, head * stride_qh, offs_d, D_QK, stride_qt, stride_qd
    )
    do = _load_tile(
        DO, rows_m, offs_m < seq_len, head * stride_doh, offs_dv, D_V, stride_dot, stride_dod
    )
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    n_end = tl.minimum(seq_len, m_start + BLOCK_M)
    gap_start = n_end
    gap = 0
    if HAS_TARGETS:  # the forward's key blocks
        gap_start, gap = _candidate_key_gap(m_start, n_end, n_hist, BLOCK_N)
    for n_iter in range(0, n_end - gap, BLOCK_N):
        n_start = n_iter
        if HAS_TARGETS:
            n_start = tl.where(n_iter >= gap_start, n_iter + gap, n_iter)
        offs_n = n_start + tl.arange(0, BLOCK_N)
        rows_n = seq_start + offs_n
        k = _load_tile(
            K, rows_n, offs_n < seq_len, head * stride_kh, offs_d, D_QK, stride_kt, stride_kd
        )
        v = _load_tile(
            V, rows_n, offs_n < seq_len, head * stride_vh, offs_dv, D_V, stride_vt, stride_vd
        )
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * alpha
        bias, _ = _bias_tile(
            offs_m,
            offs_n,
            seq_start,
            seq_len,
            n_hist,
            POS,
            num_pos,
            TQ,
            TK,
            TIME,
            THRESH,
            HAS_POS,
            HAS_TIME,
            HAS_TARGETS,
            BLOCK_M,
            BLOCK_N,
        )
        s += bias
        sig = tl.sigmoid(s)
        valid = _valid_tile(offs_m, offs_n, seq_len, n_hist, HAS_TARGETS)
        da = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        # silu'(s) = sig(s) * (1 + s * (1 - sig(s)))
        ds = tl.where(valid, da * sig * (1.0 + s * (1.0 - sig)), 0.0)
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PREC)
    dq = dq * (alpha * scale)
    tl.store(
        DQ + rows_m[:, None] * stride_dqt + head * stride_dqh + offs_d[None, :] * stride_dqd,
        dq.to(DQ.dtype.element_ty),
        mask=(offs_m[:, None] < seq_len) & (offs_d[None, :] < D_QK),
    )


@triton.autotune(
    configs=_KV_CONFIGS,
    key=_AUTOTUNE_KEY,
    prune_configs_by={"early_config_prune": _prune_configs},
    reset_to_zero=["DPOS", "DTIME"],  # accumulated with atomics: zero before each trial
)
@triton.jit
def _hstu_bwd_dkdv(
    Q,
    K,
    V,
    DO,
    DK,
    DV,
    DPOS,
    DTIME,
    OFFSETS,
    TQ,
    TK,
    POS,
    TIME,
    THRESH,
    NT,
    stride_qt,
    stride_qh,
    stride_qd,
    stride_kt,
    stride_kh,
    stride_kd,
    stride_vt,
    stride_vh,
    stride_vd,
    stride_dot,
    stride_doh,
    stride_dod,
    stride_dkt,
    stride_dkh,
    stride_dkd,
    stride_dvt,
    stride_dvh,
    stride_dvd,
    num_pos,
    alpha,
    scale,
    D_QK,
    D_V,
    LEN_BUCKET,
    HAS_POS: tl.constexpr,
    HAS_TIME: tl.constexpr,
    HAS_TARGETS: tl.constexpr,
    POS_GRAD: tl.constexpr,
    TIME_GRAD: tl.constexpr,
    DOT_PREC: tl.constexpr,
    NB_PAD: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    pid_n = tl.program_id(0)
    seq = tl.program_id(1)
    head = tl.program_id(2)
    seq_start = tl.load(OFFSETS + seq)
    seq_len = (tl.load(OFFSETS + seq + 1) - seq_start).to(tl.int32)
    n_hist = _history_length(NT, seq, seq_len, HAS_TARGETS)
    n_start = pid_n * BLOCK_N
    if n_start >= seq_len:
        return
    offs_n = n_start + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    rows_n = seq_start + offs_n
    k = _load_tile(
        K, rows_n, offs_n < seq_len, head * stride_kh, offs_d, D_QK, stride_kt, stride_kd
    )
    v = _load_tile(
        V, rows_n, offs_n < seq_len, head * stride_vh, offs_dv, D_V, stride_vt, stride_vd
    )
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    buckets = tl.arange(0, NB_PAD)
    dtime = tl.zeros([NB_PAD], dtype=tl.float32)
    # Shear for the diagonal sums: column p of the sheared tile holds entries with
    # i - j == m_start - n_start - (BLOCK_N - 1) + p.
    ii = tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_W)
    src_col = ii[:, None] + (BLOCK_N - 1) - cols[None, :]
    in_tile = (src_col >= 0) & (src_col < BLOCK_N)
    src_col = tl.where(in_tile, src_col, 0)
    # Causal skip: start at the query block that holds this key block's first row.
    m_first = (n_start // BLOCK_M) * BLOCK_M
    m_stop = seq_len
    if HAS_TARGETS:  # a block of candidate keys is seen by its own rows only
        m_stop = tl.where(n_start >= n_hist, tl.minimum(seq_len, n_start + BLOCK_N), seq_len)
    for m_start in range(m_first, m_stop, BLOCK_M):
        offs_m = m_start + ii
        rows_m = seq_start + offs_m
        q = _load_tile(
            Q, rows_m, offs_m < seq_len, head * stride_qh, offs_d, D_QK, stride_qt, stride_qd
        )
        do = _load_tile(
            DO, rows_m, offs_m < seq_len, head * stride_doh, offs_dv, D_V, stride_dot, stride_dod
        )
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * alpha
        bias, bucket = _bias_tile(
            offs_m,
            offs_n,
            seq_start,
            seq_len,
            n_hist,
            POS,
            num_pos,
            TQ,
            TK,
            TIME,
            THRESH,
            HAS_POS,
            HAS_TIME,
            HAS_TARGETS,
            BLOCK_M,
            BLOCK_N,
        )
        s += bias
        sig = tl.sigmoid(s)
        valid = _valid_tile(offs_m, offs_n, seq_len, n_hist, HAS_TARGETS)
        valid = valid & (offs_m[:, None] < seq_len)
        a = tl.where(valid, s * sig, 0.0)
        dv += tl.dot(tl.trans(a.to(do.dtype)), do, input_precision=DOT_PREC)
        da = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        ds = tl.where(valid, da * sig * (1.0 + s * (1.0 - sig)), 0.0)
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PREC)
        if POS_GRAD:
            ds_diag = ds
            # Nested: a compile-time flag and a runtime test do not mix in one Triton condition.
            if HAS_TARGETS:  # noqa: SIM102
                if m_start + BLOCK_M > n_hist:
                    # Candidate rows against history keys use entry n_hist - j: one sum per key.
                    cross = (offs_m[:, None] >= n_hist) & (offs_n[None, :] < n_hist)
                    ds_diag = tl.where(cross, 0.0, ds)
                    per_key = tl.sum(tl.where(cross, ds, 0.0), axis=0)
                    rel_n = tl.minimum(tl.maximum(n_hist - offs_n, 0), num_pos - 1)
                    tl.atomic_add(DPOS + rel_n, per_key * scale, mask=offs_n < n_hist)
            sheared = tl.where(in_tile, tl.gather(ds_diag, src_col, axis=1), 0.0)
            diag = tl.sum(sheared, axis=0)
            rel = m_start - n_start - (BLOCK_N - 1) + cols
            keep = (cols < BLOCK_M + BLOCK_N - 1) & (rel >= 0)
            rel = tl.minimum(tl.maximum(rel, 0), num_pos - 1)
            tl.atomic_add(DPOS + rel, diag * scale, mask=keep)
        if TIME_GRAD:
            lo = tl.min(tl.where(valid, bucket, NB_PAD))
            hi = tl.max(tl.where(valid, bucket, -1))
            for b in range(lo, hi + 1):
                total = tl.sum(tl.sum(tl.where(bucket == b, ds, 0.0), axis=1), axis=0)
                dtime += tl.where(buckets == b, total, 0.0)
    if TIME_GRAD:
        tl.atomic_add(DTIME + buckets, dtime * scale, mask=buckets < 129)
    dk = dk * (alpha * scale)
    dv = dv * scale
    tl.store(
        DK + rows_n[:, None] * stride_dkt + head * stride_dkh + offs_d[None, :] * stride_dkd,
        dk.to(DK.dtype.element_ty),
        mask=(offs_n[:, None] < seq_len) & (offs_d[None, :] < D_QK),
    )
    tl.store(
        DV + rows_n[:, None] * stride_dvt + head * stride_dvh + offs_dv[None, :] * stride_dvd,
        dv.to(DV.dtype.element_ty),
        mask=(offs_n[:, None] < seq_len) & (offs_dv[None, :] < D_V),
    )


_THRESHOLDS: dict[torch.device, torch.Tensor] = {}


def time_bucket_thresholds(device: torch.device) -> torch.Tensor:
    """int64 [130]: entry b is the smallest gap (seconds) whose reference bucket is >= b.

    Entry 0 is 0 and entry 129 is int64 max (sentinels). Found by a vectorised binary search
    over ``kernels.reference.time_bucket`` on ``device`` itself, so the kernel's buckets agree
    with that device's reference exactly. Cached per device.
    """
    cached = _THRESHOLDS.get(device)
    if cached is not None:
        return cached
    target = torch.arange(1, NUM_TIME_BUCKETS, device=device)
    low = torch.ones_like(target)
    high = torch.full_like(target, 2**62)  # bucket(2**62) clamps to the last bucket
    for _ in range(63):
        mid = (low + high) // 2
        reached = time_bucket(mid) >= target
        high = torch.where(reached, mid, high)
        low = torch.where(reached, low, mid + 1)
    edges = [torch.zeros(1, dtype=torch.int64, device=device), low]
    edges.append(torch.full((1,), _INT64_MAX, dtype=torch.int64, device=device))
    table = torch.cat(edges)
    _THRESHOLDS[device] = table
    return table


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


class _HstuAttention(torch.autograd.Function):
    """Autograd wrapper: forward kernel, then the dq and dk/dv(+bias) kernels in backward."""

    @staticmethod
    def forward(
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        offsets: torch.Tensor,
        max_len: int,
        alpha: float,
        query_timestamps: torch.Tensor | None,
        key_timestamps: torch.Tensor | None,
        pos_bias: torch.Tensor | None,
        time_bias: torch.Tensor | None,
        num_targets: torch.Tensor | None,
    ) -> torch.Tensor:
        longest = int((offsets[1:] - offsets[:-1]).max()) if offsets.numel() > 1 else 0
        thresholds = None if time_bias is None else time_bucket_thresholds(q.device)
        ctx.save_for_backward(
            q,
            k,
            v,
            offsets,
            query_timestamps,
            key_timestamps,
            pos_bias,
            time_bias,
            thresholds,
            num_targets,
        )
        ctx.meta = (max_len, alpha, longest)
        out = torch.empty(q.shape[0], q.shape[1], v.shape[2], dtype=v.dtype, device=q.device)
        if longest == 0:
            return out
        common = _common_args(q, v, max_len, alpha, longest, pos_bias, time_bias, num_targets)
        grid = _grid(longest, offsets.numel() - 1, q.shape[1], "BLOCK_M")
        _hstu_fwd[grid](
            q,
            k,
            v,
            out,
            offsets,
            query_timestamps,
            key_timestamps,
            pos_bias,
            time_bias,
            thresholds,
            num_targets,
            *_strides(q),
            *_strides(k),
            *_strides(v),
            *_strides(out),
            **common,
        )
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, offsets, tq, tk, pos_bias, time_bias, thresholds, num_targets = ctx.saved_tensors
        max_len, alpha, longest = ctx.meta
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        pos_grad = pos_bias is not None and ctx.needs_input_grad[8]
        time_grad = time_bias is not None and ctx.needs_input_grad[9]
        dpos = (
            torch.zeros(pos_bias.numel(), dtype=torch.float32, device=q.device)
            if pos_grad
            else None
        )
        dtime = (
            torch.zeros(NUM_TIME_BUCKETS, dtype=torch.float32, device=q.device)
            if time_grad
            else None
        )
        if longest > 0:
            common = _common_args(q, v, max_len, alpha, longest, pos_bias, time_bias, num_targets)
            batch, heads = offsets.numel() - 1, q.shape[1]
            tables = (offsets, tq, tk, pos_bias, time_bias, thresholds, num_targets)
            _hstu_bwd_dq[_grid(longest, batch, heads, "BLOCK_M")](
                q,
                k,
                v,
                grad_out,
                dq,
                *tables,
                *_strides(q),
                *_strides(k),
                *_strides(v),
                *_strides(grad_out),
                *_strides(dq),
                **common,
            )
            _hstu_bwd_dkdv[_grid(longest, batch, heads, "BLOCK_N")](
                q,
                k,
                v,
                grad_out,
                dk,
                dv,
                dpos,
                dtime,
                *tables,
                *_strides(q),
                *_strides(k),
                *_strides(v),
                *_strides(grad_out),
                *_strides(dk),
                *_strides(dv),
                POS_GRAD=pos_grad,
                TIME_GRAD=time_grad,
                NB_PAD=TIME_BUCKETS_PADDED,
                **common,
            )
        grad_pos = dpos.to(pos_bias.dtype) if dpos is not None else None
        grad_time = dtime.to(time_bias.dtype) if dtime is not None else None
        return dq, dk, dv, None, None, None, None, None, grad_pos, grad_time, None


def _common_args(
    q: torch.Tensor,
    v: torch.Tensor,
    max_len: int,
    alpha: float,
    longest: int,
    pos_bias: torch.Tensor | None,
    time_bias: torch.Tensor | None,
    num_targets: torch.Tensor | None,
) -> dict[str, Any]:
    """Scalar and constexpr launch arguments shared by the three kernels."""
    return {
        "num_pos": 1 if pos_bias is None else pos_bias.numel(),
        "alpha": float(alpha),
        "scale": 1.0 / max_len,
        "D_QK": q.shape[2],
        "D_V": v.shape[2],
        "LEN_BUCKET": triton.next_power_of_2(longest),
        "HAS_POS": pos_bias is not None,
        "HAS_TIME": time_bias is not None,
        "HAS_TARGETS": num_targets is not None,
        # fp32 inputs: exact fp32 products (no TF32) so they match the fp32 oracle closely.
        "DOT_PREC": "ieee" if q.dtype == torch.float32 else "tf32",
        "BLOCK_D": max(16, triton.next_power_of_2(q.shape[2])),
        "BLOCK_DV": max(16, triton.next_power_of_2(v.shape[2])),
    }


def _grid(longest: int, batch: int, heads: int, block: str):
    return lambda meta: (triton.cdiv(longest, meta[block]), batch, heads)


def hstu_attention_triton(
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
) -> torch.Tensor:
    """Jagged HSTU attention on the Triton kernels; same contract as the reference.

    Differentiable in q, k, v, pos_bias and time_bias. Inputs may be fp32, fp16 or bf16
    (q, k, v of one dtype); accumulation is fp32. Tensors must live on a CUDA device, or on
    CPU when this module was imported with ``TRITON_INTERPRET=1``.
    """
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(
            f"triton HSTU attention needs q, k, v of one dtype in {SUPPORTED_DTYPES}, got "
            f"{q.dtype}, {k.dtype}, {v.dtype}"
        )
    if q.device.type != "cuda" and not INTERPRETED:
        raise ValueError(
            f"triton HSTU attention got {q.device} tensors; use CUDA tensors, backend="
            "'reference', or import kernels.triton_hstu with TRITON_INTERPRET=1"
        )
    named = [("k", k), ("v", v), ("offsets", offsets)]
    if num_targets is not None:
        named.append(("num_targets", num_targets))
        problem = num_targets_problem(offsets, num_targets)
        if problem is not None:
            raise ValueError(problem)
        num_targets = num_targets.contiguous()
    for name, tensor in named:
        if tensor.device != q.device:
            raise ValueError(f"{name} is on {tensor.device} but q is on {q.device}")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    if pos_bias is not None and (pos_bias.dim() != 1 or pos_bias.numel() == 0):
        raise ValueError(f"pos_bias must be 1-D and non-empty, got {tuple(pos_bias.shape)}")
    if time_bias is not None:
        if time_bias.shape != (NUM_TIME_BUCKETS,):
            raise ValueError(
                f"time_bias must have shape ({NUM_TIME_BUCKETS},), got {tuple(time_bias.shape)}"
            )
        if query_timestamps is None or key_timestamps is None:
            raise ValueError("time_bias needs query and key timestamps")
        query_timestamps = query_timestamps.to(torch.int64).contiguous()
        key_timestamps = key_timestamps.to(torch.int64).contiguous()
    else:
        query_timestamps = key_timestamps = None  # unused without a time table
    if pos_bias is not None:
        pos_bias = pos_bias.contiguous()
    if time_bias is not None:
        time_bias = time_bias.contiguous()
    return _HstuAttention.apply(
        q,
        k,
        v,
        offsets.contiguous(),
        max_len,
        alpha,
        query_timestamps,
        key_timestamps,
        pos_bias,
        time_bias,
        num_targets,
    )
