"""The scaling grid: one ``genrec train-offline`` process per (model, size, epochs) run.

Each run trains on the holdout split (the epoch with the best validation NDCG@10 is kept
and tested; its validation metrics are reported under both protocols) in a fresh process,
so that no run inherits another's allocator, threads or caches. A finished run leaves
``RUN/result.json`` (written last, atomically); a grid started again skips those runs,
so an interrupted grid resumes where it stopped. Runs go cheapest first, so an interrupted
grid still spans the low end of the compute range.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from model.serialize import build_model
from pipeline.lake.datasets import SequenceDataset
from pipeline.offline.scaling.flops import TokenCounts, training_flops
from pipeline.offline.training import CHECKPOINT_DIR, TrainingWindows

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
STOP_POLL_S = 0.5  # how often a running run looks at its deadline and the stop request
SCALING_MODELS = ("hstu", "sasrec")
SIZE_PATTERN = re.compile(r"^(\d+)x(\d+)x(\d+)$")


class RunSpec(BaseModel):
    """One run of the grid: a model, its size and its budget in epochs and in data (the share
    of the users whose sequences train)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    embedding_dim: int
    num_layers: int
    max_len: int
    epochs: int
    data_fraction: float = 1.0

    @property
    def key(self) -> str:
        """The run's folder name: unique in a grid, safe as a path."""
        key = f"{self.model}-d{self.embedding_dim}-l{self.num_layers}-n{self.max_len}"
        key += f"-e{self.epochs}"
        return key if self.data_fraction == 1.0 else f"{key}-f{self.data_fraction:g}"

    def model_settings(self) -> dict[str, Any]:
        """The model-config fields the run sets (the others keep train-offline's defaults)."""
        return {
            "embedding_dim": self.embedding_dim,
            "num_layers": self.num_layers,
            "max_len": self.max_len,
        }


