"""Sparse item-table training: lazily normalised rows, sparse gradients, lazy Adam."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.hstu import HSTU, HSTUConfig
from model.jagged import JaggedBatch
from model.losses import sampled_softmax_loss
from model.optim import RowSparseAdam
from pipeline.stream.state import reset_item_rows

NUM_ROWS = 40
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def tiny_model(sparse: bool, device: str = "cpu") -> HSTU:
    torch.manual_seed(0)
    cfg = HSTUConfig(NUM_ROWS, embedding_dim=8, num_layers=1, max_len=6, dropout=0.0)
    cfg.input_dropout = 0.0
    model = HSTU(cfg).to(device)
    model.item_emb.sparse = sparse
    return model


def batch(device: str = "cpu") -> JaggedBatch:
    return JaggedBatch.from_lists([[1, 2, 3, 4], [5, 6, 2]], [[10, 20, 30, 40], [5, 15, 25]]).to(
        device
    )


def step_loss(model: HSTU, table) -> torch.Tensor:
    b = batch(next(model.parameters()).device.type)
    states = model.encode(b)
    queries, targets = states[:-1][b.item_ids[1:] > 0], b.item_ids[1:]
    negatives = torch.tensor([[7, 8, 9]] * targets.numel(), device=targets.device)
    return sampled_softmax_loss(
        queries, targets, table, negatives=negatives, per_position=True, temperature=0.1
    )


def test_item_rows_equal_the_normalised_table_in_value_and_gradient() -> None:
    a, b = tiny_model(False), tiny_model(False)
    loss_a = step_loss(a, a.item_embeddings())
    loss_b = step_loss(b, b.item_rows())
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    loss_a.backward()
    loss_b.backward()
    assert torch.allclose(a.item_emb.weight.grad, b.item_emb.weight.grad, atol=1e-6)
    assert b.item_rows().shape == (NUM_ROWS, 8)


def test_sparse_and_dense_sgd_give_the_same_parameters() -> None:
    dense, sparse = tiny_model(False), tiny_model(True)
    opts = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (dense, sparse)]
    for _ in range(3):
        for model, opt in zip((dense, sparse), opts, strict=True):
            opt.zero_grad()
            step_loss(model, model.item_rows()).backward()
            opt.step()
    assert sparse.item_emb.weight.grad.is_sparse and not dense.item_emb.weight.grad.is_sparse
    for (name, p), (_, q) in zip(dense.named_parameters(), sparse.named_parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), name


@pytest.mark.parametrize("device", DEVICES)
def test_lazy_adam_changes_only_the_rows_a_step_touches(device: str) -> None:
    model = tiny_model(True, device)
    before = model.item_emb.weight.detach().clone()
    optimizer = RowSparseAdam(model, lr=0.01, betas=(0.9, 0.98))
    optimizer.zero_grad()
    step_loss(model, model.item_rows()).backward()
    optimizer.step()
    touched = torch.zeros(NUM_ROWS, dtype=torch.bool, device=device)
    touched[torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9], device=device)] = True
    changed = (model.item_emb.weight.detach() != before).any(dim=1)
    assert torch.equal(changed, touched)
    moments = optimizer.state[model.item_emb.weight]["exp_avg"]
    assert torch.equal((moments != 0).any(dim=1), touched)
    # a row handed to a new item starts with fresh values and zero moments
    reset_item_rows(model.reset_item_rows, optimizer, model.item_emb.weight, np.array([3]))
    for key in ("exp_avg", "exp_avg_sq"):
        assert float(optimizer.state[model.item_emb.weight][key][3].abs().sum()) == 0.0


def test_row_sparse_adam_state_round_trips_and_refuses_dense_state() -> None:
    model = tiny_model(True)
    optimizer = RowSparseAdam(model, lr=0.01, betas=(0.9, 0.98))
    step_loss(model, model.item_rows()).backward()
    optimizer.step()
    other = RowSparseAdam(tiny_model(True), lr=0.5, betas=(0.9, 0.98))
    other.load_state_dict(optimizer.state_dict())
    assert other.rows.param_groups[0]["lr"] == 0.01
    dense = torch.optim.Adam(tiny_model(False).parameters())
    with pytest.raises(ValueError, match="sparse_embeddings=false"):
        other.load_state_dict(dense.state_dict())
    with pytest.raises(ValueError, match="sparse=True"):
        RowSparseAdam(tiny_model(False), lr=0.01, betas=(0.9, 0.98))


def test_large_tables_are_drawn_block_by_block_from_the_same_truncated_normal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from model import base

    torch.manual_seed(0)
    small = torch.empty(300, 8)
    expected = torch.empty(300, 8)
    torch.manual_seed(1)
    base.trunc_normal_rows_(small, std=0.02, a=-0.04, b=0.04)
    torch.manual_seed(1)
    torch.nn.init.trunc_normal_(expected, std=0.02, a=-0.04, b=0.04)
    assert torch.equal(small, expected)  # up to one block: torch's own sampler, bit for bit
    monkeypatch.setattr(base, "INIT_BLOCK_ROWS", 1000)
    large = base.trunc_normal_rows_(torch.full((5500, 8), float("nan")), std=0.02, a=-0.04, b=0.04)
    assert bool(torch.isfinite(large).all()) and float(large.abs().max()) <= 0.04
    # N(0, 0.02) cut at 2 std: std 0.88 x 0.02, mean 0, 9.2% of draws beyond 1.5 std
    assert abs(float(large.std()) - 0.88 * 0.02) < 0.0005 and abs(float(large.mean())) < 0.0005
    beyond = float((large.abs() > 0.03).float().mean())
    assert 0.08 < beyond < 0.105
