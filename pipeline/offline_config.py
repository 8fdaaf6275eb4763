"""Offline training settings, kept free of torch so that the CLI parser builds quickly."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    """Optimisation settings shared by every model (equal budgets in comparisons)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    num_negatives: int = 128
    temperature: float = 0.05
    eval_batch_size: int = 256
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
