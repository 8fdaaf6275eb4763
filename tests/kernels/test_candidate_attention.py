"""Candidate ("target") tokens in jagged HSTU attention: the reference against a per-candidate
oracle, and the Triton kernels (interpreted on CPU) against the reference.

The oracle runs plain causal attention over one sequence per candidate (its history followed
by that candidate alone) and one per history: appending k candidates in one pass must give,
row for row, the outputs and gradients of those separate passes.
"""

from __future__ import annotations

import pytest
import torch
from hstu_cases import AttentionCase, build_case, run_attention
from test_triton_hstu_attention import BIAS_CASES, assert_matches_fp32, requires_cuda

from kernels import hstu_attention
from kernels.reference import hstu_attention_reference
from kernels.triton_hstu import hstu_attention_triton

# One history row + many candidates, no candidates, empty, several 16-row tiles with the
# history/candidate boundary inside a tile, and a tile made only of candidates.
LENGTHS = [0, 1, 8, 37, 5, 40, 20, 4]
NUM_TARGETS = [0, 0, 7, 17, 2, 37, 0, 3]


def per_candidate_oracle(
    case: AttentionCase, num_targets: torch.Tensor, *, alpha: float, use_pos: bool, use_time: bool
) -> dict[str, torch.Tensor]:
    """Outputs and gradients from separate causal passes, one per candidate (and one for each
    history), gathered back onto the rows of the batch with candidates."""
    rows: list[int] = []  # batch row behind each oracle row
    lengths: list[int] = []
    source = torch.empty(case.q.shape[0], dtype=torch.int64)  # oracle row giving each output
    for b in range(case.offsets.numel() - 1):
        lo, hi = int(case.offsets[b]), int(case.offsets[b + 1])
        hist = hi - lo - int(num_targets[b])
        history = list(range(lo, lo + hist))
        source[lo : lo + hist] = torch.arange(len(rows), len(rows) + hist)
        rows += history
        lengths.append(hist)
        for c in range(lo + hist, hi):
            rows += [*history, c]
            lengths.append(hist + 1)
            source[c] = len(rows) - 1
    index = torch.tensor(rows, dtype=torch.int64)
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor(lengths, dtype=torch.int64).cumsum(0)
    q, k, v = (t.clone().requires_grad_() for t in (case.q, case.k, case.v))
    pos = case.pos_bias.clone().requires_grad_() if use_pos else None
    time = case.time_bias.clone().requires_grad_() if use_time else None
    out = hstu_attention_reference(
        q[index],
        k[index],
        v[index],
        offsets,
        max_len=case.max_len,
        alpha=alpha,
        query_timestamps=case.query_timestamps[index],
        key_timestamps=case.key_timestamps[index],
        pos_bias=pos,
        time_bias=time,
    )[source]
    leaves = {"q": q, "k": k, "v": v, "pos_bias": pos, "time_bias": time}
    leaves = {name: t for name, t in leaves.items() if t is not None}
    grads = torch.autograd.grad(out, list(leaves.values()), case.grad_out)
    result = {"out": out.detach()}
    result.update({f"d{name}": g for name, g in zip(leaves, grads, strict=True)})
    return result


def _case(seed: int, pos_len: int = 48) -> tuple[AttentionCase, torch.Tensor]:
    case = build_case(LENGTHS, heads=2, d_qk=25, d_v=20, pos_len=pos_len, seed=seed, max_len=48)
    return case, torch.tensor(NUM_TARGETS, dtype=torch.int64)


@pytest.mark.parametrize(("use_pos", "use_time"), BIAS_CASES)
def test_reference_equals_per_candidate_oracle(use_pos: bool, use_time: bool) -> None:
    case, num_targets = _case(seed=11)
    kwargs = {"alpha": 0.7, "use_pos": use_pos, "use_time": use_time}
    got = run_attention(
        hstu_attention_reference, case, torch.float32, **kwargs, num_targets=num_targets
    )
    want = per_candidate_oracle(case, num_targets, **kwargs)
    assert_matches_fp32(got, want, rel=1e-5)


