"""Atomic, verified checkpoints of the online trainer on a local disk.

A checkpoint is a directory ``ckpt-<seq>`` holding one file per state blob (model, optimizer,
vocabulary, sequence store, ...) and a ``manifest.json`` with the trainer's metadata (source
positions, counters) and each file's size and sha256. ``save`` assembles it in a temporary
directory, fsyncs every file and the directory, and renames it into place: a ``ckpt-<seq>``
directory is either complete or absent. ``loadable`` yields the checkpoints that verify, newest
first, skipping damaged ones with a warning; ``latest`` is the first of them.

A checkpoint may be a **delta** on an older one, its parent: its manifest then names the
parent's sequence number and the sha256 of the parent's manifest, and ``load`` loads and
verifies the whole chain back to a full checkpoint (``Checkpoint.parents``, oldest first;
the links are ``pipeline.stream.chain``'s). What
a delta means (which blobs replace, which patch) is the writer's business; the store only keeps
the chain intact: a parent's manifest must hash to what the child recorded, a parent is always
older than its child, and retention never deletes a checkpoint a retained one depends on.

A blob is given either as bytes or as a writer, a callable that writes it to a binary file
(e.g. ``lambda f: torch.save(state, f)``), so a multi-gigabyte tensor is streamed to disk and
hashed on the way instead of being serialised in memory first.

Nothing read from disk is trusted as a path: blob names in a manifest must be plain names (the
rule ``save`` applies), and no symlink in the store is followed (checkpoint directories and
files are opened with ``O_NOFOLLOW``; pruning never deletes through a symlink).

Tensors go through ``state_to_bytes`` / ``state_from_bytes``: ``torch.save`` to memory and
``torch.load(weights_only=True)``, which refuses arbitrary pickled objects.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import pickle
import re
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from pipeline.runtime.runlock import process_alive
from pipeline.stream import chain

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
# Always used with fullmatch ('$' also matches before a trailing newline), and [0-9] since \d
# matches non-ASCII digits.
_CKPT_DIR = re.compile(r"ckpt-([0-9]+)")
_TMP_DIR = re.compile(r"\.tmp-([0-9]+)-[0-9a-f]+")
_STATE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.=+-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_UNREADABLE = -1

BlobWriter = Callable[[BinaryIO], None]
Blob = bytes | bytearray | memoryview | BlobWriter


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
        parents: for a delta, the checkpoints it builds on, loaded and verified: the full
            one first, its direct parent last; empty for a full checkpoint.
    """

    seq: int
    path: Path
    created_at: str
    meta: dict[str, Any]
    state: dict[str, bytes]
    parents: tuple[Checkpoint, ...] = ()

    @property
    def root(self) -> Checkpoint:
        """The full checkpoint at the start of the chain (``self`` when not a delta)."""
        return self.parents[0] if self.parents else self

    @property
    def deltas(self) -> tuple[Checkpoint, ...]:
        """The deltas from the root to ``self``, in chain order (empty for a full one)."""
        return (*self.parents[1:], self) if self.parents else ()


@dataclass(frozen=True, slots=True)
class _Manifest:
    created_at: str
    meta: dict[str, Any]
    files: dict[str, tuple[int, str]]
    parent: tuple[int, str] | None  # (seq, sha256 of its manifest)


