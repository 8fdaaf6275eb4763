"""A small file API over any pyarrow filesystem, with the durability steps a registry needs.

The registry is written once against ``pyarrow.fs.FileSystem`` so that a local directory and an
object store (s3://, gs://, hdfs://) run the same code. Two things differ by backend and are
handled here:

* Local disks (``LocalFileSystem``, or a ``SubTreeFileSystem`` over one): files and directories
  are fsynced after writing, a directory can be created exclusively (``os.mkdir``), and
  ``move`` is an atomic ``rename``.
* Other filesystems: no fsync is possible or needed (an upload is durable once it returns), no
  exclusive create exists, and a single upload is atomic (an object appears whole or not at
  all). Visibility is guaranteed by the registry writing the manifest last, not by renames.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

# Streaming granularity for hashing and copying large files (weights).
CHUNK_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Written:
    """Size and sha256 of a file as it was written or read."""

    size: int
    sha256: str


def filesystem_from_uri(uri: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """Resolve a local path, ``file://`` URI or any pyarrow URI to (filesystem, root path)."""
    text = os.fspath(uri)
    if "://" not in text:
        return pafs.LocalFileSystem(), os.path.abspath(text)
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except (ValueError, NotImplementedError, OSError) as err:  # pyarrow's Arrow* errors
        raise ValueError(
            f"cannot open registry URI {text!r}: {err} (use a local path, file://, s3://, "
            "gs:// or hdfs://, and check that pyarrow was built with that filesystem)"
        ) from err
    return fs, path.rstrip("/")


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (signal 0 probes without killing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


class Storage:
    """Paths relative to a root inside one pyarrow filesystem ("a/b" style, never absolute)."""

    def __init__(self, fs: pafs.FileSystem, root: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.local_root = _local_root(fs, self.root)

    def describe(self, rel: str = "") -> str:
        """Human-readable location of ``rel`` for error messages."""
        return f"{self.fs.type_name}:{self._abs(rel)}"

    def _abs(self, rel: str) -> str:
        if not rel:
            return self.root
        return posixpath.join(self.root, rel) if self.root else rel

    def _local(self, rel: str) -> str | None:
        if self.local_root is None:
            return None
        return os.path.join(self.local_root, rel) if rel else self.local_root

    # -- reading ---------------------------------------------------------------------------

    def info(self, rel: str) -> pafs.FileInfo:
        return self.fs.get_file_info(self._abs(rel))

    def exists(self, rel: str) -> bool:
        return self.info(rel).type != pafs.FileType.NotFound

    def list_dir(self, rel: str) -> list[pafs.FileInfo]:
        """Direct children of ``rel`` (empty if it does not exist)."""
        selector = pafs.FileSelector(self._abs(rel), allow_not_found=True, recursive=False)
        return self.fs.get_file_info(selector)

    def list_files(self, rel: str) -> list[str]:
        """All files below ``rel``, as paths relative to ``rel``, sorted."""
        base = self._abs(rel)
        selector = pafs.FileSelector(base, allow_not_found=True, recursive=True)
        infos = self.fs.get_file_info(selector)
        files = [i.path for i in infos if i.type == pafs.FileType.File]
        return sorted(posixpath.relpath(p, base) if base else p for p in files)

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self._abs(rel), compression=None) as stream:
            return stream.read()

    def iter_chunks(self, rel: str) -> Iterator[bytes]:
        """The file's content in chunks of at most ``CHUNK_BYTES``."""
        with self.fs.open_input_stream(self._abs(rel), compression=None) as stream:
            while chunk := stream.read(CHUNK_BYTES):
                yield chunk

    # -- writing ---------------------------------------------------------------------------

    def write(self, rel: str, source: bytes | Path) -> Written:
        """Write bytes or copy a local file to ``rel`` (creating parent directories), hashing
        on the way; durable on return."""
        parent = posixpath.dirname(rel)
        if parent:
            self.make_dirs(parent)
        digest = hashlib.sha256()
        size = 0
        # compression=None: never guess a codec from the name (a "*.gz" artefact stays as is).
        with self.fs.open_output_stream(self._abs(rel), compression=None) as out:
            for chunk in _chunks(source):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
        self._fsync(rel)
        self._fsync(parent)  # the new directory entry must be durable too
        return Written(size=size, sha256=digest.hexdigest())

    def atomic_write(self, rel: str, data: bytes) -> None:
        """Replace ``rel`` with ``data`` so that readers see the old or the new content only.

        Writes a temporary sibling, then moves it over ``rel``: a rename on local disks; on
        object stores the move is a server-side copy, itself a single atomic object write.
        """
        parent, name = posixpath.split(rel)
        tmp = posixpath.join(parent, f".{name}.tmp-{uuid.uuid4().hex}")
        self.write(tmp, data)
        try:
            self.fs.move(self._abs(tmp), self._abs(rel))
        except BaseException:
            with suppress(OSError):
                self.fs.delete_file(self._abs(tmp))
            raise
        self._fsync(parent)

    def make_dirs(self, rel: str) -> None:
        """Create ``rel`` and missing parents (on local disks, each new entry is fsynced)."""
        local = self._local(rel)
        if local is None:
            self.fs.create_dir(self._abs(rel), recursive=True)
            return
        missing = []
        path = Path(local)
        while not path.exists():
            missing.append(path)
            path = path.parent
        for directory in reversed(missing):
            with suppress(FileExistsError):  # a concurrent writer created it first
                directory.mkdir()
            _fsync_path(str(directory.parent))

    def claim_dir(self, rel: str) -> bool:
        """Create directory ``rel`` if nobody has; False if it already exists.

        Exclusive on local disks (``os.mkdir``). Object stores have no exclusive create:
        there the check-then-create is only safe with a single writer, which the registry
        documents (one trainer publishes).
        """
        local = self._local(rel)
        if local is not None:
            self.make_dirs(posixpath.dirname(rel))
            try:
                os.mkdir(local)
            except FileExistsError:
                return False
            self._fsync(posixpath.dirname(rel))
            return True
        if self.exists(rel):
            return False
        self.fs.create_dir(self._abs(rel), recursive=True)
        return True

    def delete_file(self, rel: str) -> None:
        self.fs.delete_file(self._abs(rel))

    def delete_dir(self, rel: str) -> None:
        self.fs.delete_dir(self._abs(rel))

    # -- durability (local disks only) -----------------------------------------------------

    def _fsync(self, rel: str) -> None:
        """Flush a local file or directory (a directory: its entries, i.e. creates and
        renames in it); nothing to do on object stores, where an upload is durable."""
        local = self._local(rel)
        if local is not None:
            _fsync_path(local)


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _chunks(source: bytes | Path) -> Iterator[bytes]:
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source)
        for start in range(0, len(view), CHUNK_BYTES):
            yield bytes(view[start : start + CHUNK_BYTES])
        return
    with open(source, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            yield chunk


def _local_root(fs: pafs.FileSystem, root: str) -> str | None:
    """The OS path of ``root`` when ``fs`` is a local disk (possibly behind a SubTree)."""
    if isinstance(fs, pafs.LocalFileSystem):
        return root or "/"
    if isinstance(fs, pafs.SubTreeFileSystem):
        base = _local_root(fs.base_fs, fs.base_path.rstrip("/"))
        if base is not None:
            return os.path.join(base, root) if root else base
    return None
