"""CheckpointStore: atomic save, verified load with fallback, retention, safe tensor blobs."""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from waits import read_line

from pipeline.stream import checkpoint as checkpoint_module
from pipeline.stream.checkpoint import (
    CheckpointError,
    CheckpointStore,
    state_from_bytes,
    state_to_bytes,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class NotATensor:
    """An arbitrary class: loading it would mean executing pickled code paths."""

    payload: str = "boom"


def _trained_state() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_save_and_restore_model_and_optimizer(tmp_path: Path) -> None:
    model, optimizer = _trained_state()
    store = CheckpointStore(tmp_path / "ckpt")
    meta = {"source_positions": {"events:0": 41, "events:1": 9}, "events_seen": 50}
    path = store.save(
        {
            "model.pt": state_to_bytes(model.state_dict()),
            "optimizer.pt": state_to_bytes(optimizer.state_dict()),
            "vocab.json": b'{"items": [3, 5]}',
        },
        meta,
    )
    assert path == tmp_path / "ckpt" / "ckpt-00000001"

    loaded = CheckpointStore(tmp_path / "ckpt").latest()
    assert loaded is not None
    assert (loaded.seq, loaded.path, loaded.meta) == (1, path, meta)
    assert loaded.state["vocab.json"] == b'{"items": [3, 5]}'

    restored = torch.nn.Linear(4, 3)
    restored.load_state_dict(state_from_bytes(loaded.state["model.pt"]))
    for name, tensor in model.state_dict().items():
        assert torch.equal(restored.state_dict()[name], tensor)
    restored_optimizer = torch.optim.Adam(restored.parameters(), lr=0.5)
    restored_optimizer.load_state_dict(state_from_bytes(loaded.state["optimizer.pt"]))
    assert restored_optimizer.param_groups[0]["lr"] == 0.01
    exp_avg = optimizer.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(restored_optimizer.state_dict()["state"][0]["exp_avg"], exp_avg)


def test_state_from_bytes_refuses_arbitrary_objects() -> None:
    blob = state_to_bytes({"weights": torch.ones(2), "extra": NotATensor()})
    with pytest.raises(CheckpointError, match="refusing to load state"):
        state_from_bytes(blob)


def test_empty_store_has_no_latest(tmp_path: Path) -> None:
    assert CheckpointStore(tmp_path).latest() is None


def test_retention_keeps_newest_k(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    for step in range(4):
        store.save({"step": str(step).encode()}, {"step": step})
    assert store.sequences() == [3, 4]
    latest = store.latest()
    assert latest is not None and latest.meta == {"step": 3}


def test_corrupt_newest_falls_back_to_previous(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = CheckpointStore(tmp_path)
    store.save({"model.pt": b"A" * 100}, {"step": 1})
    newest = store.save({"model.pt": b"B" * 100}, {"step": 2})
    blob = bytearray((newest / "model.pt").read_bytes())
    blob[10] ^= 0xFF
    (newest / "model.pt").write_bytes(bytes(blob))

    with caplog.at_level(logging.WARNING, logger="pipeline.stream.checkpoint"):
        loaded = store.latest()
    assert loaded is not None and loaded.meta == {"step": 1}
    assert "ckpt-00000002/model.pt: expected sha256" in caplog.text

    (store.directory / "ckpt-00000001" / "manifest.json").unlink()
    assert store.latest() is None  # nothing verifiable remains
    with pytest.raises(CheckpointError, match=r"manifest\.json is missing"):
        store.load(1)


def test_failed_save_leaves_no_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = CheckpointStore(tmp_path)
    store.save({"a": b"1"}, {"step": 1})
    real_write = checkpoint_module._write_synced

    def failing_write(path: Path, data: bytes) -> tuple[int, str]:
        if path.name == "b":
            raise OSError("injected: disk full")
        return real_write(path, data)

    monkeypatch.setattr(checkpoint_module, "_write_synced", failing_write)
    with pytest.raises(OSError, match="injected"):
        store.save({"a": b"2", "b": b"2"}, {"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000001"]
    latest = store.latest()
    assert latest is not None and latest.meta == {"step": 1}


# The child saves checkpoint 2, writes one of its two blobs, then blocks until killed.
_CRASHING_TRAINER = """
import sys, time
from pipeline.stream import checkpoint

real_write = checkpoint._write_synced

def write(path, data):
    written = real_write(path, data)
    print("READY", flush=True)
    time.sleep(600)

store = checkpoint.CheckpointStore(sys.argv[1])
checkpoint._write_synced = write
store.save({"a": b"2", "b": b"2"}, {"step": 2})
"""


def test_killed_writer_leaves_partial_temp_dir_that_is_ignored_and_cleaned(
    tmp_path: Path,
) -> None:
    store = CheckpointStore(tmp_path)
    store.save({"a": b"1", "b": b"1"}, {"step": 1})
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_TRAINER, str(tmp_path)],
        stdout=subprocess.PIPE,
        cwd=REPO_ROOT,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert read_line(child.stdout, 120, "the writer to be READY").strip() == "READY"
        (partial,) = tmp_path.glob(".tmp-*")
        assert [p.name for p in partial.iterdir()] == ["a"]
        # A live writer's temp dir is neither loaded nor removed.
        latest = store.latest()
        assert latest is not None and latest.meta == {"step": 1}
        assert partial.exists()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()

    latest = store.latest()
    assert latest is not None and latest.meta == {"step": 1}
    assert not partial.exists()
    assert store.save({"a": b"3"}, {"step": 3}).name == "ckpt-00000002"


@pytest.mark.parametrize(
    ("state", "meta", "message"),
    [
        ({"model.pt": torch.ones(1)}, {}, "not bytes or a writer; serialise"),
        ({"../x": b""}, {}, "invalid state name"),
        ({"manifest.json": b""}, {}, "invalid state name"),
        ({"a": b""}, {"when": object()}, "not JSON-serialisable"),
    ],
)
def test_save_rejects_bad_input(tmp_path: Path, state: dict, meta: dict, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        CheckpointStore(tmp_path).save(state, meta)
    assert list(tmp_path.iterdir()) == []


def test_manifest_records_checksums(tmp_path: Path) -> None:
    path = CheckpointStore(tmp_path).save({"a": b"hello"}, {"k": 1})
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["files"] == {"a": {"size": 5, "sha256": hashlib.sha256(b"hello").hexdigest()}}
    assert manifest["seq"] == 1 and manifest["meta"] == {"k": 1}