class CheckpointStore:
    """Checkpoints in one local directory, written by a single trainer process."""

    def __init__(self, directory: str | os.PathLike[str], *, keep: int = 3) -> None:
        """Args:
        directory: where checkpoints live (created if missing).
        keep: how many full checkpoints to retain (newest first), at least 1, each with the
            deltas written on it; so a damaged full checkpoint leaves ``keep - 1`` chains.
        """
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep
        self.directory.mkdir(parents=True, exist_ok=True)

    def save(
        self, state: Mapping[str, Blob], meta: Mapping[str, Any], *, parent: int | None = None
    ) -> Path:
        """Write a new checkpoint atomically and prune old ones; returns its directory.

        Args:
            state: blob name -> bytes or writer (names: letters, digits, ``_.=+-``; not
                ``manifest.json``).
            meta: JSON-serialisable metadata, e.g. ``{"source_positions": {...}, ...}``.
            parent: the sequence number of the checkpoint this one is a delta on (None: a
                full checkpoint). It must be complete and readable here.
        """
        for name, blob in state.items():
            _check_state_name(name, "invalid state name")
            if not isinstance(blob, bytes | bytearray | memoryview) and not callable(blob):
                raise CheckpointError(
                    f"state {name!r} is {type(blob).__name__}, not bytes or a writer; serialise "
                    "tensors with state_to_bytes() or pass tensor_writer()"
                )
        try:
            meta_json = json.loads(json.dumps(dict(meta)))
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"checkpoint meta is not JSON-serialisable: {err}") from err
        parent_link = (
            None
            if parent is None
            else {
                "seq": parent,
                "manifest_sha256": hashlib.sha256(self._manifest_bytes(parent)).hexdigest(),
            }
        )
        # Every ckpt-* name counts, symlinks included, so the new name is always free.
        seq = max((seq for seq, _ in self._ckpt_entries()), default=0) + 1
        final = self.directory / f"ckpt-{seq:08d}"
        tmp = self.directory / f".tmp-{os.getpid()}-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            files = {}
            for name in sorted(state):
                size, sha256 = _write_synced(tmp / name, state[name])
                files[name] = {"size": size, "sha256": sha256}
            manifest = {
                "format_version": FORMAT_VERSION,
                "seq": seq,
                "created_at": datetime.now(UTC).isoformat(),
                "meta": meta_json,
                "files": files,
            }
            if parent_link is not None:
                manifest["parent"] = parent_link
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
        """The newest checkpoint that loads and verifies, or None if there is none."""
        return next(self.loadable(), None)

    def loadable(self) -> Iterator[Checkpoint]:
        """Checkpoints that load and verify, newest first.

        Damaged checkpoints are skipped with a warning (and kept for inspection until
        retention removes them); temporary directories of dead writers are deleted first. A
        caller whose restore of one checkpoint fails can move on to the next.
        """
        self._remove_abandoned_temp_dirs()
        for seq in reversed(self._complete()):
            try:
                yield self.load(seq)
            except CheckpointError as err:
                log.warning("skipping damaged checkpoint, falling back to an older one: %s", err)

    def load(self, seq: int) -> Checkpoint:
        """Load and verify ``ckpt-<seq>`` and, for a delta, its chain of parents;
        ``CheckpointError`` names what is wrong."""
        _, ckpt, parent = self._load_one(seq)
        try:
            parents = chain.follow(
                seq, parent, self._load_one, lambda s: f"ckpt-{s:08d}", CheckpointError
            )
        except CheckpointError as err:  # the message starts with the delta's name: its path
            raise CheckpointError(f"{self.directory}/{err}") from err
        return replace(ckpt, parents=tuple(parents))

    def _load_one(self, seq: int) -> tuple[bytes, Checkpoint, tuple[int, str] | None]:
        """(manifest bytes, the checkpoint without parents, its parent link) of one dir."""
        path = self.directory / f"ckpt-{seq:08d}"
        manifest_path = path / MANIFEST_NAME
        dir_fd = self._open_dir(path)
        try:
            try:
                raw = _read_in(dir_fd, MANIFEST_NAME)
            except FileNotFoundError as err:
                raise CheckpointError(f"{manifest_path} is missing") from err
            manifest = _parse_manifest(manifest_path, raw, seq)
            state = {}
            for name, (size, sha256) in manifest.files.items():
                try:
                    blob = _read_in(dir_fd, name)
                except FileNotFoundError as err:
                    raise CheckpointError(
                        f"{path / name} is listed in the manifest but missing"
                    ) from err
                digest = hashlib.sha256(blob).hexdigest()
                if digest != sha256 or len(blob) != size:
                    raise CheckpointError(
                        f"{path / name}: expected sha256 {sha256} ({size} bytes), "
                        f"found sha256 {digest} ({len(blob)} bytes)"
                    )
                state[name] = blob
        except OSError as err:
            raise CheckpointError(f"{path}: cannot read the checkpoint: {_reason(err)}") from err
        finally:
            os.close(dir_fd)
        ckpt = Checkpoint(
            seq=seq, path=path, created_at=manifest.created_at, meta=manifest.meta, state=state
        )
        return raw, ckpt, manifest.parent

    def _open_dir(self, path: Path) -> int:
        if path.is_symlink():
            raise CheckpointError(f"{path} is a symlink, which is never followed; remove it")
        try:
            # O_NOFOLLOW: also refuses a directory swapped for a symlink after the check.
            return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError as err:
            raise CheckpointError(f"{path} does not exist") from err
        except OSError as err:
            raise CheckpointError(f"{path} is not a checkpoint directory: {_reason(err)}") from err

    def _manifest_bytes(self, seq: int) -> bytes:
        """The raw manifest of ``ckpt-<seq>`` (not verified beyond being a regular file)."""
        path = self.directory / f"ckpt-{seq:08d}"
        dir_fd = self._open_dir(path)
        try:
            return _read_in(dir_fd, MANIFEST_NAME)
        except OSError as err:
            raise CheckpointError(f"{path / MANIFEST_NAME}: cannot read: {_reason(err)}") from err
        finally:
            os.close(dir_fd)

    def _parent_of(self, seq: int) -> int | None:
        """The parent seq of ``ckpt-<seq>``, None for a full one, ``_UNREADABLE``."""
        path = self.directory / f"ckpt-{seq:08d}" / MANIFEST_NAME
        try:
            manifest = _parse_manifest(path, self._manifest_bytes(seq), seq)
        except CheckpointError:
            return _UNREADABLE
        return None if manifest.parent is None else manifest.parent[0]

    def sequences(self) -> list[int]:
        """Sequence numbers of complete (renamed) checkpoints, oldest first; not verified."""
        return self._complete()

    def _ckpt_entries(self) -> list[tuple[int, os.DirEntry[str]]]:
        """Every ``ckpt-<seq>`` entry of the directory (of any type), by seq."""
        with os.scandir(self.directory) as entries:
            found = [(m, e) for e in entries if (m := _CKPT_DIR.fullmatch(e.name))]
        return sorted(((int(m.group(1)), e) for m, e in found), key=lambda item: item[0])

    def _complete(self) -> list[int]:
        seqs = []
        for seq, entry in self._ckpt_entries():
            if entry.is_symlink():
                # save never creates symlinks: one here was planted and is never followed.
                log.warning("ignoring %s: it is a symlink, not a checkpoint; remove it", entry.path)
            elif entry.is_dir(follow_symlinks=False) and entry.name == f"ckpt-{seq:08d}":
                seqs.append(seq)  # only the names save writes (not "ckpt-1" next to it)
        return seqs

    def _prune(self) -> None:
        """Keep the newest ``keep`` full checkpoints, everything after the oldest of them,
        and every parent a kept delta names; delete the rest."""
        seqs = self._complete()
        parents = {seq: self._parent_of(seq) for seq in seqs}
        fulls = [seq for seq in seqs if parents[seq] is None]
        if len(fulls) <= self.keep:
            return
        cutoff = fulls[-self.keep]
        kept = chain.with_parents((seq for seq in seqs if seq >= cutoff), parents)
        for seq in seqs:
            if seq not in kept:
                # rmtree refuses a symlinked top and never follows symlinks inside the tree.
                shutil.rmtree(self.directory / f"ckpt-{seq:08d}")

    def _remove_abandoned_temp_dirs(self) -> None:
        with os.scandir(self.directory) as entries:
            for entry in entries:
                match = _TMP_DIR.fullmatch(entry.name)
                if not match or not entry.is_dir(follow_symlinks=False):
                    continue  # not ours: save only creates real directories
                if not process_alive(int(match.group(1))):
                    log.warning("removing partial checkpoint %s left by a dead writer", entry.path)
                    shutil.rmtree(entry.path, ignore_errors=True)


