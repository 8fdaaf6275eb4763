"""Delta checkpoints: only changed item rows are written, a chain restores bit-identically,
and a writer killed during a delta leaves the previous chain loadable."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from waits import read_line

from pipeline.lake.synthetic import SyntheticConfig
from pipeline.sources.synthetic import SyntheticSource
from pipeline.stream import rowdelta
from pipeline.stream.checkpoint import CheckpointStore
from pipeline.stream.config import load_config
from pipeline.stream.deadletter import MemoryDeadLetterSink
from pipeline.stream.persistence import metric_blobs
from pipeline.stream.trainer import OnlineTrainer

REPO = Path(__file__).resolve().parents[2]
SYNTHETIC = {"num_users": 60, "num_items": 150, "num_clusters": 6, "events_per_user": 30}


def overrides(tmp_path: Path, name: str, **checkpoint: Any) -> dict[str, Any]:
    return {
        "run_dir": str(tmp_path / f"run-{name}"),
        "store": {"max_len": 10},
        "vocab": {"capacity": 20_000},
        "model": {"embedding_dim": 16},
        "train": {"batch_events": 64, "num_negatives": 16, "threads": 1, "max_events": 1280},
        "checkpoint": {"dir": str(tmp_path / name), "every_events": 128, **checkpoint},
        "observability": {"prometheus_port": 0},
    }


def trainer(cfg_overrides: dict[str, Any], directory: Path | None = None) -> OnlineTrainer:
    cfg = load_config(overrides=cfg_overrides, environ={})
    return OnlineTrainer(
        cfg,
        SyntheticSource(SyntheticConfig(**SYNTHETIC), events_per_record=64),
        MemoryDeadLetterSink(),
        checkpoints=CheckpointStore(directory or cfg.checkpoint.dir),
    )


def nested_equal(a: Any, b: Any) -> bool:
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(nested_equal(a[k], b[k]) for k in a)
        )
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(nested_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def same_state(a: OnlineTrainer, b: OnlineTrainer) -> bool:
    return (
        nested_equal(a.state.model.state_dict(), b.state.model.state_dict())
        and nested_equal(a.state.optimizer.state_dict(), b.state.optimizer.state_dict())
        and a.state.store.snapshot() == b.state.store.snapshot()
        and a.state.vocab.snapshot() == b.state.vocab.snapshot()
        and a.state.progressive.snapshot() == b.state.progressive.snapshot()
        and metric_blobs(a.state) == metric_blobs(b.state)
        and a.state.counters == b.state.counters
        and a.source.positions() == b.source.positions()
    )


@pytest.mark.parametrize(
    ("capacity", "learn", "tasks"),
    [
        (20_000, True, []),
        (120, False, []),  # 120 rows < 150 items: rows are reset for new items
        (20_000, True, ["seen:action:0", "high:value>=4@0.5"]),  # ranking heads and metrics
    ],
    ids=["learning", "frozen-with-row-reuse", "learning-with-ranking-heads"],
)
def test_a_restored_chain_is_bit_identical_to_a_full_snapshot(
    tmp_path: Path, capacity: int, learn: bool, tasks: list[str]
) -> None:
    cfg = overrides(tmp_path, "chain", full_every=4)
    cfg["vocab"] = {"capacity": capacity, "ttl_s": 5 * 24 * 3600}
    cfg["train"]["learn"] = learn
    cfg["model"]["ranking_tasks"] = tasks
    first = trainer(cfg)
    first.run()
    if not learn:
        assert (
            first.state.vocab.counters["evicted_capacity"]
            + first.state.vocab.counters["evicted_ttl"]
        )
    store = CheckpointStore(cfg["checkpoint"]["dir"])
    kinds = [bool(store.load(seq).parents) for seq in store.sequences()]
    # full at least every 4th (earlier when the deltas outgrow half the full one)
    assert not kinds[0] and any(kinds) and "1111" not in "".join(map(str, map(int, kinds)))
    if (
        learn and not tasks
    ):  # (frozen, the dense parameters outweigh the 120 rows: fulls come sooner)
        assert kinds[:6] == [False, True, True, True, False, True], kinds
    # restore the newest delta: it holds the final state (a full one may follow at exit)
    seqs = store.sequences()
    latest = store.load(max(seq for seq, delta in zip(seqs, kinds, strict=True) if delta))
    assert latest.parents and latest.meta["delta"]
    assert latest.meta["counters"] == dict(first.state.counters)
    for seq in seqs:
        if seq > latest.seq:
            shutil.rmtree(store.load(seq).path)
    first.persistence.checkpoints = CheckpointStore(tmp_path / "full")
    first.checkpoint(full=True)

    resumed = []
    for directory in (None, tmp_path / "full"):
        # one after the other: dropout draws from torch's global generator
        t = trainer(cfg, directory)
        assert t.restore() and same_state(t, first)
        t.run()  # and they go on identically, from a delta on what they restored
        resumed.append(t)
    from_chain, from_full = resumed
    if tasks:
        assert from_chain.state.ranking is not None and from_chain.state.ranking.count[0] > 0
    assert from_chain.persistence.resumed_from == str(latest.path)
    assert same_state(from_chain, from_full)
    assert from_chain.state.counters["events_trained"] > first.state.counters["events_trained"]


def test_a_delta_writes_only_the_changed_rows(tmp_path: Path) -> None:
    cfg = overrides(tmp_path, "sizes")
    cfg["train"]["max_events"] = 128
    t = trainer(cfg)
    t.run()  # one full checkpoint at exit
    full = sum(f.stat().st_size for f in t.checkpoint(full=True).iterdir())
    t.run()  # 128 more events, then a delta
    store = CheckpointStore(cfg["checkpoint"]["dir"])
    latest = store.latest()
    assert latest is not None and latest.parents and latest.meta["delta"]
    delta = sum(len(blob) for blob in latest.state.values())
    changed = torch.load(__import__("io").BytesIO(latest.state["item_rows"]), weights_only=True)
    live = set(t.state.vocab.live_rows().tolist())
    assert set(changed["index"].tolist()) <= live | {0}
    # 20,000 rows x 16 floats x 3 (table, two moments) in the full one; ~150 rows here
    assert delta < 0.05 * full, (delta, full)


def test_dense_adam_always_writes_full_checkpoints(tmp_path: Path) -> None:
    cfg = overrides(tmp_path, "dense")
    cfg["train"]["sparse_embeddings"] = False
    cfg["train"]["max_events"] = 512
    trainer(cfg).run()
    store = CheckpointStore(cfg["checkpoint"]["dir"])
    assert len(store.sequences()) >= 3
    assert all(not store.load(seq).parents for seq in store.sequences())


def test_compose_refuses_a_delta_that_does_not_fit() -> None:
    base = {"model": {"item_emb.weight": torch.zeros(5, 2), "w": torch.ones(5, 2)}}
    rest = {"model": {"w": torch.full((5, 2), 2.0)}}
    rows = {"index": torch.tensor([1, 3]), "weight": torch.ones(2, 2)}
    out = rowdelta.compose(base, [(rest, rows)])
    assert out["model"]["item_emb.weight"][:, 0].tolist() == [0, 1, 0, 1, 0]
    assert torch.equal(out["model"]["w"], rest["model"]["w"])  # a dense tensor of 5 rows too
    for bad, message in [
        ({"index": torch.tensor([5]), "weight": torch.ones(1, 2)}, "outside the table"),
        ({"index": torch.tensor([1]), "weight": torch.ones(1, 3)}, "not of shape"),
        ({"index": torch.tensor([1.0]), "weight": torch.ones(1, 2)}, "1-D int64"),
        ({"index": torch.tensor([1]), "exp_avg": torch.ones(1, 2)}, "holds rows of"),
    ]:
        with pytest.raises(ValueError, match=message):
            rowdelta.compose(base, [(rest, bad)])


# The child writes a chain, then blocks in the middle of its next delta until killed.
_KILLED_DURING_A_DELTA = """
import json, sys, time
sys.path[:0] = sys.argv[2:]
from pipeline.stream import checkpoint
from test_delta_checkpoints import trainer

