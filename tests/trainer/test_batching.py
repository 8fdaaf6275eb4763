"""Batch assembly: every accepted event is a target exactly once, after its own history."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.events import EventBatch
from pipeline.state.store import SequenceStore
from pipeline.state.vocab import ItemVocabulary
from pipeline.stream.batching import BatchBuilder


def events(users, items, ts):
    n = len(ts)
    return EventBatch(
        user_id=np.asarray(users, dtype=np.int64),
        item_id=np.asarray(items, dtype=np.int64),
        timestamp=np.asarray(ts, dtype=np.int64),
        action=np.zeros(n, dtype=np.int64),
        value=np.full(n, np.nan, dtype=np.float32),
    )


def test_history_then_new_events_targets_only_new():
    store, vocab = SequenceStore(max_len=8), ItemVocabulary(capacity=100)
    builder = BatchBuilder(store, vocab, max_targets=3)
    first = builder.build(events([1, 1], [10, 11], [100, 200]))
    # user 1's first event has nothing before it: context only, the second is a target
    assert first.micro.context_only == 1 and first.micro.num_targets == 1
    builder.commit(first)
    second = builder.build(events([1, 2], [12, 13], [300, 300]))
    batch = second.micro.batch
    seqs = [batch.sequence(b) for b in range(batch.num_sequences)]
    rows = vocab.lookup(np.array([10, 11, 12, 13]))
    assert seqs[0]["item_ids"].tolist() == rows[:3].tolist()
    assert seqs[0]["is_target"].tolist() == [False, False, True]
    assert seqs[1]["item_ids"].tolist() == [rows[3]] and not seqs[1]["is_target"].any()
    assert second.micro.target_event.tolist() == [0]


def test_unadmitted_items_are_context_not_targets():
    store, vocab = SequenceStore(max_len=8), ItemVocabulary(capacity=100, admission_threshold=2)
    builder = BatchBuilder(store, vocab, max_targets=3)
    prepared = builder.build(events([1, 1, 1], [5, 6, 5], [1, 2, 3]))
    batch = prepared.micro.batch
    # item 5 is admitted on its second occurrence (the third event); item 6 never
    assert batch.item_ids.tolist()[:2] == [0, 0]
    assert batch.is_target.tolist() == [False, False, True]
    assert prepared.micro.unknown_item == 2


@pytest.mark.parametrize("max_len,max_targets", [(6, 2), (12, 5), (4, 3)])
def test_every_event_is_a_target_exactly_once_with_the_right_context(max_len, max_targets):
    rng = np.random.default_rng(max_len)
    store, vocab = SequenceStore(max_len=max_len), ItemVocabulary(capacity=10_000)
    builder = BatchBuilder(store, vocab, max_targets=max_targets)
    seen: dict[int, list[int]] = {}  # user -> items so far, in time order
    t = 0
    total_targets = 0
    for _ in range(15):
        n = int(rng.integers(1, 40))
        users = rng.integers(0, 6, n)  # few users: many events per user per batch
        items = rng.integers(1, 10_000, n)
        ts = t + np.sort(rng.integers(0, 50, n))
        t += 50
        prepared = builder.build(events(users, items, ts))
        micro = prepared.micro
        batch = micro.batch
        assert batch.max_length() <= max_len
        targets = micro.target_event.tolist()
        assert len(targets) == len(set(targets))
        flat_pos = np.flatnonzero(batch.is_target.numpy())
        seg = np.searchsorted(batch.offsets.numpy(), flat_pos, side="right") - 1
        history = {u: list(v) for u, v in seen.items()}
        expected_targets = []
        for i in range(n):
            u = int(users[i])
            if history.get(u):
                expected_targets.append(i)
            history.setdefault(u, []).append(int(items[i]))
        assert sorted(targets) == expected_targets
        # each target's window is the user's last events before it, in order
        ordered = {u: list(seen.get(u, [])) for u in set(users.tolist())}
        for i in range(n):
            ordered[int(users[i])].append(int(items[i]))
        for pos, s, ev in zip(flat_pos.tolist(), seg.tolist(), targets, strict=True):
            u = int(users[ev])
            lo = int(batch.offsets[s])
            window = vocab.lookup(np.array(ordered[u]))
            idx = len(seen.get(u, [])) + [j for j in range(n) if users[j] == u].index(ev)
            got = batch.item_ids[lo : pos + 1].tolist()
            assert got == window[idx + 1 - len(got) : idx + 1].tolist()
            # at least max_len - max_targets predecessors whenever that many exist
            assert len(got) - 1 >= min(idx, max_len - max_targets)
        total_targets += len(targets)
        builder.commit(prepared)
        for i in range(n):
            seen.setdefault(int(users[i]), []).append(int(items[i]))
    assert total_targets == sum(len(v) - 1 for v in seen.values())


def test_out_of_order_event_does_not_see_later_events_as_history():
    store, vocab = SequenceStore(max_len=8, tolerance_s=100), ItemVocabulary(capacity=100)
    builder = BatchBuilder(store, vocab, max_targets=3)
    builder.commit(builder.build(events([1, 1, 1], [1, 2, 3], [10, 20, 30])))
    prepared = builder.build(events([1], [4], [25]))
    seq = prepared.micro.batch.sequence(0)
    assert seq["timestamps"].tolist() == [10, 20, 25]
    builder.commit(prepared)
    assert store.user_history(1)["ts"].tolist() == [10, 20, 25, 30]


def test_batches_with_nothing_accepted_or_nothing_at_all():
    store, vocab = SequenceStore(max_len=5, tolerance_s=0), ItemVocabulary(capacity=10)
    builder = BatchBuilder(store, vocab, max_targets=2)
    builder.commit(builder.build(events([1], [1], [100])))
    late = builder.build(events([1], [2], [50]))
    assert late.num_accepted == 0 and late.plan.reject_counts() == {"late": 1}
    assert late.micro.batch.num_sequences == 0
    builder.commit(late)
    empty = builder.build(EventBatch.empty())
    assert empty.num_accepted == 0 and empty.micro.num_targets == 0
    builder.commit(empty)
    assert store.user_history(1)["ts"].tolist() == [100]
