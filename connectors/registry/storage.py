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

Every path is checked before use, on every backend: it must be relative and made of plain
components (no '', '.', '..', '\\', NUL or control characters), so a name read from storage
cannot address anything outside the root. On local disks no component below the root may be a
symlink (each is lstat-ed; files are opened with ``O_NOFOLLOW``; listings skip symlinks with a
warning): the registry never creates symlinks, so one found there was planted and is refused.
Object stores have no symlinks.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import posixpath
import shutil
import stat
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow.fs as pafs

from connectors.registry.errors import UnsafePathError

log = logging.getLogger(__name__)

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


class Storage:
    """Paths relative to a root inside one pyarrow filesystem ("a/b" style, never absolute)."""

    def __init__(self, fs: pafs.FileSystem, root: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.local_root = _local_root(fs, self.root)

    def describe(self, rel: str = "") -> str:
        """Human-readable location of ``rel`` for error messages."""
        if not rel:
            return self.describe_root()
        return f"{self.fs.type_name}:{posixpath.join(self.root, rel) if self.root else rel}"

    def _abs(self, rel: str) -> str:
        self._check(rel)
        if not rel:
            return self.root
        return posixpath.join(self.root, rel) if self.root else rel

    def _local(self, rel: str) -> str | None:
        if self.local_root is None:
            return None
        self._check(rel)
        return os.path.join(self.local_root, rel) if rel else self.local_root

    @property
    def is_local(self) -> bool:
        return self.local_root is not None

    def local_path(self, rel: str) -> str | None:
        """The checked OS path of ``rel`` on local disks; None on other filesystems."""
        return self._local(rel)

    def _check(self, rel: str) -> None:
        """Refuse a path that is not plain and relative, or (local disks) that goes through a
        symlink below the root."""
        if rel and not all(_plain_part(part) for part in rel.split("/")):
            raise UnsafePathError(
                f"refusing path {rel!r} below {self.describe_root()}: every component must be "
                "a plain name (not empty, '.', '..', absolute, and without '\\', NUL or "
                "control characters); the registry's contents were tampered with or damaged"
            )
        if self.local_root is None or not rel:
            return
        path = self.local_root
        for part in rel.split("/"):
            path = os.path.join(path, part)
            try:
                mode = os.lstat(path).st_mode
            except (FileNotFoundError, NotADirectoryError):
                return  # nothing below a missing component exists
            if stat.S_ISLNK(mode):
                raise UnsafePathError(
                    f"{self.fs.type_name}:{path} is a symlink: the registry never creates "
                    f"symlinks and does not follow them out of {self.describe_root()}; "
                    "remove it (or replace it by a real copy)"
                )

    def child(self, rel: str) -> Storage:
        """A ``Storage`` rooted at ``rel`` (checked as every path is: plain, no symlink)."""
        return Storage(self.fs, self._abs(rel))

    def describe_root(self) -> str:
        return f"{self.fs.type_name}:{self.root or '/'}"

    # -- reading ---------------------------------------------------------------------------

    def info(self, rel: str) -> pafs.FileInfo:
        return self.fs.get_file_info(self._abs(rel))

    def exists(self, rel: str) -> bool:
        return self.info(rel).type != pafs.FileType.NotFound

    def list_dir(self, rel: str) -> list[pafs.FileInfo]:
        """Direct children of ``rel`` (empty if it does not exist); symlinks and entries with
        unsafe names are left out with a warning."""
        selector = pafs.FileSelector(self._abs(rel), allow_not_found=True, recursive=False)
        local = self._local(rel)
        children = []
        for info in self.fs.get_file_info(selector):
            name = info.base_name
            if not _plain_part(name):
                log.warning("ignoring %r in %s: not a plain file name", name, self.describe(rel))
            elif local is not None and os.path.islink(os.path.join(local, name)):
                log.warning(
                    "ignoring symlink %s: the registry never creates symlinks; remove it",
                    os.path.join(local, name),
                )
            else:
                children.append(info)
        return children

    def read_bytes(self, rel: str) -> bytes:
        with self._open_input(rel) as stream:
            return stream.read()

    def iter_chunks(self, rel: str) -> Iterator[bytes]:
        """The file's content in chunks of at most ``CHUNK_BYTES``."""
        with self._open_input(rel) as stream:
            while chunk := stream.read(CHUNK_BYTES):
                yield chunk

    def _open_input(self, rel: str) -> BinaryIO:
        local = self._local(rel)
        if local is None:
            return self.fs.open_input_stream(self._abs(rel), compression=None)
        # O_NOFOLLOW: a file swapped for a symlink after the check above is refused too;
        # O_NONBLOCK: a planted FIFO cannot block the open (no effect on regular files).
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(local, flags)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise UnsafePathError(
                    f"{self.describe(rel)} is a symlink: the registry does not follow "
                    "symlinks; remove it"
                ) from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UnsafePathError(f"{self.describe(rel)} is not a regular file; remove it")
        return os.fdopen(fd, "rb")

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
        parent, name = posixpath.split(rel)
        local_parent = self._local(parent)
        if local_parent is not None:
            self.make_dirs(parent)
            try:
                os.mkdir(os.path.join(local_parent, name))
            except FileExistsError:
                return False  # taken, also by a planted symlink (which is never followed)
            self._fsync(parent)
            return True
        if self.exists(rel):
            return False
        self.fs.create_dir(self._abs(rel), recursive=True)
        return True

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Create file ``rel`` with ``data`` unless it exists; False if it does.

        Exclusive on local disks (``O_CREAT | O_EXCL``). Object stores: check, then upload,
        which is only best effort against a concurrent writer.
        """
        local = self._local(rel)
        if local is None:
            if self.exists(rel):
                return False
            self.write(rel, data)
            return True
        self.make_dirs(posixpath.dirname(rel))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(local, flags, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        self._fsync(posixpath.dirname(rel))
        return True

    def delete_file(self, rel: str) -> None:
        self.fs.delete_file(self._abs(rel))

    def delete_dir(self, rel: str) -> None:
        local = self._local(rel)
        if local is None:
            self.fs.delete_dir(self._abs(rel))
        else:
            # rmtree never follows symlinks inside the tree (and refuses a symlinked top).
            shutil.rmtree(local)

    # -- durability (local disks only) -----------------------------------------------------

    def _fsync(self, rel: str) -> None:
        """Flush a local file or directory (a directory: its entries, i.e. creates and
        renames in it); nothing to do on object stores, where an upload is durable."""
        local = self._local(rel)
        if local is not None:
            _fsync_path(local)


def _plain_part(part: str) -> bool:
    return part not in ("", ".", "..") and "\\" not in part and part.isprintable()


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
