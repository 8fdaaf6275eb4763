"""HSTU and SASRec learn the synthetic generator's sequential patterns in a short CPU run."""

from __future__ import annotations

import pytest

from pipeline.lake.synthetic import SyntheticConfig
from pipeline.offline.splits import leave_one_out
from pipeline.offline.training import TrainConfig, load_sequences, train_offline

SMALL_MODEL = dict(embedding_dim=32, num_layers=1, max_len=50, dropout=0.1, input_dropout=0.1)
SHORT_RUN = TrainConfig(
    epochs=4, batch_size=32, lr=3e-3, num_negatives=64, split="holdout", progress=False
)


@pytest.fixture(scope="module")
def splits():
    cfg = SyntheticConfig(num_users=250, num_items=200, events_per_user=40, num_clusters=10)
    ds, _ = load_sequences(None, synthetic=cfg)
    return leave_one_out(ds)


@pytest.fixture(scope="module")
def popular_ndcg(splits) -> float:
    return train_offline("popular", {}, splits, SHORT_RUN).test["ndcg@10"]


@pytest.mark.parametrize("kind", ["hstu", "sasrec"])
def test_model_beats_most_popular_by_far(kind: str, splits, popular_ndcg: float) -> None:
    result = train_offline(kind, SMALL_MODEL, splits, SHORT_RUN)
    assert result.test["count"] == 250
    assert result.test["ndcg@10"] >= 2 * popular_ndcg, (result.test, popular_ndcg)
    # learning, not luck: validation improves from the first to the best epoch
    first, best = (
        result.valid_history[0]["ndcg@10"],
        max(h["ndcg@10"] for h in result.valid_history),
    )
    assert best > first
