"""Trainer wiring: config precedence, --help, Prometheus, resume, SIGTERM, row reuse."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from waits import wait_until

from connectors.registry import Registry
from pipeline.cli import build_parser
from pipeline.lake.synthetic import SyntheticConfig
from pipeline.sources.synthetic import SyntheticSource
from pipeline.stream.checkpoint import CheckpointStore
from pipeline.stream.config import describe_options, load_config
from pipeline.stream.deadletter import MemoryDeadLetterSink
from pipeline.stream.observability import TrainerMetrics
from pipeline.stream.persistence import RestoreRefusedError
from pipeline.stream.trainer import OnlineTrainer

REPO = Path(__file__).resolve().parents[2]


def small_cfg(tmp_path: Path, **train):
    return load_config(
        overrides={
            "run_dir": str(tmp_path / "run"),
            "store": {"max_len": 10},
            "vocab": {"capacity": 120, "ttl_s": 5 * 24 * 3600},
            "model": {"embedding_dim": 16},
            "train": {"batch_events": 64, "num_negatives": 16, "threads": 1, **train},
            "checkpoint": {"dir": str(tmp_path / "ckpt"), "every_events": 500},
            "registry": {"uri": str(tmp_path / "registry"), "every_events": 1000},
            "observability": {"prometheus_port": 0},
        },
        environ={},
    )


def test_config_precedence_yaml_env_overrides(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("train:\n  lr: 0.5\n  seed: 3\nstore:\n  max_len: 30\n")
    env = {"GENREC_TRAIN__LR": "0.25", "GENREC_SOURCE__SYNTHETIC__NUM_USERS": "42"}
    cfg = load_config(path, overrides={"train": {"seed": 9}}, environ=env)
    assert (cfg.train.lr, cfg.train.seed, cfg.store.max_len) == (0.25, 9, 30)
    assert cfg.source.synthetic.num_users == 42
    assert cfg.max_targets == 15
    with pytest.raises(ValueError, match="lrr"):
        load_config(overrides={"train": {"lrr": 1}}, environ={})
    with pytest.raises(ValueError, match=r"source\.path"):
        load_config(overrides={"source": {"kind": "file"}}, environ={})


def test_cli_flags_and_set_items_override_the_config(tmp_path, monkeypatch):
    from pipeline.commands.train import config_from_args

    monkeypatch.setenv("GENREC_TRAIN__LR", "0.25")
    args = build_parser().parse_args(
        ["train", "--run-dir", "2024", "--lr", "0.5", "--no-publish",
         "--set", "source.synthetic.num_users=3", "--set", "source.synthetic.seed=4"]
    )  # fmt: skip
    cfg = config_from_args(args)
    assert cfg.run_dir == "2024" and cfg.train.lr == 0.5 and not cfg.registry.enabled
    assert (cfg.source.synthetic.num_users, cfg.source.synthetic.seed) == (3, 4)


def test_help_documents_every_config_key(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = capsys.readouterr().out
    for line in describe_options():
        key = line.split(" (default")[0].strip()
        assert key in text
    assert "--max-events" in text and "--source" in text


def test_prometheus_endpoint_serves_trainer_metrics():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    metrics = TrainerMetrics(port=port)
    metrics.add_rejects({"bad_json": 3})
    metrics.set_consumer_lag("events:0", 17)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'genrec_rejected_total{reason="bad_json"} 3.0' in body
    assert 'genrec_consumer_lag{partition="events:0"} 17.0' in body


def test_resume_continues_counters_positions_and_version_chain(tmp_path):
    synthetic = SyntheticConfig(
        num_users=100, num_items=300, num_clusters=10, events_per_user=40, churn=0.3
    )
    cfg = small_cfg(tmp_path, max_events=1200)
    registry = Registry.open(cfg.registry.uri, create=True)

    def trainer():
        return OnlineTrainer(
            cfg,
            SyntheticSource(synthetic, events_per_record=64),
            MemoryDeadLetterSink(),
            checkpoints=CheckpointStore(cfg.checkpoint.dir),
            registry=registry,
        )

    first = trainer()
    assert not first.restore()
    s1 = first.run()
    second = trainer()
    assert second.restore()
    s2 = second.run()
    assert s1["events_trained"] == 1216  # whole records of 64: the bound ends at a boundary
    assert s2["events_trained"] == 2 * 1216
    ckpt = CheckpointStore(cfg.checkpoint.dir).latest()
    assert ckpt.meta["source_positions"] == {"synthetic": 2 * 1216 // 64}
    versions = registry.list_versions()
    assert [m.parent for m in versions] == [None, *[m.version for m in versions[:-1]]]
    # capacity 120 < 300 items with churn: rows were evicted and reused without trouble
    assert (
        second.state.vocab.counters["evicted_capacity"] + second.state.vocab.counters["evicted_ttl"]
        > 0
    )
    assert np.isfinite(s2["progressive_cumulative"]["ndcg@10"])
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) >= 2 and "window" in json.loads(lines[-1])


def test_restore_names_the_differing_settings_and_reads_older_checkpoints(tmp_path):
    def trainer(cfg, store_dir):
        return OnlineTrainer(
            cfg,
            SyntheticSource(SyntheticConfig(num_users=40, num_items=100), events_per_record=64),
            MemoryDeadLetterSink(),
            checkpoints=CheckpointStore(store_dir),
        )

    def with_model(cfg, **model):
        return cfg.model_copy(update={"model": cfg.model.model_copy(update=model)})

    legacy = with_model(small_cfg(tmp_path, max_events=300), layer_norm="affine", init="genrec")
    trainer(legacy, legacy.checkpoint.dir).run()
    ckpt = CheckpointStore(legacy.checkpoint.dir).latest()
    # as written before model.layer_norm, model.init, the action inputs, ranking and HSTU's
    # form existed
    meta = json.loads(json.dumps(ckpt.meta))
    for key in (
        "layer_norm",
        "init",
        "action_inputs",
        "value_boundaries",
        "ranking_tasks",
        "ranking_hidden",
        "attention_alpha",
        "hstu_output",
        "attention_bias_init",
    ):
        del meta["shape_config"]["model"][key]
    old_dir = tmp_path / "old-ckpt"
    state = {name: blob for name, blob in ckpt.state.items() if name != "ranking"}
    CheckpointStore(old_dir).save(state, meta)
    with pytest.raises(
        RestoreRefusedError, match=r"model\.layer_norm: checkpoint 'affine', this run 'plain'"
    ):
        trainer(small_cfg(tmp_path), old_dir).restore()
    wider = with_model(legacy, embedding_dim=8)
    with pytest.raises(
        RestoreRefusedError, match=r"model\.embedding_dim: checkpoint 16, this run 8"
    ):
        trainer(wider, old_dir).restore()
    assert trainer(legacy, old_dir).restore()


def test_sparse_embeddings_resume_and_refuse_a_dense_optimizer_state(tmp_path):
    def trainer(cfg):
        return OnlineTrainer(
            cfg,
            SyntheticSource(SyntheticConfig(num_users=40, num_items=100), events_per_record=64),
            MemoryDeadLetterSink(),
            checkpoints=CheckpointStore(cfg.checkpoint.dir),
        )

    sparse = small_cfg(tmp_path, max_events=300)  # the default
    first = trainer(sparse)
    initial = first.state.model.item_emb.weight.detach().clone()
    first.run()
    weight = first.state.model.item_emb.weight.detach()
    # 100 item keys, rows handed out lowest first: rows 101.. never served an item
    assert int(first.state.vocab.live_rows().max()) <= 100 < weight.shape[0] - 1
    assert torch.equal(weight[101:], initial[101:])
    assert not torch.equal(weight[1:101], initial[1:101])
    parts = {"store_batch", "evaluate", "forward_backward", "optimizer"}
    assert set(first.state.step_seconds) == parts and all(
        v > 0 for v in first.state.step_seconds.values()
    )
    second = trainer(sparse)
    assert second.restore()
    assert torch.equal(second.state.model.item_emb.weight, first.state.model.item_emb.weight)
    second.run()
    assert second.state.counters["events_trained"] > first.state.counters["events_trained"]
    dense = small_cfg(tmp_path, max_events=300, sparse_embeddings=False)
    with pytest.raises(RestoreRefusedError, match=r"train\.sparse_embeddings=true"):
        trainer(dense).restore()


@pytest.mark.slow
def test_sigterm_finishes_batch_checkpoints_and_exits_zero(tmp_path):
    cmd = [
        sys.executable, "-m", "pipeline.cli", "train",
        "--source", "synthetic", "--set", "source.synthetic.num_users=2000",
        "--metrics-port", "0", "--threads", "1", "--batch-events", "64",
        "--checkpoint-every-events", "256", "--no-publish", "--checkpoint-dir", "checkpoints",
        "--set", "model.embedding_dim=16", "--set", "store.max_len=10",
        "--set", "vocab.capacity=1001",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    ckpt_dir = tmp_path / "checkpoints"
    wait_until(lambda: list(ckpt_dir.glob("ckpt-*")), 120, "the trainer's first checkpoint")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]
    ckpt = CheckpointStore(ckpt_dir).latest()
    counters = ckpt.meta["counters"]
    assert 0 < counters["events_trained"] < 2000 * 60  # stopped early, not at the end
    assert counters["events_trained"] == ckpt.meta["source_positions"]["synthetic"] * 64
