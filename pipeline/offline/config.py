"""Offline training settings, kept free of torch so that the CLI parser builds quickly.

A preset (``genrec train-offline --preset NAME``) is a YAML file ``presets/NAME.yaml`` beside
this module: ``TrainConfig`` fields and the two architecture settings that have no flag,
``hstu_layer_norm`` and ``sasrec_style``. The presets reproduce earlier rows of
docs/quality.md; settings that only those rows use have no flag of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.runtime.errors import ConfigError

Split = Literal["holdout", "paper"]
Init = Literal["genrec", "reference"]
TrainWindows = Literal["last", "all"]
Task = Literal["retrieval", "ranking"]
HSTULayerNorm = Literal["affine", "plain"]  # model.hstu.LAYER_NORMS (a test keeps them equal)
SASRecStyle = Literal["genrec", "reference"]  # model.sasrec.SASREC_STYLES (a test too)
SPLITS: tuple[str, ...] = get_args(Split)
INITS: tuple[str, ...] = get_args(Init)
TRAIN_WINDOWS: tuple[str, ...] = get_args(TrainWindows)
TASKS: tuple[str, ...] = get_args(Task)
# Architecture defaults of `genrec train-offline` and bench/offline_quality.py: the research
# code's layers (docs/quality.md). The model configs keep their own defaults, so that
# checkpoints written before these settings existed load as they were written.
HSTU_LAYER_NORM = "plain"
SASREC_STYLE = "reference"
PRESET_DIR = Path(__file__).with_name("presets")


@dataclass
class TrainConfig:
    """Optimisation and protocol settings shared by every model (equal budgets in comparisons).

    ``split``: "holdout" trains on each sequence minus its last 2 events and keeps the epoch
    with the best validation NDCG@10; "paper" (the HSTU paper's) trains on every prefix up
    to the second-to-last event (the validation event is a training target) and keeps the
    last epoch, so the test set never chooses anything.
    ``exclude_seen``: rank only items outside the user's context (the paper's protocol).
    ``per_position_negatives``: K negatives per target (the reference) instead of K shared.
    ``init``: "reference" re-initialises the model as Meta's research code does.
    ``sparse_embeddings``: the item table gets sparse gradients and lazy Adam (the online
    trainer's default, ``model.optim.RowSparseAdam``) instead of AdamW on every row.
    ``train_fraction``: train on the windows of a seeded random share of the users only (a
    data budget, ``genrec scaling``); every user is still validated and tested.
    ``train_windows``: "all" trains on every event of each training sequence, in windows of
    ``max_len`` events back from its end (every event but the first a target once, as in the
    online trainer); "last" only on each user's last ``max_len`` events (the reference).
    Each user's last window trains in uniformly random batches (the reference's); the
    earlier windows that "all" adds train length-grouped, in batches of their own.
    ``positives``: which events are next-item targets (``pipeline.events.positives``: "all",
    "value>=4", "action:click,purchase"); the others are context only, and each user's test
    (and validation) target is a positive event.
    The learning rate is constant (the reference's: no schedule, no warm-up).
    ``tail_average``: with the paper's split, the model kept is the mean of the weights at
    the ends of the last ``tail_average`` share of the epochs (``averaged_epochs``: 10 of
    30; tail averaging: at a constant rate the last weights wander around a minimum that
    their mean lies closer to; docs/quality.md, "Tail averaging"); 0: the last epoch's
    weights. The holdout split keeps its best validation epoch and averages nothing.

    ``task``: "retrieval" (next-item, the fields above) or "ranking" (``pipeline.offline.ranking``:
    a time-ordered split at the ``test_fraction`` quantile of the event times; training
    windows whose last ``candidates_per_window`` events are candidates labelled by
    ``ranking_tasks``, specs as ``pipeline.events.ranking_tasks`` parses them, plus the causal
    retrieval loss on the history rows weighted ``aux_retrieval_weight``); the latest
    ``validation_fraction`` of the training events validates each epoch and the epoch with the
    best validation AUC is tested, calibrated on that slice; training stops after ``patience``
    epochs without a better one (``validation_fraction`` 0: the last of ``epochs`` epochs is
    tested, uncalibrated).
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    adam_beta2: float = 0.98
    tail_average: float = 1 / 3
    num_negatives: int = 128
    temperature: float = 0.05
    per_position_negatives: bool = True
    init: Init = "reference"
    sparse_embeddings: bool = False
    train_windows: TrainWindows = "all"
    train_fraction: float = 1.0
    split: Split = "paper"
    exclude_seen: bool = False
    positives: str = "all"
    task: Task = "retrieval"
    ranking_tasks: str = ""
    test_fraction: float = 0.2
    candidates_per_window: int = 16
    aux_retrieval_weight: float = 0.2
    validation_fraction: float = 0.1
    patience: int = 3
    eval_batch_size: int = 256
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"TrainConfig.split must be one of {SPLITS}, got {self.split!r}")
        if self.train_windows not in TRAIN_WINDOWS:
            raise ValueError(
                f"TrainConfig.train_windows must be one of {TRAIN_WINDOWS}, got "
                f"{self.train_windows!r}"
            )
        if not 0.0 < self.train_fraction <= 1.0:
            raise ConfigError(f"--train-fraction must be in (0, 1], got {self.train_fraction}")
        if not 0.0 <= self.tail_average <= 1.0:
            raise ConfigError(
                f"--tail-average must be in [0, 1] (0: the last epoch's weights), got "
                f"{self.tail_average}"
            )
        if self.init not in INITS:
            raise ValueError(f"TrainConfig.init must be one of {INITS}, got {self.init!r}")
        if self.task not in TASKS:
            raise ConfigError(f"--task must be one of {TASKS}, got {self.task!r}")
        if self.task == "ranking":
            self._check_ranking()
        elif self.ranking_tasks:
            raise ConfigError("--ranking-tasks: ranking tasks need --task ranking")
        if self.positives != "all":
            # here, not at the top: the parser (pyarrow, numpy) is not needed for --help
            from pipeline.events.positives import parse_positives

            try:
                parse_positives(self.positives, setting="--positives")
            except ValueError as err:
                raise ConfigError(str(err)) from None

    def averaged_epochs(self) -> int:
        """How many last epochs ``tail_average`` averages: at least the last one.

        >>> TrainConfig().averaged_epochs(), TrainConfig(epochs=3).averaged_epochs()
        (10, 1)
        """
        return max(1, round(self.tail_average * self.epochs))

    def _check_ranking(self) -> None:
        from pipeline.events.ranking_tasks import parse_ranking_tasks  # torch: not for --help

        if not self.ranking_tasks:
            raise ConfigError(
                "--ranking-tasks: --task ranking needs at least one task, e.g. "
                "--ranking-tasks like:value>=4 (docs/data.md, 'Ranking tasks')"
            )
        try:
            parse_ranking_tasks(self.ranking_tasks)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"--test-fraction must be in (0, 1), got {self.test_fraction}")
        if self.candidates_per_window < 1:
            raise ConfigError(
                f"--candidates-per-window must be >= 1, got {self.candidates_per_window}"
            )
        if not self.aux_retrieval_weight >= 0.0:
            raise ConfigError(
                f"--aux-retrieval-weight must be >= 0, got {self.aux_retrieval_weight}"
            )
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError(
                f"--validation-fraction must be in [0, 1), got {self.validation_fraction}"
            )
        if self.patience < 1:
            raise ConfigError(f"--patience must be >= 1, got {self.patience}")

    def ranking_task_list(self) -> tuple[dict[str, Any], ...]:
        """The ranking tasks in their JSON form (``model.ranking_heads``)."""
        from pipeline.events.ranking_tasks import parse_ranking_tasks

        return parse_ranking_tasks(self.ranking_tasks)


