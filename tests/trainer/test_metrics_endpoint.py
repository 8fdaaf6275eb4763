"""The Prometheus endpoint bounds its connection threads: idle clients are limited and timed
out, and scrapes work again once they are gone."""

from __future__ import annotations

import select
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
from waits import wait_until

from connectors.kafka.broker import free_port
from pipeline.stream.observability import TrainerMetrics

IDLE_CLIENTS = 300
# The endpoint's limits (observability.MAX_CONNECTIONS = 8, IDLE_TIMEOUT_S = 5) with room to
# spare: a handful of threads, not one per client, and every idle client closed in seconds.
MOST_THREADS = 16
CLOSED_WITHIN_S = 30


def scrape(port: int) -> str | None:
    """The metrics page, or None if the endpoint refused or dropped the request."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
            return page.read().decode()
    except OSError:
        return None


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server closed ``sock`` (end of file or reset; it is never written to)."""
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.fixture
def metrics() -> Iterator[TrainerMetrics]:
    served = TrainerMetrics("127.0.0.1", free_port())
    yield served
    served.close()  # frees the port


def test_idle_connections_are_bounded_then_timed_out(metrics: TrainerMetrics):
    assert metrics.port
    page = wait_until(lambda: scrape(metrics.port), 10, "a first scrape")
    assert "genrec_events_total" in page
    threads_before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", metrics.port)) for _ in range(IDLE_CLIENTS)]
    try:
        most_threads = threads_before
        open_ = list(idle)
        # Every idle connection is closed: those over the limit at once, the others after the
        # idle timeout. Meanwhile at most MAX_CONNECTIONS threads serve them.
        deadline = time.monotonic() + CLOSED_WITHIN_S
        while open_:
            assert time.monotonic() < deadline, (
                f"{len(open_)} of {IDLE_CLIENTS} idle connections still open after "
                f"{CLOSED_WITHIN_S}s (threads: {most_threads - threads_before} more at most)"
            )
            most_threads = max(most_threads, threading.active_count())
            open_ = [s for s in open_ if not closed_by_server(s)]
            time.sleep(0.05)
        assert most_threads - threads_before <= MOST_THREADS
    finally:
        for sock in idle:
            sock.close()
    page = wait_until(lambda: scrape(metrics.port), 10, "a scrape after the idle clients")
    assert "genrec_events_total" in page
    wait_until(
        lambda: threading.active_count() <= threads_before, 10, "the connection threads to end"
    )
