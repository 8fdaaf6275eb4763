"""``memfs://``: an in-memory Beam filesystem, a stand-in for object storage in tests.

Beam finds a filesystem by scheme among the ``FileSystem`` subclasses imported in the process
(``FileSystems.get_filesystem``), so importing this module registers it: import it under one
name only (``backfill.memfs``), or Beam finds two filesystems for the scheme. Like an object
store it has no directories (``mkdirs`` does nothing, a listing is by prefix) and a file
appears when its writer closes. It lives in this process: the direct runner's workers see it,
a Dask cluster's do not. Each instance notes the pipeline option ``memfs_note`` it was made
with (``NOTES``), as HDFS's reads ``hdfs_host``: which options reach the file operations.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from apache_beam.io.filesystem import BeamIOError, CompressionTypes, FileMetadata, FileSystem
from apache_beam.options.pipeline_options import PipelineOptions

SCHEME = "memfs"
FILES: dict[str, bytes] = {}  # path (memfs://...) -> content
NOTES: list[str | None] = []  # the memfs_note option of every MemoryFileSystem made, in order


class MemoryFileSystemOptions(PipelineOptions):
    """memfs's pipeline option (Beam's filesystems take theirs from the pipeline options)."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        parser.add_argument("--memfs_note", default=None, help="noted by each memfs instance")


class _Writer(io.BytesIO):
    """A file being written: stored under its path when closed."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def close(self) -> None:
        if not self.closed:
            FILES[self.path] = self.getvalue()
        super().close()


class MemoryFileSystem(FileSystem):
    """Files in ``FILES``, by their full ``memfs://`` path."""

    def __init__(self, pipeline_options: Any) -> None:
        super().__init__(pipeline_options)
        if isinstance(pipeline_options, PipelineOptions):
            NOTES.append(pipeline_options.view_as(MemoryFileSystemOptions).memfs_note)
        else:  # None, or a dict of runtime options
            NOTES.append((pipeline_options or {}).get("memfs_note"))

    @classmethod
    def scheme(cls) -> str:
        return SCHEME

    def join(self, basepath: str, *paths: str) -> str:
        return "/".join([basepath.rstrip("/"), *(p.strip("/") for p in paths)])

    def split(self, path: str) -> tuple[str, str]:
        head, _, tail = path.rstrip("/").rpartition("/")
        return head, tail

    def mkdirs(self, path: str) -> None:
        pass  # no directories

    def has_dirs(self) -> bool:
        return False

    def _list(self, dir_or_prefix: str) -> Iterator[FileMetadata]:
        for path in list(FILES):
            if path.startswith(dir_or_prefix):
                yield self.metadata(path)

    def create(
        self,
        path: str,
        mime_type: str = "application/octet-stream",
        compression_type: str = CompressionTypes.AUTO,
    ) -> _Writer:
        return _Writer(path)

    def open(
        self,
        path: str,
        mime_type: str = "application/octet-stream",
        compression_type: str = CompressionTypes.AUTO,
    ) -> io.BytesIO:
        if path not in FILES:
            raise FileNotFoundError(f"{path}: no such file")
        return io.BytesIO(FILES[path])

    def copy(self, source_file_names: list[str], destination_file_names: list[str]) -> None:
        for source, destination in zip(source_file_names, destination_file_names, strict=True):
            FILES[destination] = FILES[source]

    def rename(self, source_file_names: list[str], destination_file_names: list[str]) -> None:
        for source, destination in zip(source_file_names, destination_file_names, strict=True):
            FILES[destination] = FILES.pop(source)

    def exists(self, path: str) -> bool:
        return path in FILES

    def size(self, path: str) -> int:
        return len(FILES[path])

    def last_updated(self, path: str) -> float:
        return 0.0

    def checksum(self, path: str) -> str:
        return str(len(FILES[path]))

    def metadata(self, path: str) -> FileMetadata:
        if path not in FILES:
            raise BeamIOError(f"Path does not exist: {path}")
        return FileMetadata(path, len(FILES[path]), 0.0)

    def delete(self, paths: list[str]) -> None:
        missing = {path: FileNotFoundError(path) for path in paths if path not in FILES}
        if missing:  # as Beam's filesystems do
            raise BeamIOError("Delete operation failed", missing)
        for path in paths:
            del FILES[path]


@contextmanager
def empty() -> Iterator[dict[str, bytes]]:
    """``FILES`` (and ``NOTES``), empty for the block and after it."""
    FILES.clear()
    NOTES.clear()
    try:
        yield FILES
    finally:
        FILES.clear()
        NOTES.clear()


def upload(local_dir: Path, url: str) -> None:
    """Copy the files of a local directory (not its subdirectories) to ``url``/NAME."""
    for path in local_dir.iterdir():
        if path.is_file():
            FILES[f"{url}/{path.name}"] = path.read_bytes()


def names(url: str) -> dict[str, bytes]:
    """The files under ``url``/, by name."""
    prefix = f"{url}/"
    return {
        path.removeprefix(prefix): data for path, data in FILES.items() if path.startswith(prefix)
    }