class GridSettings(BaseModel):
    """What every run of a grid shares: the data and the training settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: str
    format: str = "auto"
    num_negatives: int = 128
    batch_size: int = 64
    lr: float = 1e-3
    exclude_seen: bool = False
    seed: int = 0
    threads: int = 1

    def train_offline_args(self, spec: RunSpec, out: Path) -> list[str]:
        """The ``genrec train-offline`` command line of ``spec``."""
        return [
            *("train-offline", "--model", spec.model, "--data", self.data),
            *("--format", self.format, "--out", str(out), "--split", "holdout"),
            *("--epochs", str(spec.epochs), "--embedding-dim", str(spec.embedding_dim)),
            *("--num-layers", str(spec.num_layers), "--max-len", str(spec.max_len)),
            *("--num-negatives", str(self.num_negatives), "--batch-size", str(self.batch_size)),
            *("--lr", str(self.lr), "--seed", str(self.seed), "--threads", str(self.threads)),
            *("--train-fraction", str(spec.data_fraction)),
            "--exclude-seen" if self.exclude_seen else "--no-exclude-seen",
            *("--no-progress", "--json", "--log-level", "WARNING"),
        ]


def parse_size(text: str) -> tuple[int, int, int]:
    """``DxLxN`` (embedding width, layers, sequence length) -> (D, L, N)."""
    match = SIZE_PATTERN.match(text.strip())
    if match is None or min(int(g) for g in match.groups()) < 1:
        raise ValueError(
            f"--sizes: {text!r} is not DxLxN (embedding width x layers x max length, each "
            ">= 1), e.g. 32x2x100"
        )
    d, layers, n = (int(g) for g in match.groups())
    return d, layers, n


def grid_specs(
    models: Sequence[str],
    sizes: Sequence[tuple[int, int, int]],
    epochs: Sequence[int],
    fractions: Sequence[float] = (1.0,),
) -> list[RunSpec]:
    """Every (model, size, epochs, data fraction) combination."""
    unknown = sorted(set(models) - set(SCALING_MODELS))
    if unknown:
        raise ValueError(f"--models: {', '.join(unknown)} not in {', '.join(SCALING_MODELS)}")
    if not models or not sizes or not epochs or min(epochs) < 1:
        raise ValueError("a grid needs at least one model, one size and epochs >= 1")
    if not fractions or not all(0.0 < f <= 1.0 for f in fractions):
        raise ValueError("--data-fractions: each share of the users must be in (0, 1]")
    return [
        RunSpec(model=m, embedding_dim=d, num_layers=layers, max_len=n, epochs=e, data_fraction=f)
        for m in models
        for d, layers, n in sizes
        for e in epochs
        for f in fractions
    ]


@dataclass(frozen=True)
class RunCost:
    """What a run costs and holds, known before it trains."""

    flops: int
    dense_params: int
    embedding_params: int


def run_cost(spec: RunSpec, train: SequenceDataset, num_negatives: int, seed: int) -> RunCost:
    """Training FLOPs of ``spec`` on ``train`` (every epoch trains on the same windows:
    train-offline's "all" windows, of the users its data fraction and ``seed`` draw) and its
    parameters: the item table (embedding) and the rest (dense, the position table
    included)."""
    windows = TrainingWindows.build(train, spec.max_len, "all")
    windows = windows.of_users_fraction(spec.data_fraction, seed)
    per_epoch = TokenCounts.of_lengths(windows.lengths)
    config = spec.model_settings()
    flops = training_flops(spec.model, config, per_epoch.times(spec.epochs), num_negatives)
    model = build_model(spec.model, {**config, "num_rows": train.num_items + 1})
    embedding = sum(p.numel() for p in model.item_emb.parameters())
    dense = sum(p.numel() for p in model.parameters()) - embedding
    return RunCost(flops=flops, dense_params=dense, embedding_params=embedding)


def read_result(run_dir: Path) -> dict[str, Any] | None:
    """A finished run's result, or None when the run has not finished."""
    path = run_dir / RESULT_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # a damaged file: the run trains again


def finished_results(specs: Sequence[RunSpec], out_dir: Path) -> dict[str, dict[str, Any]]:
    """The results of the runs of ``specs`` that finished in ``out_dir``, by run name."""
    results = {}
    for spec in specs:
        kept = read_result(out_dir / "runs" / spec.key)
        if kept is not None:
            results[spec.key] = kept
    return results


class GridStopped(Exception):
    """The grid was asked to stop (SIGTERM / SIGINT); the finished runs stay."""


def run_one(
    spec: RunSpec,
    settings: GridSettings,
    cost: RunCost,
    run_dir: Path,
    timeout_s: float | None = None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Train ``spec`` in a fresh ``genrec train-offline`` process (stopped after
    ``timeout_s`` seconds, when given, or when ``stop`` is set: ``GridStopped``) and write
    its result."""
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an unfinished attempt: start clean
    run_dir.mkdir(parents=True)
    command = [sys.executable, "-m", "pipeline.cli", *settings.train_offline_args(spec, run_dir)]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while True:
        try:
            stdout, stderr = child.communicate(timeout=STOP_POLL_S)
            break
        except subprocess.TimeoutExpired:
            late = timeout_s is not None and time.perf_counter() - started > timeout_s
            if late or (stop is not None and stop.is_set()):
                _end(child)  # never leave a training process behind
                if late:
                    raise RuntimeError(
                        f"run {spec.key} did not finish in {timeout_s:.0f} s; raise "
                        "--run-timeout or shrink the run"
                    ) from None
                raise GridStopped(spec.key) from None
    wall = time.perf_counter() - started
    (run_dir / "train-offline.log").write_text(stdout + stderr)
    if child.returncode != 0:
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(
            f"run {spec.key} failed (exit {child.returncode}): {tail}; its log: "
            f"{run_dir / 'train-offline.log'}"
        )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)  # the grid keeps metrics only
    history = metrics.get("valid_history", [])
    result = {
        "run": spec.key,
        **spec.model_dump(),
        "flops": cost.flops,
        "dense_params": cost.dense_params,
        "embedding_params": cost.embedding_params,
        "wall_seconds": round(wall, 3),
        "train_seconds": metrics["seconds"],
        "best_epoch": metrics["epoch"],
        "train_loss": [h["train_loss"] for h in history],
        "valid": metrics["valid_by_protocol"],
        "test": metrics["test_by_protocol"],
    }
    tmp = run_dir / f".{RESULT_FILE}.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, run_dir / RESULT_FILE)  # last: its presence means the run finished
    return result


def _end(child: subprocess.Popen[str]) -> None:
    """Terminate ``child``, killing it if it does not exit within a few seconds."""
    child.terminate()
    try:
        child.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()


def eta_seconds(done: list[tuple[int, float]], remaining_flops: Sequence[int]) -> float | None:
    """Seconds the remaining runs should take, from the finished runs' (FLOPs, wall
    seconds): each run costs the fixed overhead (the least wall time seen: process start,
    data, evaluation) plus the FLOP rate of the rest; None before any run has finished."""
    if not done:
        return None
    overhead = min(wall for _, wall in done)
    per_flop = sum(wall - overhead for _, wall in done) / max(sum(f for f, _ in done), 1)
    return sum(overhead + per_flop * f for f in remaining_flops)


def run_grid(
    specs: Sequence[RunSpec],
    settings: GridSettings,
    train: SequenceDataset,
    out_dir: Path,
    report: Callable[[str], None] = log.info,
    run_timeout_s: float | None = None,
    stop: threading.Event | None = None,
) -> list[dict[str, Any]]:
    """Run every spec not finished in ``out_dir`` (cheapest first); every run's result.
    ``GridStopped`` when ``stop`` is set (the running run is ended, unfinished)."""
    costs = {
        spec.key: run_cost(spec, train, settings.num_negatives, settings.seed) for spec in specs
    }
    order = sorted(specs, key=lambda s: (costs[s.key].flops, s.key))
    results = finished_results(order, out_dir)
    done: list[tuple[int, float]] = []  # (FLOPs, wall seconds) of the runs trained here
    for index, spec in enumerate(order, start=1):
        if spec.key in results:
            report(f"[{index}/{len(order)}] {spec.key}: finished before, skipped")
            continue
        if stop is not None and stop.is_set():
            raise GridStopped(spec.key)
        result = run_one(
            spec, settings, costs[spec.key], out_dir / "runs" / spec.key, run_timeout_s, stop
        )
        results[spec.key] = result
        done.append((result["flops"], result["wall_seconds"]))
        left = [costs[s.key].flops for s in order[index:] if s.key not in results]
        eta = eta_seconds(done, left)
        test = result["test"]["exclude-seen" if settings.exclude_seen else "all-items"]
        report(
            f"[{index}/{len(order)}] {spec.key}: {result['flops']:.3g} FLOPs, "
            f"{result['wall_seconds']:.0f} s, test ndcg@10 {test['ndcg@10']:.4f} "
            f"hr@100 {test['hr@100']:.4f}; grid ETA "
            f"{'?' if eta is None else f'{eta / 60:.1f} min'}"
        )
    return [results[spec.key] for spec in order]
