"""``genrec train-offline`` and ``genrec evaluate``: leave-one-out training and full ranking,
or (``train-offline --task ranking``) generative ranking on a time-ordered split.

Without ``--data`` both use the embedded synthetic generator (with ``--task ranking`` the
synthetic impression stream). With ``--json`` the last line on stdout is one JSON object with
the test metrics (retrieval: hr@K, ndcg@K for K in 10, 50, 100, 200, mrr; ranking: per task AUC,
NE, log loss, accuracy, base rate, count and their intervals) plus model, epoch and seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from pipeline.lake.datasets import FORMATS
from pipeline.lake.synthetic import SyntheticConfig
from pipeline.offline.config import (
    SPLITS,
    TASKS,
    TRAIN_WINDOWS,
    Preset,
    TrainConfig,
    load_preset,
    preset_names,
)
from pipeline.offline.splits import make_splits, users_without_target
from pipeline.runtime.errors import ConfigError, check_output_directory
from pipeline.runtime.threads import set_torch_threads

log = logging.getLogger(__name__)

# The keys of model.serialize.MODEL_KINDS (a test keeps them equal); spelled out here
# because importing the models pulls in torch, which would slow down every `genrec --help`.
MODEL_NAMES = ("dlrm", "hstu", "popular", "sasrec")


def add_training_options(group: argparse._ActionsContainer) -> None:
    """The ``TrainConfig`` options (all but the seed) and ``--preset``, declared once for
    ``train-offline`` and bench/offline_quality.py, so that the bench's defaults are the CLI's.

    Every option but ``--preset`` defaults to None, "not given", so that a given flag
    overrides the preset and the others leave it alone (``train_config_from_args``).
    """
    t = TrainConfig()
    group.add_argument(
        "--preset",
        help="start from the settings of a named preset, which reproduces an earlier row of "
        "docs/quality.md (pipeline/offline/presets/NAME.yaml); the flags given override it; "
        f"one of: {', '.join(preset_names())} (default: none)",
    )
    group.add_argument(
        "--epochs", type=int, help=f"passes over the training split (default: {t.epochs})"
    )
    group.add_argument("--batch-size", type=int, help=f"users per step (default: {t.batch_size})")
    group.add_argument("--lr", type=float, help=f"Adam learning rate (default: {t.lr})")
    group.add_argument(
        "--weight-decay", type=float, help=f"Adam weight decay (default: {t.weight_decay})"
    )
    group.add_argument(
        "--num-negatives",
        type=int,
        help=f"sampled-softmax negatives per target (default: {t.num_negatives})",
    )
    group.add_argument(
        "--temperature", type=float, help=f"softmax temperature (default: {t.temperature})"
    )
    group.add_argument(
        "--eval-batch-size",
        type=int,
        help=f"users per full-ranking evaluation step (default: {t.eval_batch_size})",
    )
    group.add_argument("--device", help=f"torch device, e.g. cpu or cuda (default: {t.device})")
    group.add_argument(
        "--adam-beta2",
        type=float,
        help=f"AdamW beta2; the reference uses 0.98 (default: {t.adam_beta2})",
    )
    group.add_argument(
        "--tail-average",
        type=float,
        metavar="SHARE",
        help="with the paper's split, keep the mean of the weights at the ends of the last "
        "SHARE of the epochs, at least one (tail averaging: the last 10 of 30 epochs by "
        "default; docs/quality.md, 'Tail averaging'); 0: the last epoch's weights; the "
        f"holdout split keeps its best epoch (default: {t.tail_average:.3g})",
    )
    group.add_argument(
        "--train-windows",
        choices=TRAIN_WINDOWS,
        help="all: train on every event of each sequence, in windows of --max-len events "
        "back from its end (the earlier windows in length-grouped batches of their own); "
        "last: only on each user's last --max-len events, in random batches, the "
        f"reference's loop (default: {t.train_windows})",
    )
    group.add_argument(
        "--train-fraction",
        type=float,
        help="train on the windows of a seeded random share (0, 1] of the users only, a data "
        "budget (genrec scaling); every user is still validated and tested (default: "
        f"{t.train_fraction})",
    )
    group.add_argument(
        "--sparse-embeddings",
        action=argparse.BooleanOptionalAction,
        help="item table: sparse gradients and lazy Adam on the rows a step touches, as the "
        "online trainer; off: AdamW on every row, the reference (default: "
        f"{t.sparse_embeddings})",
    )
    group.add_argument(
        "--split",
        choices=SPLITS,
        help="paper: every event but the last trains (the validation event too) and the "
        "last epochs' mean weights are tested (--tail-average); holdout: the last 2 events are held out, the epoch with the "
        "best validation NDCG@10 is tested, and metrics.json has its validation metrics "
        f"under both protocols (default: {t.split})",
    )
    group.add_argument(
        "--exclude-seen",
        action=argparse.BooleanOptionalAction,
        help="evaluation protocol: remove the user's context items before ranking (the "
        "paper's; a target consumed before is a miss); used for validation and the "
        "reported test metrics; the other protocol is reported too (train-offline's "
        f"metrics.json, the bench's table) (default: {t.exclude_seen})",
    )
    group.add_argument(
        "--positives",
        help="which events are next-item targets: 'all', 'value>=4' (a rating of 4 or more; "
        "also >, <=, <, ==) or 'action:click,purchase' (action names or codes 0..255); the "
        "others stay in the history as context, and each user's test target is the last "
        f"positive event (default: {t.positives})",
    )
    group.add_argument(
        "--task",
        choices=TASKS,
        help="retrieval: next-item full ranking on leave-one-out splits; ranking: score "
        "impressions per --ranking-tasks on a time-ordered split, HSTU in its ranking form "
        "(docs/trainer.md, 'HSTU's form'; docs/quality.md, 'Ranking (offline)') "
        f"(default: {t.task})",
    )
    group.add_argument(
        "--ranking-tasks",
        help="with --task ranking: comma-separated NAME:RULE[@WEIGHT], RULE 'value>=X' or "
        "'action:a,b' as --positives, WEIGHT the loss weight (default 1), e.g. "
        "'like:value>=4' or 'click:action:click,purchase,like:value>=4@0.5' (required)",
    )
    group.add_argument(
        "--test-fraction",
        type=float,
        help="with --task ranking: the latest share of all events (by time) that tests; the "
        "events before the cutoff train, each user's later events are scored after its "
        f"pre-cutoff history (default: {t.test_fraction})",
    )
    group.add_argument(
        "--candidates-per-window",
        type=int,
        help="with --task ranking: candidates (events scored) per training window, after the "
        f"--max-len - 1 events before them (default: {t.candidates_per_window})",
    )
    group.add_argument(
        "--aux-retrieval-weight",
        type=float,
        help="with --task ranking: weight of HSTU's / SASRec's causal next-item loss on the "
        f"history rows, as Meta's dlrm_v3; DLRM has none (default: {t.aux_retrieval_weight})",
    )
    group.add_argument(
        "--validation-fraction",
        type=float,
        help="with --task ranking: the latest share of the training events (by time) that "
        "validates each epoch; the epoch with the best validation AUC (mean over tasks) is "
        "tested, its probabilities calibrated on that slice (a scale and shift per task); 0: "
        f"no validation, the last epoch is tested (default: {t.validation_fraction})",
    )
    group.add_argument(
        "--patience",
        type=int,
        help="with --task ranking and validation: stop after this many epochs without a "
        f"better validation AUC (default: {t.patience})",
    )


def train_config_from_args(
    args: argparse.Namespace, preset: Preset, seed: int, progress: bool
) -> TrainConfig:
    """The ``TrainConfig`` of options added by ``add_training_options``: the defaults, then
    what ``preset`` sets, then the flags given."""
    given = {
        f.name: getattr(args, f.name)
        for f in fields(TrainConfig)
        if getattr(args, f.name, None) is not None
    }
    return TrainConfig(**{**preset.train_settings(), **given, "seed": seed, "progress": progress})


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train-offline",
        help="train HSTU / SASRec / most-popular (retrieval) or HSTU / SASRec / DLRM "
        "(--task ranking) offline and report test metrics",
        description=(
            "Train, then rank the whole catalogue for each user's last event (test). With "
            "the reference's split (the default) every event but the last trains and the "
            "mean of the weights of the last third of --epochs epochs is tested "
            "(--tail-average); with the holdout split (a --preset's) the "
            "last 2 events are held out and the epoch with the best validation NDCG@10 is "
            "tested. With --task ranking: the events before a time cutoff train, each "
            "user's later events are scored per --ranking-tasks after its history, and the "
            "epoch with the best validation AUC (at most --epochs) is tested (AUC, NE, log "
            "loss, accuracy per task)."
        ),
    )
    train.add_argument(
        "--model",
        choices=MODEL_NAMES,
        default="hstu",
        help="model to train; dlrm ranks only (--task ranking), popular retrieves only "
        "(default: %(default)s)",
    )
    _add_data_args(train)
    train.add_argument("--out", required=True, help="output directory (checkpoint, metrics)")
    train.add_argument("--json", action="store_true", help="print the result as a JSON line")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    opt = train.add_argument_group("training")
    add_training_options(opt)
    opt.add_argument(
        "--seed", type=int, default=TrainConfig().seed, help="random seed (default: %(default)s)"
    )
    opt.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads; 0: OMP_NUM_THREADS when set, else the cores other processes "
        "leave free, re-read about once a second (docs/trainer.md) (default: %(default)s)",
    )
    arch = train.add_argument_group("model (HSTU and SASRec; DLRM: --embedding-dim, --max-len)")
    arch.add_argument(
        "--embedding-dim",
        type=int,
        default=64,
        help="D: item embedding width (DLRM: its tables' width) (default: %(default)s)",
    )
    arch.add_argument(
        "--num-layers", type=int, default=2, help="HSTU / SASRec layers (default: %(default)s)"
    )
    arch.add_argument(
        "--num-heads", type=int, default=1, help="attention heads (default: %(default)s)"
    )
    arch.add_argument(
        "--max-len",
        type=int,
        default=200,
        help="N: last events per sequence (default: %(default)s)",
    )
    arch.add_argument(
        "--dropout",
        type=float,
        default=0.2,
        help="dropout inside the layers (default: %(default)s)",
    )
    arch.add_argument(
        "--input-dropout",
        type=float,
        default=0.2,
        help="dropout on input embeddings (default: %(default)s)",
    )
    arch.add_argument(
        "--dqk",
        type=int,
        default=0,
        help="HSTU q/k dim per head, 0: D/heads (default: %(default)s)",
    )
    arch.add_argument(
        "--dv", type=int, default=0, help="HSTU v/u dim per head, 0: D/heads (default: %(default)s)"
    )
    arch.add_argument(
        "--ffn-dim", type=int, default=0, help="SASRec FFN width, 0: D (default: %(default)s)"
    )
    arch.add_argument(
        "--action-inputs",
        action=argparse.BooleanOptionalAction,
        help="add each event's action and value (bucketised rating) embeddings to its input "
        "token, as Meta's dlrm_v3 (default: on with --task ranking, where the history's "
        "actions are the signal, else off)",
    )
    arch.add_argument(
        "--attention-backend",
        default="auto",
        choices=["auto", "reference", "triton"],
        help="HSTU attention kernel; auto: Triton on CUDA, else the reference (default: %(default)s)",
    )
    train.set_defaults(func=run_train)

    ev = subparsers.add_parser(
        "evaluate",
        help="re-evaluate a train-offline checkpoint with full ranking",
        description=(
            "Load a checkpoint written by train-offline and rank each user's last event "
            "(--split test) or second-to-last (--split valid). Without --data the data the "
            "checkpoint was trained on is used again."
        ),
    )
    ev.add_argument(
        "--checkpoint",
        required=True,
        help="the train-offline --out directory (or its checkpoint folder, OUT/checkpoint)",
    )
    _add_data_args(ev)
    ev.add_argument(
        "--split",
        choices=["test", "valid"],
        default="test",
        help="rank the last event (test) or the second-to-last (valid) (default: %(default)s)",
    )
    ev.add_argument(
        "--eval-batch-size",
        type=int,
        default=256,
        help="users per evaluation step (default: %(default)s)",
    )
    ev.add_argument(
        "--max-len",
        type=int,
        default=200,
        help="context length for popular (others: the checkpoint's) (default: %(default)s)",
    )
    ev.add_argument(
        "--device", default="cpu", help="torch device, e.g. cpu or cuda (default: %(default)s)"
    )
    ev.add_argument(
        "--exclude-seen",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="evaluation protocol: remove the user's context items before ranking (the "
        "paper's); default: the protocol the checkpoint was trained with",
    )
    ev.add_argument("--json", action="store_true", help="print the result as a JSON line")
    ev.set_defaults(func=run_evaluate)


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        help="event log file, or the output directory of genrec backfill sequences (its "
        "files checked first: docs/backfill.md, 'Reading backfill output'); default: the "
        "synthetic generator (with --task ranking: the synthetic impression stream, "
        "pipeline/lake/synthetic_actions.py, sized by the same --synthetic-* flags)",
    )
    data.add_argument(
        "--format",
        choices=FORMATS,
        default="auto",
        help="event log format; auto: from the suffix and first line, or backfill for a "
        "directory with manifest.json (default: %(default)s)",
    )
    data.add_argument("--skip-malformed", action="store_true", help="skip and count malformed rows")
    s = SyntheticConfig()
    data.add_argument(
        "--synthetic-users",
        type=int,
        default=s.num_users,
        help="synthetic users (default: %(default)s)",
    )
    data.add_argument(
        "--synthetic-items",
        type=int,
        default=s.num_items,
        help="synthetic items (default: %(default)s)",
    )
    data.add_argument(
        "--synthetic-events-per-user",
        type=int,
        default=s.events_per_user,
        help="mean synthetic events per user (default: %(default)s)",
    )
    data.add_argument(
        "--synthetic-seed",
        type=int,
        default=s.seed,
        help="synthetic generator seed (default: %(default)s)",
    )


def _synthetic_config(args: argparse.Namespace, actions: bool = False) -> Any:
    """The generator config of the --synthetic-* flags: the impression stream's
    (``ActionStreamConfig``) with ``actions``, else the item-sequence generator's."""
    sizes = {
        "num_users": args.synthetic_users,
        "num_items": args.synthetic_items,
        "events_per_user": args.synthetic_events_per_user,
        "seed": args.synthetic_seed,
    }
    if actions:
        from pipeline.lake.synthetic_actions import ActionStreamConfig

        return ActionStreamConfig(**sizes)
    return SyntheticConfig(**sizes)


