"""Acceptance (issue 14): the batch -> stream hand-off over a real broker is gapless per event.

One lake (drift, duplicate event ids, events out of order within the tolerance, >= 5%
malformed rows) is both a multi-file Parquet lake and a 3-partition topic (one Arrow record
per row in event-time order, keyed by user, stamped with the row's arrival time). (a) ``genrec train`` with
learning off streams the whole topic; (b) ``backfill bootstrap`` folds the lake before T and
``genrec train`` resumes from it over the topic, starting each partition at T. Store,
vocabulary, counters and the scored targets agree, and (b) read only the records from T on.

Three partitions are consumed in an order nobody fixes, so the settings avoid the rules that
depend on the order *across* users (user cap, vocabulary capacity); tests/backfill/
test_bootstrap.py covers those with a fixed order.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from backfill.handoff_lake import TOLERANCE_S, make_lake, store_contents, vocab_contents
from kafka import KafkaProducer

from connectors.kafka.producer import partition_for_key, user_key
from pipeline.backfill.bootstrap import BootstrapJob, run_bootstrap
from pipeline.commands.train import _train
from pipeline.state.vocab import ItemVocabulary
from pipeline.stream.checkpoint import CheckpointStore
from pipeline.stream.config import TrainerConfig, load_config
from pipeline.stream.persistence import checkpoint_store

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(600)]

PARTITIONS = 3
COMPARED = ("events_seen", "events_valid", "events_trained", "targets", "context_only",
            "unknown_item")  # fmt: skip


def config(root: Path, bootstrap: str, topic: str, max_events: int) -> TrainerConfig:
    return load_config(
        overrides={
            "source": {
                "kind": "kafka",
                "poll_timeout_s": 0.2,
                "kafka": {
                    "topic": topic,
                    "bootstrap_servers": bootstrap,
                    "group_id": f"group-{root.name}",
                    "session_timeout_s": 6,
                },
            },
            "store": {"max_len": 16, "tolerance_s": TOLERANCE_S},
            "vocab": {"capacity": 1000},
            "model": {"embedding_dim": 16, "num_layers": 1, "num_heads": 1},
            "train": {
                "learn": False,
                "batch_events": 32,
                "threads": 1,
                "num_negatives": 8,
                "max_events": max_events,
                "duration_s": 120,
            },
            "checkpoint": {"dir": str(root / "ckpt")},
            "run_dir": str(root / "run"),
            "observability": {"prometheus_port": 0, "targets_log": str(root / "targets")},
            "registry": {"enabled": False},
        },
        environ={},
    )


def final(cfg: TrainerConfig) -> dict:
    ckpt = CheckpointStore(cfg.checkpoint.dir).latest()
    assert ckpt is not None
    vocab = ItemVocabulary.restore(ckpt.state["vocab"])
    counters = ckpt.meta["counters"]
    return {
        "store": store_contents(checkpoint_store(ckpt), vocab),
        "vocab": vocab_contents(vocab),
        "counters": {k: counters.get(k, 0) for k in COMPARED},
        "rejected": ckpt.meta["rejected"],
        "records": counters["records"],
        "positions": ckpt.meta["source_positions"],
    }


def test_backfill_then_kafka_counts_every_event_once(
    kafka_bootstrap: str, create_topic, tmp_path: Path
) -> None:
    lake = make_lake(tmp_path / "lake", num_users=80)
    assert sum(lake.bad) >= 0.05 * len(lake.rows)
    topic = create_topic(partitions=PARTITIONS)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    arrival, payloads = lake.arrival_ms(), lake.payloads()
    for i in lake.time_order():  # the lake replayed in event-time order, as bootstrap folds it
        row, payload, stamp = lake.rows[i], payloads[i], arrival[i]
        key = None if row["user_id"] is None else user_key(row["user_id"])
        partition = 0 if key is None else partition_for_key(key, PARTITIONS)
        producer.send(topic, value=payload, key=key, partition=partition, timestamp_ms=stamp,
                      headers=[("codec", b"arrow")])  # fmt: skip
    producer.flush(timeout=30)
    producer.close()
    after = sum(t >= lake.until * 1000 for t in arrival)

    whole_cfg = config(tmp_path / "whole", kafka_bootstrap, topic, len(lake.rows))
    _train(whole_cfg, threading.Event())
    warm_cfg = config(tmp_path / "warm", kafka_bootstrap, topic, after)
    manifest = run_bootstrap(BootstrapJob([str(p) for p in lake.files], lake.until, warm_cfg))
    boot_targets = Path(warm_cfg.observability.targets_log or "").read_text().split()
    _train(warm_cfg, threading.Event())

    whole, warm = final(whole_cfg), final(warm_cfg)
    assert whole["counters"]["events_seen"] == len(lake.rows)
    assert warm["store"] == whole["store"]
    assert warm["vocab"] == whole["vocab"]
    assert warm["counters"] == whole["counters"]
    assert warm["rejected"] == whole["rejected"]
    assert {"duplicate", "missing_field", "bad_action"} <= set(whole["rejected"])
    assert warm["positions"] == whole["positions"]  # both at the end of every partition
    # (b) started at T: it read (about) the records from T on, not the whole topic.
    read = warm["records"] - manifest["trainer_counters"]["records"]
    assert after <= read < after + (len(lake.rows) - after) // 2
    all_targets = Path(whole_cfg.observability.targets_log or "").read_text().split()
    warm_targets = Path(warm_cfg.observability.targets_log or "").read_text().split()
    assert warm_targets[: len(boot_targets)] == boot_targets
    assert len(set(all_targets)) == len(all_targets) == whole["counters"]["targets"]
    assert sorted(warm_targets) == sorted(all_targets)  # each once, on one side of the seam
