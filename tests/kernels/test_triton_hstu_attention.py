"""Triton HSTU attention vs the PyTorch oracle: forward and every gradient.

On CPU the kernels run through Triton's interpreter (see conftest.py), with small shapes and
fp32/fp16 only (the interpreter has no bf16 matmul); ``gpu`` tests add bf16 and larger shapes.

Tolerances: fp32 results must match the fp32 oracle to ~1e-5 relative. For fp16/bf16 the
kernel's error against the fp32 oracle (run on the same, up-cast inputs) must be at most 2x
(forward) or 5x (backward) the error of the PyTorch reference run in that low precision, plus
a tiny floor relative to the oracle's magnitude.
"""

from __future__ import annotations

import pytest
import torch
from hstu_cases import AttentionCase, build_case, run_attention

from kernels.reference import NUM_TIME_BUCKETS, hstu_attention_reference, time_bucket
from kernels.triton_hstu import hstu_attention_triton, time_bucket_thresholds

CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
BIAS_CASES = [(True, True), (True, False), (False, True), (False, False)]
# Zero- and one-length sequences, long/short mix; 37 and 20 span several 16-row tiles.
MIXED_LENGTHS = [0, 1, 37, 5, 0, 20, 1]


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() if a.numel() else 0.0


def assert_matches_fp32(kernel: dict, oracle: dict, rel: float = 2e-5) -> None:
    assert kernel.keys() == oracle.keys()
    for name, expected in oracle.items():
        scale = max(1.0, expected.abs().max().item() if expected.numel() else 0.0)
        err = _max_err(kernel[name], expected)
        assert err <= rel * scale, f"{name}: max error {err:.3g} > {rel * scale:.3g}"


def assert_within_reference_error(
    kernel: dict, oracle: dict, low_precision_ref: dict, fwd_factor: float, bwd_factor: float
) -> None:
    assert kernel.keys() == oracle.keys() == low_precision_ref.keys()
    for name, expected in oracle.items():
        factor = fwd_factor if name == "out" else bwd_factor
        floor = 1e-4 * expected.abs().max().item() + 1e-6
        ref_err = _max_err(low_precision_ref[name], expected)
        err = _max_err(kernel[name], expected)
        assert err <= factor * ref_err + floor, (
            f"{name}: kernel error {err:.3g} > {factor} x reference error {ref_err:.3g} + {floor:.2g}"
        )


def _compare_fp32(case: AttentionCase, alpha: float, use_pos: bool, use_time: bool) -> None:
    kwargs = {"alpha": alpha, "use_pos": use_pos, "use_time": use_time}
    oracle = run_attention(hstu_attention_reference, case, torch.float32, **kwargs)
    kernel = run_attention(hstu_attention_triton, case, torch.float32, **kwargs)
    assert_matches_fp32(kernel, oracle)


def _compare_low_precision(case: AttentionCase, dtype: torch.dtype, alpha: float) -> None:
    kwargs = {"alpha": alpha, "use_pos": True, "use_time": True}
    lowp = case.__class__(**{**case.__dict__})
    # The oracle sees exactly the values the low-precision runs see.
    lowp.q, lowp.k, lowp.v = (t.to(dtype).float() for t in (case.q, case.k, case.v))
    lowp.grad_out = case.grad_out.to(dtype).float()
    oracle = run_attention(hstu_attention_reference, lowp, torch.float32, **kwargs)
    reference = run_attention(hstu_attention_reference, lowp, dtype, **kwargs)
    kernel = run_attention(hstu_attention_triton, lowp, dtype, **kwargs)
    assert_within_reference_error(kernel, oracle, reference, fwd_factor=2.0, bwd_factor=5.0)


@pytest.mark.parametrize(("use_pos", "use_time"), BIAS_CASES)
def test_fp32_forward_and_gradients_match_oracle(use_pos: bool, use_time: bool) -> None:
    # d_qk=25 / d_v=20: head dims that are not powers of two (padded tile + masks).
    case = build_case(MIXED_LENGTHS, heads=2, d_qk=25, d_v=20, pos_len=40, seed=1, max_len=40)
    _compare_fp32(case, alpha=0.7, use_pos=use_pos, use_time=use_time)