def model_config_from_args(kind: str, args: argparse.Namespace, preset: Preset) -> dict[str, Any]:
    """The model-config fields that ``kind`` has, taken from the parsed flags and, for the
    layer norms (HSTU) and block style (SASRec), which have no flag, from ``preset``."""
    from model.serialize import MODEL_KINDS

    if kind == "popular":
        return {}  # scores do not depend on the context
    names = {f.name for f in fields(MODEL_KINDS[kind][1])} - {"num_rows", "ranking_tasks"}
    values = {
        **vars(args),
        "layer_norm": preset.hstu_layer_norm,
        "style": preset.sasrec_style,
        "dim": args.embedding_dim,  # DLRM's table width
    }
    if values.get("action_inputs") is None:  # not given: on for ranking (module docstring)
        values["action_inputs"] = getattr(args, "task", None) == "ranking"
    return {name: values[name] for name in names if name in values}


def run_train(args: argparse.Namespace) -> int:
    from pipeline.backfill.histories import event_logs
    from pipeline.events.positives import parse_positives
    from pipeline.offline.training import item_keys_json, load_sequences, train_offline

    set_torch_threads(args.threads)
    preset = load_preset(args.preset)
    cfg = train_config_from_args(args, preset, seed=args.seed, progress=not args.no_progress)
    out = Path(args.out)
    check_output_directory(out, "it gets checkpoint/ and metrics.json")
    if cfg.task == "ranking":
        return run_train_ranking(args, cfg, preset)
    if args.model == "dlrm":
        raise ConfigError("--model dlrm ranks only: add --task ranking and --ranking-tasks")
    model_config = model_config_from_args(args.model, args, preset)
    ds, source = load_sequences(
        args.data, args.format, args.skip_malformed, _synthetic_config(args), event_logs
    )
    positives = parse_positives(cfg.positives, setting="--positives")
    splits = make_splits(ds, cfg.split, positives)
    log.info("data: %d users, %d items, %d events", ds.num_users, ds.num_items, ds.num_events)
    meta = {"data": source, "item_keys": item_keys_json(ds)}
    extra = {}
    if not positives.is_all:
        extra = {
            "positives": positives.text,
            "users_without_target": users_without_target(splits[2]),
        }
        log.info("positives %s: %d users without a positive test target", *extra.values())
    result = train_offline(args.model, model_config, splits, cfg, out_dir=out, meta=meta)
    summary = {**result.summary(), **extra}
    (out / "metrics.json").write_text(
        json.dumps(
            {
                **summary,
                "test_by_protocol": result.test_by_protocol,
                "valid_by_protocol": result.valid_by_protocol,
                "valid_history": result.valid_history,
            },
            indent=1,
        )
    )
    _print_result(summary, args.json)
    return 0


