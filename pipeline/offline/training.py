"""Offline training and full-ranking evaluation on leave-one-out splits.

Training is autoregressive: each training sequence, cut to its last ``max_len`` events,
predicts every event from the state before it (sampled softmax). With the "holdout" split,
after every epoch the model ranks the whole catalogue for each user's validation target
(context = the events before it, last ``max_len``; the query time is the target's
timestamp, as at serving time); the epoch with the best validation NDCG@10 is
checkpointed and evaluated on test. With the "paper" split the validation event trains
too, there is no selection, and the mean of the last epochs' weights (``TailAverage``)
is evaluated on test.

Two evaluation protocols: "all-items" ranks the target among every item; "exclude-seen"
(the paper's) first removes the items of the user's context (the ``max_len`` events the
model reads, as the reference does), so a target consumed before counts as a miss.
The most-popular baseline "trains" by counting training events and is evaluated by the
same code. Same seed, same data, same numbers.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from model.base import SequentialEncoder, last_states, select_targets
from model.jagged import JaggedBatch
from model.losses import sampled_softmax_loss
from model.metrics import DEFAULT_KS, RankingAccumulator, target_ranks
from model.optim import RowSparseAdam
from model.popular import MostPopular
from model.retrieval import score_items
from model.serialize import build_model, save_checkpoint
from pipeline.events.positives import PositiveRule, parse_positives
from pipeline.lake.datasets import OutputReader, SequenceDataset, build_sequences, read_event_log
from pipeline.lake.synthetic import SyntheticConfig
from pipeline.lake.synthetic_actions import ActionStreamConfig
from pipeline.offline.config import TrainConfig
from pipeline.runtime import threads
from pipeline.sources.synthetic import generate

log = logging.getLogger(__name__)

SELECTION_METRIC = "ndcg@10"
PROTOCOLS = ("all-items", "exclude-seen")
T = TypeVar("T")


def protocol_name(exclude_seen: bool) -> str:
    """The JSON name of an evaluation protocol."""
    return "exclude-seen" if exclude_seen else "all-items"


@dataclass
class OfflineResult:
    """What ``train_offline`` measured: per-epoch validation and the chosen epoch's test.

    ``test`` is under the configured protocol; ``test_by_protocol`` has both, and
    ``valid_by_protocol`` the chosen epoch's validation metrics under both (holdout split
    only: with the paper's the validation event trains, so it is empty).
    """

    model: str
    best_epoch: int
    test: dict[str, float]
    valid_history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    checkpoint: str | None = None
    protocol: str = "all-items"
    split: str = "holdout"
    test_by_protocol: dict[str, dict[str, float]] = field(default_factory=dict)
    valid_by_protocol: dict[str, dict[str, float]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Flat JSON-ready dict: model, epoch, train_split, protocol, seconds, test metrics."""
        return {
            "model": self.model,
            "epoch": self.best_epoch,
            "train_split": self.split,
            "protocol": self.protocol,
            "seconds": round(self.seconds, 3),
            **self.test,
            "checkpoint": self.checkpoint,
        }


CHECKPOINT_DIR = "checkpoint"  # train-offline's model, inside its --out directory


def offline_checkpoint(directory: str | Path) -> Path:
    """The model folder of a ``train-offline`` run given its ``--out`` directory, or that
    folder itself (``OUT/checkpoint``): what ``evaluate --checkpoint`` and ``backfill
    bootstrap --weights`` accept."""
    path = Path(directory)
    return path / CHECKPOINT_DIR if (path / CHECKPOINT_DIR).is_dir() else path