def test_position_table_shorter_than_sequences_clamps_to_last_entry() -> None:
    # i - j beyond the table uses its last entry; that entry collects all their gradient.
    case = build_case([33, 9], heads=1, d_qk=16, d_v=16, pos_len=6, seed=2, max_len=50)
    _compare_fp32(case, alpha=1.3, use_pos=True, use_time=False)


def test_fp16_within_reference_error() -> None:
    case = build_case(MIXED_LENGTHS, heads=2, d_qk=25, d_v=25, pos_len=40, seed=3, max_len=40)
    _compare_low_precision(case, torch.float16, alpha=0.5)


def test_empty_batches_give_empty_outputs_and_zero_bias_gradients() -> None:
    for lengths in ([0, 0], []):
        case = build_case(lengths, heads=2, d_qk=8, d_v=8, pos_len=4, seed=4, max_len=4)
        result = run_attention(
            hstu_attention_triton, case, torch.float32, alpha=1.0, use_pos=True, use_time=True
        )
        assert result["out"].shape == (0, 2, 8)
        assert not result["dpos_bias"].any() and not result["dtime_bias"].any()


def test_tables_without_requires_grad_get_no_gradient() -> None:
    case = build_case([7, 3], heads=1, d_qk=16, d_v=16, pos_len=8, seed=5)
    q = case.q.clone().requires_grad_()
    out = hstu_attention_triton(
        q,
        case.k,
        case.v,
        case.offsets,
        max_len=case.max_len,
        query_timestamps=case.query_timestamps,
        key_timestamps=case.key_timestamps,
        pos_bias=case.pos_bias,
        time_bias=case.time_bias,
    )
    (out * case.grad_out).sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert case.pos_bias.grad is None and case.time_bias.grad is None


def test_bucket_thresholds_are_the_reference_boundaries() -> None:
    table = time_bucket_thresholds(torch.device("cpu"))
    assert table.shape == (NUM_TIME_BUCKETS + 1,)
    # Entry b is the smallest gap in bucket >= b (equal entries: bucket 1 is never reached).
    edges = table[1:-1]
    wanted = torch.arange(1, NUM_TIME_BUCKETS)
    assert (time_bucket(edges) >= wanted).all()
    assert (time_bucket(edges - 1) < wanted).all()
    assert table[0] == 0 and table[-1] == torch.iinfo(torch.int64).max


def test_rejects_bad_inputs() -> None:
    case = build_case([4], heads=1, d_qk=16, d_v=16, pos_len=4, seed=6)
    with pytest.raises(ValueError, match="timestamps"):
        hstu_attention_triton(
            case.q, case.k, case.v, case.offsets, max_len=4, time_bias=case.time_bias
        )
    with pytest.raises(ValueError, match="dtype"):
        hstu_attention_triton(case.q.double(), case.k, case.v, case.offsets, max_len=4)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize(("use_pos", "use_time"), BIAS_CASES)
def test_gpu_fp32_larger_shapes(use_pos: bool, use_time: bool) -> None:
    lengths = [0, 1, 300, 17, 129, 64, 1, 255]
    case = build_case(lengths, heads=4, d_qk=50, d_v=64, pos_len=320, seed=7, max_len=320)
    _compare_fp32(case, alpha=0.3, use_pos=use_pos, use_time=use_time)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [50, 64, 128])
def test_gpu_low_precision_within_reference_error(dtype: torch.dtype, head_dim: int) -> None:
    lengths = [0, 1, 513, 40, 200, 1, 1000]
    case = build_case(lengths, heads=4, d_qk=head_dim, d_v=head_dim, pos_len=1024, seed=8)
    _compare_low_precision(case, dtype, alpha=1.0 / head_dim**0.5)
