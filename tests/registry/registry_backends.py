"""Registry backends under test (the ``backend`` fixture runs a test on each of them).

* ``path``: a plain local directory path (the default backend).
* ``file-uri``: the same through ``file://`` and ``pyarrow.fs.FileSystem.from_uri``.
* ``subtree``: ``SubTreeFileSystem`` over ``LocalFileSystem`` (how a bucket prefix is mounted).
* ``object-store``: a ``PyFileSystem`` that stores files locally but behaves like S3 towards the
  registry: it is not recognised as a local disk (no fsync, no exclusive mkdir) and ``move``
  is a copy followed by a delete, so only the manifest-written-last rule protects readers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from connectors.registry import Registry

BACKENDS = ["path", "file-uri", "subtree", "object-store"]


class ObjectStoreLikeHandler(pafs.FileSystemHandler):
    """Local files behind an S3-like interface (see module docstring)."""

    def __init__(self, base: Path) -> None:
        self._fs = pafs.SubTreeFileSystem(str(base), pafs.LocalFileSystem())
        self._base = str(base)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectStoreLikeHandler) and other._base == self._base

    def __ne__(self, other: object) -> bool:
        return not self == other

    def get_type_name(self) -> str:
        return "objectstore-test"

    def normalize_path(self, path: str) -> str:
        return path

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self._fs.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self._fs.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self._fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self._fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self._fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        self._fs.delete_dir_contents("", accept_root_dir=True)

    def delete_file(self, path: str) -> None:
        self._fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        # Like S3: objects are copied then deleted; there is no directory rename.
        if self._fs.get_file_info(src).type != pafs.FileType.File:
            raise NotImplementedError("object stores cannot move directories")
        self._fs.copy_file(src, dest)
        self._fs.delete_file(src)

    def copy_file(self, src: str, dest: str) -> None:
        self._fs.copy_file(src, dest)

    def open_input_stream(self, path: str) -> pafs.NativeFile:
        return self._fs.open_input_stream(path, compression=None)

    def open_input_file(self, path: str) -> pafs.NativeFile:
        return self._fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata: dict | None) -> pafs.NativeFile:
        return self._fs.open_output_stream(path, compression=None)

    def open_append_stream(self, path: str, metadata: dict | None) -> pafs.NativeFile:
        raise NotImplementedError("object stores cannot append")


@dataclass
class Backend:
    """How to open one registry, and where its bytes really live (for tampering)."""

    name: str
    local_dir: Path
    opener: Callable[[bool], Registry]

    def open(self, create: bool = False) -> Registry:
        return self.opener(create)

    @property
    def uri(self) -> str | None:
        """A URI a subprocess can open, for backends that have one."""
        if self.name == "path":
            return str(self.local_dir)
        if self.name == "file-uri":
            return self.local_dir.as_uri()
        return None


def make_backend(name: str, tmp_path: Path) -> Backend:
    local_dir = tmp_path / "registry"

    def opener(create: bool) -> Registry:
        if name == "path":
            return Registry.open(str(local_dir), create=create)
        if name == "file-uri":
            return Registry.open(local_dir.as_uri(), create=create)
        if name == "subtree":
            subtree = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
            return Registry(subtree, "registry", create=create)
        store = pafs.PyFileSystem(ObjectStoreLikeHandler(tmp_path))
        return Registry(store, "registry", create=create)

    assert name in BACKENDS, name
    return Backend(name=name, local_dir=local_dir, opener=opener)
