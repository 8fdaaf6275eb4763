"""The analytic training FLOPs (pipeline/offline/scaling/flops.py) against torch's counter."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from model.jagged import JaggedBatch
from model.serialize import build_model
from pipeline.offline.config import TrainConfig
from pipeline.offline.scaling.flops import TokenCounts, training_flops
from pipeline.offline.training import retrieval_loss

NUM_ROWS = 50


def counted_training_flops(
    kind: str, config: dict[str, Any], lengths: list[int], cfg: TrainConfig
) -> int:
    """FLOPs of one forward and backward step as FlopCounterMode counts them."""
    torch.manual_seed(0)
    model = build_model(kind, {**config, "num_rows": NUM_ROWS})
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    total = int(offsets[-1])
    batch = JaggedBatch.from_numpy(
        np.random.default_rng(0).integers(1, NUM_ROWS, total),
        np.arange(total, dtype=np.int64) * 60,
        offsets,
    )
    with FlopCounterMode(display=False) as counter:
        loss = retrieval_loss(
            model, batch, model.encode(batch), cfg, torch.Generator().manual_seed(0)
        )
        loss.backward()
    return counter.get_total_flops()


# equal lengths in a batch: the counter sees no padding, which the formulas leave out
CASES = [
    ("hstu", {"embedding_dim": 16, "num_layers": 1, "max_len": 8}, [8, 8, 8]),
    ("hstu", {"embedding_dim": 32, "num_layers": 3, "num_heads": 2, "max_len": 12}, [12] * 2),
    ("hstu", {"embedding_dim": 16, "num_layers": 2, "dqk": 4, "dv": 24, "max_len": 6}, [5] * 4),
    ("sasrec", {"embedding_dim": 16, "num_layers": 1, "max_len": 8, "style": "reference"}, [8]),
    (
        "sasrec",
        {"embedding_dim": 32, "num_layers": 2, "num_heads": 4, "ffn_dim": 48, "max_len": 10},
        [10, 10],
    ),
]


@pytest.mark.parametrize(("kind", "config", "lengths"), CASES)
@pytest.mark.parametrize("per_position", [True, False])
def test_training_flops_equal_the_counters(
    kind: str, config: dict[str, Any], lengths: list[int], per_position: bool
) -> None:
    cfg = TrainConfig(num_negatives=7, per_position_negatives=per_position)
    expected = counted_training_flops(kind, config, lengths, cfg)
    counts = TokenCounts.of_lengths(np.array(lengths))
    assert training_flops(kind, config, counts, cfg.num_negatives) == expected


def test_token_counts_of_lengths() -> None:
    counts = TokenCounts.of_lengths(np.array([3, 0, 2]))
    assert counts == TokenCounts(tokens=5, square=13, targets=3)
    assert counts.times(2) == TokenCounts(tokens=10, square=26, targets=6)
