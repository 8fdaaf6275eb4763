"""Does a backfill warm start pay? Progressive NDCG@10 / HR@10 after a cut-off T; one JSON object.

One synthetic stream (``pipeline.lake.synthetic``), T at ``--cutoff`` of its events (a time
quantile). Three trainers score (test, then train) the same events from T on:

- **full**: ``genrec train`` that streamed all history before T as well;
- **warm**: the documented flow: ``backfill sequences --until T`` on the lake (the stream as
  Parquet), ``train-offline --data`` on its shards (the trainer's model shape, every other
  setting train-offline's default), ``backfill bootstrap --until T --weights``, then the
  trainer resumes from that checkpoint over the stream (it skips what the backfill had);
- **cold**: a fresh trainer that sees only the events from T on.

Every trainer runs the default configuration (``load_config`` with no overrides but the
bench's directories and the Prometheus port). Target (issue 14): warm >= 90% of full and
clearly above cold.

    python3 bench/warm_start.py --users 2000 --events-per-user 60
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from pipeline.backfill.bootstrap import BootstrapJob, run_bootstrap
from pipeline.backfill.sequences import SequencesJob, run_sequences
from pipeline.cli import main as genrec
from pipeline.lake.datasets import EventLog
from pipeline.lake.synthetic import SyntheticConfig, generate_events
from pipeline.offline.config import HSTU_LAYER_NORM
from pipeline.sources.eventlog import EventLogSource
from pipeline.stream.checkpoint import CheckpointStore
from pipeline.stream.config import TrainerConfig, load_config
from pipeline.stream.deadletter import MemoryDeadLetterSink
from pipeline.stream.trainer import OnlineTrainer

K = 10


def metrics(ranks: np.ndarray) -> dict[str, float]:
    hit = ranks <= K
    return {
        f"ndcg@{K}": float(np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0).mean()),
        f"hr@{K}": float(hit.mean()),
        "targets": int(ranks.size),
    }


def config(root: Path, name: str) -> TrainerConfig:
    return load_config(
        overrides={
            "run_dir": str(root / name / "run"),
            "checkpoint": {"dir": str(root / name / "ckpt")},
            "observability": {"prometheus_port": 0},
            "registry": {"enabled": False},
        },
        environ={},
    )


def trainer_over(cfg: TrainerConfig, log: EventLog, resume: bool = False) -> OnlineTrainer:
    """A trainer reading ``log`` (time order), resumed from ``cfg``'s checkpoints if asked."""
    trainer = OnlineTrainer(
        cfg,
        EventLogSource(lambda: log, "synthetic"),
        MemoryDeadLetterSink(),
        checkpoints=CheckpointStore(cfg.checkpoint.dir),
    )
    if resume and not trainer.restore():
        raise RuntimeError(f"no checkpoint in {cfg.checkpoint.dir}")
    return trainer


def stream(trainer: OnlineTrainer, until: int, label: str) -> np.ndarray:
    """Run ``trainer`` over its source; the ranks of its targets from ``until`` on."""
    source = trainer.source
    assert isinstance(source, EventLogSource)
    ranks = []
    with tqdm(total=source.num_records, desc=label, unit="rec", file=sys.stderr) as bar:
        while not source.exhausted():
            records = source.poll(1, 0.0)
            for step in trainer.process_records(records):
                ranks.append(step.ranks[step.target_times >= until])
            bar.update(len(records))
    return np.concatenate(ranks)


def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    log = generate_events(
        SyntheticConfig(
            num_users=args.users, num_items=args.items, events_per_user=args.events_per_user,
            seed=args.seed,
        )
    ).sorted_by_time()  # fmt: skip
    until = int(np.quantile(log.timestamp, args.cutoff))
    lake = root / "lake"
    lake.mkdir()
    n = len(log)
    table = pa.table(
        {"user_id": log.user, "item_id": log.item, "action": np.zeros(n, np.int64),
         "timestamp": log.timestamp}
    )  # fmt: skip
    pq.write_table(table, lake / "events.parquet")
    seconds: dict[str, float] = {}

    clock = time.perf_counter()
    full = stream(trainer_over(config(root, "full"), log), until, "full")
    seconds["full_stream"] = time.perf_counter() - clock

    clock = time.perf_counter()
    run_sequences(SequencesJob((str(lake / "*.parquet"),), str(root / "shards"), until=until))
    seconds["backfill_sequences"] = time.perf_counter() - clock
    warm_cfg = config(root, "warm")
    m = warm_cfg.model
    # train-offline has no flag for the layer norms: its default must be the trainer's
    assert m.layer_norm == HSTU_LAYER_NORM, (m.layer_norm, HSTU_LAYER_NORM)
    clock = time.perf_counter()
    offline_argv = [
        "train-offline", "--data", str(root / "shards"), "--out", str(root / "offline"),
        "--no-progress", "--json", "--threads", str(args.threads),
        "--embedding-dim", str(m.embedding_dim), "--num-layers", str(m.num_layers),
        "--num-heads", str(m.num_heads), "--max-len", str(warm_cfg.store.max_len),
    ]  # fmt: skip
    if args.epochs is not None:
        offline_argv += ["--epochs", str(args.epochs)]
    with contextlib.redirect_stdout(sys.stderr):  # stdout is this bench's JSON
        assert genrec(offline_argv) == 0
    seconds["train_offline"] = time.perf_counter() - clock
    clock = time.perf_counter()
    boot = run_bootstrap(
        BootstrapJob(
            (str(lake / "events.parquet"),), until, warm_cfg, weights=str(root / "offline")
        )
    )
    seconds["bootstrap"] = time.perf_counter() - clock
    clock = time.perf_counter()
    warm = stream(trainer_over(warm_cfg, log, resume=True), until, "warm")
    seconds["warm_stream"] = time.perf_counter() - clock

    after = log.take(np.flatnonzero(log.timestamp >= until))
    clock = time.perf_counter()
    cold = stream(trainer_over(config(root, "cold"), after), until, "cold")
    seconds["cold_stream"] = time.perf_counter() - clock

    result = {
        "config": vars(args),
        "events": n,
        "until": until,
        "bootstrap": {k: boot[k] for k in ("users", "items_held", "counts")},
        "full": metrics(full),
        "warm": metrics(warm),
        "cold": metrics(cold),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    ndcg = f"ndcg@{K}"
    result["warm_over_full"] = result["warm"][ndcg] / result["full"][ndcg]
    result["cold_over_full"] = result["cold"][ndcg] / result["full"][ndcg]
    result["accepted"] = bool(
        result["warm_over_full"] >= 0.9 and result["warm"][ndcg] > 1.2 * result["cold"][ndcg]
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--events-per-user", type=int, default=60)
    parser.add_argument("--cutoff", type=float, default=0.8, help="T as a time quantile")
    parser.add_argument("--epochs", type=int, help="train-offline epochs (default: its own)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="genrec-warm-") as workdir:
        result = run(args, Path(workdir))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
