"""``genrec scaling``: quality against training compute over a grid of runs, fitted and
plotted (docs/scaling.md); ``genrec teacher-data``: the synthetic teacher stream as a lake
file (``pipeline/lake/synthetic_teacher.py``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from pipeline.lake.datasets import FORMATS
from pipeline.lake.synthetic_teacher import TeacherConfig
from pipeline.offline.scaling import FIT_METRICS
from pipeline.runtime.errors import ConfigError, check_output_directory

log = logging.getLogger(__name__)

# the ml-latest-small grid of docs/scaling.md (about 3 orders of magnitude of compute)
DEFAULT_SIZES = "4x1x10,16x1x50,32x2x100,64x2x200"
DEFAULT_EPOCHS = "1,3,8"
SETTINGS_FILE = "settings.json"


def register(subparsers: argparse._SubParsersAction) -> None:
    scaling = subparsers.add_parser(
        "scaling",
        help="train a grid of HSTU / SASRec sizes and budgets and fit quality against "
        "training compute",
        description=(
            "Train every (model, size, epochs, data fraction) of the grid in its own "
            "train-offline process (holdout split: the best validation epoch is tested), "
            "cheapest first, with a progress line and the grid's ETA; runs "
            "finished in --out before are kept and skipped, so a stopped grid resumes. Then "
            "write OUT/results.json (every run: FLOPs, parameters, wall time, loss, "
            "validation and test metrics under both protocols; per model the "
            "compute-optimal envelope and its log-linear and saturating power-law fits; the "
            "most-popular baseline) and OUT/scaling.png. docs/scaling.md explains the FLOP "
            "count and the fits."
        ),
    )
    scaling.add_argument("--data", required=True, help="event log file (as train-offline's)")
    scaling.add_argument(
        "--format", choices=FORMATS[:-1], default="auto", help="event log format (default: auto)"
    )
    scaling.add_argument("--out", required=True, help="grid directory (runs, results, plot)")
    scaling.add_argument(
        "--models",
        default="hstu,sasrec",
        help="comma-separated models to train (default: %(default)s)",
    )
    scaling.add_argument(
        "--sizes",
        default=DEFAULT_SIZES,
        help="comma-separated model sizes DxLxN: embedding width x layers x max sequence "
        "length (default: %(default)s)",
    )
    scaling.add_argument(
        "--epochs",
        default=DEFAULT_EPOCHS,
        help="comma-separated epoch budgets, each trained by every size (default: %(default)s)",
    )
    scaling.add_argument(
        "--data-fractions",
        default="1",
        help="comma-separated shares (0, 1] of the users whose sequences train, a data "
        "budget; every user is still validated and tested (default: %(default)s)",
    )
    scaling.add_argument(
        "--num-negatives", type=int, default=128, help="sampled-softmax negatives (default: 128)"
    )
    scaling.add_argument("--batch-size", type=int, default=64, help="users per step (default: 64)")
    scaling.add_argument(
        "--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)"
    )
    scaling.add_argument(
        "--exclude-seen",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="validate (choose the epoch) under the paper's protocol; results have both "
        "(default: off)",
    )
    scaling.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    scaling.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per run; one keeps small runs efficient and timings comparable "
        "(default: %(default)s)",
    )
    scaling.add_argument(
        "--run-timeout",
        type=float,
        default=None,
        help="stop the grid when one run takes longer than this many seconds (default: none)",
    )
    scaling.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: report the grid's runs that have finished so far",
    )
    scaling.add_argument(
        "--plot-metric",
        default="ndcg@10",
        help="test metric on the plot's first panel; the second is hr@100 (default: %(default)s)",
    )
    scaling.set_defaults(func=run_scaling)

    teacher = subparsers.add_parser(
        "teacher-data",
        help="write the synthetic teacher stream (a random sequence model's draws) as Parquet",
        description=(
            "Draw every user's events from a fixed random teacher sequence model "
            "(pipeline/lake/synthetic_teacher.py, docs/scaling.md) and write them as a "
            "Parquet lake file (user_id, item_id, timestamp) for train-offline / scaling."
        ),
    )
    t = TeacherConfig()
    teacher.add_argument("--out", required=True, help="Parquet file to write")
    for name, kind, text in (
        ("num_users", int, "users"),
        ("num_items", int, "items"),
        ("events_per_user", int, "events per user"),
        ("latent_dim", int, "the teacher's latent width (how much there is to learn)"),
        ("sharpness", float, "logit scale: how predictable the next item is (0: popularity)"),
        ("memory", float, "in [0, 1): how much of the older history the state keeps"),
        ("taste_weight", float, "weight of the user's fixed taste against the history"),
        ("zipf_exponent", float, "popularity prior exponent"),
        ("seed", int, "random seed"),
    ):
        teacher.add_argument(
            f"--{name.replace('_', '-')}",
            type=kind,
            default=getattr(t, name),
            dest=name,
            help=f"{text} (default: %(default)s)",
        )
    teacher.set_defaults(func=run_teacher_data)


def run_teacher_data(args: argparse.Namespace) -> int:
    from pipeline.lake.synthetic_teacher import write_teacher_lake

    out = Path(args.out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; give a file name, e.g. teacher.parquet")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: its folder {out.parent} does not exist; create it first")
    try:
        cfg = TeacherConfig(
            **{
                name: getattr(args, name)
                for name in TeacherConfig.__dataclass_fields__
                if hasattr(args, name)
            }
        )
    except ValueError as err:
        raise ConfigError(str(err)) from None
    events = write_teacher_lake(cfg, out)
    sys.stdout.write(f"wrote {events} events of {cfg.num_users} users to {out}\n")
    return 0


def _split_list(text: str, flag: str) -> list[str]:
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise ConfigError(f"{flag}: give a comma-separated list, got {text!r}")
    return items


def _number(kind: type[int] | type[float], text: str, flag: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{flag}: {text!r} is not a number; give a comma-separated list") from None


def run_scaling(args: argparse.Namespace) -> int:
    from pipeline.backfill.histories import event_logs
    from pipeline.offline.scaling.grid import (
        GridSettings,
        GridStopped,
        finished_results,
        grid_specs,
        parse_size,
        run_grid,
    )
    from pipeline.offline.scaling.report import summary_lines, write_report
    from pipeline.offline.splits import make_splits
    from pipeline.offline.training import load_sequences

    out = Path(args.out)
    check_output_directory(out, "the grid's runs and results")
    if args.plot_metric not in FIT_METRICS:
        raise ConfigError(f"--plot-metric must be one of {', '.join(FIT_METRICS)}")
    try:
        sizes = [parse_size(s) for s in _split_list(args.sizes, "--sizes")]
        epochs = [_number(int, e, "--epochs") for e in _split_list(args.epochs, "--epochs")]
        fractions = [
            _number(float, f, "--data-fractions")
            for f in _split_list(args.data_fractions, "--data-fractions")
        ]
        specs = grid_specs(_split_list(args.models, "--models"), sizes, epochs, fractions)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    settings = GridSettings(
        data=str(Path(args.data).resolve()),
        format=args.format,
        num_negatives=args.num_negatives,
        batch_size=args.batch_size,
        lr=args.lr,
        exclude_seen=args.exclude_seen,
        seed=args.seed,
        threads=args.threads,
    )
    _check_same_settings(out, settings.model_dump())
    ds, _ = load_sequences(args.data, args.format, read_output=event_logs)
    splits = make_splits(ds, "holdout")
    train = splits[0]
    log.info(
        "scaling grid: %d runs on %d users, %d items, %d events",
        len(specs), ds.num_users, ds.num_items, ds.num_events,
    )  # fmt: skip
    if args.report_only:
        finished = finished_results(specs, out)
        results = sorted(finished.values(), key=lambda r: (r["flops"], r["run"]))
        log.info("reporting %d of the grid's %d runs (finished)", len(results), len(specs))
    else:
        try:
            results = run_grid(specs, settings, train, out, log.info, args.run_timeout, args.stop)
        except RuntimeError as err:  # a run failed: its log is named, the finished runs stay
            raise ConfigError(str(err)) from None
        except GridStopped as stopped:
            done = len(finished_results(specs, out))
            log.info(
                "stopped before run %s finished: %d of %d runs done; the same command resumes",
                stopped, done, len(specs),
            )  # fmt: skip
            return 0
    data = {"users": ds.num_users, "items": ds.num_items, "events": ds.num_events}
    baseline = popularity_baseline(splits, settings)
    paths = write_report(results, settings, data, baseline, out, args.plot_metric)
    fits = json.loads(paths[0].read_text())["fits"]
    protocol = "exclude-seen" if args.exclude_seen else "all-items"
    for metric in dict.fromkeys((args.plot_metric, "hr@100")):
        sys.stdout.writelines(f"{line}\n" for line in summary_lines(fits, protocol, metric))
        sys.stdout.write(
            f"most popular test {metric} ({protocol}): {baseline['test'][protocol][metric]:.4f}\n"
        )
    sys.stdout.write(f"wrote {', '.join(str(p) for p in paths)}\n")
    return 0


def popularity_baseline(splits: tuple[Any, Any, Any], settings: Any) -> dict[str, Any]:
    """The most-popular model on the grid's splits (counting, no training: in this process),
    the level below which a run has learnt nothing but popularity."""
    from pipeline.offline.config import TrainConfig
    from pipeline.offline.training import train_offline

    cfg = TrainConfig(
        split="holdout", exclude_seen=settings.exclude_seen, seed=settings.seed, progress=False
    )
    result = train_offline("popular", {}, splits, cfg)
    return {"model": "popular", "valid": result.valid_by_protocol, "test": result.test_by_protocol}


def _check_same_settings(out: Path, settings: dict[str, object]) -> None:
    """A grid directory holds runs of one data set and one set of training settings:
    resuming with others would mix incomparable runs."""
    path = out / SETTINGS_FILE
    if path.is_file():
        before = json.loads(path.read_text())
        if before != settings:
            changed = sorted(
                k for k in settings.keys() | before.keys() if before.get(k) != settings.get(k)
            )
            raise ConfigError(
                f"--out {out} holds a grid with other settings ({', '.join(changed)}); give "
                "another --out, or the same settings to resume it"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=1))
