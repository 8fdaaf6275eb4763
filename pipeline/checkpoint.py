"""Atomic, verified checkpoints of the online trainer on a local disk.

A checkpoint is a directory ``ckpt-<seq>`` holding one file per state blob (model, optimizer,
vocabulary, sequence store, ...) and a ``manifest.json`` with the trainer's metadata (source
positions, counters) and each file's size and sha256. ``save`` assembles it in a temporary
directory, fsyncs every file and the directory, and renames it into place: a ``ckpt-<seq>``
directory is either complete or absent. ``latest`` returns the newest checkpoint that verifies,
falling back to older ones (with a warning) if the newest is damaged.

Tensors go through ``state_to_bytes`` / ``state_from_bytes``: ``torch.save`` to memory and
``torch.load(weights_only=True)``, which refuses arbitrary pickled objects.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from connectors.registry.storage import process_alive

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
_CKPT_DIR = re.compile(r"^ckpt-(\d+)$")
_TMP_DIR = re.compile(r"^\.tmp-(\d+)-[0-9a-f]+$")
_STATE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=+-]*$")


class CheckpointError(Exception):
    """A checkpoint cannot be written, or one on disk is incomplete or corrupted."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One loaded, verified checkpoint.

    Attributes:
        seq: sequence number (the directory is ``ckpt-<seq>``).
        path: the checkpoint directory.
        created_at: when it was saved (UTC, ISO 8601).
        meta: the trainer's JSON metadata (source positions, counters, ...).
        state: blob name -> bytes, as given to ``save``.
    """

    seq: int
    path: Path
    created_at: str
    meta: dict[str, Any]
    state: dict[str, bytes]


class CheckpointStore:
    """Checkpoints in one local directory, written by a single trainer process."""

    def __init__(self, directory: str | os.PathLike[str], *, keep: int = 3) -> None:
        """Args:
        directory: where checkpoints live (created if missing).
        keep: how many complete checkpoints to retain (newest first), at least 1.
        """
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep
        self.directory.mkdir(parents=True, exist_ok=True)

    def save(self, state: Mapping[str, bytes], meta: Mapping[str, Any]) -> Path:
        """Write a new checkpoint atomically and prune old ones; returns its directory.

        Args:
            state: blob name -> bytes (names: letters, digits, ``_.=+-``; not ``manifest.json``).
            meta: JSON-serialisable metadata, e.g. ``{"source_positions": {...}, ...}``.
        """
        for name, blob in state.items():
            if not _STATE_NAME.match(name) or name == MANIFEST_NAME:
                raise CheckpointError(
                    f"invalid state name {name!r}: use letters, digits, '_', '.', '=', '+', '-' "
                    f"(not starting with '.' or '-'), and not {MANIFEST_NAME!r}"
                )
            if not isinstance(blob, bytes | bytearray | memoryview):
                raise CheckpointError(
                    f"state {name!r} is {type(blob).__name__}, not bytes; serialise tensors "
                    "with state_to_bytes()"
                )
        try:
            meta_json = json.loads(json.dumps(dict(meta)))
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"checkpoint meta is not JSON-serialisable: {err}") from err
        seq = max(self._complete(), default=0) + 1
        final = self.directory / f"ckpt-{seq:08d}"
        tmp = self.directory / f".tmp-{os.getpid()}-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            files = {}
            for name in sorted(state):
                blob = bytes(state[name])
                _write_synced(tmp / name, blob)
                files[name] = {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
            manifest = {
                "format_version": FORMAT_VERSION,
                "seq": seq,
                "created_at": datetime.now(UTC).isoformat(),
                "meta": meta_json,
                "files": files,
            }
            _write_synced(tmp / MANIFEST_NAME, json.dumps(manifest, indent=2).encode())
            _fsync(tmp)
            if final.exists():
                raise CheckpointError(
                    f"{final} already exists: another process writes checkpoints to "
                    f"{self.directory}; give each trainer its own directory"
                )
            tmp.rename(final)
            _fsync(self.directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._prune()
        return final

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint that loads and verifies, or None if there is none.

        Damaged checkpoints are skipped with a warning (and kept for inspection until
        retention removes them); temporary directories of dead writers are deleted.
        """
        self._remove_abandoned_temp_dirs()
        for seq in reversed(self._complete()):
            try:
                return self.load(seq)
            except CheckpointError as err:
                log.warning("skipping damaged checkpoint, falling back to an older one: %s", err)
        return None

    def load(self, seq: int) -> Checkpoint:
        """Load and verify ``ckpt-<seq>``; ``CheckpointError`` names what is wrong."""
        path = self.directory / f"ckpt-{seq:08d}"
        manifest_path = path / MANIFEST_NAME
        try:
            manifest = json.loads(manifest_path.read_bytes())
            files = manifest["files"]
            version = manifest["format_version"]
        except FileNotFoundError as err:
            raise CheckpointError(f"{manifest_path} is missing") from err
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{manifest_path} is unreadable: {err!r}") from err
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"{manifest_path}: format {version} is newer than supported ({FORMAT_VERSION})"
            )
        state = {}
        for name, entry in files.items():
            try:
                blob = (path / name).read_bytes()
            except FileNotFoundError as err:
                raise CheckpointError(
                    f"{path / name} is listed in the manifest but missing"
                ) from err
            digest = hashlib.sha256(blob).hexdigest()
            if digest != entry["sha256"] or len(blob) != entry["size"]:
                raise CheckpointError(
                    f"{path / name}: expected sha256 {entry['sha256']} ({entry['size']} bytes), "
                    f"found sha256 {digest} ({len(blob)} bytes)"
                )
            state[name] = blob
        return Checkpoint(
            seq=seq,
            path=path,
            created_at=manifest["created_at"],
            meta=manifest["meta"],
            state=state,
        )

    def sequences(self) -> list[int]:
        """Sequence numbers of complete (renamed) checkpoints, oldest first; not verified."""
        return self._complete()

    def _complete(self) -> list[int]:
        seqs = []
        for entry in self.directory.iterdir():
            match = _CKPT_DIR.match(entry.name)
            if match and entry.is_dir():
                seqs.append(int(match.group(1)))
        return sorted(seqs)

    def _prune(self) -> None:
        for seq in self._complete()[: -self.keep]:
            shutil.rmtree(self.directory / f"ckpt-{seq:08d}")

    def _remove_abandoned_temp_dirs(self) -> None:
        for entry in self.directory.iterdir():
            match = _TMP_DIR.match(entry.name)
            if match and not process_alive(int(match.group(1))):
                log.warning("removing partial checkpoint %s left by a dead writer", entry)
                shutil.rmtree(entry, ignore_errors=True)


def state_to_bytes(state: Mapping[str, Any]) -> bytes:
    """Serialise a ``state_dict`` (tensors, nested dicts/lists, numbers) with ``torch.save``."""
    import torch  # lazy: the store itself needs no torch

    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    return buffer.getvalue()


def state_from_bytes(data: bytes) -> dict[str, Any]:
    """Inverse of ``state_to_bytes``, onto the CPU; refuses anything but plain tensors/data."""
    import torch

    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing to load state: it contains objects other than tensors and plain "
            f"containers (torch.load weights_only=True): {err}"
        ) from err


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
