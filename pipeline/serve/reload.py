"""Hot reload: follow a registry alias and swap to each new version atomically.

``VersionFollower.check`` resolves the alias; a version number not seen yet is loaded
(``load_version`` of the ``genrec.registries`` plugin: every file verified against its
manifest, parsed as untrusted) and built (``ServedVersion.build``: finite parameters and
scores) on the follower's thread while the old version keeps answering; only then does
``current`` point to it, one reference assignment. A request batch reads ``current`` once,
so each answer comes from one whole version. A version that fails is refused (logged,
counted, never tried again) and the old one keeps serving; a registry that cannot be read
for a while leaves the current version in place too.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pipeline.serve.version import ServedVersion

log = logging.getLogger(__name__)


class VersionFollower:
    """The version ``alias`` of ``registry`` points to, reloaded every ``poll_s``."""

    def __init__(self, registry: Any, alias: str, poll_s: float, max_vocab_bytes: int) -> None:
        self.registry = registry
        self.alias = alias
        self.poll_s = poll_s
        self.max_vocab_bytes = max_vocab_bytes
        self.current: ServedVersion | None = None
        self.refused: dict[int, str] = {}  # version -> why it was refused
        self.swaps = 0
        self.last_error: str | None = None  # the last failure to read the alias
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> ServedVersion | None:
        """Look at the alias once; swap to its version when it is new and serves.
        Returns the version serving now."""
        try:
            number = self.registry.resolve(self.alias)
        except Exception as err:  # an unreadable registry: keep serving what we have
            problem = f"cannot resolve alias {self.alias!r}: {_one_line(err)}"
            if problem != self.last_error:  # once per problem, not every poll
                log.warning("%s; serving version %s", problem, self._number())
            self.last_error = problem
            return self.current
        self.last_error = None
        if number == self._number() or number in self.refused:
            return self.current
        try:
            manifest = self.registry.show(number)
            published = self.registry.load_version(number, self.max_vocab_bytes)
            loaded = ServedVersion.build(
                published, manifest.created_at.timestamp(), manifest.watermark
            )
        except Exception as err:  # any failure refuses this version, never the server
            self.refused[number] = _one_line(err)
            log.error(
                "refused version %d (%s): %s; still serving version %s",
                number, self.alias, self.refused[number], self._number(),
            )  # fmt: skip
            return self.current
        self.current = loaded
        self.swaps += 1
        log.info("serving version %d (%s)", number, self.alias)
        return loaded

    def _number(self) -> int | None:
        return None if self.current is None else self.current.version

    def start(self) -> None:
        """Check every ``poll_s`` on a daemon thread until ``stop``."""
        self._thread = threading.Thread(target=self._run, name="genrec-serve-reload", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.check()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
