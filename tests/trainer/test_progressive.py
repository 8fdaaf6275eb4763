"""Progressive metrics: catalogue ranks and the windowed / cumulative means."""

from __future__ import annotations

import numpy as np
import torch

from model.metrics import target_ranks
from pipeline.stream.progressive import ProgressiveMetrics, ranks_over_catalogue


def test_ranks_over_live_rows_match_full_ranking_with_candidates():
    torch.manual_seed(0)
    table = torch.nn.functional.normalize(torch.randn(50, 8), dim=-1)
    live = torch.tensor([2, 3, 5, 8, 13, 21, 34, 40, 41, 49])
    queries = torch.nn.functional.normalize(torch.randn(7, 8), dim=-1)
    targets = live[torch.randint(0, live.numel(), (7,))]
    got = ranks_over_catalogue(queries, targets, table, live, chunk=3)
    expected = target_ranks(queries @ table.T, targets, candidate_rows=live)
    assert got.tolist() == expected.tolist()


def test_window_and_cumulative_means():
    metrics = ProgressiveMetrics(k=2, window=3)
    metrics.update(np.array([1, 5]))
    metrics.update(np.array([2, 1]))
    window = metrics.windowed()  # last three ranks: 5, 2, 1
    assert np.isclose(window["hr@2"], 2 / 3)
    assert np.isclose(window["ndcg@2"], (1 / np.log2(3) + 1) / 3)
    assert np.isclose(window["mrr"], (1 / 5 + 1 / 2 + 1) / 3)
    assert np.isclose(metrics.cumulative()["mrr"], (1 + 1 / 5 + 1 / 2 + 1) / 4)
    restored = ProgressiveMetrics.restore(metrics.snapshot())
    assert restored.windowed() == window and restored.count == 4
