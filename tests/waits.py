"""Bounded waits for any test: each has a deadline and says what never happened."""

from __future__ import annotations

import select
import time
from collections.abc import Callable
from typing import IO, TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.05
) -> T:
    """Call ``predicate`` until it returns something truthy and return that; raise
    ``AssertionError`` naming ``what`` after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def read_line(stream: IO[str], timeout_s: float, what: str) -> str:
    """One line from a child's pipe, or ``AssertionError`` if none comes in ``timeout_s``."""
    ready, _, _ = select.select([stream], [], [], timeout_s)
    if not ready:
        raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
    return stream.readline()
