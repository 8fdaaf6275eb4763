"""The DLRM baseline: candidate split, output layout, independence of the history's order, and
learning the synthetic impression stream."""

from __future__ import annotations

import json
import time
from dataclasses import asdict

import numpy as np
import pytest
import torch

from model.candidates import split_candidates
from model.dlrm import DLRM, DLRMConfig
from model.jagged import JaggedBatch
from model.ranking_metrics import auc
from pipeline.lake.synthetic_actions import CLICK, ActionStreamConfig, generate_action_events

TASKS = ({"name": "click", "actions": [2]}, {"name": "like", "min_value": 4.0})
SMALL = DLRMConfig(num_rows=20, num_user_rows=8, dim=4, hidden=(8,), ranking_tasks=TASKS)


def test_split_candidates_reads_the_batchs_candidates() -> None:
    batch = JaggedBatch.from_lists(
        [[3, 5, 9], [4, 8], [6, 7]], timestamps=[[1, 2, 3], [1, 2], [1, 2]], num_targets=[1, 1, 0]
    )
    split = split_candidates(batch)
    assert split.history_rows.tolist() == [0, 1, 3, 5, 6]
    assert split.history_sequence.tolist() == [0, 0, 1, 2, 2]
    assert split.candidate_rows.tolist() == [2, 4]
    assert split.candidate_sequence.tolist() == [0, 1]
    plain = split_candidates(batch.with_fields(num_targets=None))
    assert plain.candidate_rows.numel() == 0 and plain.history_rows.numel() == 7


def test_config_needs_a_task_and_round_trips_through_json() -> None:
    with pytest.raises(ValueError, match="at least one task"):
        DLRMConfig(num_rows=5)
    doc = json.loads(json.dumps(asdict(SMALL)))
    assert DLRMConfig(**doc) == SMALL


def test_logits_follow_candidates_and_ignore_history_order_and_other_sequences() -> None:
    torch.manual_seed(0)
    model = DLRM(SMALL)
    ts = [[1, 2, 3, 4], [1, 2]]
    batch = JaggedBatch.from_lists([[3, 5, 9, 11], [4, 6]], timestamps=ts, num_targets=[2, 1])
    out = model(batch, torch.tensor([1, 2]))
    assert out.shape == (3, 2)
    # history order does not matter: 3, 5 pooled either way
    swapped = JaggedBatch.from_lists([[5, 3, 9, 11], [4, 6]], timestamps=ts, num_targets=[2, 1])
    torch.testing.assert_close(model(swapped, torch.tensor([1, 2])), out)
    # a sequence alone gives the same logits as inside the batch
    alone = JaggedBatch.from_lists([[4, 6]], timestamps=[[1, 2]], num_targets=[1])
    torch.testing.assert_close(model(alone, torch.tensor([2])), out[2:])
    # hashed users: row 2 and row 2 + num_user_rows are the same user row
    torch.testing.assert_close(model(alone, torch.tensor([10])), out[2:])
    # a click in the history weighs differently from a view once the action weights differ
    with torch.no_grad():
        model.action_weight.weight[2] = 3.0
    clicked = JaggedBatch.from_lists(
        [[4, 6]], timestamps=[[1, 2]], action_types=[[2, 0]], num_targets=[1]
    )
    assert not torch.allclose(model(clicked, torch.tensor([2])), out[2:])
    with pytest.raises(ValueError, match="one entry per sequence"):
        model(alone, torch.tensor([1, 2]))


def ranking_examples(
    cfg: ActionStreamConfig, max_history: int
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """One example per event with at least one earlier event of its user: the user's last
    ``max_history`` events (item rows = key + 1, their actions) then the event as the single
    candidate (action 0: its label is not an input). Returns per-example item and action
    arrays, user rows, labels and event times."""
    log = generate_action_events(cfg)
    items, actions, users, labels, times = [], [], [], [], []
    past: dict[int, list[tuple[int, int]]] = {}
    for user, item, action, t in zip(
        log.user.tolist(),
        (log.item + 1).tolist(),
        log.action.tolist(),
        log.timestamp.tolist(),
        strict=True,
    ):
        history = past.setdefault(user, [])
        if history:
            window = history[-max_history:]
            items.append(np.array([i for i, _ in window] + [item], dtype=np.int64))
            actions.append(np.array([a for _, a in window] + [0], dtype=np.int64))
            users.append(user + 1)
            labels.append(float(action == CLICK))
            times.append(t)
        history.append((item, action))
    return items, actions, np.array(users), np.array(labels), np.array(times)


def make_batch(items: list[np.ndarray], actions: list[np.ndarray]) -> JaggedBatch:
    lengths = [len(s) for s in items]
    return JaggedBatch.from_numpy(
        item_ids=np.concatenate(items),
        timestamps=np.zeros(sum(lengths), dtype=np.int64),
        offsets=np.concatenate([[0], np.cumsum(lengths)]),
        action_types=np.concatenate(actions),
        num_targets=np.ones(len(items), dtype=np.int64),
    )


def test_dlrm_learns_the_synthetic_impression_stream() -> None:
    start = time.monotonic()
    cfg = ActionStreamConfig(num_users=300, num_items=200, events_per_user=40, seed=0)
    items, actions, users, labels, times = ranking_examples(cfg, max_history=20)
    train = np.flatnonzero(times < np.quantile(times, 0.8))  # held out: the last 20% in time
    test = np.flatnonzero(times >= np.quantile(times, 0.8))
    torch.manual_seed(0)
    click = ({"name": "click", "actions": [CLICK]},)
    model = DLRM(DLRMConfig(cfg.num_items + 1, num_user_rows=512, dim=16, ranking_tasks=click))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    for _ in range(3):
        for chunk in np.array_split(rng.permutation(train), len(train) // 256):
            batch = make_batch([items[i] for i in chunk], [actions[i] for i in chunk])
            logits = model(batch, torch.tensor(users[chunk]))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits[:, 0], torch.tensor(labels[chunk], dtype=torch.float32)
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        batch = make_batch([items[i] for i in test], [actions[i] for i in test])
        scores = model(batch, torch.tensor(users[test]))[:, 0]
    held_out_auc = auc(labels[test], scores)
    print(f"held-out AUC {held_out_auc:.3f} in {time.monotonic() - start:.1f}s")
    assert held_out_auc > 0.55
    assert time.monotonic() - start < 60
