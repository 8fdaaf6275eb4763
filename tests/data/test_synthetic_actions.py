"""The synthetic impression stream: deterministic, time-ordered, labels with a sequential part,
readable as an event log and streamed by the synthetic source."""

from __future__ import annotations

import numpy as np
import pytest

from model.ranking_metrics import auc
from pipeline.events import EventBatch, decode_records
from pipeline.lake.datasets import build_sequences
from pipeline.lake.synthetic_actions import (
    CLICK,
    VIEW,
    ActionStreamConfig,
    generate_action_events,
    simulate_actions,
)
from pipeline.sources.synthetic import SyntheticSource

SMALL = ActionStreamConfig(num_users=200, num_items=300, events_per_user=40, seed=4)


def test_deterministic_time_ordered_and_labelled() -> None:
    a, b = generate_action_events(SMALL), generate_action_events(SMALL)
    for col in ("user", "item", "timestamp", "action", "value"):
        np.testing.assert_array_equal(getattr(a, col), getattr(b, col))
    assert np.all(np.diff(a.timestamp) >= 0)
    assert set(np.unique(a.action).tolist()) == {VIEW, CLICK}
    clicks = a.action == CLICK
    assert 0.1 < clicks.mean() < 0.5
    # a click carries a rating 1..5, a view none
    assert np.all(np.isnan(a.value[~clicks]))
    assert set(np.unique(a.value[clicks]).tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    other = generate_action_events(ActionStreamConfig(**{**SMALL.__dict__, "seed": 5}))
    assert not np.array_equal(a.item[:100], other.item[:100])


def test_labels_depend_on_the_recently_clicked_items() -> None:
    truth = simulate_actions(SMALL)
    log = truth.log
    y = (log.action == CLICK).astype(float)
    # The full preference (with the short-term taste) explains clicks better than the
    # long-term taste alone.
    assert auc(y, truth.click_prob) > auc(y, truth.long_term_prob) + 0.05
    # Observable: how close an impression is to the user's last clicked item predicts its label.
    last: dict[int, int] = {}
    score = np.full(len(log), np.nan)
    for e, (user, item) in enumerate(zip(log.user.tolist(), log.item.tolist(), strict=True)):
        if user in last:
            score[e] = truth.item_vectors[item] @ truth.item_vectors[last[user]]
        if y[e]:
            last[user] = item
    seen = ~np.isnan(score)
    assert auc(y[seen], score[seen]) > 0.57


def test_readable_as_sequences_and_streamed_by_the_synthetic_source() -> None:
    cfg = ActionStreamConfig(num_users=20, num_items=50, events_per_user=10, seed=1)
    log = generate_action_events(cfg)
    ds = build_sequences(log)
    assert ds.num_events == len(log)
    source = SyntheticSource(cfg, events_per_record=32)
    records = []
    while not source.exhausted():
        records.extend(source.poll(5, 0.0))
    result = decode_records(records)
    assert result.rejects == []
    assert list(result.events.rows()) == list(EventBatch.from_event_log(log).rows())


def test_rejects_bad_config() -> None:
    with pytest.raises(ValueError, match="memory must be in"):
        ActionStreamConfig(memory=1.5)
    with pytest.raises(ValueError, match="events_per_user >= 3"):
        ActionStreamConfig(events_per_user=2)
