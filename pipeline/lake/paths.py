"""The backfill jobs' file operations, through Apache Beam's ``FileSystems``.

Inputs, output directories and the files in them are local paths or URLs of any filesystem
Beam has for their scheme (``gs://``, ``s3://``, ``azfs://``, ``hdfs://``: each needs its
pip extra, ``FILESYSTEMS``), so a job reads and writes object storage as it does a local disk.
Object stores have no directories: ``make_dirs`` is then a no-op and a listing is by prefix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

# scheme -> (the apache-beam extra that brings its filesystem, the client module it needs).
# Beam registers the s3, azfs and hdfs filesystems without their client libraries too, and
# they fail at their first use, so a registered scheme is not yet a usable one.
FILESYSTEMS = {
    "gs": ("gcp", "google.cloud.storage"),
    "s3": ("aws", "boto3"),
    "azfs": ("azure", "azure.storage.blob"),
    "hdfs": ("hadoop", "hdfs"),
}


def use_options(flags: Sequence[str]) -> None:
    """Give the driver's own file operations the job's pipeline options (``hdfs_host``,
    ``s3_endpoint_url``, ...): Beam gives them to a pipeline's only when it builds one."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    FileSystems.set_options(PipelineOptions(flags=list(flags)))


def check(path: str, flag: str) -> None:
    """``ValueError`` naming ``flag``, ``path`` and the pip extra to install when the path's
    scheme has no usable Beam filesystem here: before the job starts, where Beam's own error
    would come from a file operation (for s3 and hdfs from the client library's absence).
    Local paths and the schemes of other registered filesystems pass."""
    from apache_beam.io.filesystem import FileSystem
    from apache_beam.io.filesystems import FileSystems

    scheme = FileSystems.get_scheme(path)
    if scheme is None:
        return
    registered = any(fs.scheme() == scheme for fs in FileSystem.get_all_subclasses())
    if scheme not in FILESYSTEMS:
        if registered:
            return
        known = ", ".join(f"{s}://" for s in FILESYSTEMS)
        fix = f"use a local path or one of {known}"
    else:
        extra, client = FILESYSTEMS[scheme]
        if registered and _importable(client):
            return
        fix = f"install it: pip install 'apache-beam[{extra}]'"
    raise ValueError(f"{flag} {path}: no Beam filesystem for {scheme}:// is installed; {fix}")


def check_out(out: str, inputs: Sequence[str], input_flag: str, names: Sequence[str]) -> None:
    """``ValueError`` before a job reads anything when its ``--out`` is a file (a job writes a
    directory), or lies inside one of its inputs: at or under an input's path, or where an
    input glob matches the directory or one of the files the job writes there (``names``), so
    that a rerun would read, or replace, the job's own output. Also ``check(out)``."""
    from apache_beam.io.filesystem import FileSystem

    check(out, "--out")
    if is_file(out):
        raise ValueError(
            f"--out {out} is a file; give a directory (a new one, or an earlier output of "
            "this job, which the run replaces)"
        )
    where = _absolute(out)
    written = [where, *(join(where, name) for name in names)]
    for pattern in inputs:
        given = _absolute(pattern)
        # Beam's own glob: * stays within a directory, ** crosses them; a trailing / means /*
        glob = given + "*" if given.endswith("/") else given
        matches = re.compile(FileSystem.translate_pattern(glob)).match
        if (
            where == given.rstrip("/")
            or where.startswith(given.rstrip("/") + "/")
            or any(matches(path) for path in written)
        ):
            raise ValueError(
                f"--out {out} lies inside {input_flag} {pattern}: a run would read (or "
                f"replace) its own output; choose an --out outside {input_flag}"
            )


def is_file(path: str) -> bool:
    """Whether a file is at ``path``: locally an existing file (not a directory); on object
    storage an object of that very name (there are no directories). Filesystems with
    directories other than the local one (hdfs://) are not asked: False."""
    from apache_beam.io.filesystems import FileSystems

    if FileSystems.get_scheme(path) is None:
        return os.path.isfile(path)
    return not FileSystems.get_filesystem(path).has_dirs() and FileSystems.exists(path)


def _absolute(path: str) -> str:
    """A local path made absolute, normal and free of symbolic links (``lake/./x``,
    ``/abs/lake/x`` and ``link-to-lake/x`` are one path); a URL as given. A trailing / stays:
    Beam reads it as /*."""
    from apache_beam.io.filesystems import FileSystems

    if FileSystems.get_scheme(path) is not None:
        return path
    absolute = os.path.realpath(path)
    return absolute + "/" if path.endswith("/") and absolute != "/" else absolute


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def join(directory: str, name: str) -> str:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.join(directory, name)


def name(path: str) -> str:
    """The last component of a path (a file's name in its directory)."""
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.split(path)[1]


def exists(path: str) -> bool:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.exists(path)


def size(path: str) -> int:
    """A file's size in bytes."""
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.match([path])[0].metadata_list[0].size_in_bytes


def make_dirs(path: str) -> None:
    """Create a directory and its parents, unless it exists (Beam's ``mkdirs`` fails then)."""
    from apache_beam.io.filesystems import FileSystems

    if not FileSystems.exists(path):
        FileSystems.mkdirs(path)


def matching(pattern: str) -> list[str]:
    """The files a glob matches, sorted by path (none: an empty list)."""
    from apache_beam.io.filesystems import FileSystems

    return sorted(meta.path for meta in FileSystems.match([pattern])[0].metadata_list)


def delete(paths: Sequence[str]) -> None:
    """Delete those of the files that exist (Beam's ``delete`` fails on a missing one)."""
    from apache_beam.io.filesystems import FileSystems

    present = [path for path in paths if FileSystems.exists(path)]
    if present:
        FileSystems.delete(present)


def read_bytes(path: str) -> bytes:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as handle:
        return handle.read()


def first_line(path: str, limit: int) -> bytes:
    """The file's first line (at most ``limit`` bytes), without reading the rest."""
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as handle:
        return handle.readline(limit)


def write_bytes(path: str, data: bytes) -> None:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path) as handle:
        handle.write(data)


# How much of a remote file parquet_file copies at a time.
COPY_CHUNK_BYTES = 8 << 20


def write_parquet(table: Any, path: str) -> None:
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path) as handle:
        pq.write_table(table, handle)


@contextmanager
def parquet_file(path: str) -> Iterator[Any]:
    """A ``pyarrow.parquet.ParquetFile`` of the file, open for the block.

    Arrow gets a file of its own, never a Python one: reading through Beam's Python handle,
    Arrow's I/O and CPU pool threads call into the interpreter (read-ahead, releasing the
    handle and Python-owned buffers), which they may do while it finalizes at exit; CPython
    then ends such a thread with ``pthread_exit``, whose unwinding through Arrow's
    ``noexcept`` C++ frames calls ``std::terminate``: SIGABRT ("terminate called without an
    active exception") after a job that succeeded. So a local file is opened by Arrow, and
    one on another filesystem is copied into Arrow-owned memory first.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    if FileSystems.get_scheme(path) is None:
        source = pa.OSFile(path)
    else:
        with FileSystems.open(path) as handle, pa.BufferOutputStream() as copy:
            while chunk := handle.read(COPY_CHUNK_BYTES):
                copy.write(chunk)
            source = pa.BufferReader(copy.getvalue())
    with source, pq.ParquetFile(source) as parquet:
        yield parquet
