"""What the online trainer reports of its state: Prometheus gauges, progress snapshots and the
run's summary.

``snapshot`` builds the record the progress line, the metrics log and the summary are made
of; ``set_gauges`` sets the Prometheus gauges from the same state; ``summary`` is the final
record a run returns and ``write_summary`` writes it to ``run_dir/summary.json``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from model.dlrm import DLRM
from pipeline.stream import ranking
from pipeline.stream.observability import TrainerMetrics
from pipeline.stream.state import TrainerState

NO_RETRIEVAL = "n/a: model.kind=dlrm ranks candidates only"


def snapshot(
    state: TrainerState, elapsed: float, done: int, run_events: int, dead_letters: dict[str, int]
) -> dict[str, Any]:
    """Where a run stands after ``elapsed`` seconds in which this process read ``done``
    events (``run_events``: the run's, which a restarted group rank began earlier). A
    ranking-only model (DLRM) has no retrieval figures: empty, with ``retrieval`` saying so."""
    retrieval = not isinstance(state.model, DLRM)
    return {
        "time": time.time(),
        "elapsed_s": elapsed,
        "events_seen": state.counters["events_seen"],
        "run_events": run_events,
        "events_trained": state.counters["events_trained"],
        "targets": state.counters["targets"],
        "events_per_s": done / elapsed,
        "loss": state.last_loss,
        "window": state.progressive.windowed() if retrieval else {},
        "cumulative": state.progressive.cumulative() if retrieval else {},
        **({} if retrieval else {"retrieval": NO_RETRIEVAL}),
        "ranking": ranking.figures(state.ranking),
        "rejected": dict(state.rejected),
        "dead_letters": dead_letters,
        "store_users": state.store.num_users,
        "vocab_size": len(state.vocab),
        "watermark": state.store.watermark,
        "published_version": state.last_published,
    }


def set_gauges(metrics: TrainerMetrics, state: TrainerState, snap: Mapping[str, Any]) -> None:
    """The Prometheus gauges of ``state`` and of its ``snapshot`` ``snap``."""
    metrics.store_users.set(state.store.num_users)
    metrics.store_events.set(state.store.num_events)
    metrics.vocab_size.set(len(state.vocab))
    metrics.set_window(snap["window"])
    metrics.set_ranking(snap["ranking"])
    metrics.rate.set(snap["events_per_s"])
    if state.store.watermark > 0:
        metrics.watermark.set(state.store.watermark)
    for kind, n in snap["dead_letters"].items():
        metrics.dead_letters.labels(kind=kind).set(n)


def summary(
    state: TrainerState,
    snap: Mapping[str, Any],
    *,
    stream_s: float,
    published: list[int],
    resumed_from: str | None,
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    """Final metrics, counters and published versions of a run whose last ``snapshot`` is
    ``snap``; ``extra``: more entries (a trainer group's totals)."""
    c = state.counters
    return {
        "events_seen": snap["events_seen"],  # since the first checkpoint
        "run_events": snap["run_events"],  # read by this run (what max_events bounds)
        "events_valid": c["events_valid"],
        "events_trained": c["events_trained"],
        "targets": c["targets"],
        "steps": c["steps"],  # micro-batches (optimizer steps when learning)
        "context_only": c["context_only"],
        "unknown_item": c["unknown_item"],
        "not_positive": c["not_positive"],  # new events the positives rule keeps as context
        "rejected": dict(state.rejected),
        "dead_letters": snap["dead_letters"],
        "progressive_window": snap["window"],
        "progressive_cumulative": snap["cumulative"],
        **({"retrieval": snap["retrieval"]} if "retrieval" in snap else {}),
        **({"ranking": snap["ranking"], "candidates": c["candidates"]} if snap["ranking"] else {}),
        "events_per_s": snap["events_per_s"],
        "elapsed_s": snap["elapsed_s"],
        "stream_s": stream_s,  # seconds from the run's first record to the end (0: none came)
        "published_versions": list(published),
        "resumed_from": resumed_from,
        "store_users": snap["store_users"],
        "vocab_size": snap["vocab_size"],
        **extra,
    }


def write_summary(run_dir: str | Path, out: Mapping[str, Any]) -> None:
    """``out`` as ``run_dir/summary.json`` (non-finite numbers as null)."""
    directory = Path(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "summary.json").write_text(json.dumps(_jsonable(out), indent=2) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value
