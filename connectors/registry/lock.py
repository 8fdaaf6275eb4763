"""The registry's writer lock: one publish (or alias move) at a time per registry.

``aliases/.publish.lock`` holds ``{host, pid, started_at, token}`` of its holder. It is created
exclusively (``O_CREAT | O_EXCL``) on local disks, so a check of ``latest`` and the publish
that moves it are atomic against any other writer there. Object stores have no exclusive
create: there the lock is best effort (check, upload, read back) and a single publisher per
registry remains the rule.

A lock is stale, and is broken with a warning, when its holder is a dead process on this host
(or an earlier process that had this process's pid), or it is older than the grace period
(other hosts cannot be probed).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from contextlib import suppress
from datetime import UTC, datetime

from connectors.registry.errors import ConcurrentPublishError
from connectors.registry.storage import Storage
from pipeline.runtime.runlock import process_alive

log = logging.getLogger(__name__)

LOCK_NAME = "aliases/.publish.lock"
# A lock file is written right after its exclusive create; one still unreadable after this
# long belongs to a writer that died in between.
UNREADABLE_GRACE_S = 30.0
_POLL_S = 0.05
# Tells this process from an earlier one that had the same pid on this host (a restarted
# container's trainer is often pid 1 again): such a holder's lock is stale.
_PROCESS = uuid.uuid4().hex


class WriterLock:
    """The registry's writer lock; ``acquire`` waits up to ``timeout_s`` for it."""

    def __init__(self, store: Storage, *, grace_s: float, timeout_s: float) -> None:
        self._store = store
        self._grace_s = grace_s
        self._timeout_s = timeout_s
        self._token = uuid.uuid4().hex
        self._content = json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "process": _PROCESS,
                "started_at": datetime.now(UTC).isoformat(),
                "token": self._token,
            }
        ).encode()

    def acquire(self) -> None:
        deadline = time.monotonic() + self._timeout_s
        while True:
            if self._store.create_exclusive(LOCK_NAME, self._content) and self._confirmed():
                return
            raw = self._read()
            if raw is not None and self._stale(raw):
                self._break(raw)
                continue
            if time.monotonic() >= deadline:
                raise ConcurrentPublishError(
                    f"{self._store.describe(LOCK_NAME)} is held by another writer "
                    f"({_holder(raw)}) for more than {self._timeout_s:g} s: only one trainer "
                    "may publish to a registry; give each trainer its own registry. If that "
                    "writer is gone, delete the lock file"
                )
            time.sleep(_POLL_S)

    def release(self) -> None:
        # Only our own lock: a stale-lock breaker may have replaced it in the meantime.
        if self._read() == self._content:
            with suppress(FileNotFoundError):
                self._store.delete_file(LOCK_NAME)

    def _confirmed(self) -> bool:
        # Exclusive create is atomic on local disks; on object stores re-read what won.
        return self._store.is_local or self._read() == self._content

    def _read(self) -> bytes | None:
        try:
            return self._store.read_bytes(LOCK_NAME)
        except FileNotFoundError:
            return None

    def _stale(self, raw: bytes) -> bool:
        try:
            holder = json.loads(raw)
            started = datetime.fromisoformat(holder["started_at"]).timestamp()
            if holder["host"] == socket.gethostname():
                pid = int(holder["pid"])
                if pid == os.getpid():
                    return holder.get("process") != _PROCESS
                if not process_alive(pid):
                    return True
        except (ValueError, KeyError, TypeError):
            mtime = self._store.info(LOCK_NAME).mtime
            return mtime is None or time.time() - mtime.timestamp() > UNREADABLE_GRACE_S
        return time.time() - started > self._grace_s

    def _break(self, raw: bytes) -> None:
        log.warning(
            "breaking stale registry lock %s (%s)", self._store.describe(LOCK_NAME), _holder(raw)
        )
        local = self._store.local_path(LOCK_NAME)
        if local is None:
            if self._read() == raw:  # best effort, like everything on object stores
                with suppress(FileNotFoundError):
                    self._store.delete_file(LOCK_NAME)
            return
        # Rename, then look at what was taken: if a new holder replaced the stale lock between
        # our read and the rename, give its lock back instead of deleting it.
        taken = f"{local}.stale-{uuid.uuid4().hex}"
        try:
            os.rename(local, taken)
        except FileNotFoundError:
            return  # someone else broke it
        with open(taken, "rb") as handle:
            if handle.read() != raw:
                with suppress(FileExistsError):
                    os.link(taken, local)
        os.unlink(taken)


def _holder(raw: bytes | None) -> str:
    try:
        holder = json.loads(raw or b"")
        return f"host {holder['host']}, pid {holder['pid']}, since {holder['started_at']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown: lock file unreadable"
