"""``genrec serve`` as a process: it says where it listens, answers, and SIGTERM stops it
with exit code 0."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
from serving import clicks

from bench.serve_latency import free_port, publish_version, start_server, wait_ready


def test_the_command_serves_until_sigterm(tmp_path: Path) -> None:
    publish_version(tmp_path / "registry", 100, dim=16)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    server = start_server(tmp_path / "registry", port, log)
    try:
        wait_ready(base, server, log, 120)
        got = httpx.post(
            f"{base}/recommend", json={"user_id": 1, "k": 3, "history": clicks([1, 2])}, timeout=30
        )
        assert got.status_code == 200 and got.json()["version"] == 1
        assert f"(alias latest, version 1) on {base}" in log.read_text()
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0, log.read_text()[-2000:]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
