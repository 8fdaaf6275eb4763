"""One trainer per checkpoint directory: an exclusive OS lock on ``<dir>/.lock``.

Two trainers on one checkpoint directory would train the same events twice, resume from each
other's checkpoints and prune each other's files. ``DirectoryLock`` takes ``fcntl.flock``
(exclusive, non-blocking) on a lock file inside the directory and writes who holds it (host,
pid, start time) into that file for the error message of the next trainer.

The kernel drops a ``flock`` when its process dies, SIGKILL included, so a crashed trainer
never leaves a stale lock: the next one takes the lock and overwrites the old holder's
details. ``flock`` is local to one machine (and unreliable on some network filesystems), so
trainers on different machines need their own checkpoint directories.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

LOCK_NAME = ".lock"


class DirectoryLockedError(RuntimeError):
    """Another live process holds the directory's lock."""


class DirectoryLock:
    """Exclusive lock on a directory; a context manager (``acquire`` / ``release``)."""

    def __init__(self, directory: str | os.PathLike[str], *, purpose: str = "trainer") -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.purpose = purpose
        self._fd: int | None = None

    def acquire(self) -> DirectoryLock:
        """Take the lock or raise ``DirectoryLockedError`` naming the holder."""
        if self._fd is not None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: a planted symlink must not make us truncate a file elsewhere.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise DirectoryLockedError(
                f"{self.directory} is in use by another {self.purpose} ({holder}); only one "
                f"{self.purpose} may use a checkpoint directory: stop the other one, or give "
                "this run its own directory (run_name / --checkpoint-dir)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode() + b"\n", 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (the file stays; its content is overwritten by the next holder)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0))
        return f"pid {int(info['pid'])} on {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown: the lock file is being written or unreadable"


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (signal 0 probes without killing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True
