"""Multi-task ranking heads: tasks, their labels, a head MLP and the weighted BCE loss.

A **task** is a binary question about an impression, answered from its event: "was the
action one of these codes?" (``actions``, e.g. click or purchase) or "is the value at least
this?" (``min_value``, e.g. rating >= 4). Each task has a loss weight.

An event without a value (NaN) is a **negative** for a value task: it did not reach the
threshold (an impression that was only viewed has no rating, and it is not a liked item).
Ignoring it instead would train the task on rated events only and overstate every
probability at serving time, where most impressions are never rated.

>>> tasks = [RankingTask("click", actions=frozenset({2})), RankingTask("like", min_value=4.0)]
>>> labels_from_events(
...     torch.tensor([2, 1, 2]), torch.tensor([5.0, float("nan"), 3.0]), tasks
... ).tolist()
[[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class RankingTask:
    """One binary task: positive by action code set *or* value threshold (exactly one)."""

    name: str
    actions: frozenset[int] = frozenset()
    min_value: float | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        if bool(self.actions) == (self.min_value is not None):
            raise ValueError(
                f"task {self.name!r} needs exactly one positive rule: a set of action codes "
                f"(actions=...) or a value threshold (min_value=...)"
            )
        if self.min_value is not None and not math.isfinite(self.min_value):
            raise ValueError(f"task {self.name!r}: min_value must be finite, got {self.min_value}")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"task {self.name!r}: weight must be finite and >= 0")


def labels_from_events(
    actions: torch.Tensor, values: torch.Tensor | None, tasks: Sequence[RankingTask]
) -> torch.Tensor:
    """[N, num_tasks] float32 0/1 labels; a NaN value is a negative for a value task."""
    columns = []
    for task in tasks:
        if task.actions:
            codes = torch.tensor(sorted(task.actions), dtype=actions.dtype, device=actions.device)
            columns.append(torch.isin(actions, codes))
        else:
            if values is None:
                raise ValueError(
                    f"task {task.name!r} is defined by a value threshold but the events have "
                    "no values; pass the events' values (NaN where absent)"
                )
            columns.append(values >= task.min_value)  # NaN >= x is False: a negative
    return torch.stack(columns, dim=1).to(torch.float32)


@dataclass(frozen=True)
class RankingHeadConfig:
    state_dim: int
    item_dim: int
    num_tasks: int
    hidden: tuple[int, ...] = (64,)


class RankingHead(nn.Module):
    """MLP from ``[state, candidate item embedding]`` to one logit per task.

    The state is the encoder's output for the candidate (with HSTU's target tokens, the
    output at the candidate's position, which attended to the history and the candidate).
    The candidate's embedding is fed again because it is cheap and lets the same head work
    with a state that never saw the candidate (e.g. the last history position), where the
    head alone must relate user and item.
    """

    def __init__(self, cfg: RankingHeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        width = cfg.state_dim + cfg.item_dim
        for size in cfg.hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, cfg.num_tasks))
        self.mlp = nn.Sequential(*layers)

    def forward(self, state: torch.Tensor, item_embedding: torch.Tensor) -> torch.Tensor:
        """[C, state_dim], [C, item_dim] -> [C, num_tasks] logits."""
        return self.mlp(torch.cat([state, item_embedding], dim=1))


def ranking_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    task_weights: torch.Tensor | Sequence[float],
    example_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum over tasks of ``task_weight * weighted mean BCE`` (with logits).

    Per task: ``sum_n w_n * bce_nk / sum_n w_n`` with ``w_n`` the example weights (all 1 by
    default; weighted BCE, e.g. by watch time). 0 when there are no examples or all weights
    are 0.
    """
    if logits.shape != labels.shape or logits.dim() != 2:
        raise ValueError(
            f"logits and labels must both be [N, num_tasks], got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    weights_k = torch.as_tensor(task_weights, dtype=logits.dtype, device=logits.device)
    if weights_k.shape != (logits.shape[1],):
        raise ValueError(
            f"task_weights needs one weight per task ({logits.shape[1]}), got "
            f"{tuple(weights_k.shape)}"
        )
    bce = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")
    if example_weights is None:
        example_weights = torch.ones(logits.shape[0], dtype=logits.dtype, device=logits.device)
    if example_weights.shape != (logits.shape[0],):
        raise ValueError(
            f"example_weights must be [{logits.shape[0]}], got {tuple(example_weights.shape)}"
        )
    w = example_weights.to(logits.dtype).unsqueeze(1)
    per_task = (w * bce).sum(0) / w.sum().clamp(min=torch.finfo(logits.dtype).tiny)
    return (weights_k * per_task).sum()


def task_weights(tasks: Sequence[RankingTask]) -> list[float]:
    """The loss weight of each task, in order."""
    return [task.weight for task in tasks]


def task_to_dict(task: RankingTask) -> dict[str, Any]:
    """The JSON form of a task, as model configs and checkpoints store it."""
    return {
        "name": task.name,
        "actions": sorted(task.actions),
        "min_value": task.min_value,
        "weight": task.weight,
    }


def task_from_dict(doc: Mapping[str, Any]) -> RankingTask:
    """A task from its JSON form (``task_to_dict``); raises ValueError naming what is wrong."""
    unknown = set(doc) - {"name", "actions", "min_value", "weight"}
    if unknown or not isinstance(doc.get("name"), str):
        raise ValueError(
            f"a ranking task needs a string 'name' and only the keys name, actions, min_value, "
            f"weight; got {dict(doc)!r:.200}"
        )
    actions = doc.get("actions") or []
    if not all(isinstance(a, int) and not isinstance(a, bool) for a in actions):
        raise ValueError(f"task {doc['name']!r}: actions must be int codes, got {actions!r:.200}")
    min_value = doc.get("min_value")
    return RankingTask(
        doc["name"],
        actions=frozenset(actions),
        min_value=None if min_value is None else float(min_value),
        weight=float(doc.get("weight", 1.0)),
    )


def check_tasks(tasks: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], ...]:
    """Ranking tasks of a model config, validated and in their JSON form (names unique)."""
    parsed = [task_from_dict(doc) for doc in tasks]
    names = [task.name for task in parsed]
    if len(set(names)) != len(names):
        raise ValueError(f"ranking task names must be unique, got {names}")
    return tuple(task_to_dict(task) for task in parsed)
