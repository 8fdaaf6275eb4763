"""SIGTERM / SIGINT as a request to stop ``genrec train`` after a final checkpoint (and
``genrec serve`` before or after it serves: uvicorn's own handlers stop the serving).

The handlers only set an event; the trainer's loop (one process, or every rank of a group
through the flags it exchanges each round) sees it, finishes the batch, checkpoints and
exits 0. ``pipeline.cli`` installs them before it builds the parser for ``train``: the
imports, the model, the source and the restore take seconds, and a signal during them must
not end the process with the default action. This module imports nothing heavy for that
reason. The one exception is ``default_signals``: a call that may block in native code, where
no Python handler runs, and that has nothing to save yet (a rank joining its group).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_on_signals(
    stop: threading.Event, what: str = "finishing the current batch, then checkpoint and exit"
) -> dict[int, Any]:
    """SIGTERM / SIGINT set ``stop`` (logging ``what`` happens next); returns the handlers
    they replace."""

    def on_signal(signum: int, _frame: Any) -> None:
        if not stop.is_set():
            log.info("%s: %s", signal.strsignal(signum), what)
        stop.set()

    return {sig: signal.signal(sig, on_signal) for sig in SIGNALS}


def restore_signals(previous: Mapping[int, Any]) -> None:
    """Put back the handlers ``stop_on_signals`` replaced."""
    for sig, handler in previous.items():
        signal.signal(sig, handler)


@contextmanager
def default_signals() -> Iterator[None]:
    """SIGTERM / SIGINT end the process inside (their default action), as when the call
    blocks in native code a deferred stop would never be seen."""
    previous = {sig: signal.signal(sig, signal.SIG_DFL) for sig in SIGNALS}
    try:
        yield
    finally:
        restore_signals(previous)
