"""Latency of ``genrec serve`` over real HTTP; prints one JSON.

For each item-table size in ``--items`` (default 30,000 and 1,000,000 rows) it publishes a
synthetic version (``publish_version``: a seeded, untrained HSTU of the trainer's default
shape with a ranking head, item keys 0..N-1) into a fresh registry, starts ``genrec serve``
in its own process with the default configuration (``--stream none``) and sends open-loop
``POST /recommend`` requests (k=10, each with a 50-event history in the request) at each
rate of ``--rates`` for ``--seconds`` seconds from an async httpx client: requests leave on
a fixed schedule whether or not earlier ones answered, so a slow server shows as latency,
not as a lower rate. Reported per rate: sent, answered, errors, p50/p99/max latency (ms),
and the highest rate whose p99 <= 100 ms. Then, at that rate (none: the lowest), a new
version is published a third into a ``--reload-seconds`` run: the latency of the requests
sent before the publish, during it (until a second after the first answer of the new
version) and after, errors, whether versions only moved forward, and the time from
publishing to the first answer of the new version (the bench publishes from its own
process, so that time includes writing the version).

Example (the figures of docs/benchmarks.md, "Serving")::

    python3 bench/serve_latency.py --items 30000,1000000 --rates 5,10,25,50,100 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TASKS = ({"name": "click", "actions": [2], "min_value": None, "weight": 1.0},)


def publish_version(
    registry: str | Path,
    num_items: int,
    *,
    seed: int = 0,
    dim: int = 64,
    max_len: int = 50,
    tasks: tuple[dict[str, Any], ...] = TASKS,
    keys: list[Any] | None = None,
) -> int:
    """Publish a seeded, untrained HSTU over items ``keys`` (default 0..num_items-1) to the
    registry at ``registry`` (created if missing), as ``genrec train`` publishes; returns
    the version."""
    import torch

    from connectors.registry import Registry
    from model.hstu import HSTU, HSTUConfig
    from pipeline.state.vocab import ItemVocabulary
    from pipeline.stream.checkpoint import state_to_bytes
    from pipeline.stream.publishing import MODEL_FILE, VOCAB_FILE

    torch.manual_seed(seed)
    cfg = HSTUConfig(
        num_rows=num_items + 1, embedding_dim=dim, max_len=max_len, ranking_tasks=tasks
    )
    net = HSTU(cfg)
    vocab = ItemVocabulary(num_items + 1)
    items = np.arange(num_items, dtype=np.int64) if keys is None else keys
    vocab.observe(items, np.full(num_items, 1_700_000_000, np.int64))
    manifest = Registry.open(str(registry), create=True).publish(
        {MODEL_FILE: state_to_bytes(net.state_dict()), VOCAB_FILE: vocab.snapshot()},
        config={"model": "hstu", "hstu": asdict(cfg)},
    )
    return manifest.version


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    registry: Path, port: int, log: Path, flags: Sequence[str] = ("--stream", "none")
) -> subprocess.Popen[bytes]:
    """``genrec serve`` with its defaults and ``flags`` (default: no stream), in its own
    process."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "serve", "--registry", str(registry),
             "--port", str(port), *flags],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=out, stderr=out,
        )  # fmt: skip


def wait_ready(base: str, server: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"genrec serve exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"genrec serve was not ready in {timeout_s:.0f}s: {log.read_text()[-2000:]}")


def request_body(user: int, num_items: int, history: int, k: int) -> dict[str, Any]:
    """A user with ``history`` clicks on items drawn by its id (the request brings them)."""
    rng = np.random.default_rng(user)
    items = rng.integers(0, num_items, history).tolist()
    events = [
        {"item_id": item, "action": "click", "timestamp": 1_700_000_000 + 60 * n}
        for n, item in enumerate(items)
    ]
    return {"user_id": user, "k": k, "history": events}


async def open_loop(
    base: str, bodies: list[dict[str, Any]], rate: float, seconds: float
) -> list[tuple[float, float, int, int | None]]:
    """Send ``rate`` requests/s for ``seconds`` on a fixed schedule (not waiting for
    answers); returns (sent at, latency s, status, version) per request, status 0 for a
    transport error."""
    import httpx

    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    results: list[tuple[float, float, int, int | None]] = []
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:

        async def one(n: int, sent: float) -> None:
            try:
                got = await client.post("/recommend", json=bodies[n % len(bodies)])
                status = got.status_code
                version = got.json().get("version") if status == 200 else None
            except httpx.HTTPError:
                status, version = 0, None
            results.append((sent, time.perf_counter() - sent, status, version))

        loop_start = time.perf_counter()
        tasks = []
        for n in range(int(rate * seconds)):
            due = loop_start + n / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(n, time.perf_counter())))
        await asyncio.gather(*tasks)
    return results


def server_time(base: str) -> tuple[float, float]:
    """(seconds, requests) the server counted answering /recommend with 200 so far."""
    import httpx

    totals = {"sum": 0.0, "count": 0.0}
    for line in httpx.get(f"{base}/metrics", timeout=30).text.splitlines():
        for key in totals:
            prefix = f'genrec_serve_request_seconds_{key}{{route="/recommend",status="200"}}'
            if line.startswith(prefix):
                totals[key] = float(line.split()[-1])
    return totals["sum"], totals["count"]


