"""CheckpointStore hardening: names and symlinks read from disk, malformed manifests and
blobs as one-line CheckpointErrors, and ``loadable()`` falling back newest first."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import zipfile
from pathlib import Path

import pytest
import torch

from pipeline.stream.checkpoint import (
    CheckpointError,
    CheckpointStore,
    state_from_bytes,
    state_to_bytes,
)

SECRET = b"secret outside the checkpoint store"


def _entry(data: bytes) -> dict[str, object]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _rewrite_manifest(ckpt: Path, **changes: object) -> None:
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest.update(changes)
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    (tmp_path / "secret.txt").write_bytes(SECRET)
    return CheckpointStore(tmp_path / "ckpt")


@pytest.mark.parametrize(
    "name",
    ["../../secret.txt", "../secret.txt", "./a", "a/../../../secret.txt", "/etc/hostname", "a\n"],
)
def test_blob_names_from_the_manifest_are_validated(store: CheckpointStore, name: str) -> None:
    ckpt = store.save({"a": b"1"}, {"step": 1})
    _rewrite_manifest(ckpt, files={name: _entry(SECRET)})
    with pytest.raises(CheckpointError, match=r"manifest\.json is unreadable: invalid file name"):
        store.load(1)
    assert store.latest() is None


def test_save_refuses_a_name_with_a_trailing_newline(store: CheckpointStore) -> None:
    with pytest.raises(CheckpointError, match="invalid state name 'a\\\\n'"):
        store.save({"a\n": b"1"}, {})
    assert list(store.directory.iterdir()) == []


def test_symlinked_blob_and_manifest_are_refused(store: CheckpointStore, tmp_path: Path) -> None:
    ckpt = store.save({"a": b"1"}, {"step": 1})
    (ckpt / "a").unlink()
    (ckpt / "a").symlink_to(tmp_path / "secret.txt")
    _rewrite_manifest(ckpt, files={"a": _entry(SECRET)})
    with pytest.raises(CheckpointError, match="a is a symlink, which is never followed"):
        store.load(1)

    outside = tmp_path / "manifest.json"
    outside.write_bytes((ckpt / "manifest.json").read_bytes())
    (ckpt / "manifest.json").unlink()
    (ckpt / "manifest.json").symlink_to(outside)
    with pytest.raises(CheckpointError, match=r"manifest\.json is a symlink"):
        store.load(1)


def test_symlinked_checkpoint_dir_is_ignored_and_never_pruned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outside = tmp_path / "outside"
    elsewhere = CheckpointStore(outside).save({"a": b"foreign"}, {"step": 99})
    store = CheckpointStore(tmp_path / "ckpt", keep=1)
    (store.directory / "ckpt-00000001").symlink_to(elsewhere, target_is_directory=True)
    with caplog.at_level(logging.WARNING, logger="pipeline.stream.checkpoint"):
        assert store.latest() is None
    assert "ckpt-00000001: it is a symlink" in caplog.text
    with pytest.raises(CheckpointError, match="ckpt-00000001 is a symlink"):
        store.load(1)

    assert store.save({"a": b"2"}, {"step": 2}).name == "ckpt-00000002"
    assert store.save({"a": b"3"}, {"step": 3}).name == "ckpt-00000003"  # prunes 2, not 1
    assert sorted(p.name for p in store.directory.iterdir()) == ["ckpt-00000001", "ckpt-00000003"]
    assert (elsewhere / "a").read_bytes() == b"foreign"
    assert [c.seq for c in store.loadable()] == [3]


@pytest.mark.parametrize(
    ("manifest", "problem"),
    [
        (b"[1, 2]", "expected a JSON object, found list"),
        (b"{not json", "not JSON"),
        ({"format_version": "x"}, "format_version is 'x', not an integer"),
        ({"format_version": True}, "format_version is True, not an integer"),
        ({"files": ["a"]}, "files is list, not an object"),
        ({"files": {"a": "x"}}, r"files\['a'\] must be"),
        ({"files": {"a": {"size": "1", "sha256": "0" * 64}}}, r"files\['a'\] must be"),
        ({"files": {"a": {"size": 1, "sha256": "XYZ"}}}, "sha256 is not 64 lowercase hex"),
        ({"meta": [1]}, "meta is list, not an object"),
        ({"created_at": 5}, "created_at is int, not a string"),
        ({"seq": 7}, "it says seq 7, but its directory is ckpt-00000001"),
        ({"format_version": 99}, "format 99 is newer than supported"),
    ],
)
def test_malformed_manifest_is_one_line_checkpoint_error(
    store: CheckpointStore, manifest: bytes | dict, problem: str
) -> None:
    ckpt = store.save({"a": b"1"}, {"step": 1})
    if isinstance(manifest, bytes):
        (ckpt / "manifest.json").write_bytes(manifest)
    else:
        _rewrite_manifest(ckpt, **manifest)
    with pytest.raises(CheckpointError, match=problem) as caught:
        store.load(1)
    message = str(caught.value)
    assert str(ckpt / "manifest.json") in message and "\n" not in message
    assert store.latest() is None  # skipped with a warning, no traceback


def _zip_blob() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x", "not a torch archive")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"garbage",
        state_to_bytes({"w": torch.ones(8)})[:100],
        _zip_blob(),
        b"PK\x03\x04" + bytes(50),
    ],
    ids=["empty", "garbage", "truncated", "foreign-zip", "broken-zip"],
)
def test_state_from_bytes_turns_any_failure_into_checkpoint_error(blob: bytes) -> None:
    with pytest.raises(CheckpointError, match=r"load ckpt-00000003/model\.pt") as caught:
        state_from_bytes(blob, "ckpt-00000003/model.pt")
    assert "\n" not in str(caught.value)


def test_state_from_bytes_refuses_a_non_dict() -> None:
    buffer = io.BytesIO()
    torch.save([torch.ones(1)], buffer)
    with pytest.raises(CheckpointError, match="expected a state dict, found list"):
        state_from_bytes(buffer.getvalue())


def test_loadable_yields_verified_checkpoints_newest_first(
    store: CheckpointStore, caplog: pytest.LogCaptureFixture
) -> None:
    for step in range(1, 4):
        store.save({"model.pt": state_to_bytes({"step": torch.tensor(step)})}, {"step": step})
    (store.directory / "ckpt-00000002" / "model.pt").write_bytes(b"damaged")
    with caplog.at_level(logging.WARNING, logger="pipeline.stream.checkpoint"):
        assert [c.meta["step"] for c in store.loadable()] == [3, 1]
    assert "ckpt-00000002/model.pt: expected sha256" in caplog.text
    latest = store.latest()
    assert latest is not None and latest.seq == 3

    # A checkpoint whose hashes match but whose content is bad: the caller moves on.
    bad = store.directory / "ckpt-00000003" / "model.pt"
    bad.write_bytes(b"PK\x03\x04 not a zip")
    _rewrite_manifest(
        store.directory / "ckpt-00000003", files={"model.pt": _entry(bad.read_bytes())}
    )
    restored = None
    for ckpt in store.loadable():
        try:
            restored = state_from_bytes(ckpt.state["model.pt"], str(ckpt.path / "model.pt"))
            break
        except CheckpointError:
            continue
    assert restored is not None and int(restored["step"]) == 1


def test_abandoned_temp_dir_symlink_is_not_followed(store: CheckpointStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_bytes(SECRET)
    (store.directory / f".tmp-{2**22 + 12345}-abc").symlink_to(outside, target_is_directory=True)
    assert store.latest() is None
    assert (outside / "keep.txt").read_bytes() == SECRET
    assert os.path.islink(store.directory / f".tmp-{2**22 + 12345}-abc")
