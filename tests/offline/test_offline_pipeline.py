"""Offline batching, evaluation inputs, determinism, item remapping and checkpoints."""

from __future__ import annotations

import json
from typing import Any

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
    WeightEMA,
    evaluate,
    item_keys_json,
    length_grouped_batches,
    load_sequences,
    make_lr_schedule,
    next_item_batch,
    remap_items,
    train_offline,
    training_batch,
    window_indices,
)

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


def _rates(optimizer: torch.optim.Optimizer, schedule: Any, steps: int) -> list[float]:
    """The learning rate of each of ``steps`` optimizer steps under ``schedule``."""
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates


def test_cosine_schedule_decays_to_zero_over_every_step() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=0.01)
    cfg = TrainConfig(epochs=2, lr=0.01, lr_schedule="cosine", progress=False)
    lrs = _rates(optimizer, make_lr_schedule(optimizer, cfg, steps_per_epoch=3), 6)
    assert lrs[0] == pytest.approx(0.01) and lrs[3] == pytest.approx(0.005)
    assert lrs == sorted(lrs, reverse=True) and optimizer.param_groups[0]["lr"] == pytest.approx(0)
    constant = torch.optim.AdamW([param], lr=0.01)
    flat = make_lr_schedule(constant, TrainConfig(epochs=2, progress=False), steps_per_epoch=3)
    for _ in range(6):
        constant.step()
        flat.step()
    assert constant.param_groups[0]["lr"] == 0.01
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")
    with pytest.raises(ValueError, match="num_shared_negatives"):
        TrainConfig(num_shared_negatives=64, per_position_negatives=False)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_warmup_ramps_the_rate_linearly_over_its_steps(schedule: str) -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=0.01)
    cfg = TrainConfig(epochs=2, lr=0.01, lr_schedule=schedule, lr_warmup_steps=4)
    lrs = _rates(optimizer, make_lr_schedule(optimizer, cfg, steps_per_epoch=500), 6)
    assert lrs[:4] == pytest.approx([0.0025, 0.005, 0.0075, 0.01], rel=1e-3)
    if schedule == "constant":
        assert lrs[4:] == [0.01, 0.01]
    with pytest.raises(ValueError, match="lr_warmup_steps"):
        TrainConfig(lr_warmup_steps=-1)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_sparse_embeddings_train_offline_with_lazy_adam(schedule: str) -> None:
    ds, _ = load_sequences(None, synthetic=TINY)
    splits = paper_split(ds)
    cfg = TrainConfig(
        epochs=2, batch_size=16, num_negatives=16, progress=False, lr_schedule=schedule
    )
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


class Tied(torch.nn.Module):
    """A parameter reachable under two names, a float buffer and an integer buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([1.0]))
        self.also_w = self.w
        self.register_buffer("scale", torch.tensor([10.0]))
        self.register_buffer("count", torch.tensor([0]))


def test_weight_ema_matches_a_hand_computation() -> None:
    model = Tied()
    ema = WeightEMA(model, decay=0.9)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    for step in range(1, 4):
        optimizer.zero_grad()
        model.w.sum().backward()  # gradient 1: w goes 1 -> 0 -> -1 -> -2
        optimizer.step()
        model.scale.fill_(20.0)
        model.count.fill_(step)
        ema.update(model)
    # a_t = 0.9 a_(t-1) + 0.1 w_t from a_0 = 1: 0.9, 0.71, 0.439 (the tied w averaged once)
    assert ema.module.w.item() == pytest.approx(0.439)
    assert ema.module.also_w is ema.module.w
    # the float buffer is averaged (10 -> 11 -> 11.9 -> 12.71), the integer one copied
    assert ema.module.scale.item() == pytest.approx(12.71)
    assert ema.module.count.item() == 3
    assert model.w.item() == pytest.approx(-2.0) and not ema.module.w.requires_grad


@pytest.mark.parametrize("split", ["paper", "holdout"])
def test_weight_average_is_what_train_offline_evaluates_and_saves(split: str, tmp_path) -> None:
    ds, _ = load_sequences(None, synthetic=TINY)
    splits = make_splits(ds, split)
    base = dict(epochs=2, batch_size=16, num_negatives=16, progress=False, split=split)
    plain = train_offline("hstu", TINY_MODEL, splits, TrainConfig(**base))
    # decay 0: the average is the last step's weights, so nothing changes
    last = TrainConfig(**base, weight_average="ema", ema_decay=0.0)
    assert train_offline("hstu", TINY_MODEL, splits, last).test == plain.test
    # the sparse-embedding optimiser feeds the average too
    cfg = TrainConfig(**base, weight_average="ema", ema_decay=0.5, sparse_embeddings=True)
    averaged = train_offline("hstu", TINY_MODEL, splits, cfg, out_dir=tmp_path)
    assert averaged.test != plain.test
    saved, meta = load_checkpoint(tmp_path / "checkpoint")
    assert meta["train_config"]["weight_average"] == "ema"
    assert evaluate(saved, splits[2], max_len=8) == averaged.test
    with pytest.raises(ValueError, match="weight_average"):
        TrainConfig(weight_average="swa")
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)