def run_train_ranking(args: argparse.Namespace, cfg: TrainConfig, preset: Preset) -> int:
    """``train-offline --task ranking``: ``pipeline.offline.ranking`` on the data given."""
    from pipeline.backfill.histories import event_logs
    from pipeline.offline.ranking import RANKING_MODELS, train_ranking
    from pipeline.offline.splits import time_split
    from pipeline.offline.training import item_keys_json, load_sequences

    if args.model not in RANKING_MODELS:
        raise ConfigError(
            f"--model {args.model} cannot rank; --task ranking trains one of "
            f"{', '.join(RANKING_MODELS)}"
        )
    ds, source = load_sequences(
        args.data,
        args.format,
        args.skip_malformed,
        _synthetic_config(args, actions=True),
        event_logs,
        min_length=1,
    )
    split = time_split(ds, cfg.test_fraction)
    log.info(
        "data: %d users, %d items, %d events; cutoff %d, %d test events",
        ds.num_users, ds.num_items, ds.num_events, split.cutoff, split.test_events(),
    )  # fmt: skip
    out = Path(args.out)  # checked by run_train
    result = train_ranking(
        args.model,
        model_config_from_args(args.model, args, preset),
        split,
        cfg,
        max_len=args.max_len,
        out_dir=out,
        meta={"data": source, "item_keys": item_keys_json(ds)},
    )
    summary = result.summary()
    (out / "metrics.json").write_text(
        json.dumps({**summary, "train_history": result.history}, indent=1)
    )
    _print_result(summary, args.json)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from model.serialize import load_checkpoint, model_kind
    from pipeline.backfill.histories import event_logs
    from pipeline.events.positives import parse_positives
    from pipeline.offline.training import (
        evaluate,
        load_sequences,
        model_max_len,
        offline_checkpoint,
        protocol_name,
        remap_items,
    )

    set_torch_threads(None)
    started = time.perf_counter()
    model, meta = load_checkpoint(offline_checkpoint(args.checkpoint), map_location=args.device)
    if meta.get("train_config", {}).get("task", "retrieval") != "retrieval":
        raise ConfigError(
            f"--checkpoint {args.checkpoint}: a ranking model; evaluate re-ranks retrieval "
            "checkpoints only, and train-offline --task ranking reports its test metrics "
            "(metrics.json in its --out directory)"
        )
    source = meta.get("data", {})
    if args.data is not None:
        ds, _ = load_sequences(args.data, args.format, args.skip_malformed, read_output=event_logs)
    elif "synthetic" in source:
        ds, _ = load_sequences(None, synthetic=SyntheticConfig(**source["synthetic"]))
    else:
        ds, _ = load_sequences(
            source["path"], source["format"], source["skip_malformed"], read_output=event_logs
        )
    ds = remap_items(ds, meta["item_keys"])
    # the held-out events follow the rule the checkpoint was trained with
    rule = meta.get("train_config", {}).get("positives", "all")
    _, valid, test = make_splits(ds, "holdout", parse_positives(rule, setting="positives"))
    max_len = model_max_len(model, default=args.max_len)
    exclude_seen = args.exclude_seen
    if exclude_seen is None:
        exclude_seen = bool(meta.get("train_config", {}).get("exclude_seen", False))
    metrics = evaluate(
        model,
        test if args.split == "test" else valid,
        max_len,
        args.eval_batch_size,
        device=args.device,
        exclude_seen=exclude_seen,
    )
    summary = {
        "model": model_kind(model),
        "epoch": meta.get("epoch"),
        "seconds": round(time.perf_counter() - started, 3),
        "split": args.split,
        "protocol": protocol_name(exclude_seen),
        **metrics,
    }
    _print_result(summary, args.json)
    return 0


def _print_result(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
        return
    for key, value in summary.items():
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        sys.stdout.write(f"{key:>12}: {text}\n")