def test_reference_with_random_candidate_counts_equals_oracle() -> None:
    gen = torch.Generator().manual_seed(12)
    for seed in range(3):
        lengths = torch.randint(0, 12, (6,), generator=gen)
        room = (lengths - 1).clamp(min=0)  # at least one history row
        num_targets = (torch.rand(6, generator=gen) * (room + 1)).floor().to(torch.int64)
        case = build_case(lengths.tolist(), heads=1, d_qk=8, d_v=8, pos_len=6, seed=seed)
        kwargs = {"alpha": 1.1, "use_pos": True, "use_time": True}
        got = run_attention(
            hstu_attention_reference, case, torch.float32, **kwargs, num_targets=num_targets
        )
        assert_matches_fp32(got, per_candidate_oracle(case, num_targets, **kwargs), rel=1e-5)


def test_zero_candidates_is_the_causal_attention() -> None:
    case, _ = _case(seed=13)
    kwargs = {"alpha": 0.7, "use_pos": True, "use_time": True}
    plain = run_attention(hstu_attention_reference, case, torch.float32, **kwargs)
    zeros = torch.zeros(len(LENGTHS), dtype=torch.int64)
    with_zero = run_attention(
        hstu_attention_reference, case, torch.float32, **kwargs, num_targets=zeros
    )
    # Equal up to summation order (the bias gradient is gathered per sequence).
    assert_matches_fp32(with_zero, plain, rel=1e-6)


@pytest.mark.parametrize(("use_pos", "use_time"), BIAS_CASES)
def test_triton_with_candidates_matches_reference(use_pos: bool, use_time: bool) -> None:
    case, num_targets = _case(seed=14)
    kwargs = {"alpha": 0.7, "use_pos": use_pos, "use_time": use_time, "num_targets": num_targets}
    oracle = run_attention(hstu_attention_reference, case, torch.float32, **kwargs)
    kernel = run_attention(hstu_attention_triton, case, torch.float32, **kwargs)
    assert_matches_fp32(kernel, oracle)


def test_triton_candidates_with_short_position_table() -> None:
    # n_hist - j past the table clamps to its last entry, from candidate rows too.
    case, num_targets = _case(seed=15, pos_len=5)
    kwargs = {"alpha": 1.3, "use_pos": True, "use_time": False, "num_targets": num_targets}
    oracle = run_attention(hstu_attention_reference, case, torch.float32, **kwargs)
    kernel = run_attention(hstu_attention_triton, case, torch.float32, **kwargs)
    assert_matches_fp32(kernel, oracle)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize(("use_pos", "use_time"), BIAS_CASES)
def test_gpu_candidates_larger_shapes(use_pos: bool, use_time: bool) -> None:
    # Compiled tiles of up to 128 rows: boundaries inside tiles, blocks of only candidates.
    lengths = [0, 1, 300, 17, 129, 64, 1, 255]
    num_targets = torch.tensor([0, 0, 100, 16, 1, 63, 0, 200], device="cuda")
    case = build_case(lengths, heads=4, d_qk=50, d_v=64, pos_len=320, seed=17, max_len=320)
    kwargs = {"alpha": 0.3, "use_pos": use_pos, "use_time": use_time, "num_targets": num_targets}
    oracle = run_attention(hstu_attention_reference, case, torch.float32, **kwargs)
    kernel = run_attention(hstu_attention_triton, case, torch.float32, **kwargs)
    assert_matches_fp32(kernel, oracle)


@pytest.mark.parametrize(
    ("num_targets", "message"),
    [
        (torch.tensor([0, 3]), r"num_targets\[1\] = 3 but sequence 1 has 3 rows"),
        (torch.tensor([-1, 0]), r"num_targets\[0\] = -1"),
        (torch.tensor([0, 1], dtype=torch.int32), "num_targets must be int64"),
        (torch.tensor([0]), r"num_targets must be int64 \[2\]"),
    ],
)
def test_bad_num_targets_are_rejected(num_targets: torch.Tensor, message: str) -> None:
    case = build_case([2, 3], heads=1, d_qk=8, d_v=8, pos_len=4, seed=16)
    for backend in ("reference", "triton"):
        with pytest.raises(ValueError, match=message):
            hstu_attention(
                case.q,
                case.k,
                case.v,
                case.offsets,
                max_len=4,
                num_targets=num_targets,
                backend=backend,  # type: ignore[arg-type]
            )
