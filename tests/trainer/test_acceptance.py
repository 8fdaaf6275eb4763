"""Acceptance tests of ``genrec train``: crash/restart exactly-once, and bad input.

The crash test SIGKILLs a real trainer subprocess at random moments while it replays a
JSONL stream and restarts it each time; the final checkpoint must count every valid event
exactly once and its sequence store must equal the one an uninterrupted pass builds.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from connectors.registry import Registry
from pipeline.cli import main
from pipeline.events import EventBatch, encode_json_rows
from pipeline.lake.synthetic import SyntheticConfig, generate_events
from pipeline.state.vocab import ItemVocabulary
from pipeline.stream.checkpoint import CheckpointStore
from pipeline.stream.deadletter import read_dead_letters
from pipeline.stream.persistence import checkpoint_store

REPO = Path(__file__).resolve().parents[2]
SMALL_MODEL = [
    "--metrics-port", "0",
    "--threads", "1",
    "--batch-events", "64",
    "--set", "model.embedding_dim=16",
    "--set", "store.max_len=12",
    "--set", "vocab.capacity=1000",
    "--set", "train.num_negatives=32",
    "--checkpoint-dir", "checkpoints",
    "--run-dir", "runs/train",
]  # fmt: skip


def write_stream(path: Path, num_users: int, seed: int) -> EventBatch:
    log = generate_events(
        SyntheticConfig(
            num_users=num_users, num_items=300, num_clusters=10, events_per_user=40, seed=seed
        )
    )
    batch = EventBatch.from_event_log(log)
    path.write_bytes(b"\n".join(encode_json_rows(batch)) + b"\n")
    return batch


def expected_histories(batch: EventBatch, max_len: int) -> dict[int, list[tuple[int, int]]]:
    """Per user, the last max_len (timestamp, item) pairs: what exactly-once leaves behind."""
    out: dict[int, list[tuple[int, int]]] = {}
    for u, i, t in zip(
        batch.user_id.tolist(), batch.item_id.tolist(), batch.timestamp.tolist(), strict=True
    ):
        out.setdefault(u, []).append((t, i))
    return {u: sorted(v, key=lambda e: e[0])[-max_len:] for u, v in out.items()}


def checkpoint_count(directory: Path) -> int:
    return len(list(directory.glob("ckpt-*"))) and max(
        int(p.name.split("-")[1]) for p in directory.glob("ckpt-*")
    )


def trained_position(directory: Path) -> int:
    """The stream position of the newest checkpoint (0 before the first)."""
    latest = CheckpointStore(directory).latest() if directory.exists() else None
    return 0 if latest is None else latest.meta["source_positions"]["file:events.jsonl"]


def verify_registry(uri: Path) -> list[int]:
    """Every published version's files (a delta's chain too) verify and load into a model
    and a vocabulary."""
    registry = Registry.open(uri)
    versions = registry.list_versions()
    for manifest in versions:
        assert len(registry.load_version(manifest.version).vocab) > 0
        assert manifest.source_positions and manifest.watermark is not None
    return [m.version for m in versions]


@pytest.mark.slow
@pytest.mark.timeout(600)  # five killed runs and a final one: minutes on a loaded machine
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path):
    stream = tmp_path / "events.jsonl"
    batch = write_stream(stream, num_users=300, seed=3)
    ckpt_dir = tmp_path / "checkpoints"
    cmd = [
        sys.executable, "-m", "pipeline.cli", "train",
        "--source", "file", "--path", str(stream),
        "--checkpoint-every-events", "300",
        "--publish-every-events", "1500",
        *SMALL_MODEL,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rng = random.Random(7)
    kills = 0
    attempts = 0
    while kills < 5:
        attempts += 1
        assert attempts < 15, f"only {kills} kills landed mid-stream in {attempts} runs"
        before = checkpoint_count(ckpt_dir) if ckpt_dir.exists() else 0
        with open(tmp_path / f"run{attempts}.log", "wb") as out:
            proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=out)
            # Kill at a random moment after this run has made progress (a new checkpoint).
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline:
                if ckpt_dir.exists() and checkpoint_count(ckpt_dir) > before:
                    time.sleep(rng.uniform(0.0, 0.5))
                    break
                time.sleep(0.02)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
        if trained_position(ckpt_dir) == len(batch):
            break  # the stream ended before the kill (a kill during exit is not mid-stream)
        kills += proc.returncode == -signal.SIGKILL
    # Finish the stream without interruptions.
    final = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, timeout=300)
    assert final.returncode == 0, final.stderr.decode()[-3000:]
    assert kills >= 5

    ckpt = CheckpointStore(ckpt_dir).latest()
    counters = ckpt.meta["counters"]
    assert counters["events_seen"] == len(batch)
    assert counters["events_trained"] == len(batch)
    assert counters["targets"] + counters["context_only"] + counters["unknown_item"] == len(batch)
    assert ckpt.meta["source_positions"] == {"file:events.jsonl": len(batch)}
    store = checkpoint_store(ckpt)  # the newest is usually a delta on earlier ones
    vocab = ItemVocabulary.restore(ckpt.state["vocab"])
    expected = expected_histories(batch, max_len=12)
    assert store.num_users == len(expected)
    for user, events in expected.items():
        h = store.user_history(user)
        items = [vocab.key_of(int(r)) for r in vocab.resolve(h["refs"])]
        assert list(zip(h["ts"].tolist(), items, strict=True)) == events, user
    assert not (tmp_path / "runs" / "train" / "deadletter.jsonl").read_bytes()
    assert len(verify_registry(tmp_path / "registry")) >= 2


BAD_RECORDS = {
    "bad_json": [b'{"user_id": 1, "item_id": 2', b"not json at all", b"", b"[1, 2, 3]"],
    "missing_field": [
        b'{"item_id": 5, "action": "view", "timestamp": 1600000000}',
        b'{"user_id": 5, "item_id": null, "action": "view", "timestamp": 1600000000}',
    ],
    "bad_type": [
        b'{"user_id": 1.5, "item_id": 2, "action": "view", "timestamp": 1600000000}',
        b'{"user_id": 1, "item_id": 2, "action": "view", "timestamp": "yesterday"}',
    ],
    "empty_id": [b'{"user_id": "", "item_id": 2, "action": "view", "timestamp": 1600000000}'],
    "oversized_id": [
        b'{"user_id": "'
        + b"u" * 300
        + b'", "item_id": 2, "action": "view", "timestamp": 1600000000}'
    ],
    "bad_action": [b'{"user_id": 1, "item_id": 2, "action": "teleport", "timestamp": 1600000000}'],
    "bad_timestamp": [b'{"user_id": 1, "item_id": 2, "action": "view", "timestamp": NaN}'],
    "timestamp_out_of_range": [
        b'{"user_id": 1, "item_id": 2, "action": "view", "timestamp": 1600000000000}'
    ],
    "bad_value": [
        b'{"user_id": 1, "item_id": 2, "action": "view", "timestamp": 1600000000, "value": 1e39}'
    ],
    "undecodable": [b'{"user_id": "\xff\xfe", "item_id": 2, "action": "view", "timestamp": 1}'],
}


def test_malformed_input_is_dead_lettered_by_reason_and_valid_events_all_train(
    tmp_path, monkeypatch
):
    good = write_stream(tmp_path / "good.jsonl", num_users=30, seed=5)
    good_lines = (tmp_path / "good.jsonl").read_bytes().splitlines()
    bad = [(reason, line) for reason, lines in BAD_RECORDS.items() for line in lines]
    bad = (bad * 30)[: len(good_lines) // 7]  # > 10% of the stream is malformed
    rng = random.Random(1)
    lines = [(None, line) for line in good_lines] + bad
    # Keep valid events in time order (the store would reject too-late ones); scatter bad ones.
    slots = sorted(rng.sample(range(len(lines)), len(bad)))
    merged, gi, bi = [], 0, 0
    for pos in range(len(lines)):
        if bi < len(slots) and slots[bi] == pos:
            merged.append(bad[bi])
            bi += 1
        else:
            merged.append((None, good_lines[gi]))
            gi += 1
    stream = tmp_path / "mixed.jsonl"
    stream.write_bytes(b"\n".join(line for _, line in merged) + b"\n")
    assert len(bad) / len(merged) >= 0.10

    monkeypatch.chdir(tmp_path)
    code = main(["train", "--source", "file", "--path", str(stream), "--no-publish", *SMALL_MODEL])
    assert code == 0

    expected = {}
    for reason, _ in bad:
        expected[reason] = expected.get(reason, 0) + 1
    letters = read_dead_letters(tmp_path / "runs" / "train" / "deadletter.jsonl")
    got = {}
    for reject in letters:
        got[str(reject.reason)] = got.get(str(reject.reason), 0) + 1
    assert got == expected
    # every dead letter points back at its line
    bad_positions = {pos for pos, (reason, _) in enumerate(merged) if reason is not None}
    assert {r.offset for r in letters} == bad_positions
    summary = json.loads((tmp_path / "runs" / "train" / "summary.json").read_text())
    assert summary["events_trained"] == len(good_lines)
    assert summary["rejected"] == expected
    assert summary["events_seen"] == len(merged)
    counters = CheckpointStore(tmp_path / "checkpoints").latest().meta["counters"]
    assert counters["events_trained"] == len(good) == len(good_lines)
    assert np.isfinite(summary["progressive_cumulative"]["ndcg@10"])