def load_sequences(
    data: str | None,
    fmt: str = "auto",
    skip_malformed: bool = False,
    synthetic: SyntheticConfig | ActionStreamConfig | None = None,
    read_output: OutputReader | None = None,
    min_length: int = 3,
) -> tuple[SequenceDataset, dict[str, Any]]:
    """Per-user sequences (users with >= ``min_length`` events: 3 for leave-one-out) and a
    JSON description of the source, from a file or, without ``data``, the synthetic
    generator of ``synthetic``'s kind (item sequences by default; ``ActionStreamConfig``:
    impressions with actions). ``read_output`` reads a backfill output directory
    (``read_event_log``)."""
    if data is None:
        synthetic = synthetic or SyntheticConfig()
        event_log = generate(synthetic)
        kind = "synthetic_actions" if isinstance(synthetic, ActionStreamConfig) else "synthetic"
        source: dict[str, Any] = {kind: asdict(synthetic)}
    else:
        event_log, stats = read_event_log(data, fmt, skip_malformed, read_output)
        source = {"path": str(data), "format": stats.format, "skip_malformed": skip_malformed}
        source["skipped_rows"] = stats.skipped_total
    ds = build_sequences(event_log, min_length=min_length)
    if ds.num_users == 0:
        raise ValueError(
            f"no user in {data or 'the synthetic log'} has the {min_length} events training needs"
        )
    return ds, source


def item_keys_json(ds: SequenceDataset) -> list[int | str | None]:
    """``item_keys`` as JSON values (row 0 -> None), stored in checkpoints."""
    return [json_key(k) for k in ds.item_keys]


def remap_items(ds: SequenceDataset, item_keys: list[int | str | None]) -> SequenceDataset:
    """``ds`` with item rows of another key map (a checkpoint's); unknown keys -> row 0."""
    row_of = {key: row for row, key in enumerate(item_keys) if row > 0}
    rows = np.array([row_of.get(json_key(k), 0) for k in ds.item_keys], np.int64)
    new_keys = np.array(item_keys, dtype=object)
    return SequenceDataset(
        rows[ds.item_ids], ds.timestamps, ds.actions, ds.offsets, new_keys, ds.user_keys, ds.values
    )


def json_key(key: Any) -> int | str | None:
    """An item key as checkpoints' ``item_keys`` spell it (numpy ints as Python ints)."""
    if key is None or isinstance(key, str):
        return key
    return int(key)