def measure(base: str, bodies: list[dict[str, Any]], rate: float, seconds: float) -> dict[str, Any]:
    """``open_loop``'s summary, with the server's own mean time per answer (its histogram:
    from reading the body to sending the answer; the rest is the client and the network)."""
    before = server_time(base)
    out = summary(asyncio.run(open_loop(base, bodies, rate, seconds)))
    after = server_time(base)
    answered = after[1] - before[1]
    out["server_mean_ms"] = round(1000 * (after[0] - before[0]) / answered, 1) if answered else None
    return out


def summary(results: list[tuple[float, float, int, int | None]]) -> dict[str, Any]:
    latencies = np.array([r[1] for r in results if r[2] == 200]) * 1000
    return {
        "sent": len(results),
        "ok": int(latencies.size),
        "errors": len(results) - int(latencies.size),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1) if latencies.size else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 1) if latencies.size else None,
        "max_ms": round(float(latencies.max()), 1) if latencies.size else None,
    }


def bench_size(num_items: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    registry = work / f"registry-{num_items}"
    started = time.perf_counter()
    publish_version(registry, num_items, seed=0)
    publish_s = time.perf_counter() - started
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = work / f"serve-{num_items}.log"
    server = start_server(registry, port, log)
    try:
        started = time.perf_counter()
        wait_ready(base, server, log, 600)
        ready_s = time.perf_counter() - started
        bodies = [request_body(user, num_items, args.history, args.k) for user in range(200)]
        asyncio.run(open_loop(base, bodies, 20, 2))  # warm up
        rates = {}
        for rate in args.rates:
            rates[str(rate)] = measure(base, bodies, rate, args.seconds)
            print(f"{num_items} items, {rate}/s: {rates[str(rate)]}", file=sys.stderr)
        good = [r for r in args.rates if (rates[str(r)]["p99_ms"] or 1e9) <= 100 and
                not rates[str(r)]["errors"]]  # fmt: skip
        load_before = os.getloadavg()[0]
        # the reload at a rate the server sustains: the best one, else the lowest tried
        reload_rate = max(good) if good else min(args.rates)
        reload = bench_reload(base, bodies, registry, num_items, reload_rate, args.reload_seconds)
    finally:
        server.terminate()
        server.wait(60)
    return {
        "items": num_items,
        "publish_s": round(publish_s, 1),
        "start_to_ready_s": round(ready_s, 1),
        "rates": rates,
        "max_rate_p99_le_100ms": max(good) if good else None,
        "load_average_1min_after_rates": round(load_before, 1),
        "hot_reload": reload,
    }


def bench_reload(
    base: str, bodies: list[dict[str, Any]], registry: Path, num_items: int,
    rate: float, seconds: float,
) -> dict[str, Any]:  # fmt: skip
    """Requests at ``rate`` for ``seconds`` while a new version is published a third of
    the way in: latency before the publish, during it (from the publish to a second after
    the first answer of the new version: the version written, loaded and checked while the
    old one answers, then swapped) and after."""
    import threading

    published_at: list[float] = []

    def publish_later() -> None:
        time.sleep(seconds / 3)
        published_at.append(time.perf_counter())
        publish_version(registry, num_items, seed=1)

    publisher = threading.Thread(target=publish_later)
    publisher.start()
    results = asyncio.run(open_loop(base, bodies, rate, seconds))
    publisher.join()
    swapped = [sent + took for sent, took, status, version in results if version == 2]
    if not swapped:
        return {"rate": rate, "swapped": False, **summary(results)}
    start, swap = published_at[0], min(swapped)
    versions = [r[3] for r in sorted(results) if r[3] is not None]
    return {
        "rate": rate,
        "swapped": True,
        "publish_to_first_answer_s": round(swap - start, 1),
        "versions_in_order": versions == sorted(versions),
        "before": summary([r for r in results if r[0] < start]),
        "during": summary([r for r in results if start <= r[0] <= swap + 1.0]),
        "after": summary([r for r in results if r[0] > swap + 1.0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", default="30000,1000000", help="item-table sizes")
    parser.add_argument("--rates", default="50,100,200,400", help="requests/s to try")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per rate")
    parser.add_argument(
        "--reload-seconds", type=float, default=40.0, help="seconds of the hot-reload run"
    )
    parser.add_argument("--history", type=int, default=50, help="events per request")
    parser.add_argument("--k", type=int, default=10, help="items per answer")
    args = parser.parse_args()
    args.rates = [float(r) for r in args.rates.split(",")]
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as work:
        sizes = [bench_size(int(n), args, Path(work)) for n in args.items.split(",")]
    out = {
        "bench": "serve_latency",
        "config": "genrec serve defaults (batching.max_batch 64, max_wait_ms 2), --stream none",
        "history_events_per_request": args.history,
        "k": args.k,
        "seconds_per_rate": args.seconds,
        "cpus": os.cpu_count(),
        "sizes": sizes,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
