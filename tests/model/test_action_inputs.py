"""Actions and values as model inputs (model/actions.py): read when switched on, ignored when
off, and checkpoints written before the switch existed load unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model.actions import DEFAULT_VALUE_BOUNDARIES, ActionValueInputs
from model.jagged import JaggedBatch
from model.serialize import CONFIG_FILE, build_model, load_checkpoint, save_checkpoint
from pipeline.events.schema import MAX_ACTION_CODE

SMALL = dict(num_rows=20, embedding_dim=8, num_layers=1, max_len=6, dropout=0.0, input_dropout=0.0)


def batch(actions: list[int], values: list[float] | None = None) -> JaggedBatch:
    return JaggedBatch.from_lists(
        [[3, 5, 9, 4]],
        timestamps=[[10, 20, 30, 40]],
        action_types=[actions],
        values=None if values is None else [values],
    )


def states(model: torch.nn.Module, b: JaggedBatch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model.encode(b)


@pytest.mark.parametrize("kind", ["hstu", "sasrec"])
def test_with_action_inputs_an_action_or_value_changes_the_state(kind):
    torch.manual_seed(0)
    model = build_model(kind, {**SMALL, "action_inputs": True})
    base = states(model, batch([0, 0, 0, 0], [4.0, 4.0, 4.0, 4.0]))
    clicked = states(model, batch([0, 2, 0, 0], [4.0, 4.0, 4.0, 4.0]))
    rated = states(model, batch([0, 0, 0, 0], [4.0, 1.0, 4.0, 4.0]))
    # causal: position 0 does not see event 1; positions 1.. do
    assert torch.equal(base[0], clicked[0]) and torch.equal(base[0], rated[0])
    assert not torch.allclose(base[1:], clicked[1:])
    assert not torch.allclose(base[1:], rated[1:])
    # no values at all is every event in the absent bucket, as NaN values are
    nan = states(model, batch([0, 0, 0, 0], [float("nan")] * 4))
    assert torch.equal(states(model, batch([0, 0, 0, 0])), nan)


@pytest.mark.parametrize("kind", ["hstu", "sasrec"])
def test_without_action_inputs_actions_and_values_are_ignored(kind):
    torch.manual_seed(0)
    model = build_model(kind, SMALL)
    assert not any(name.startswith("event_inputs") for name in model.state_dict())
    base = states(model, batch([0, 0, 0, 0]))
    assert torch.equal(base, states(model, batch([5, 2, 1, 3], [0.5, 5.0, 3.0, 1.0])))


def test_default_buckets_give_each_half_star_its_own_bucket_and_nan_the_absent_one():
    inputs = ActionValueInputs(4, DEFAULT_VALUE_BOUNDARIES)
    stars = torch.arange(1, 11, dtype=torch.float32) / 2  # 0.5, 1.0, ..., 5.0
    assert inputs.value_buckets(stars, 10).tolist() == list(range(10))
    odd = torch.tensor([-3.0, 0.0, 7.0, float("nan")])
    assert inputs.value_buckets(odd, 4).tolist() == [0, 0, 9, 10]
    assert inputs.value_buckets(None, 2).tolist() == [10, 10]
    assert inputs.action_emb.num_embeddings == MAX_ACTION_CODE + 1


def test_event_inputs_start_small_and_keep_their_init_under_the_reference_init():
    torch.manual_seed(0)
    model = build_model("hstu", {**SMALL, "action_inputs": True})
    before = model.event_inputs.action_emb.weight.detach().clone()
    model.reference_init()
    assert torch.equal(model.event_inputs.action_emb.weight, before)
    assert float(before.std()) < 0.05


def test_bad_value_boundaries_are_refused_with_an_example():
    with pytest.raises(ValueError, match=r"strictly increasing, got \[2.0, 1.0\]; e\.g\. \[0\.75"):
        build_model("sasrec", {**SMALL, "action_inputs": True, "value_boundaries": [2.0, 1.0]})


def test_a_checkpoint_written_before_action_inputs_existed_loads_unchanged(tmp_path):
    torch.manual_seed(0)
    model = build_model("hstu", SMALL)
    path = save_checkpoint(tmp_path / "ckpt", model, {"epoch": 1})
    doc = json.loads((path / CONFIG_FILE).read_text())
    for key in ("action_inputs", "value_boundaries"):  # as written before they existed
        del doc["config"][key]
    (path / CONFIG_FILE).write_text(json.dumps(doc))
    loaded, meta = load_checkpoint(path)
    assert meta == {"epoch": 1} and not loaded.cfg.action_inputs
    b = batch([1, 2, 3, 4], [1.0, 2.0, 3.0, 4.0])
    assert torch.equal(states(model, b), states(loaded, b))


def test_a_checkpoint_with_action_inputs_round_trips(tmp_path):
    torch.manual_seed(0)
    model = build_model("sasrec", {**SMALL, "action_inputs": True, "value_boundaries": [2, 4]})
    loaded, _ = load_checkpoint(save_checkpoint(tmp_path / "ckpt", model, {}))
    assert loaded.cfg.value_boundaries == (2.0, 4.0)
    b = batch([1, 2, 3, 4], [1.0, np.nan, 3.0, 5.0])
    assert torch.equal(states(model, b), states(loaded, b))
