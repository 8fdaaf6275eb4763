"""Offline batching, evaluation inputs, determinism, item remapping and checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model.serialize import WEIGHTS_FILE, build_model, load_checkpoint, save_checkpoint
from pipeline.lake.datasets import SequenceDataset
from pipeline.lake.synthetic import SyntheticConfig
from pipeline.offline.splits import leave_one_out, make_splits, paper_split
from pipeline.offline.training import (
    TrainConfig,
    TrainingWindows,
    evaluate,
    item_keys_json,
    length_grouped_batches,
    load_sequences,
    next_item_batch,
    remap_items,
    train_offline,
    training_batch,
    window_indices,
)
from pipeline.runtime.errors import ConfigError

TINY = SyntheticConfig(num_users=40, num_items=60, events_per_user=12, num_clusters=4)
TINY_MODEL = dict(embedding_dim=16, num_layers=1, max_len=8)


def hand_dataset() -> SequenceDataset:
    # user 0: items 1..5 at t=10..50; user 1: items 6, 7, 8 at t=1..3
    return SequenceDataset(
        item_ids=np.array([1, 2, 3, 4, 5, 6, 7, 8]),
        timestamps=np.array([10, 20, 30, 40, 50, 1, 2, 3]),
        actions=np.zeros(8, dtype=np.int64),
        offsets=np.array([0, 5, 8]),
        item_keys=np.array([None, *range(101, 109)], dtype=object),
        user_keys=np.array([7, 9]),
    )


def test_window_indices_keep_the_last_events() -> None:
    offsets = np.array([0, 5, 8])
    idx, offs = window_indices(offsets, np.array([1, 0]), max_len=3)
    assert idx.tolist() == [5, 6, 7, 2, 3, 4]
    assert offs.tolist() == [0, 3, 6]
    idx, offs = window_indices(offsets, np.array([0, 1]), max_len=3, drop_last=2)
    assert idx.tolist() == [0, 1, 2, 5]
    assert offs.tolist() == [0, 3, 4]


def test_training_and_next_item_batches() -> None:
    ds = hand_dataset()
    batch = training_batch(ds, np.array([0, 1]), max_len=4)
    assert batch.item_ids.tolist() == [2, 3, 4, 5, 6, 7, 8]
    assert batch.target_mask().tolist() == [False, True, True, True, False, True, True]
    context, targets = next_item_batch(ds, np.array([0, 1]), max_len=3)
    assert context.item_ids.tolist() == [2, 3, 4, 6, 7]
    assert context.offsets.tolist() == [0, 3, 5]
    assert targets.tolist() == [5, 8]
    assert context.query_time is not None and context.query_time.tolist() == [50, 3]


def test_length_grouped_batches_cover_each_sequence_once_with_similar_lengths() -> None:
    lengths = np.array([1, 9, 2, 8, 3, 7, 4, 6, 5, 10, 2, 9])
    batches = length_grouped_batches(lengths, 3, np.random.default_rng(0), group_batches=4)
    assert sorted(np.concatenate(batches).tolist()) == list(range(12))
    assert all(len(b) == 3 for b in batches)
    # one group holds all sequences, so each batch is a contiguous run of the sorted lengths
    spans = [int(lengths[b].max() - lengths[b].min()) for b in batches]
    assert sum(spans) <= 9
    again = length_grouped_batches(lengths, 3, np.random.default_rng(0), group_batches=4)
    assert [b.tolist() for b in again] == [b.tolist() for b in batches]


def test_epoch_batches_keep_earlier_windows_apart_from_the_last_ones() -> None:
    lengths = np.array([3, 9, 2, 30, 5, 4, 25, 7])

    class Dataset:
        def lengths(self) -> np.ndarray:
            return lengths

    windows = TrainingWindows.build(Dataset(), 6, "all")  # type: ignore[arg-type]
    last = set(np.flatnonzero(windows.drop_last == 0).tolist())
    assert len(last) == lengths.size and len(windows) > lengths.size
    batches = windows.epoch_batches(3, np.random.default_rng(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(windows)))
    for b in batches:  # a batch is all last windows or all earlier ones
        assert len({int(i) in last for i in b}) == 1
    # the last windows' batches are uniformly random: over seeds, the shortest last window
    # (2 events) shares a batch with a full one (6), which length-sorted batches never do
    mixed = False
    for seed in range(20):
        for b in windows.epoch_batches(3, np.random.default_rng(seed)):
            if int(b[0]) in last:
                mixed |= {2, 6} <= set(windows.lengths[b].tolist())
    assert mixed
    again = windows.epoch_batches(3, np.random.default_rng(0))
    assert [b.tolist() for b in again] == [b.tolist() for b in batches]


def test_all_training_windows_make_every_event_but_the_first_a_target_once() -> None:
    lengths = np.array([1, 5, 6, 2])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ds = SequenceDataset(
        np.ones(offsets[-1], np.int64),
        np.arange(offsets[-1]),
        np.zeros(offsets[-1], np.int64),
        offsets,
        np.array([None, 1], dtype=object),
        np.arange(4),
    )
    last = TrainingWindows.build(ds, 3, "last")
    assert last.users.tolist() == [1, 2, 3] and last.drop_last.tolist() == [0, 0, 0]
    windows = TrainingWindows.build(ds, 3, "all")
    assert windows.users.tolist() == [1, 1, 2, 2, 2, 3]
    assert windows.lengths.tolist() == [3, 3, 3, 3, 2, 2]
    batch = training_batch(ds, windows.users, 3, windows.drop_last)
    events = batch.timestamps.tolist()  # the timestamps are the flat event indices
    starts = batch.offsets[:-1].tolist()
    assert [events[s] for s in starts] == [3, 1, 9, 7, 6, 12]  # context-only firsts
    targets = sorted(e for i, e in enumerate(events) if i not in starts)
    every = [e for u in range(4) for e in range(offsets[u] + 1, offsets[u + 1])]
    assert targets == every
    with pytest.raises(ValueError, match="train_windows"):
        TrainConfig(train_windows="first")


def test_remap_items_to_a_checkpoint_key_map() -> None:
    ds = hand_dataset()
    keys = [None, 105, 101, 999]  # 105 -> row 1, 101 -> row 2, others unknown -> 0
    remapped = remap_items(ds, keys)
    assert remapped.item_ids.tolist() == [2, 0, 0, 0, 1, 0, 0, 0]
    assert item_keys_json(remapped) == keys


def test_training_is_deterministic_per_seed() -> None:
    ds, _ = load_sequences(None, synthetic=TINY)
    splits = leave_one_out(ds)
    cfg = TrainConfig(epochs=2, batch_size=16, num_negatives=16, progress=False, seed=3)
    a = train_offline("hstu", TINY_MODEL, splits, cfg)
    b = train_offline("hstu", TINY_MODEL, splits, cfg)
    assert a.test == b.test and a.valid_history == b.valid_history
    other = TrainConfig(epochs=2, batch_size=16, num_negatives=16, progress=False, seed=4)
    c = train_offline("hstu", TINY_MODEL, splits, other)
    assert c.valid_history != a.valid_history


@pytest.mark.parametrize("kind", ["hstu", "sasrec", "popular"])
def test_checkpoint_round_trip(kind: str, tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model(kind, {"num_rows": 20} | ({} if kind == "popular" else TINY_MODEL))
    if kind == "popular":
        model.fit(torch.tensor([1, 1, 5]))
    meta = {"item_keys": [None, *range(19)], "note": "x"}
    save_checkpoint(tmp_path / "ck", model, meta)
    save_checkpoint(tmp_path / "ck", model, meta)  # overwriting an existing one works
    loaded, loaded_meta = load_checkpoint(tmp_path / "ck")
    assert loaded_meta == meta
    for (name, a), (_, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temp leftovers
    doc = json.loads((tmp_path / "ck" / "model.json").read_text())
    assert doc["kind"] == kind and doc["config"]["num_rows"] == 20


def test_checkpoint_refuses_pickled_objects(tmp_path) -> None:
    model = build_model("popular", {"num_rows": 5})
    save_checkpoint(tmp_path / "ck", model, {})
    torch.save({"counts": torch.zeros(5), "evil": object()}, tmp_path / "ck" / WEIGHTS_FILE)
    with pytest.raises(Exception, match=r"[Ww]eights only"):
        load_checkpoint(tmp_path / "ck")
    with pytest.raises(FileNotFoundError, match=r"model\.json"):
        load_checkpoint(tmp_path / "nothing")


def rewatch_dataset() -> SequenceDataset:
    # user 0: items 1, 2, 1 (its test target, item 1, was consumed before);
    # user 1: items 3, 2, 4 (target 4 is new to the user)
    return SequenceDataset(
        item_ids=np.array([1, 2, 1, 3, 2, 4]),
        timestamps=np.array([1, 2, 3, 1, 2, 3]),
        actions=np.zeros(6, dtype=np.int64),
        offsets=np.array([0, 3, 6]),
        item_keys=np.array([None, 11, 12, 13, 14], dtype=object),
        user_keys=np.array([0, 1]),
    )


def test_evaluate_exclude_seen_counts_a_previously_consumed_target_as_a_miss() -> None:
    ds = rewatch_dataset()
    model = build_model("popular", {"num_rows": 5})
    model.fit(torch.tensor([1, 1, 1, 1, 2, 2, 2, 4, 4, 3]))  # popularity: 1 > 2 > 4 > 3
    everything = evaluate(model, ds, max_len=8, ks=(1, 2))
    # all items: user 0's target 1 ranks 1st; user 1's target 4 ranks 3rd (after 1, 2)
    assert everything["hr@1"] == 0.5 and everything["hr@2"] == 0.5
    paper = evaluate(model, ds, max_len=8, ks=(1, 2), exclude_seen=True)
    # exclude seen: user 0's target 1 is in its history -> a miss; user 1's history
    # (3, 2) is removed, so its target 4 ranks 2nd, after item 1
    assert paper["hr@1"] == 0.0 and paper["hr@2"] == 0.5
    assert paper["count"] == 2
    assert paper["hr@2_ci95"] > 0


def test_paper_split_trains_on_the_validation_event_and_keeps_the_last_epoch() -> None:
    ds = hand_dataset()
    train, valid, test = paper_split(ds)
    assert train.item_ids.tolist() == [1, 2, 3, 4, 6, 7]  # the validation events 4, 7 train
    assert valid.item_ids.tolist() == train.item_ids.tolist() and test is ds
    assert make_splits(ds, "holdout")[0].item_ids.tolist() == [1, 2, 3, 6]
    with pytest.raises(ValueError, match="'holdout' or 'paper'"):
        make_splits(ds, "random")
    big, _ = load_sequences(None, synthetic=TINY)
    cfg = TrainConfig(epochs=2, batch_size=16, num_negatives=16, progress=False, split="paper")
    result = train_offline("hstu", TINY_MODEL, make_splits(big, "paper"), cfg)
    assert result.best_epoch == 2  # no selection: the last epoch
    assert [set(h) for h in result.valid_history] == [{"epoch", "train_loss"}] * 2
    assert result.summary()["train_split"] == "paper"
    assert set(result.test_by_protocol) == {"all-items", "exclude-seen"}
    assert result.test == result.test_by_protocol["all-items"]


def _trained_weights(tmp_path, name: str, **settings: float) -> dict[str, torch.Tensor]:
    big, _ = load_sequences(None, synthetic=TINY)
    cfg = TrainConfig(batch_size=16, num_negatives=16, progress=False, **settings)
    train_offline("hstu", TINY_MODEL, make_splits(big, "paper"), cfg, out_dir=tmp_path / name)
    return load_checkpoint(tmp_path / name / "checkpoint")[0].state_dict()


def test_paper_split_keeps_the_mean_of_the_last_epochs_weights(tmp_path) -> None:
    # an epoch's draws do not depend on the epoch count, so the 2- and 3-epoch runs'
    # weights are the weights at the ends of epochs 2 and 3 of one run
    ends = [_trained_weights(tmp_path, f"e{n}", epochs=n, tail_average=0.0) for n in (2, 3)]
    kept = _trained_weights(tmp_path, "mean", epochs=3, tail_average=0.6)  # round(1.8) = 2
    assert not torch.equal(ends[0]["item_emb.weight"], ends[1]["item_emb.weight"])
    for name, tensor in kept.items():
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, (ends[0][name] + ends[1][name]) / 2)
    # every epoch's weights
    every = _trained_weights(tmp_path, "every", epochs=2, tail_average=1.0)
    one = _trained_weights(tmp_path, "one", epochs=1, tail_average=0.0)
    torch.testing.assert_close(
        every["item_emb.weight"], (one["item_emb.weight"] + ends[0]["item_emb.weight"]) / 2
    )
    for share in (-0.1, 1.5):
        with pytest.raises(ConfigError, match=r"--tail-average must be in \[0, 1\]"):
            TrainConfig(tail_average=share)


def test_reference_settings_train_deterministically() -> None:
    ds, _ = load_sequences(None, synthetic=TINY)
    splits = leave_one_out(ds)
    cfg = TrainConfig(
        epochs=1,
        batch_size=16,
        num_negatives=16,
        progress=False,
        per_position_negatives=True,
        init="reference",
        adam_beta2=0.98,
        exclude_seen=True,
    )
    a = train_offline("sasrec", {**TINY_MODEL, "style": "reference"}, splits, cfg)
    b = train_offline("sasrec", {**TINY_MODEL, "style": "reference"}, splits, cfg)
    assert a.test == b.test and a.protocol == "exclude-seen"
    with pytest.raises(ValueError, match=r"TrainConfig\.split"):
        TrainConfig(split="nope")


def test_sparse_embeddings_train_offline_with_lazy_adam() -> None:
    ds, _ = load_sequences(None, synthetic=TINY)
    splits = paper_split(ds)
    cfg = TrainConfig(epochs=2, batch_size=16, num_negatives=16, progress=False)
    sparse_cfg = TrainConfig(**{**cfg.__dict__, "sparse_embeddings": True})
    # 60 items, 16 negatives per target: every row is touched by every step, so lazy Adam
    # is Adam (weight decay 0) and the two train the same model
    dense = train_offline("hstu", TINY_MODEL, splits, cfg)
    sparse = train_offline("hstu", TINY_MODEL, splits, sparse_cfg)
    assert sparse.test == dense.test
    # 3,000 items, 2 negatives: most rows are untouched by a step and keep their moments
    big, _ = load_sequences(None, synthetic=SyntheticConfig(num_users=40, num_items=3000))
    splits = paper_split(big)
    few = {**cfg.__dict__, "num_negatives": 2, "epochs": 1}
    del few["sparse_embeddings"]
    dense = train_offline("hstu", TINY_MODEL, splits, TrainConfig(**few))
    sparse = train_offline("hstu", TINY_MODEL, splits, TrainConfig(**few, sparse_embeddings=True))
    again = train_offline("hstu", TINY_MODEL, splits, TrainConfig(**few, sparse_embeddings=True))
    assert sparse.test == again.test and sparse.test != dense.test
    assert all(np.isfinite(h["train_loss"]) for h in sparse.valid_history)