t = trainer(json.loads(sys.argv[1]))
t.run()
real_write = checkpoint._write_synced

def write(path, blob):
    written = real_write(path, blob)
    if path.name == "item_rows":
        print("READY", flush=True)
        time.sleep(600)
    return written

checkpoint._write_synced = write
t.run()
"""


@pytest.mark.timeout(300)
def test_sigkill_during_a_delta_write_leaves_the_previous_chain_loadable(tmp_path: Path) -> None:
    cfg = overrides(tmp_path, "killed", full_every=100)
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _KILLED_DURING_A_DELTA,
            json.dumps(cfg),
            str(Path(__file__).parent),
            str(REPO / "tests"),
        ],
        stdout=subprocess.PIPE,
        cwd=REPO,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert read_line(child.stdout, 240, "the child to block in a delta").strip() == "READY"
        (partial,) = Path(cfg["checkpoint"]["dir"]).glob(".tmp-*")
        assert [p.name for p in partial.iterdir()] == ["item_rows"]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    store = CheckpointStore(cfg["checkpoint"]["dir"])
    latest = store.latest()
    assert latest is not None and latest.parents  # the previous delta, with its chain
    assert not partial.exists()
    resumed = trainer(cfg)
    assert resumed.restore() and resumed.persistence.resumed_from == str(latest.path)
    assert resumed.state.counters["events_trained"] == latest.meta["counters"]["events_trained"] > 0
    resumed.run()
    # the chain goes on from there
    assert latest.seq in [p.seq for p in store.latest().parents]
