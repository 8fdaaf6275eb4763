"""What one published version costs, full vs delta (issue 27, item 3); one JSON object.

Two trainers run the default configuration (``load_config``) on the default synthetic stream,
with an item table of ``--rows`` rows (``vocab.capacity``) and a publish every
``--events-between`` input events (``registry.every_events``; a checkpoint precedes each
publish, as always):

- **delta**: ``registry.full_every`` at its default: between full versions, a version holds
  the item rows changed since the previous one, the dense weights, the vocabulary and the
  config;
- **full**: ``registry.full_every=1``: every version is a full copy.

For every publish it records the version's bytes (by file) and the seconds the trainer spent
in it (``OnlineTrainer.publish``: serialising, writing, hashing, the manifest, the alias); for
the checkpoint before it, its seconds; and at the end the seconds ``load_version`` takes for
the newest version (a reader applies the chain). ``--live-items`` admits that many items to
the vocabulary before the stream starts (a warm catalogue: the vocabulary file, written whole
in every version, grows with the items it knows).

    python3 bench/publish_cost.py --rows 1000000
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from connectors.registry import Registry
from pipeline.commands.train import make_source
from pipeline.stream.checkpoint import CheckpointStore
from pipeline.stream.config import TrainerConfig, load_config
from pipeline.stream.deadletter import MemoryDeadLetterSink
from pipeline.stream.trainer import OnlineTrainer


def config(root: Path, args: argparse.Namespace, full_every: int | None) -> TrainerConfig:
    registry: dict[str, Any] = {
        "uri": str(root / "registry"),
        "every_events": args.events_between,
        "every_s": 1e9,  # the event count alone times publishes: runs compare exactly
    }
    if full_every is not None:
        registry["full_every"] = full_every
    return load_config(
        overrides={
            "run_dir": str(root / "run"),
            "checkpoint": {"dir": str(root / "ckpt")},
            "observability": {"prometheus_port": 0},
            "vocab": {"capacity": args.rows},
            "registry": registry,
            "train": {"max_events": args.events_between * args.publishes},
        },
        environ={},
    )


def measure(root: Path, args: argparse.Namespace, full_every: int | None) -> dict[str, Any]:
    cfg = config(root, args, full_every)
    registry = Registry.open(cfg.registry.uri, model=cfg.registry_model, create=True)
    trainer = OnlineTrainer(
        cfg,
        make_source(cfg),  # as genrec train makes it
        MemoryDeadLetterSink(),
        checkpoints=CheckpointStore(cfg.checkpoint.dir),
        registry=registry,
    )
    if args.live_items:
        keys = np.arange(10_000_000, 10_000_000 + args.live_items, dtype=np.int64)
        trainer.state.vocab.observe(keys, np.zeros(keys.size, dtype=np.int64))
    publishes: list[dict[str, Any]] = []
    checkpoint_s: list[float] = []
    publish, checkpoint = trainer.publish, trainer.checkpoint

    def timed_publish() -> int | None:
        clock = time.perf_counter()
        version = publish()
        seconds = time.perf_counter() - clock
        if version is not None:
            manifest = registry.show(version)
            publishes.append(
                {
                    "version": version,
                    "kind": "full" if manifest.delta_of is None else "delta",
                    "bytes": manifest.total_size,
                    "files": {name: e.size for name, e in sorted(manifest.files.items())},
                    "seconds": round(seconds, 4),
                }
            )
        return version

    def timed_checkpoint(*, full: bool = False) -> Path:
        clock = time.perf_counter()
        path = checkpoint(full=full)
        checkpoint_s.append(round(time.perf_counter() - clock, 4))
        return path

    trainer.publish = timed_publish  # type: ignore[method-assign]
    trainer.checkpoint = timed_checkpoint  # type: ignore[method-assign]
    trainer.run()
    clock = time.perf_counter()
    loaded = registry.load_version("latest")
    load_s = time.perf_counter() - clock
    by_kind = {kind: [p for p in publishes if p["kind"] == kind] for kind in ("full", "delta")}
    return {
        "full_every": cfg.registry.full_every,
        "events_trained": trainer.state.counters["events_trained"],
        "live_items": len(trainer.state.vocab),
        "publishes": publishes,
        "checkpoint_seconds": checkpoint_s,
        "median": {
            kind: {
                "bytes": statistics.median(p["bytes"] for p in rows),
                "seconds": round(statistics.median(p["seconds"] for p in rows), 4),
                "count": len(rows),
            }
            for kind, rows in by_kind.items()
            if rows
        },
        "load_latest": {
            "version": loaded.version,
            "chain": len(registry.chain(loaded.version)),
            "seconds": round(load_s, 4),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="item table rows")
    parser.add_argument("--publishes", type=int, default=10, help="versions per trainer")
    parser.add_argument(
        "--events-between", type=int, default=2000, help="input events between two publishes"
    )
    parser.add_argument(
        "--live-items", type=int, default=0, help="items admitted before the stream starts"
    )
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: tmp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        result = {
            "rows": args.rows,
            "events_between": args.events_between,
            "publishes": args.publishes,
            "live_items_added": args.live_items,
            "delta": measure(root / "delta", args, None),
            "full": measure(root / "full", args, 1),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
