"""Offline training and evaluation under a positives rule, and values along the data path."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.events.positives import parse_positives
from pipeline.lake.datasets import SequenceDataset, build_sequences, read_event_log
from pipeline.offline.config import TrainConfig
from pipeline.offline.splits import make_splits, users_without_target
from pipeline.offline.training import (
    next_item_batch,
    remap_items,
    train_offline,
    training_batch,
)
from pipeline.runtime.errors import ConfigError

NAN = np.nan
LIKED = parse_positives("value>=4")


def rated_dataset() -> SequenceDataset:
    """user 0: items 1..6 rated 5, 2, 4, 3, 4.5, 1; user 1: items 7, 8, 9 rated 4, 1, 2;
    user 2: items 1, 2, 3 without ratings."""
    return SequenceDataset(
        item_ids=np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3]),
        timestamps=np.arange(12) * 10,
        actions=np.zeros(12, dtype=np.int64),
        offsets=np.array([0, 6, 9, 12]),
        item_keys=np.array([None, *range(101, 110)], dtype=object),
        user_keys=np.array([7, 8, 9]),
        values=np.array([5, 2, 4, 3, 4.5, 1, 4, 1, 2, NAN, NAN, NAN], dtype=np.float32),
    )


def test_values_survive_the_reader_sequences_and_batches(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text(
        "userId,movieId,rating,timestamp\n1,10,4.5,300\n1,11,2.0,100\n2,10,5.0,50\n1,12,3.5,200\n"
    )
    log, _ = read_event_log(path)
    ds = build_sequences(log)
    assert ds.values.dtype == np.float32
    assert ds.values.tolist() == [2.0, 3.5, 4.5, 5.0]  # user 1 in time order, then user 2
    batch = training_batch(ds, np.array([0, 1]), max_len=5)
    assert batch.values is not None and batch.values.tolist() == [2.0, 3.5, 4.5, 5.0]
    context, _ = next_item_batch(ds, np.array([0]), max_len=5)
    assert context.values is not None and context.values.tolist() == [2.0, 3.5]
    assert remap_items(ds, [None, 12, 11, 10]).values.tolist() == ds.values.tolist()
    assert ds.drop_last(1).values.tolist() == [2.0, 3.5]


def test_a_dataset_without_values_has_nan_values():
    ds = SequenceDataset(
        np.array([1, 2]), np.array([1, 2]), np.zeros(2, np.int64), np.array([0, 2]),
        np.array([None, 5, 6], dtype=object), np.array([1]),
    )  # fmt: skip
    assert np.isnan(ds.values).all() and ds.values.dtype == np.float32


def test_training_targets_are_the_positive_events_only():
    ds = rated_dataset()
    batch = training_batch(ds, np.array([0, 1]), max_len=6, positives=LIKED)
    # user 0's first event (rated 5) starts its window: context, never a target
    assert batch.target_mask().tolist() == [
        False, False, True, False, True, False,  # 5, 2, 4, 3, 4.5, 1
        False, False, False,  # 4 (first), 1, 2
    ]  # fmt: skip
    everything = training_batch(ds, np.array([0, 1]), max_len=6, positives=parse_positives("all"))
    assert everything.is_target is None  # the rule "all" is today's batch, bit for bit


def test_the_test_target_is_the_last_positive_event_with_every_earlier_event_as_history():
    ds = rated_dataset()
    train, valid, test = make_splits(ds, "paper", LIKED)
    # user 0 ends at item 5 (4.5), user 1 at item 7 (its only positive, no history), user 2
    # has no positive event at all
    assert test.offsets.tolist() == [0, 5, 6, 6]
    assert test.item_ids.tolist() == [1, 2, 3, 4, 5, 7]
    assert train.item_ids.tolist() == [1, 2, 3, 4] and valid is train
    assert users_without_target(test) == 2
    context, targets = next_item_batch(test, np.array([0]), max_len=10)
    assert context.item_ids.tolist() == [1, 2, 3, 4] and targets.tolist() == [5]
    _, valid, test = make_splits(ds, "holdout", LIKED)
    assert valid.item_ids.tolist() == [1, 2, 3]  # ends at the positive before the test's
    assert test.item_ids.tolist() == [1, 2, 3, 4, 5, 7]


def test_the_rule_all_keeps_the_splits_of_before():
    ds = rated_dataset()
    for split in ("paper", "holdout"):
        for got, want in zip(
            make_splits(ds, split, parse_positives("all")), make_splits(ds, split), strict=True
        ):
            assert got.item_ids.tolist() == want.item_ids.tolist()
            assert got.offsets.tolist() == want.offsets.tolist()


def test_training_and_evaluation_follow_the_rule_and_skip_users_without_a_target():
    ds = rated_dataset()
    cfg = TrainConfig(epochs=1, batch_size=2, num_negatives=4, positives="value>=4", progress=False)
    model = dict(embedding_dim=8, num_layers=1, max_len=6, action_inputs=True)
    result = train_offline("hstu", model, make_splits(ds, "paper", LIKED), cfg)
    assert result.test["count"] == 1  # only user 0 has a positive target with history
    popular = train_offline("popular", {}, make_splits(ds, "paper", LIKED), cfg)
    assert popular.test["count"] == 1


def test_a_bad_rule_in_the_train_config_is_one_line_naming_the_flag():
    with pytest.raises(ConfigError, match=r"^--positives: 'value>4x' compares value with '4x'"):
        TrainConfig(positives="value>4x")


def test_train_offline_flags_set_the_rule_and_the_action_inputs():
    from pipeline.cli import build_parser
    from pipeline.commands.offline import model_config_from_args, train_config_from_args
    from pipeline.offline.config import load_preset

    argv = ["train-offline", "--out", "x", "--positives", "action:purchase", "--action-inputs"]
    args = build_parser().parse_args(argv)
    preset = load_preset(None)
    assert train_config_from_args(args, preset, seed=0, progress=False).positives == (
        "action:purchase"
    )
    assert model_config_from_args("sasrec", args, preset)["action_inputs"] is True
    args = build_parser().parse_args(["train-offline", "--out", "x"])
    assert model_config_from_args("hstu", args, preset)["action_inputs"] is False
