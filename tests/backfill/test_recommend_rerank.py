"""``backfill recommend --rerank``: each user's retrieval top K re-ordered by a ranking task's
probability, equal to the project's ranking head run in Python; a version without heads is
refused before any worker starts."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_recommend import (
    MAX_LEN,
    load_latest,
    read_histories,
    read_output,
    recommend_cli,
    train_on_file,
)

from model.hstu import HSTU, HSTUConfig
from model.jagged import JaggedBatch
from pipeline.backfill.recommend import rerank_index
from pipeline.cli import main
from pipeline.lake.synthetic import SyntheticConfig, generate_events
from pipeline.runtime.errors import ConfigError
from pipeline.state.vocab import ItemVocabulary
from pipeline.stream.publishing import PublishedModel

K = 6


@pytest.fixture(scope="module")
def ranked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A version trained with two ranking tasks on views and clicks, and a backfill of the
    same users."""
    root = tmp_path_factory.mktemp("rerank")
    log = generate_events(
        SyntheticConfig(num_users=40, num_items=120, num_clusters=8, events_per_user=30, seed=5)
    )
    order = np.argsort(log.timestamp, kind="stable")
    actions = np.where(np.random.default_rng(0).random(order.size) < 0.3, "click", "view")
    table = pa.table(
        {
            "user_id": log.user[order].tolist(),
            "item_id": log.item[order].tolist(),
            "action": actions.tolist(),
            "timestamp": log.timestamp[order].tolist(),
        }
    )
    pq.write_table(table, root / "stream.parquet")
    tasks = "model.ranking_tasks=seen:action:view,click;click:action:click"
    train_on_file(root, "--set", tasks)
    lake = root / "lake"
    lake.mkdir()
    pq.write_table(table, lake / "a.parquet")
    until = int(log.timestamp.max()) + 1
    histories = root / "histories"
    args = ["backfill", "sequences", "--input", f"{lake}/*.parquet", "--out", str(histories)]
    assert main([*args, "--shards", "2", "--until", str(until)]) == 0
    return {"registry": root / "registry", "histories": histories, "until": until}


def python_rerank(
    model: HSTU, vocab: ItemVocabulary, history: dict[str, Any], items: list, until: int, task: int
) -> list[float]:
    """The task's probability of each item after the user's last max_len - 1 known events."""
    rows = vocab.lookup(np.asarray(history["item"], dtype=np.int64))
    known = rows > 0
    context = slice(-(MAX_LEN - 1), None)
    hist_rows = rows[known][context]
    cand_rows = vocab.lookup(np.asarray(items, dtype=np.int64))
    n = hist_rows.size + cand_rows.size
    batch = JaggedBatch.from_numpy(
        np.concatenate([hist_rows, cand_rows]),
        np.concatenate(
            [np.asarray(history["timestamp"])[known][context], np.full(cand_rows.size, until)]
        ),
        np.array([0, n]),
        action_types=np.concatenate(
            [
                np.asarray(history["action"])[known][context],
                np.zeros(cand_rows.size, np.int64),
            ]
        ),
        num_targets=np.array([cand_rows.size]),
    )
    with torch.no_grad():
        logits = model.rank(batch, model.encode(batch))
    return torch.sigmoid(logits[:, task]).tolist()


@pytest.mark.parametrize(("task", "column"), [(None, 0), ("click", 1)])
def test_rerank_orders_the_top_k_by_the_task(ranked, tmp_path, task, column) -> None:
    plain, out = tmp_path / "plain", tmp_path / "reranked"
    assert recommend_cli(ranked, plain) == 0
    extra = ["--rerank"] + ([] if task is None else ["--rerank-task", task])
    assert recommend_cli(ranked, out, *extra) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rerank_task"] == ["seen", "click"][column]
    before, after = read_output(plain), read_output(out)
    model, vocab, _ = load_latest(ranked["registry"])
    histories = read_histories(ranked["histories"])
    reordered = 0
    for user, (items, scores, _) in after.items():
        assert sorted(items) == sorted(before[user][0]), user  # the same K, re-ordered
        if not items:
            continue
        want = python_rerank(model, vocab, histories[user], items, ranked["until"], column)
        np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-6, err_msg=str(user))
        assert scores == sorted(scores, reverse=True), user
        reordered += items != before[user][0]
    assert reordered > 0


def test_rerank_refuses_a_version_without_heads_or_an_unknown_task(ranked, tmp_path, capsys):
    retrieval_only = PublishedModel(
        3,
        HSTU(HSTUConfig(num_rows=4, embedding_dim=8, max_len=4)),
        ItemVocabulary(4),
        torch.zeros(0, dtype=torch.int64),
        np.zeros(1, np.int64),
    )
    with pytest.raises(ConfigError, match="--rerank: version 3 has no ranking heads"):
        rerank_index(retrieval_only, None)
    assert recommend_cli(ranked, tmp_path / "a", "--rerank", "--rerank-task", "like") == 2
    err = capsys.readouterr().err
    assert "--rerank-task: version" in err and "has no task 'like'; its tasks: seen, click" in err
    assert recommend_cli(ranked, tmp_path / "b", "--rerank-task", "click") == 2
    assert "add --rerank" in capsys.readouterr().err
    assert not list((tmp_path / "a").glob("part-*"))


def test_help_explains_the_rerank_flags(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["backfill", "recommend", "--help"])
    text = capsys.readouterr().out
    assert "--rerank " in text and "--rerank-task NAME" in text
