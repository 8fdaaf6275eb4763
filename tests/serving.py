"""A ``genrec serve`` of the tests: the real application on a real socket (uvicorn in a
thread of the test process), reached over HTTP with httpx."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from waits import wait_until

from pipeline.serve.app import create_app
from pipeline.serve.config import ServeConfig, load_serve_config
from pipeline.serve.service import Service, bind, build_service, make_server

# Event times of the tests' histories (inside the event schema's bounds).
T0 = 1_700_000_000


@contextmanager
def serving(registry: Path, **settings: Any) -> Iterator[tuple[str, Service]]:
    """(base URL, service) of a server of ``registry`` with ``settings`` over the defaults
    (alias checked every 0.1 s); stopped (and its threads joined) on exit."""
    cfg = load_serve_config(
        overrides={"registry": str(registry), "poll_s": 0.1, **settings}, environ={}
    )
    service = build_service(cfg)
    sock = bind("127.0.0.1", 0)
    server = make_server(create_app(service), sock, cfg.http.max_connections)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        wait_until(lambda: server.started, 30, "the server to start")
        yield base, service
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive(), "the server did not stop"


def config(**settings: Any) -> ServeConfig:
    return load_serve_config(overrides=settings, environ={})


def clicks(items: list[Any], start: int = T0) -> list[dict[str, Any]]:
    """A request history: one click per item, a minute apart."""
    return [
        {"item_id": item, "action": "click", "timestamp": start + 60 * n}
        for n, item in enumerate(items)
    ]


def recommend(base: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{base}/recommend", json=body, timeout=30)