def seq_of(path: Path) -> int:
    """The sequence number of a checkpoint directory ``save`` returned."""
    match = _CKPT_DIR.fullmatch(path.name)
    if match is None:
        raise ValueError(f"{path} is not a checkpoint directory")
    return int(match.group(1))


def state_to_bytes(state: Mapping[str, Any]) -> bytes:
    """Serialise a ``state_dict`` (tensors, nested dicts/lists, numbers) with ``torch.save``."""
    buffer = io.BytesIO()
    tensor_writer(state)(buffer)
    return buffer.getvalue()


def tensor_writer(state: Mapping[str, Any]) -> BlobWriter:
    """A blob writer for ``save`` that streams ``state_to_bytes(state)``'s bytes to the file."""
    import torch  # lazy: the store itself needs no torch

    def write(handle: BinaryIO) -> None:
        torch.save(dict(state), handle)

    return write


def state_from_bytes(data: bytes, what: str = "state") -> dict[str, Any]:
    """Inverse of ``state_to_bytes``, onto the CPU; refuses anything but plain tensors/data.

    Any failure (not a torch.save blob, truncated, foreign objects) is a ``CheckpointError``
    naming ``what`` (e.g. the checkpoint file), so a caller can fall back to an older one.
    """
    import torch

    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # Raised both for foreign objects and for bytes that are no pickle at all.
        raise CheckpointError(
            f"refusing to load {what}: torch.load(weights_only=True) accepts only a torch.save "
            f"blob of tensors and plain containers ({_weights_only_reason(err)})"
        ) from err
    except Exception as err:  # torch raises many types (BadZipFile, RuntimeError, EOFError...)
        raise CheckpointError(
            f"cannot load {what}: not a valid torch.save blob "
            f"({type(err).__name__}: {_first_line(err)})"
        ) from err
    if not isinstance(state, dict):
        raise CheckpointError(
            f"cannot load {what}: expected a state dict, found {type(state).__name__}"
        )
    return state


