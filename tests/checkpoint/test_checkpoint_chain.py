"""Delta chains in the checkpoint store: parents verified on load, kept by retention."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.stream.checkpoint import (
    CheckpointError,
    CheckpointStore,
    seq_of,
    state_from_bytes,
    tensor_writer,
)


def chain(store: CheckpointStore) -> list[int]:
    """full 1 <- delta 2 <- delta 3."""
    first = seq_of(store.save({"a": b"full"}, {"n": 1}))
    second = seq_of(store.save({"a": b"d2"}, {"n": 2}, parent=first))
    return [first, second, seq_of(store.save({"a": b"d3"}, {"n": 3}, parent=second))]


def test_a_delta_loads_with_its_verified_parents_oldest_first(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    assert chain(store) == [1, 2, 3]
    latest = store.latest()
    assert latest is not None and latest.seq == 3
    assert [p.seq for p in latest.parents] == [1, 2]
    assert latest.root.state == {"a": b"full"} and latest.parents[1].state == {"a": b"d2"}
    manifest = json.loads((latest.path / "manifest.json").read_text())
    assert manifest["parent"]["seq"] == 2 and len(manifest["parent"]["manifest_sha256"]) == 64
    assert store.load(1).parents == () and store.load(1).root.seq == 1


def test_a_replaced_or_missing_parent_makes_the_delta_unloadable(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    chain(store)
    manifest = tmp_path / "ckpt-00000002" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"n": 2', '"n": 22'))
    with pytest.raises(CheckpointError, match="delta on ckpt-00000002, whose manifest is not"):
        store.load(3)
    # loadable falls back past both damaged links of the chain to the full checkpoint
    assert [c.seq for c in store.loadable()] == [2, 1]
    (tmp_path / "ckpt-00000001" / "a").unlink()
    with pytest.raises(CheckpointError, match=r"delta on ckpt-00000001, which does not load.*"):
        store.load(2)


def test_a_parent_that_is_not_older_is_refused(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    chain(store)
    manifest = tmp_path / "ckpt-00000002" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["parent"]["seq"] = 3
    manifest.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="which is not older"):
        store.load(2)


def test_saving_on_a_missing_parent_fails_before_writing(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    with pytest.raises(CheckpointError, match="ckpt-00000007 does not exist"):
        store.save({"a": b"x"}, {}, parent=7)
    assert list(tmp_path.iterdir()) == []


def test_retention_keeps_whole_chains_of_the_newest_full_checkpoints(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    chain(store)  # 1 <- 2 <- 3
    four = seq_of(store.save({"a": b"f"}, {}))
    store.save({"a": b"d"}, {}, parent=four)  # 4 <- 5
    assert store.sequences() == [1, 2, 3, 4, 5]
    six = seq_of(store.save({"a": b"f"}, {}))  # the third full one: chain 1-3 goes
    assert store.sequences() == [4, 5, 6]
    # a delta on an old parent (after restoring it) keeps that parent and its ancestors
    store.save({"a": b"d"}, {}, parent=5)
    seq_of(store.save({"a": b"f"}, {}))
    assert store.sequences() == [4, 5, 6, 7, 8]
    assert [p.seq for p in store.load(7).parents] == [4, 5]
    assert six == 6


def test_a_writer_blob_is_streamed_hashed_and_verified(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    table = torch.arange(12.0).reshape(3, 4)
    path = store.save({"model": tensor_writer({"w": table}), "b": b"x"}, {})
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["files"]["model"]["size"] == (path / "model").stat().st_size
    loaded = store.load(seq_of(path))
    assert torch.equal(state_from_bytes(loaded.state["model"])["w"], table)
