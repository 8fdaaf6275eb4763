"""Candidate ("target") tokens in the encoders: one pass with k candidates per sequence gives,
row for row, the states of k separate passes with one candidate each, and the history rows
are unchanged by the candidates' presence."""

from __future__ import annotations

import pytest
import torch
from test_encoders import KINDS, MAX_LEN, NUM_ROWS, make_model, random_sequences

from model.base import candidate_states, last_states, query_timestamps, select_targets
from model.jagged import JaggedBatch

HISTORY = [5, 1, 3, MAX_LEN - 1]
CANDIDATES = [3, 4, 0, 2]


def _batches(
    gen: torch.Generator, request: bool
) -> tuple[JaggedBatch, list[list[int]], list[list[int]], torch.Tensor | None]:
    items, times = random_sequences(gen, [h + c for h, c in zip(HISTORY, CANDIDATES, strict=True)])
    query_time = torch.tensor([t[-1] + 3_600 for t in times]) if request else None
    batch = JaggedBatch.from_lists(items, times, num_targets=CANDIDATES)
    return batch.with_fields(query_time=query_time), items, times, query_time


def _one(items: list[int], times: list[int], num_targets: int, qt: torch.Tensor | None):
    batch = JaggedBatch.from_lists([items], [times], num_targets=[num_targets])
    return batch.with_fields(query_time=None if qt is None else qt.reshape(1))


@pytest.mark.parametrize("request_time", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_candidates_equal_one_pass_per_candidate(kind: str, request_time: bool) -> None:
    model = make_model(kind)
    batch, items, times, query_time = _batches(torch.Generator().manual_seed(7), request_time)
    with torch.no_grad():
        states = model.encode(batch)
        expected_candidates = []
        for b, (hist, cands) in enumerate(zip(HISTORY, CANDIDATES, strict=True)):
            lo = int(batch.offsets[b])
            qt = None if query_time is None else query_time[b]
            history = model.encode(_one(items[b][:hist], times[b][:hist], 0, qt))
            # history rows do not see the candidates
            torch.testing.assert_close(states[lo : lo + hist], history, atol=1e-5, rtol=1e-5)
            for c in range(hist, hist + cands):
                rows = [*range(hist), c]  # the history, then this candidate alone
                alone = _one([items[b][r] for r in rows], [times[b][r] for r in rows], 1, qt)
                expected_candidates.append(model.encode(alone)[-1])
                torch.testing.assert_close(
                    states[lo + c], expected_candidates[-1], atol=1e-5, rtol=1e-5
                )
    got = candidate_states(batch, states)
    assert got.shape == (sum(CANDIDATES), 16)
    torch.testing.assert_close(got, torch.stack(expected_candidates), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_candidates_count_as_one_position_against_max_len(kind: str) -> None:
    model = make_model(kind)
    gen = torch.Generator().manual_seed(8)
    items, times = random_sequences(gen, [MAX_LEN + 4])
    fits = JaggedBatch.from_lists(items, times, num_targets=[5])  # MAX_LEN - 1 history + 5
    with torch.no_grad():
        assert model.encode(fits).shape == (MAX_LEN + 4, 16)
    too_long = JaggedBatch.from_lists(items, times, num_targets=[4])  # MAX_LEN history + 4
    with pytest.raises(ValueError, match=f"spans {MAX_LEN + 1} positions"):
        model.encode(too_long)


def test_candidates_change_the_candidate_state_only_through_their_own_inputs() -> None:
    # Swapping another candidate's item leaves a candidate's state unchanged.
    model = make_model("hstu")
    items, times = [[3, 5, 7, 9, 11]], [[100, 200, 300, 400, 500]]
    other = [[3, 5, 7, 13, 11]]
    with torch.no_grad():
        a = model.encode(JaggedBatch.from_lists(items, times, num_targets=[3]))
        b = model.encode(JaggedBatch.from_lists(other, times, num_targets=[3]))
    torch.testing.assert_close(a[[0, 1, 2, 4]], b[[0, 1, 2, 4]])
    assert not torch.allclose(a[3], b[3], atol=1e-4)


def test_query_timestamps_with_candidates() -> None:
    batch = JaggedBatch.from_lists(
        [[3, 5, 7, 9], [4, 6]], [[100, 200, 300, 400], [10, 20]], num_targets=[2, 1]
    )
    # history t_{i+1}; last history row and candidates: their own time without a request time
    assert query_timestamps(batch).tolist() == [200, 200, 300, 400, 10, 20]
    asked = batch.with_fields(query_time=torch.tensor([1_000, 50]))
    assert query_timestamps(asked).tolist() == [200, 1_000, 1_000, 1_000, 50, 50]


def test_targets_and_last_states_skip_candidates() -> None:
    batch = JaggedBatch.from_lists(
        [[4, 5, 6, 7], [8, 9]], [[1, 2, 3, 4], [1, 2]], num_targets=[2, 0]
    )
    states = torch.arange(6, dtype=torch.float32).unsqueeze(1)
    assert batch.target_mask().tolist() == [False, True, False, False, False, True]
    targets = select_targets(batch, states)
    assert targets.positions.tolist() == [1, 5] and targets.items.tolist() == [5, 9]
    assert last_states(batch, states)[:, 0].tolist() == [1.0, 5.0]
    assert candidate_states(batch, states)[:, 0].tolist() == [2.0, 3.0]
    marked = batch.with_fields(is_target=torch.ones(6, dtype=torch.bool))
    assert marked.target_mask().tolist() == [True, True, False, False, True, True]
    assert int(batch.item_ids.max()) < NUM_ROWS