def _check_state_name(name: object, problem: str) -> str:
    if not isinstance(name, str) or not _STATE_NAME.fullmatch(name) or name == MANIFEST_NAME:
        raise CheckpointError(
            f"{problem} {name!r}: use letters, digits, '_', '.', '=', '+', '-' "
            f"(not starting with '.' or '-'), and not {MANIFEST_NAME!r}"
        )
    return name


def _parse_manifest(where: Path, raw: bytes, seq: int) -> _Manifest:
    """The parsed manifest; one-line CheckpointError naming ``where`` for anything malformed."""

    def bad(problem: str) -> CheckpointError:
        return CheckpointError(f"{where} is unreadable: {problem}")

    try:
        manifest = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise bad(f"not JSON ({_first_line(err)})") from None
    if not isinstance(manifest, dict):
        raise bad(f"expected a JSON object, found {type(manifest).__name__}")
    missing = [k for k in ("format_version", "created_at", "meta", "files") if k not in manifest]
    if missing:
        raise bad(f"missing {', '.join(missing)}")
    version = manifest["format_version"]
    if not _is_int(version):
        raise bad(f"format_version is {version!r}, not an integer")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: format {version} is newer than supported ({FORMAT_VERSION}); upgrade genrec"
        )
    if "seq" in manifest and manifest["seq"] != seq:
        raise bad(f"it says seq {manifest['seq']!r}, but its directory is ckpt-{seq:08d}")
    created_at, meta, files = manifest["created_at"], manifest["meta"], manifest["files"]
    if not isinstance(created_at, str):
        raise bad(f"created_at is {type(created_at).__name__}, not a string")
    if not isinstance(meta, dict):
        raise bad(f"meta is {type(meta).__name__}, not an object")
    if not isinstance(files, dict):
        raise bad(f"files is {type(files).__name__}, not an object")
    entries = {}
    for name, entry in files.items():
        try:
            _check_state_name(name, "invalid file name")
        except CheckpointError as err:
            raise bad(str(err)) from None
        size = entry.get("size") if isinstance(entry, dict) else None
        sha256 = entry.get("sha256") if isinstance(entry, dict) else None
        if not _is_int(size) or size < 0 or not isinstance(sha256, str):
            raise bad(f"files[{name!r}] must be {{'size': int >= 0, 'sha256': str}}")
        if not _SHA256.fullmatch(sha256):
            raise bad(f"files[{name!r}].sha256 is not 64 lowercase hex digits")
        entries[name] = (size, sha256)
    return _Manifest(created_at, meta, entries, _parse_parent(manifest.get("parent"), bad))


def _parse_parent(link: object, bad: Callable[[str], CheckpointError]) -> tuple[int, str] | None:
    if link is None:
        return None
    if not isinstance(link, dict):
        raise bad(f"parent is {type(link).__name__}, not an object")
    seq, sha256 = link.get("seq"), link.get("manifest_sha256")
    if not _is_int(seq) or seq < 1:
        raise bad(f"parent.seq is {seq!r}, not a checkpoint number")
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise bad("parent.manifest_sha256 is not 64 lowercase hex digits")
    return seq, sha256


def _read_in(dir_fd: int, name: str) -> bytes:
    """A regular file ``name`` of the directory ``dir_fd``, never through a symlink."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, f"{name} is a symlink, which is never followed") from None
        raise
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OSError(errno.EINVAL, f"{name} is not a regular file")
        return handle.read()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _reason(err: OSError) -> str:
    if err.errno == errno.ELOOP and err.filename:
        return "it is a symlink, which is never followed"
    return err.strerror or str(err)


def _weights_only_reason(err: BaseException) -> str:
    # torch's message is a long multi-line explanation; its one useful line follows this.
    marker = "WeightsUnpickler error:"
    text = str(err)
    if marker not in text:
        return _first_line(err)
    lines = [line.strip() for line in text.split(marker, 1)[1].splitlines()]
    reason = next((line for line in lines if line), "no details")
    return reason.split(". Please use")[0]


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else "no details"


class _HashingFile:
    """A write-only file that hashes and counts what goes through it (for blob writers)."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        self.sha256.update(data)
        self.size += memoryview(data).nbytes
        return self._handle.write(data)

    def flush(self) -> None:
        self._handle.flush()


def _write_synced(path: Path, blob: Blob) -> tuple[int, str]:
    """Write ``blob`` (bytes, or a writer given a file) durably; its (size, sha256)."""
    with open(path, "wb") as handle:
        out = _HashingFile(handle)
        if callable(blob):
            blob(out)  # type: ignore[arg-type]
        else:
            out.write(blob)
        handle.flush()
        os.fsync(handle.fileno())
    return out.size, out.sha256.hexdigest()


def _fsync(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
