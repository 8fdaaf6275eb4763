"""The online trainer under a positives rule: only positive new events are targets (trained
and scored), the others are context; values travel with the events into the store."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from pipeline.events import EventBatch
from pipeline.events.positives import parse_positives
from pipeline.lake.synthetic import SyntheticConfig, generate_events
from pipeline.runtime.errors import ConfigError
from pipeline.sources.eventlog import EventLogSource
from pipeline.state.store import SequenceStore
from pipeline.state.vocab import ItemVocabulary
from pipeline.stream.batching import BatchBuilder
from pipeline.stream.config import load_config
from pipeline.stream.deadletter import MemoryDeadLetterSink
from pipeline.stream.trainer import OnlineTrainer


def events(users, items, ts, values, actions=None):
    n = len(ts)
    return EventBatch(
        user_id=np.asarray(users, dtype=np.int64),
        item_id=np.asarray(items, dtype=np.int64),
        timestamp=np.asarray(ts, dtype=np.int64),
        action=np.zeros(n, np.int64) if actions is None else np.asarray(actions, np.int64),
        value=np.asarray(values, dtype=np.float32),
    )


def test_values_go_through_the_store_into_later_batches():
    store, vocab = SequenceStore(max_len=8), ItemVocabulary(capacity=100)
    builder = BatchBuilder(store, vocab, max_targets=3)
    first = builder.build(events([1, 1], [10, 11], [100, 200], [4.5, np.nan]))
    assert first.micro.batch.values.tolist()[0] == 4.5
    builder.commit(first)
    assert store.user_history(1)["value"].tolist()[0] == 4.5
    restored = SequenceStore.restore(store.snapshot())
    again = BatchBuilder(restored, vocab, max_targets=3).build(events([1], [12], [300], [2.0]))
    values = again.micro.batch.values.tolist()
    assert values[0] == 4.5 and np.isnan(values[1]) and values[2] == 2.0


def test_only_positive_new_events_are_targets_and_the_others_are_counted():
    store, vocab = SequenceStore(max_len=8), ItemVocabulary(capacity=100)
    builder = BatchBuilder(store, vocab, max_targets=4, positives=parse_positives("action:click"))
    prepared = builder.build(
        events([1, 1, 1, 1], [10, 11, 12, 13], [1, 2, 3, 4], [np.nan] * 4, actions=[2, 1, 2, 0])
    )
    micro = prepared.micro
    assert micro.batch.is_target.tolist() == [False, False, True, False]
    assert micro.target_event.tolist() == [2]
    # the first event is a click but has no history: context only; two are not clicks
    assert (micro.num_targets, micro.context_only, micro.not_positive) == (1, 1, 2)


def rated_log(config: SyntheticConfig):
    """The synthetic log with ratings 1..5 and actions view / click drawn per event."""
    log = generate_events(config)
    rng = np.random.default_rng(1)
    n = len(log)
    return replace(
        log,
        value=rng.integers(1, 6, n).astype(np.float64),
        action=rng.choice(np.array([1, 2]), n),
    )


@pytest.mark.parametrize("rule", ["value>=4", "action:click"])
def test_the_trainer_trains_and_scores_only_positive_events(tmp_path, rule):
    config = SyntheticConfig(num_users=30, num_items=80, num_clusters=4, events_per_user=12)
    log = rated_log(config)
    cfg = load_config(
        overrides={
            "run_dir": str(tmp_path / "run"),
            "store": {"max_len": 10},
            "vocab": {"capacity": 200},
            "model": {"embedding_dim": 16, "action_inputs": True},
            "train": {"batch_events": 64, "num_negatives": 16, "threads": 1, "positives": rule},
            "checkpoint": {"dir": str(tmp_path / "ckpt")},
            "registry": {"enabled": False},
            "observability": {"prometheus_port": 0},
        },
        environ={},
    )
    source = EventLogSource(lambda: log, "p0", events_per_record=64)
    torch.manual_seed(0)
    trainer = OnlineTrainer(cfg, source, MemoryDeadLetterSink())
    summary = trainer.run()
    positive = parse_positives(rule).mask(log.action, log.value.astype(np.float32))
    first = np.zeros(len(log), bool)
    first[np.unique(log.user, return_index=True)[1]] = True  # the log is in time order
    assert summary["events_trained"] == len(log)
    assert summary["targets"] == int((positive & ~first).sum())
    assert summary["context_only"] == int((positive & first).sum())
    assert summary["not_positive"] == int((~positive).sum()) > 0
    assert summary["unknown_item"] == 0
    # test-then-train scored exactly the targets
    assert trainer.state.progressive.count == summary["targets"]


def test_a_bad_rule_in_the_trainer_config_names_the_key_and_what_to_write(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(overrides={"train": {"positives": "likes"}}, environ={})
    assert "train.positives" in str(err.value)
    assert "'likes' is not a positives rule; write 'all', 'value>=4'" in str(err.value)


def test_train_flags_set_the_rule_and_the_action_inputs():
    from pipeline.cli import build_parser
    from pipeline.commands.train import config_from_args

    args = build_parser().parse_args(["train", "--positives", "value>=4", "--action-inputs"])
    cfg = config_from_args(args)
    assert cfg.train.positives == "value>=4" and cfg.model.action_inputs
    args = build_parser().parse_args(["train", "--no-action-inputs"])
    assert not config_from_args(args).model.action_inputs
