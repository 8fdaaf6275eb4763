"""Dynamic vocabulary: admission, event-time TTL, capacity, row reuse, references, snapshot."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.state.grouping import factorize
from pipeline.state.vocab import ItemVocabulary


def keys(*values):
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def test_rows_are_collisionless_and_row_zero_reserved():
    vocab = ItemVocabulary(capacity=6)
    obs = vocab.observe(np.array([10, 20, 10, 30]), np.array([1, 2, 3, 4]))
    assert obs.rows.tolist() == [1, 2, 1, 3]
    assert sorted(obs.assigned.tolist()) == [1, 2, 3]
    assert vocab.lookup(np.array([30, 99])).tolist() == [3, 0]
    assert vocab.live_rows().tolist() == [1, 2, 3]


def test_admission_threshold_counts_occurrences_across_batches():
    vocab = ItemVocabulary(capacity=10, admission_threshold=3)
    first = vocab.observe(keys("a", "a", "b"), np.array([1, 2, 3]))
    assert first.rows.tolist() == [0, 0, 0] and len(vocab) == 0
    second = vocab.observe(keys("b", "a", "a"), np.array([4, 5, 6]))
    # "a" reaches 3 on its third occurrence (first of this batch); "b" has only 2
    assert second.rows.tolist() == [0, 1, 1]
    assert "a" in vocab and "b" not in vocab
    third = vocab.observe(keys("b"), np.array([7]))
    assert third.rows.tolist() == [2]


def test_ttl_uses_event_time_and_frees_rows_for_reuse():
    vocab = ItemVocabulary(capacity=4, ttl_s=100)
    vocab.observe(np.array([1, 2, 3]), np.array([1000, 1000, 1090]))
    freed = vocab.expire(now=1150)  # floor 1050: keys 1 and 2 expire
    assert sorted(freed.tolist()) == [1, 2]
    assert vocab.live_rows().tolist() == [3]
    assert vocab.lookup(np.array([1, 2, 3])).tolist() == [0, 0, 3]
    obs = vocab.observe(np.array([4]), np.array([1151]))
    assert obs.rows.tolist() == [1] and obs.assigned.tolist() == [1]
    assert vocab.counters["evicted_ttl"] == 2


def test_capacity_evicts_least_recently_seen_but_never_rows_of_the_batch():
    vocab = ItemVocabulary(capacity=3)  # two usable rows
    vocab.observe(np.array([1, 2]), np.array([10, 20]))
    obs = vocab.observe(np.array([1, 3]), np.array([30, 30]))
    # key 2 (last seen 20) goes; key 1 is in this batch
    assert "2" not in vocab and 2 not in vocab and 1 in vocab and 3 in vocab
    assert obs.rows.tolist() == [1, 2]
    assert vocab.counters["evicted_capacity"] == 1
    full = vocab.observe(np.array([1, 3, 4]), np.array([40, 40, 40]))
    assert full.rows.tolist() == [1, 2, 0]
    assert vocab.counters["not_admitted_full"] == 1


def test_references_go_stale_when_a_row_is_reassigned():
    vocab = ItemVocabulary(capacity=2, ttl_s=10)
    obs = vocab.observe(np.array([5]), np.array([100]))
    ref = vocab.refs(obs.rows)
    assert vocab.resolve(ref).tolist() == [1]
    vocab.expire(now=200)
    obs2 = vocab.observe(np.array([6]), np.array([200]))
    assert obs2.rows.tolist() == [1]
    assert vocab.resolve(ref).tolist() == [0]  # row 1 now belongs to key 6
    assert vocab.resolve(vocab.refs(obs2.rows)).tolist() == [1]
    assert vocab.resolve(np.array([0])).tolist() == [0]


def test_reused_rows_reset_embedding_and_adam_state():
    """The trainer's re-initialisation recipe (pipeline.stream.state.reset_item_rows) on a real table."""
    from pipeline.stream.state import reset_item_rows

    torch.manual_seed(0)
    emb = torch.nn.Embedding(4, 3)
    opt = torch.optim.Adam(emb.parameters(), lr=0.1)
    emb(torch.tensor([1, 2, 3])).sum().backward()
    opt.step()
    state = opt.state[emb.weight]
    assert state["exp_avg"][1].abs().sum() > 0
    before = emb.weight.detach().clone()

    def reinit(rows):
        with torch.no_grad():
            emb.weight[rows] = 0.5

    reset_item_rows(reinit, opt, emb.weight, np.array([1, 3]))
    assert torch.equal(emb.weight[1], torch.full((3,), 0.5))
    assert torch.equal(emb.weight[2], before[2])
    assert (
        state["exp_avg"][[1, 3]].abs().sum() == 0 and state["exp_avg_sq"][[1, 3]].abs().sum() == 0
    )
    assert state["exp_avg"][2].abs().sum() > 0


def test_snapshot_round_trip_mixed_keys():
    vocab = ItemVocabulary(capacity=8, admission_threshold=2, ttl_s=1000)
    vocab.observe(keys(1, "x", 1, "x", "y", 2, 2), np.arange(7) + 100)
    restored = ItemVocabulary.restore(vocab.snapshot())
    probe = keys(1, "x", "y", 2, "zzz")
    assert restored.lookup(probe).tolist() == vocab.lookup(probe).tolist()
    assert restored.live_rows().tolist() == vocab.live_rows().tolist()
    assert restored.counters == vocab.counters
    # "y" was pending with count 1: one more occurrence admits it in both
    assert (
        restored.observe(keys("y"), np.array([200])).rows.tolist()
        == vocab.observe(keys("y"), np.array([200])).rows.tolist()
    )
    assert restored.lookup(keys("y"))[0] > 0


def test_factorize_int_and_object():
    uniq, inv = factorize(np.array([5, 3, 5]))
    assert uniq.dtype == np.int64 and uniq.tolist() == [3, 5] and inv.tolist() == [1, 0, 1]
    uniq, inv = factorize(keys("a", 1, "a"))
    assert uniq.tolist() == ["a", 1] and inv.tolist() == [0, 1, 0]


def test_bad_arguments():
    with pytest.raises(ValueError, match="capacity"):
        ItemVocabulary(capacity=1)
    with pytest.raises(ValueError, match="admission_threshold"):
        ItemVocabulary(capacity=5, admission_threshold=0)