class Preset(BaseModel):
    """The settings of a preset file; a field left out keeps the default. The ``TrainConfig``
    fields are all but ``seed``, ``device`` and ``progress``, which say how a run runs, not
    what it trains."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    adam_beta2: float | None = None
    tail_average: float | None = None
    num_negatives: int | None = None
    temperature: float | None = None
    per_position_negatives: bool | None = None
    init: Init | None = None
    sparse_embeddings: bool | None = None
    train_windows: TrainWindows | None = None
    train_fraction: float | None = None
    split: Split | None = None
    exclude_seen: bool | None = None
    positives: str | None = None
    task: Task | None = None
    ranking_tasks: str | None = None
    test_fraction: float | None = None
    candidates_per_window: int | None = None
    aux_retrieval_weight: float | None = None
    validation_fraction: float | None = None
    patience: int | None = None
    eval_batch_size: int | None = None
    hstu_layer_norm: HSTULayerNorm = HSTU_LAYER_NORM
    sasrec_style: SASRecStyle = SASREC_STYLE

    def train_settings(self) -> dict[str, Any]:
        """The ``TrainConfig`` fields this preset sets."""
        return self.model_dump(exclude_none=True, exclude={"hstu_layer_norm", "sasrec_style"})


def preset_names() -> list[str]:
    """The presets shipped with genrec: the names of ``PRESET_DIR``'s YAML files."""
    return sorted(path.stem for path in PRESET_DIR.glob("*.yaml"))


def load_preset(name: str | None) -> Preset:
    """The preset ``name`` (None: no preset, every setting at its default).

    Raises ``ConfigError``: an unknown name (the line lists the known ones), or one line per
    unknown key or bad value, each naming the file and the key.
    """
    if name is None:
        return Preset()
    if name not in preset_names():
        known = ", ".join(preset_names())
        raise ConfigError(f"--preset: unknown preset {name!r} (known: {known})")
    import yaml  # only when a preset is asked for: `genrec --help` does not need it

    path = PRESET_DIR / f"{name}.yaml"
    with path.open() as f:
        values = yaml.safe_load(f)
    try:
        return Preset.model_validate(values if values is not None else {})
    except ValidationError as err:
        raise ConfigError(
            [
                ": ".join([str(path), *(str(p) for p in e["loc"]), _problem(e["type"], e["msg"])])
                for e in err.errors(include_url=False)
            ]
        ) from None


def _problem(kind: str, message: str) -> str:
    if kind == "extra_forbidden":
        return "unknown key (a preset sets TrainConfig fields, hstu_layer_norm, sasrec_style)"
    return message
