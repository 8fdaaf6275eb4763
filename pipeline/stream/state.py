"""What the online trainer holds: model, optimizer, store, vocabulary, metrics and counters.

``TrainerState`` is plain data: the loop (``pipeline.stream.trainer``) changes it through the
step (``pipeline.stream.step``), the persistence code (``pipeline.stream.persistence``) saves
it and rebuilds it from a checkpoint, and a backfill bootstrap (``pipeline.backfill.bootstrap``)
folds a lake into one without a loop.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from model.base import SequentialEncoder
from model.dlrm import DLRM, DLRMConfig
from model.hstu import HSTU, HSTUConfig
from model.optim import RowSparseAdam
from model.ranking_metrics import ProgressiveMetrics as RankingMetrics
from model.sasrec import SASRec, SASRecConfig
from pipeline.state.store import SequenceStore
from pipeline.state.vocab import ItemVocabulary
from pipeline.stream.config import TrainerConfig
from pipeline.stream.progressive import ProgressiveMetrics
from pipeline.stream.ranking import new_metrics

Optimizer = torch.optim.Optimizer | RowSparseAdam
# ``model.kind``: an encoder (hstu, sasrec) or the ranking-only DLRM
Model = SequentialEncoder | DLRM

# Settings a checkpoint must agree with: they fix tensor shapes and stored data layout.
SHAPE_KEYS = ("model", "store.max_len", "vocab.capacity")


@dataclass
class TrainerState:
    """Everything a checkpoint saves of one trainer, and what its step changes.

    Attributes:
        model, optimizer: the ``model.kind`` model and its Adam (row-sparse with
            ``train.sparse_embeddings``, for the encoders).
        store: the users' histories.
        vocab: item keys to embedding rows.
        progressive: test-then-train metrics (HR@K, NDCG@K, MRR).
        generator: the sampled-softmax negatives' random generator.
        counters: events seen, valid, trained, targets, steps, ...
        rejected: events rejected, by reason (decoder and store).
        last_loss: the last step's loss (nan before the first).
        cutoff: event time (seconds) below which a backfill accounted for everything.
        last_published: the registry version published from this state's lineage.
        ranking: progressive ranking metrics per task (NE, AUC, log loss, accuracy), None
            without ranking tasks (``pipeline.stream.ranking``).
        step_seconds: wall seconds per part of the step (store + batch assembly, evaluation,
            forward + backward, optimizer; a group: its collectives), for ``bench/scale.py``;
            CPU clock, unsynchronised on CUDA.
    """

    model: Model
    optimizer: Optimizer
    store: SequenceStore
    vocab: ItemVocabulary
    progressive: ProgressiveMetrics
    generator: torch.Generator
    counters: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    last_loss: float = math.nan
    cutoff: int | None = None
    last_published: int | None = None
    step_seconds: Counter[str] = field(default_factory=Counter)
    ranking: RankingMetrics | None = None

    def lap(self, part: str, since: float) -> float:
        """Add the seconds since ``since`` (``time.perf_counter``) to ``part``; returns now."""
        now = time.perf_counter()
        self.step_seconds[part] += now - since
        return now


def new_state(cfg: TrainerConfig) -> TrainerState:
    """A fresh state: the model initialised from ``train.seed``, empty store and vocabulary."""
    torch.manual_seed(cfg.train.seed)
    model, optimizer = new_model(cfg)
    return TrainerState(
        model=model,
        optimizer=optimizer,
        store=SequenceStore(
            cfg.store.max_len, cfg.store.max_users, cfg.store.ttl_s, cfg.store.tolerance_s
        ),
        vocab=ItemVocabulary(cfg.vocab.capacity, cfg.vocab.admission_threshold, cfg.vocab.ttl_s),
        progressive=ProgressiveMetrics(cfg.eval.k, cfg.eval.window),
        generator=torch.Generator().manual_seed(cfg.train.seed),
        ranking=new_metrics(task_names(cfg)),
    )


def new_model(cfg: TrainerConfig) -> tuple[Model, Optimizer]:
    """The model on ``train.device`` (initialised from torch's global generator) and its
    optimizer. DLRM keeps its own init and trains with dense Adam (``RowSparseAdam`` is
    written for the encoders' item table)."""
    model = build_model(cfg)
    if cfg.model.init == "reference" and isinstance(model, SequentialEncoder):
        model.reference_init()
    model = model.to(torch.device(cfg.train.device))
    t = cfg.train
    betas = (0.9, t.adam_beta2)
    if t.sparse_embeddings and isinstance(model, SequentialEncoder):
        model.item_emb.sparse = True  # lookups give the table a sparse gradient
        return model, RowSparseAdam(model, t.lr, betas, t.weight_decay)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=t.lr, betas=betas, weight_decay=t.weight_decay
    )
    return model, optimizer


def build_model(cfg: TrainerConfig) -> Model:
    """The ``model.kind`` model described by ``cfg`` (item table = vocabulary capacity)."""
    m = cfg.model
    if m.kind == "dlrm":  # dim = embedding_dim, MLP = ranking_hidden; its other options default
        return DLRM(
            DLRMConfig(
                num_rows=cfg.vocab.capacity,
                dim=m.embedding_dim,
                hidden=tuple(m.ranking_hidden),
                ranking_tasks=tuple(m.ranking_tasks),
            )
        )
    common: dict[str, Any] = {
        "num_rows": cfg.vocab.capacity,
        "embedding_dim": m.embedding_dim,
        "num_layers": m.num_layers,
        "num_heads": m.num_heads,
        "max_len": cfg.store.max_len,
        "dropout": m.dropout,
        "input_dropout": m.input_dropout,
        "action_inputs": m.action_inputs,
        "ranking_tasks": tuple(m.ranking_tasks),
        "ranking_hidden": tuple(m.ranking_hidden),
        **({} if m.value_boundaries is None else {"value_boundaries": m.value_boundaries}),
    }
    if m.kind == "sasrec":  # its options HSTU lacks (style, ffn_dim) keep their defaults
        return SASRec(SASRecConfig(**common))
    # ModelSection fills these in for HSTU (its hstu_form)
    assert m.attention_alpha is not None and m.hstu_output is not None
    assert m.attention_bias_init is not None
    return HSTU(
        HSTUConfig(
            **common,
            attention_backend=m.attention_backend,
            layer_norm=m.layer_norm,
            alpha=m.attention_alpha,
            output=m.hstu_output,
            attention_bias_init=m.attention_bias_init,
        )
    )


def item_weight(model: Model) -> torch.Tensor:
    """The weight of ``model``'s item table, whose rows are the vocabulary's."""
    return model.items.weight if isinstance(model, DLRM) else model.item_emb.weight


def task_names(cfg: TrainerConfig) -> list[str]:
    """The names of the configured ranking tasks, in order."""
    return [task["name"] for task in cfg.model.ranking_tasks]


def shape_config(cfg: TrainerConfig) -> dict[str, Any]:
    """The settings of ``SHAPE_KEYS``, as a checkpoint records them."""
    dumped = cfg.model_dump(mode="json")
    out = {}
    for key in SHAPE_KEYS:
        value: Any = dumped
        for part in key.split("."):
            value = value[part]
        out[key] = value
    return out


def reset_item_rows(
    reinit: Callable[[torch.Tensor], None],
    optimizer: Optimizer,
    weight: torch.Tensor,
    rows: np.ndarray,
) -> None:
    """Re-initialise embedding ``rows`` and zero their optimizer state (Adam moments).

    A row handed to a new item must not inherit the old item's vector nor its momentum.
    Every per-parameter state tensor shaped like ``weight`` (exp_avg, exp_avg_sq,
    max_exp_avg_sq) gets those rows zeroed; scalars such as ``step`` are shared by all rows
    and stay.
    """
    if rows.size == 0:
        return
    index = torch.as_tensor(rows, dtype=torch.int64, device=weight.device)
    reinit(index)
    if isinstance(optimizer, RowSparseAdam):
        optimizer.mark_changed(index)
    state = optimizer.state.get(weight, {})
    with torch.no_grad():
        for value in state.values():
            if torch.is_tensor(value) and value.shape == weight.shape:
                value[index] = 0
