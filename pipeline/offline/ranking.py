"""Offline generative ranking: a time-ordered split, candidate windows, per-task metrics.

**Split** (``pipeline.offline.splits.time_split``): one global cutoff time at the
``1 - test_fraction`` quantile of the event times. Events before it train; for each user,
the events from it on are test candidates, scored with the user's last ``max_len - 1``
pre-cutoff events as history (users without a pre-cutoff event are skipped and counted).

**Training windows**: each user's pre-cutoff sequence is cut, back from its end, into blocks
of up to ``candidates_per_window`` events (every event but the user's first is a candidate
once an epoch); a window is a block's ``max_len - 1`` preceding events (history) followed
by the block (candidates, ``JaggedBatch.num_targets``). A candidate attends to the history and
itself only and its own action and value are never inputs, so it is labelled by its event
(``ranking_tasks``) without leaking the label. HSTU and SASRec add the causal retrieval loss
(sampled softmax, as retrieval training) over the history rows, weighted
``aux_retrieval_weight`` (0.2 as Meta's dlrm_v3); with a ``--positives`` rule only positive
history events are its targets. The DLRM baseline has no such loss.

**Init**: the models' own (``TrainConfig.init`` is retrieval's setting; see ``train_ranking``).

**Epoch selection and calibration**: the latest ``validation_fraction`` of the training
events (a second time split of the pre-cutoff events, ``validation_split``) is held out of
training and scored after each epoch; the epoch with the best validation AUC (mean over
tasks) is tested, and training stops after ``patience`` epochs without a better one. Its
logits are then calibrated on the validation slice (``fit_calibration``: a scale and shift
per task, Platt scaling), which leaves AUC as it is and fixes the probabilities' confidence:
on ml-latest-small every model's test NE after 30 fixed epochs was above 1 (over-confident,
worse than the base rate), and selecting the epoch by validation NE instead picked the first,
barely trained one. ``validation_fraction`` 0 trains all ``epochs`` on every pre-cutoff event
and tests the last one, uncalibrated.

**Evaluation**: per task AUC, NE, log loss, accuracy, base rate and count over every test
candidate, with 95% user-bootstrap intervals (``*_ci95``: [low, high]).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model.base import SequentialEncoder
from model.dlrm import DLRM
from model.hstu import HSTUConfig, hstu_form
from model.jagged import JaggedBatch
from model.ranking_heads import (
    RankingTask,
    labels_from_events,
    ranking_loss,
    task_from_dict,
    task_weights,
)
from model.ranking_metrics import task_metrics, user_bootstrap_intervals
from model.serialize import build_model, save_checkpoint
from pipeline.events.positives import PositiveRule, parse_positives
from pipeline.lake.datasets import SequenceDataset
from pipeline.offline.config import TrainConfig
from pipeline.offline.splits import TimeSplit, validation_split
from pipeline.offline.training import (
    CHECKPOINT_DIR,
    length_grouped_batches,
    make_optimizer,
    retrieval_loss,
    train_epoch,
)

log = logging.getLogger(__name__)

RANKING_MODELS = ("hstu", "sasrec", "dlrm")


@dataclass(frozen=True)
class RankingWindows:
    """Sequences of ranking batches as flat event ranges of a dataset: window w is the
    history ``[hist_lo[w], hist_hi[w])`` of user ``users[w]`` followed by the candidates
    ``[cand_lo[w], cand_hi[w])``."""

    users: np.ndarray
    hist_lo: np.ndarray
    hist_hi: np.ndarray
    cand_lo: np.ndarray
    cand_hi: np.ndarray

    def __len__(self) -> int:
        return int(self.users.size)

    def lengths(self) -> np.ndarray:
        return (self.hist_hi - self.hist_lo) + (self.cand_hi - self.cand_lo)

    def take(self, rows: np.ndarray) -> RankingWindows:
        return RankingWindows(
            self.users[rows], self.hist_lo[rows], self.hist_hi[rows], self.cand_lo[rows],
            self.cand_hi[rows],
        )  # fmt: skip


def _blocks(
    users: np.ndarray, lo: np.ndarray, hi: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[lo[u], hi[u]) of each user cut into blocks of up to ``size`` back from hi: the
    blocks' users, starts and ends (a user with lo >= hi has none)."""
    counts = np.maximum(-(-(hi - lo) // size), 0)
    block_users = np.repeat(users, counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    ends = np.repeat(hi, counts) - (np.arange(block_users.size) - first) * size
    starts = np.maximum(ends - size, np.repeat(lo, counts))
    return block_users, starts, ends


def training_windows(split: TimeSplit, max_len: int, per_window: int) -> RankingWindows:
    """The training windows of ``split`` (module docstring)."""
    users = np.arange(split.ds.num_users)
    first = split.ds.offsets[:-1]
    block_users, cand_lo, cand_hi = _blocks(users, first + 1, first + split.before, per_window)
    hist_lo = np.maximum(first[block_users], cand_lo - (max_len - 1))
    return RankingWindows(block_users, hist_lo, cand_lo, cand_lo, cand_hi)


def evaluation_windows(split: TimeSplit, max_len: int, per_window: int) -> RankingWindows:
    """Each user's post-cutoff events (up to ``split.end``) in windows of up to
    ``per_window`` candidates, all after the user's last ``max_len - 1`` pre-cutoff events;
    users without one are left out."""
    users = np.flatnonzero(split.before > 0)
    cut = split.ds.offsets[users] + split.before[users]
    end = split.ds.offsets[users] + split.ends()[users]
    block_users, cand_lo, cand_hi = _blocks(users, cut, end, per_window)
    hist_hi = split.ds.offsets[block_users] + split.before[block_users]
    hist_lo = np.maximum(split.ds.offsets[block_users], hist_hi - (max_len - 1))
    return RankingWindows(block_users, hist_lo, hist_hi, cand_lo, cand_hi)


def ranking_batch(
    ds: SequenceDataset,
    windows: RankingWindows,
    tasks: tuple[RankingTask, ...],
    positives: PositiveRule | None = None,
) -> tuple[JaggedBatch, torch.Tensor]:
    """The windows as one batch (``num_targets`` = their candidates) and the candidates'
    [C, num_tasks] labels. History rows are retrieval targets (all but each window's first;
    with ``positives``, the positive ones)."""
    hist = windows.hist_hi - windows.hist_lo
    lengths = windows.lengths()
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    pos = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
    in_hist = pos < np.repeat(hist, lengths)
    idx = np.where(
        in_hist,
        np.repeat(windows.hist_lo, lengths) + pos,
        np.repeat(windows.cand_lo - hist, lengths) + pos,
    )
    is_target = None
    if positives is not None and not positives.is_all:
        is_target = positives.mask(ds.actions[idx], ds.values[idx]) & in_hist & (pos > 0)
    batch = JaggedBatch.from_numpy(
        ds.item_ids[idx],
        ds.timestamps[idx],
        offsets,
        action_types=ds.actions[idx],
        is_target=is_target,
        values=ds.values[idx],
        num_targets=windows.cand_hi - windows.cand_lo,
    )
    cand = idx[~in_hist]
    labels = labels_from_events(
        torch.from_numpy(ds.actions[cand]), torch.from_numpy(ds.values[cand]), tasks
    )
    return batch, labels


def rank_logits(
    model: nn.Module, batch: JaggedBatch, users: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[C, num_tasks] logits of the batch's candidates and, for an encoder, its states."""
    if isinstance(model, DLRM):
        return model(batch, torch.from_numpy(users).to(batch.device)), None
    if not isinstance(model, SequentialEncoder):
        raise TypeError(f"cannot rank with {type(model).__name__}")
    states = model.encode(batch)
    return model.rank(batch, states), states


@dataclass
class RankingResult:
    """What ``train_ranking`` measured: the tested epoch's per-task test metrics."""

    model: str
    epoch: int
    test: dict[str, Any]
    split: dict[str, Any]
    seconds: float = 0.0
    checkpoint: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Flat JSON-ready dict: model, epoch, task, the split, seconds, test metrics."""
        return {
            "model": self.model,
            "epoch": self.epoch,
            "task": "ranking",
            **self.split,
            "seconds": round(self.seconds, 3),
            **self.test,
            "checkpoint": self.checkpoint,
        }


@torch.no_grad()
def score_windows(
    model: nn.Module,
    ds: SequenceDataset,
    windows: RankingWindows,
    tasks: tuple[RankingTask, ...],
    batch_size: int = 256,
    device: str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """[C, num_tasks] logits and labels of every candidate of ``windows``, and [C] users."""
    was_training = model.training
    model.eval()
    logits, labels, users = [], [], []
    for lo in range(0, len(windows), batch_size):
        part = windows.take(np.arange(lo, min(lo + batch_size, len(windows))))
        batch, y = ranking_batch(ds, part, tasks)
        logits.append(rank_logits(model, batch.to(device), part.users)[0].cpu())
        labels.append(y)
        users.append(np.repeat(part.users, part.cand_hi - part.cand_lo))
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels), np.concatenate(users)


def fit_calibration(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[num_tasks, 2] (scale, shift) per task minimising the log loss of
    ``sigmoid(scale * logit + shift)`` (Platt scaling): a monotone map, so AUC is unchanged
    and only the probabilities' confidence and base rate move.

    >>> logits = torch.tensor([[-4.0], [-4.0], [4.0], [4.0]])
    >>> labels = torch.tensor([[0.0], [1.0], [1.0], [1.0]])
    >>> scale, shift = fit_calibration(logits, labels)[0].tolist()
    >>> round(torch.sigmoid(torch.tensor(-4 * scale + shift)).item(), 2)
    0.5
    """
    params = torch.tensor([[1.0, 0.0]] * logits.shape[1], requires_grad=True)
    optimizer = torch.optim.LBFGS([params], max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        calibrated = logits * params[:, 0] + params[:, 1]
        loss = nn.functional.binary_cross_entropy_with_logits(calibrated, labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return params.detach()


def evaluate_ranking(
    model: nn.Module,
    ds: SequenceDataset,
    windows: RankingWindows,
    tasks: tuple[RankingTask, ...],
    batch_size: int = 256,
    device: str = "cpu",
    calibration: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Per-task metrics with intervals over every candidate of ``windows``
    (``scored_metrics``), the logits mapped by ``calibration`` (``fit_calibration``) when
    given."""
    logits, labels, users = score_windows(model, ds, windows, tasks, batch_size, device)
    if calibration is not None:
        logits = logits * calibration[:, 0] + calibration[:, 1]
    return scored_metrics(logits, labels, users, tasks)


def scored_metrics(
    logits: torch.Tensor,
    labels: torch.Tensor,
    users: np.ndarray,
    tasks: tuple[RankingTask, ...],
    intervals: bool = True,
) -> dict[str, Any]:
    """``{task}/{metric}`` of ``score_windows``' output, with ``{task}/{metric}_ci95`` the
    95% user-bootstrap interval [low, high] when ``intervals``."""
    names = [task.name for task in tasks]
    p, y = torch.sigmoid(logits).numpy(), labels.numpy()
    out: dict[str, Any] = task_metrics(y, p, names)
    for k, name in enumerate(names if intervals else ()):
        for metric, (low, high) in user_bootstrap_intervals(y[:, k], p[:, k], users).items():
            out[f"{name}/{metric}_ci95"] = [round(low, 6), round(high, 6)]
    return out


def build_ranking_model(
    kind: str, model_config: dict[str, Any], num_rows: int, tasks: tuple[dict[str, Any], ...]
) -> nn.Module:
    """A fresh ``kind`` ("hstu", "sasrec", "dlrm") with ranking ``tasks``."""
    if kind not in RANKING_MODELS:
        raise ValueError(
            f"--model {kind} cannot rank; --task ranking trains one of {', '.join(RANKING_MODELS)}"
        )
    # HSTU ranks in its ranking form unless the config says otherwise (model.hstu.hstu_form)
    form = {}
    if kind == "hstu":  # its sizes, with HSTUConfig's defaults for those not given
        sizes = HSTUConfig(**{**model_config, "num_rows": num_rows})
        form = hstu_form(True, sizes.embedding_dim, sizes.num_heads, sizes.dqk)
    return build_model(kind, {**form, **model_config, "num_rows": num_rows, "ranking_tasks": tasks})


def train_ranking(
    kind: str,
    model_config: dict[str, Any],
    split: TimeSplit,
    cfg: TrainConfig,
    max_len: int,
    out_dir: str | Path | None = None,
    meta: dict[str, Any] | None = None,
) -> RankingResult:
    """Train ``kind`` on ``split``'s windows, test the epoch of the best validation NE (the
    last of ``cfg.epochs`` without validation; module docstring).

    Args:
        model_config: the model config's fields but ``num_rows`` and ``ranking_tasks``
            (from the data and ``cfg.ranking_tasks``).
        max_len: the windows' span (history + one for the candidates); an encoder's own
            ``max_len`` wins over it.
        out_dir: where the last epoch's checkpoint goes (``out_dir/checkpoint``); None: nowhere.
    """
    started = time.perf_counter()
    ds = split.ds
    task_docs = cfg.ranking_task_list()
    tasks = tuple(task_from_dict(doc) for doc in task_docs)
    torch.manual_seed(cfg.seed)
    model = build_ranking_model(kind, model_config, ds.num_items + 1, task_docs)
    if isinstance(model, SequentialEncoder):
        # The models' own init, whatever cfg.init says: the research code's (retrieval's
        # default) starts HSTU's uvqk at N(0, 0.02), where the ranking loss alone barely
        # moves it (a history-dependent toy label stayed at AUC 0.50; 0.70 with this init).
        max_len = model.max_len
    model = model.to(cfg.device)
    optimizer = make_optimizer(model, cfg)
    rng = np.random.default_rng(cfg.seed)
    negatives_gen = torch.Generator().manual_seed(cfg.seed)
    positives = parse_positives(cfg.positives)
    fit = validation_split(split, cfg.validation_fraction)
    windows = training_windows(fit or split, max_len, cfg.candidates_per_window)
    weights = task_weights(tasks)
    if len(windows) == 0:
        raise ValueError(
            "no user has 2 events before the time cutoff; lower --test-fraction (or "
            "--validation-fraction) or use more data"
        )
    held_out = None if fit is None else evaluation_windows(fit, max_len, cfg.candidates_per_window)
    if held_out is not None and len(held_out) == 0:
        raise ValueError(
            "the validation slice holds no candidate with a history; raise "
            "--validation-fraction, or 0 to train without validation"
        )

    def loss_of(rows: np.ndarray) -> torch.Tensor:
        part = windows.take(rows)
        batch, labels = ranking_batch(ds, part, tasks, positives)
        batch = batch.to(cfg.device)
        logits, states = rank_logits(model, batch, part.users)
        loss = ranking_loss(logits, labels.to(cfg.device), weights)
        # the auxiliary next-item loss needs an encoder's states (DLRM has none)
        weight = cfg.aux_retrieval_weight
        if isinstance(model, SequentialEncoder) and states is not None and weight > 0:
            aux = retrieval_loss(model, batch, states, cfg, negatives_gen)
            if aux is not None:
                loss = loss + weight * aux
        return loss

    history: list[dict[str, float]] = []
    best_epoch, best_auc, best_state, best_scores = cfg.epochs, -1.0, None, None
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        train_loss = train_epoch(
            optimizer,
            length_grouped_batches(windows.lengths(), cfg.batch_size, rng),
            loss_of,
            f"{type(model).__name__} ranking epoch {epoch}/{cfg.epochs}",
            cfg.progress,
        )
        record = {"epoch": epoch, "train_loss": train_loss}
        if held_out is not None:
            scores = score_windows(model, ds, held_out, tasks, cfg.eval_batch_size, cfg.device)
            val = scored_metrics(*scores, tasks, intervals=False)
            record["validation_auc"] = float(np.mean([val[f"{t.name}/auc"] for t in tasks]))
            record["validation_ne"] = float(np.mean([val[f"{t.name}/ne"] for t in tasks]))
            if record["validation_auc"] > best_auc:
                best_epoch, best_auc, best_scores = epoch, record["validation_auc"], scores
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        history.append(record)
        log.info("epoch %d/%d %s", epoch, cfg.epochs, record)
        if held_out is not None and epoch - best_epoch >= cfg.patience:
            log.info("no better validation AUC for %d epochs: stopping", cfg.patience)
            break
    calibration = None
    if best_state is not None and best_scores is not None:
        model.load_state_dict(best_state)
        calibration = fit_calibration(best_scores[0], best_scores[1])  # that epoch's scores
    test = evaluation_windows(split, max_len, cfg.candidates_per_window)
    metrics = evaluate_ranking(
        model, ds, test, tasks, cfg.eval_batch_size, cfg.device, calibration=calibration
    )
    if calibration is not None:
        metrics["calibration"] = {t.name: calibration[k].tolist() for k, t in enumerate(tasks)}
    split_info = {
        "split": "time",
        "test_fraction": cfg.test_fraction,
        "cutoff": split.cutoff,
        "train_events": int(split.before.sum()),
        "test_users": int(np.unique(test.users).size),
        "users_without_history": int(((split.before == 0) & (ds.lengths() > 0)).sum()),
    }
    checkpoint = None
    if out_dir is not None:
        checkpoint = Path(out_dir) / CHECKPOINT_DIR
        meta = {**(meta or {}), "train_config": asdict(cfg), "epoch": best_epoch, **split_info}
        meta["calibration"] = metrics.get("calibration")
        save_checkpoint(checkpoint, model, meta)
    log.info("%s ranking test %s", kind, {k: v for k, v in metrics.items() if "/auc" in k})
    return RankingResult(
        model=kind,
        epoch=best_epoch,
        test=metrics,
        split=split_info,
        seconds=time.perf_counter() - started,
        checkpoint=None if checkpoint is None else str(checkpoint),
        history=history,
    )