def window_indices(
    offsets: np.ndarray, users: np.ndarray, max_len: int, drop_last: int | np.ndarray = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Flat event indices of the last ``max_len`` events of each user's sequence after
    dropping its last ``drop_last`` events (one count, or one per user), and the [B+1]
    offsets of those windows."""
    ends = offsets[users + 1] - drop_last
    starts = np.maximum(offsets[users], ends - max_len)
    lengths = np.maximum(ends - starts, 0)
    window_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    shift = np.repeat(starts - window_offsets[:-1], lengths)
    return np.arange(window_offsets[-1], dtype=np.int64) + shift, window_offsets


@dataclass(frozen=True)
class TrainingWindows:
    """The training sequences of an epoch: window w is the last ``max_len`` events of user
    ``users[w]``'s sequence after dropping its last ``drop_last[w]`` events."""

    users: np.ndarray
    drop_last: np.ndarray
    lengths: np.ndarray

    @classmethod
    def build(cls, ds: SequenceDataset, max_len: int, windows: str) -> TrainingWindows:
        """The windows of ``windows`` = "last": each user's last ``max_len`` events (the
        reference; earlier events never train), or "all": windows back from the end that
        overlap by one event, so that every event but a sequence's first is a target once."""
        lengths = ds.lengths()
        users = np.flatnonzero(lengths >= 2)  # a one-event sequence has no target
        if windows == "last":
            counts = np.ones(users.size, dtype=np.int64)
        else:
            counts = np.maximum(-(-(lengths[users] - 1) // (max_len - 1)), 1)
        win_users = np.repeat(users, counts)
        first = np.repeat(np.cumsum(counts) - counts, counts)
        drop = (np.arange(win_users.size) - first) * (max_len - 1)
        win_lengths = np.minimum(lengths[win_users] - drop, max_len)
        return cls(win_users, drop.astype(np.int64), win_lengths.astype(np.int64))

    def __len__(self) -> int:
        return int(self.users.size)

    def of_users_fraction(self, fraction: float, seed: int) -> TrainingWindows:
        """The windows of a seeded random ``fraction`` of the users (at least one): less
        data, the same model (``TrainConfig.train_fraction``)."""
        if fraction >= 1.0:
            return self
        users = np.unique(self.users)
        count = max(1, round(fraction * users.size))
        kept = np.random.default_rng(seed).choice(users, size=count, replace=False)
        keep = np.isin(self.users, kept)
        return TrainingWindows(self.users[keep], self.drop_last[keep], self.lengths[keep])

    def epoch_batches(self, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
        """One epoch's batches of window indices: each user's last window in uniformly
        random batches, as the reference draws them; the earlier windows (the history
        beyond ``max_len`` that ``train_windows="all"`` adds) length-grouped in batches of
        their own; the batches shuffled together.

        Why not one rule for all windows (docs/quality.md, "How batches are made"): random
        batches of every window put long users' old history into every step and cost
        ml-latest-small 22%; length-grouped batches of every window weigh a short
        sequence's targets up to 8x and cost the short Amazon sets 6-8%.
        """
        last = np.flatnonzero(self.drop_last == 0)
        earlier = np.flatnonzero(self.drop_last > 0)
        batches = [
            last[b]
            for b in length_grouped_batches(self.lengths[last], batch_size, rng, group_batches=1)
        ]
        if earlier.size:
            batches += [
                earlier[b] for b in length_grouped_batches(self.lengths[earlier], batch_size, rng)
            ]
        return [batches[i] for i in rng.permutation(len(batches))]


def training_batch(
    ds: SequenceDataset,
    users: np.ndarray,
    max_len: int,
    drop_last: int | np.ndarray = 0,
    positives: PositiveRule | None = None,
) -> JaggedBatch:
    """The last ``max_len`` events of each user (after dropping its last ``drop_last``);
    every event but the first is a target, or, with ``positives``, every positive one."""
    idx, offs = window_indices(ds.offsets, users, max_len, drop_last)
    is_target = None
    if positives is not None and not positives.is_all:
        is_target = positives.mask(ds.actions[idx], ds.values[idx])
        is_target[offs[:-1][np.diff(offs) > 0]] = False  # a window's first event: context
    return JaggedBatch.from_numpy(
        ds.item_ids[idx],
        ds.timestamps[idx],
        offs,
        action_types=ds.actions[idx],
        is_target=is_target,
        values=ds.values[idx],
    )


def next_item_batch(
    ds: SequenceDataset, users: np.ndarray, max_len: int
) -> tuple[JaggedBatch, torch.Tensor]:
    """Context batch (the ``max_len`` events before each user's last event, with
    ``query_time`` = the last event's time) and the [B] target rows (the last events)."""
    idx, offs = window_indices(ds.offsets, users, max_len, drop_last=1)
    last = ds.offsets[users + 1] - 1
    batch = JaggedBatch.from_numpy(
        ds.item_ids[idx],
        ds.timestamps[idx],
        offs,
        action_types=ds.actions[idx],
        query_time=ds.timestamps[last],
        values=ds.values[idx],
    )
    return batch, torch.from_numpy(ds.item_ids[last])


def next_item_scores(
    model: nn.Module, batch: JaggedBatch, item_table: torch.Tensor | None = None
) -> torch.Tensor:
    """[B, R] scores of every item row as each sequence's next event; ``item_table``: the
    model's ``item_embeddings()`` when the caller keeps them (a server scoring many batches
    of one model: normalising a 1M-row table took most of a batch's time), else computed."""
    if isinstance(model, MostPopular):
        return model.scores(batch.num_sequences)
    if not isinstance(model, SequentialEncoder):
        raise TypeError(f"cannot score with {type(model).__name__}")
    states = model.encode(batch)
    items = model.item_embeddings() if item_table is None else item_table
    return score_items(last_states(batch, states), items)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    ds: SequenceDataset,
    max_len: int,
    batch_size: int = 256,
    ks: tuple[int, ...] = DEFAULT_KS,
    device: str = "cpu",
    exclude_seen: bool = False,
) -> dict[str, float]:
    """Full-ranking metrics of each user's last event given the events before it.

    Users with no context (one event) or whose target has no item row (0, unknown to the
    model) are skipped; ``count`` says how many targets were ranked. With
    ``exclude_seen`` the context's items are removed before ranking and a target among
    them is a miss (the paper's protocol). ``*_ci95`` keys are 95% interval half-widths.
    """
    was_training = model.training
    model.eval()
    users = np.flatnonzero(
        (ds.lengths() >= 2) & (ds.item_ids[np.maximum(ds.offsets[1:] - 1, 0)] > 0)
    )
    acc = RankingAccumulator(ks)
    for lo in range(0, users.size, batch_size):
        batch, targets = next_item_batch(ds, users[lo : lo + batch_size], max_len)
        batch, targets = batch.to(device), targets.to(device)
        exclude = (batch.item_ids, batch.offsets) if exclude_seen else (None, None)
        ranks = target_ranks(
            next_item_scores(model, batch),
            targets,
            exclude_items=exclude[0],
            exclude_offsets=exclude[1],
        )
        acc.update(ranks)
    model.train(was_training)
    return acc.result() | acc.ci95()


def model_max_len(model: nn.Module, default: int) -> int:
    return model.max_len if isinstance(model, SequentialEncoder) else default


def train_offline(
    kind: str,
    model_config: dict[str, Any],
    splits: tuple[SequenceDataset, SequenceDataset, SequenceDataset],
    cfg: TrainConfig,
    out_dir: str | Path | None = None,
    meta: dict[str, Any] | None = None,
) -> OfflineResult:
    """Train ``kind`` on ``splits[0]``, select the epoch on ``splits[1]``, test on ``splits[2]``.

    With ``cfg.split == "paper"`` there is no selection: the mean of the last
    ``cfg.averaged_epochs()`` epochs' weights is tested.

    Args:
        kind: "hstu", "sasrec" or "popular".
        model_config: fields of the model's config dataclass except ``num_rows``, which is
            set from the data (num_items + 1).
        splits: (train, valid, test) from ``pipeline.offline.splits.make_splits(ds, cfg.split)``.
        cfg: optimisation settings.
        out_dir: where the best checkpoint (``out_dir/checkpoint``) is written; None: nowhere.
        meta: extra JSON metadata stored in the checkpoint (data source, item keys, ...).
    """
    started = time.perf_counter()
    train, valid, test = splits
    torch.manual_seed(cfg.seed)
    model = build_model(kind, {**model_config, "num_rows": train.num_items + 1})
    if cfg.init == "reference" and isinstance(model, SequentialEncoder):
        model.reference_init()
    model = model.to(cfg.device)
    max_len = model_max_len(model, default=model_config.get("max_len", 200))
    checkpoint = None if out_dir is None else Path(out_dir) / CHECKPOINT_DIR
    meta = {**(meta or {}), "train_config": asdict(cfg)}

    def keep_best(kept: nn.Module, epoch: int, metrics: dict[str, float]) -> None:
        if checkpoint is not None:
            save_checkpoint(checkpoint, kept, {**meta, "epoch": epoch, "valid": metrics})

    def eval_split(ds: SequenceDataset, exclude_seen: bool = cfg.exclude_seen) -> dict[str, float]:
        return evaluate(
            model, ds, max_len, cfg.eval_batch_size, device=cfg.device, exclude_seen=exclude_seen
        )

    history: list[dict[str, float]] = []
    if isinstance(model, MostPopular):
        positive = parse_positives(cfg.positives).mask(train.actions, train.values)
        model.fit(torch.from_numpy(train.item_ids[positive]).to(cfg.device))
        history.append({"epoch": 0, **eval_split(valid)})
        best_epoch = 0
        keep_best(model, 0, history[-1])
    else:
        best_epoch, best_state = _fit(model, train, valid, cfg, max_len, history, keep_best)
        model.load_state_dict(best_state)
    by_protocol = {protocol_name(ex): eval_split(test, ex) for ex in (False, True)}
    valid_by_protocol = {}
    if cfg.split == "holdout":
        valid_by_protocol = {protocol_name(ex): eval_split(valid, ex) for ex in (False, True)}
    test_metrics = by_protocol[protocol_name(cfg.exclude_seen)]
    result = OfflineResult(
        model=kind,
        best_epoch=best_epoch,
        test=test_metrics,
        valid_history=history,
        seconds=time.perf_counter() - started,
        checkpoint=None if checkpoint is None else str(checkpoint),
        protocol=protocol_name(cfg.exclude_seen),
        split=cfg.split,
        test_by_protocol=by_protocol,
        valid_by_protocol=valid_by_protocol,
    )
    log.info("%s best epoch %d test %s", kind, best_epoch, _fmt(test_metrics))
    return result


def length_grouped_batches(
    lengths: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    group_batches: int = 8,
) -> list[np.ndarray]:
    """Shuffled batches of sequence indices (into ``lengths``) of similar lengths.

    Sequences are shuffled, cut into groups of ``group_batches`` batches, sorted by length
    inside each group, batched, and the batches are shuffled. Padded attention (reference
    kernel, SASRec) then wastes little work, while batches stay random across epochs.
    """
    order = rng.permutation(lengths.size)
    batches: list[np.ndarray] = []
    group = batch_size * group_batches
    for lo in range(0, order.size, group):
        chunk = order[lo : lo + group]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, chunk.size, batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer | RowSparseAdam:
    """AdamW on every parameter, or with ``cfg.sparse_embeddings`` (an encoder only) lazy
    Adam on the item table's rows and Adam on the rest."""
    betas = (0.9, cfg.adam_beta2)
    if not cfg.sparse_embeddings:
        return torch.optim.AdamW(
            model.parameters(), lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay
        )
    if not isinstance(model, SequentialEncoder):
        raise ValueError(
            f"--sparse-embeddings works with HSTU and SASRec, not {type(model).__name__}; "
            "leave it off for this model"
        )
    model.item_emb.sparse = True
    return RowSparseAdam(model, cfg.lr, betas, cfg.weight_decay)


def retrieval_loss(
    model: SequentialEncoder,
    batch: JaggedBatch,
    states: torch.Tensor,
    cfg: TrainConfig,
    generator: torch.Generator,
) -> torch.Tensor | None:
    """Sampled softmax of the batch's next-item targets from the states before them; None
    when the batch has no target."""
    targets = select_targets(batch, states)
    if targets.items.numel() == 0:
        return None
    return sampled_softmax_loss(
        targets.queries,
        targets.items,
        # rows normalised as looked up: a sparse gradient when the table is sparse
        model.item_rows() if cfg.sparse_embeddings else model.item_embeddings(),
        num_negatives=cfg.num_negatives,
        temperature=cfg.temperature,
        weights=targets.weights,
        generator=generator,
        per_position=cfg.per_position_negatives,
    )


class TailAverage:
    """The mean of a model's weights at the ends of the epochs after ``after`` (tail
    averaging, ``TrainConfig.tail_average``): sums in float64, so the order of the
    epochs does not round the mean.

    >>> layer = nn.Linear(1, 1, bias=False)
    >>> average = TailAverage(after=1)
    >>> for epoch, w in enumerate([5.0, 1.0, 2.0], start=1):
    ...     _ = layer.weight.data.fill_(w)
    ...     average.add(layer, epoch)
    >>> average.state(layer)["weight"].item()
    1.5
    """

    def __init__(self, after: int) -> None:
        self.after = after
        self.count = 0
        self.sums: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def add(self, model: nn.Module, epoch: int) -> None:
        """Add the weights ``model`` has at the end of ``epoch`` (ignored up to ``after``)."""
        if epoch <= self.after:
            return
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():  # integer buffers (counters, ids) are not averaged
                total = self.sums.setdefault(name, torch.zeros_like(tensor, dtype=torch.float64))
                total += tensor.double()
        self.count += 1

    def state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """``model``'s state dict with the mean in place of every averaged tensor."""
        if self.count == 0:
            raise ValueError("TailAverage.state: no epoch was added")
        current = model.state_dict()
        mean = {
            name: (total / self.count).to(current[name].dtype) for name, total in self.sums.items()
        }
        return {**current, **mean}


def train_epoch(
    optimizer: torch.optim.Optimizer | RowSparseAdam,
    batches: Sequence[T],
    loss_of: Callable[[T], torch.Tensor | None],
    desc: str,
    progress: bool,
) -> float:
    """One pass of optimizer steps over ``batches`` (each turned into a loss by ``loss_of``;
    None: nothing to learn, skipped), with a progress bar; the mean loss of the steps."""
    bar = tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False)
    total_loss, steps = 0.0, 0
    for item in bar:
        loss = loss_of(item)
        if loss is None:
            continue
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        threads.step()  # the default thread count follows the cores left free
        total_loss += float(loss.detach())
        steps += 1
        bar.set_postfix(loss=f"{total_loss / steps:.4f}")
    return total_loss / max(steps, 1)


def _fit(
    model: SequentialEncoder,
    train: SequenceDataset,
    valid: SequenceDataset,
    cfg: TrainConfig,
    max_len: int,
    history: list[dict[str, float]],
    keep_best: Callable[[nn.Module, int, dict[str, float]], None],
) -> tuple[int, dict[str, torch.Tensor]]:
    """Epoch loop; returns (best epoch, its state dict) by validation NDCG@10, or, with the
    paper's split, (last epoch, the mean of the last ``cfg.averaged_epochs()`` epochs' weights)
    without evaluating anything."""
    optimizer = make_optimizer(model, cfg)
    rng = np.random.default_rng(cfg.seed)
    negatives_gen = torch.Generator().manual_seed(cfg.seed)
    windows = TrainingWindows.build(train, max_len, cfg.train_windows).of_users_fraction(
        cfg.train_fraction, cfg.seed
    )
    positives = parse_positives(cfg.positives)

    def loss_of(rows: np.ndarray) -> torch.Tensor | None:
        batch = training_batch(
            train, windows.users[rows], max_len, windows.drop_last[rows], positives
        ).to(cfg.device)
        return retrieval_loss(model, batch, model.encode(batch), cfg, negatives_gen)

    best_epoch, best_score, best_state = 0, -1.0, copy.deepcopy(model.state_dict())
    average = TailAverage(after=cfg.epochs - cfg.averaged_epochs())
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        train_loss = train_epoch(
            optimizer,
            windows.epoch_batches(cfg.batch_size, rng),
            loss_of,
            f"{type(model).__name__} epoch {epoch}/{cfg.epochs}",
            cfg.progress,
        )
        if cfg.split == "paper":
            # no validation set: the epoch count is fixed in advance, the last epochs are kept
            history.append({"epoch": epoch, "train_loss": train_loss})
            log.info("epoch %d/%d loss %.4f", epoch, cfg.epochs, train_loss)
            average.add(model, epoch)
            best_epoch = epoch
            continue
        metrics = evaluate(
            model,
            valid,
            max_len,
            cfg.eval_batch_size,
            device=cfg.device,
            exclude_seen=cfg.exclude_seen,
        )
        history.append({"epoch": epoch, "train_loss": train_loss, **metrics})
        log.info(
            "epoch %d/%d loss %.4f valid %s",
            epoch,
            cfg.epochs,
            train_loss,
            _fmt(metrics),
        )
        if metrics[SELECTION_METRIC] > best_score:
            best_epoch, best_score = epoch, metrics[SELECTION_METRIC]
            best_state = copy.deepcopy(model.state_dict())
            keep_best(model, epoch, metrics)
    if cfg.split == "paper":
        if average.count:
            model.load_state_dict(average.state(model))
        best_state = copy.deepcopy(model.state_dict())
        keep_best(model, best_epoch, history[-1] if history else {})
    return best_epoch, best_state


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(
        f"{k}={v:.4f}" for k, v in metrics.items() if k != "count" and not k.endswith("_ci95")
    )
