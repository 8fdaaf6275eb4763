"""Offline training settings, kept free of torch so that the CLI parser builds quickly."""

from __future__ import annotations

from dataclasses import dataclass

SPLITS = ("holdout", "paper")
INITS = ("genrec", "reference")
LR_SCHEDULES = ("constant", "cosine")
WEIGHT_AVERAGES = ("none", "ema")
TRAIN_WINDOWS = ("last", "all")
# Architecture defaults of `genrec train-offline` and bench/offline_quality.py: the research
# code's layers (docs/quality.md). The model configs keep their own defaults, so that
# checkpoints written before these settings existed load as they were written.
HSTU_LAYER_NORM = "plain"
SASREC_STYLE = "reference"


@dataclass
class TrainConfig:
    """Optimisation and protocol settings shared by every model (equal budgets in comparisons).

    ``split``: "holdout" trains on each sequence minus its last 2 events and keeps the epoch
    with the best validation NDCG@10; "paper" (the HSTU paper's) trains on every prefix up
    to the second-to-last event (the validation event is a training target) and keeps the
    last epoch, so the test set never chooses anything.
    ``exclude_seen``: rank only items outside the user's context (the paper's protocol).
    ``per_position_negatives``: K negatives per target (the reference) instead of K shared.
    ``num_shared_negatives``: S more negatives shared by each step, on top of the K
    per-target ones (per-position negatives only); ``shared_negatives_from``: "uniform"
    or "in_batch" (the step's targets, logQ-corrected: mixed negative sampling).
    ``init``: "reference" re-initialises the model as Meta's research code does.
    ``lr_schedule``: "constant" (the reference) or "cosine" (decays to 0 over all steps);
    ``lr_warmup_steps``: W > 0 ramps the rate linearly over the first W optimizer steps
    (0: none, the reference).
    ``sparse_embeddings``: the item table gets sparse gradients and lazy Adam (the online
    trainer's default, ``model.optim.RowSparseAdam``) instead of AdamW on every row.
    ``weight_average``: "ema" evaluates and saves an exponential moving average of the
    weights, updated after every optimizer step with ``ema_decay`` (per step, so its horizon
    is about 1 / (1 - ema_decay) steps); "none" (the reference) uses the trained weights.
    ``train_windows``: "all" trains on every event of each training sequence, in windows of
    ``max_len`` events back from its end (every event but the first a target once, as in the
    online trainer); "last" only on each user's last ``max_len`` events (the reference).
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    adam_beta2: float = 0.98
    num_negatives: int = 128
    temperature: float = 0.05
    per_position_negatives: bool = True
    num_shared_negatives: int = 0
    shared_negatives_from: str = "uniform"
    init: str = "reference"
    lr_schedule: str = "constant"
    lr_warmup_steps: int = 0
    sparse_embeddings: bool = False
    weight_average: str = "none"
    ema_decay: float = 0.95
    train_windows: str = "all"
    split: str = "paper"
    exclude_seen: bool = False
    eval_batch_size: int = 256
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"TrainConfig.split must be one of {SPLITS}, got {self.split!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"TrainConfig.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}"
            )
        if self.num_shared_negatives < 0 or (
            self.num_shared_negatives and not self.per_position_negatives
        ):
            raise ValueError(
                "TrainConfig.num_shared_negatives must be >= 0 and needs per_position_negatives"
            )
        if self.shared_negatives_from not in ("uniform", "in_batch"):
            raise ValueError(
                "TrainConfig.shared_negatives_from must be 'uniform' or 'in_batch', got "
                f"{self.shared_negatives_from!r}"
            )
        if self.lr_warmup_steps < 0:
            raise ValueError(
                f"TrainConfig.lr_warmup_steps must be >= 0, got {self.lr_warmup_steps}"
            )
        if self.weight_average not in WEIGHT_AVERAGES:
            raise ValueError(
                f"TrainConfig.weight_average must be one of {WEIGHT_AVERAGES}, got "
                f"{self.weight_average!r}"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"TrainConfig.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.train_windows not in TRAIN_WINDOWS:
            raise ValueError(
                f"TrainConfig.train_windows must be one of {TRAIN_WINDOWS}, got "
                f"{self.train_windows!r}"
            )
        if self.init not in INITS:
            raise ValueError(f"TrainConfig.init must be one of {INITS}, got {self.init!r}")
