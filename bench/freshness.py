"""Freshness of ``genrec serve`` under a live stream; prints one JSON.

Everything runs on this machine, each part in its own process: a local Kafka broker
(``connectors.kafka.broker``, unless ``--bootstrap-servers`` names one), a background stream
(``genrec produce --synthetic --codec arrow --rate R``, as docker-compose.yml's producer), the
online trainer (``genrec train --source kafka``, publishing every ``--publish-every-s``
seconds, plus ``--train-set`` settings) and the server following the trainer's ``latest``
with histories from the same topic (``genrec serve --stream kafka``, plus ``--serve-set``).

Once the server answers and serves a version covering the backlog of the start, ``--probes``
probe events go out one at a time, ``--probe-interval-s`` apart (each from a user of its own,
on the topic as one JSON record), and for each:

* (a) produce -> served history: from just before the send until ``POST /recommend`` for the
  probe's user answers 200 (the user has no other event, so its first answer counts the
  probe), polled every 10 ms;
* (b) produce -> served version: from the same moment until the server serves a version whose
  manifest's ``source_positions`` (the next offset to read per partition, docs/registry.md)
  are past the probe's offset in its partition, the offset the producer's acknowledgement
  gave. A watcher polls ``GET /readyz`` every 50 ms for the served version and reads each new
  version's manifest from the registry.

Every wait has a deadline (a probe that misses one is counted, not timed); the processes are
stopped on exit, on failure and on SIGTERM. Examples (the figures of docs/benchmarks.md,
"Freshness")::

    python3 bench/freshness.py                                  # the stack's defaults
    python3 bench/freshness.py --publish-every-s 1 --serve-set poll_s=0.2
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np

from bench.serve_latency import start_server, wait_ready
from connectors.kafka.admin import TopicAdmin
from connectors.kafka.broker import LocalKafkaBroker, free_port
from connectors.kafka.producer import CODEC_HEADER, user_key
from connectors.kafka.source import partition_key
from connectors.registry import Registry, RegistryError
from pipeline.events import encode_json
from pipeline.events.schema import Event

REPO = Path(__file__).resolve().parents[1]
PROBE_USER0 = 1_000_000_000  # probe users: far above the synthetic stream's ids
PROBE_TIME = 1_600_000_000  # the synthetic stream's start: never ahead of its watermark
T = TypeVar("T")


def percentiles(seconds: list[float]) -> dict[str, float | int | None]:
    """count, p50/p95/p99 and max of latencies in seconds (None without any)."""
    values = np.array(seconds, dtype=np.float64)
    if not values.size:
        return {"count": 0, "p50_s": None, "p95_s": None, "p99_s": None, "max_s": None}
    p50, p95, p99 = np.percentile(values, [50, 95, 99]).tolist()
    return {
        "count": int(values.size),
        "p50_s": round(p50, 3),
        "p95_s": round(p95, 3),
        "p99_s": round(p99, 3),
        "max_s": round(float(values.max()), 3),
    }


def genrec(*args: str) -> list[str]:
    """A ``genrec`` command line running this tree's code (not the venv's console script)."""
    return [sys.executable, "-m", "pipeline.cli", *args]


def spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=out, stderr=out
        )


def stop(process: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM, then SIGKILL after ``grace_s`` (the trainer checkpoints on SIGTERM)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)


def check_alive(processes: dict[str, tuple[subprocess.Popen[bytes], Path]]) -> None:
    for name, (process, log) in processes.items():
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{name} exited with {process.returncode}; its log {log}:\n{tail}")


class VersionWatcher:
    """Polls the server for the version it serves and keeps, per served version, when it was
    first seen and its manifest's source positions."""

    def __init__(self, base: str, registry: Registry, interval_s: float = 0.05) -> None:
        self.base = base
        self.registry = registry
        self.interval_s = interval_s
        self.seen: list[tuple[float, int, dict[str, int]]] = []  # (monotonic, version, positions)
        self.deltas = 0  # served versions that are deltas
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="version-watcher", daemon=True)

    def __enter__(self) -> VersionWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=5) as client:
            while not self._stop.wait(self.interval_s):
                try:
                    got = client.get("/readyz")
                except httpx.TransportError:
                    continue  # a busy server: the next poll sees the same version
                if got.status_code != 200:
                    continue
                version = int(got.json()["version"])
                if self.seen and self.seen[-1][1] == version:
                    continue
                now = time.monotonic()
                manifest = self.registry.show(version)
                with self.lock:
                    self.seen.append((now, version, dict(manifest.source_positions)))
                    self.deltas += manifest.delta_of is not None

    def covering(self, key: str, offset: int, since: float) -> float | None:
        """When the first version serving offset ``offset`` of partition ``key`` (position
        past it) was seen, at or after ``since``; None if none yet."""
        with self.lock:
            for seen_at, _, positions in self.seen:
                if seen_at >= since and positions.get(key, 0) > offset:
                    return seen_at
            return None

    def covers(self, ends: dict[str, int]) -> bool:
        """Whether the version serving now has read up to ``ends`` in every partition."""
        with self.lock:
            if not self.seen:
                return False
            positions = self.seen[-1][2]
        return all(positions.get(key, 0) >= end for key, end in ends.items())

    def summary(self, since: float) -> dict[str, Any]:
        """Versions served, how many were deltas, and the gaps between swaps after ``since``."""
        with self.lock:
            times = [seen_at for seen_at, *_ in self.seen if seen_at >= since]
            return {
                "served": len(self.seen),
                "deltas": self.deltas,
                "seconds_between_swaps": percentiles(np.diff(times).tolist()),
            }


def wait_for(what: str, check: Callable[[], T], deadline_s: float, processes: dict[str, Any]) -> T:
    """Call ``check`` until it returns something truthy and return that (failing if a
    process dies or after ``deadline_s``)."""
    started = time.monotonic()
    while not (result := check()):
        check_alive(processes)
        if time.monotonic() - started > deadline_s:
            raise RuntimeError(f"{what} did not happen within {deadline_s:.0f}s")
        time.sleep(0.2)
    return result


def first_version(directory: Path, model: str) -> Registry | None:
    """The trainer's model in the registry once it holds a version, else None."""
    try:
        registry = Registry.open(str(directory), model=model)
    except RegistryError:  # not created yet
        return None
    return registry if registry.latest_version() is not None else None


def feed_events(base: str) -> float:
    """The server's count of events read from the topic (``genrec_serve_feed_events``)."""
    for line in httpx.get(f"{base}/metrics", timeout=30).text.splitlines():
        if line.startswith("genrec_serve_feed_events"):
            return float(line.split()[-1])
    raise RuntimeError(f"{base}/metrics has no genrec_serve_feed_events")


def probe(
    producer: Any, topic: str, user: int, client: httpx.Client, deadline_s: float
) -> tuple[float, str, int, float | None]:
    """Send one probe event and wait for it in the served history: (sent at, partition key,
    offset, seconds to the served history or None past the deadline)."""
    event = Event(user_id=user, item_id=1, timestamp=PROBE_TIME, action="click")
    sent = time.monotonic()
    future = producer.send(
        topic, encode_json(event), key=user_key(user), headers=[(CODEC_HEADER, b"json")]
    )
    producer.flush(timeout=deadline_s)
    meta = future.get(timeout=deadline_s)
    key = partition_key(topic, meta.partition)
    while time.monotonic() - sent < deadline_s:
        try:
            if client.post("/recommend", json={"user_id": user, "k": 1}).status_code == 200:
                return sent, key, meta.offset, time.monotonic() - sent
        except httpx.TransportError:
            pass  # a busy server: try again until the deadline
        time.sleep(0.01)
    return sent, key, meta.offset, None


@contextmanager
def sigterm_exits() -> Iterator[None]:
    """SIGTERM unwinds like an error, so that the processes are stopped."""
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from kafka import KafkaProducer

    with ExitStack() as stack:
        bootstrap = args.bootstrap_servers
        if not bootstrap:
            broker = LocalKafkaBroker(work / "kafka", heap="1g")
            bootstrap = broker.start(timeout_s=180)
            stack.callback(broker.stop)
        topic = f"freshness-{time.time_ns()}"
        with TopicAdmin(bootstrap) as admin:
            admin.create_topic(topic, args.partitions)
        registry_dir = work / "registry"
        model = f"kafka-{topic}"
        processes: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}

        def start(name: str, cmd: list[str], grace_s: float) -> None:
            log = work / f"{name}.log"
            processes[name] = (spawn(cmd, log), log)
            stack.callback(stop, processes[name][0], grace_s)

        start("producer", genrec(
            "produce", "--synthetic", "--topic", topic, "--codec", "arrow",
            "--rate", str(args.rate), "--users", str(args.users), "--items", str(args.items),
            "--no-progress", "--bootstrap-servers", bootstrap,
        ), 10)  # fmt: skip
        train = genrec(
            "train", "--source", "kafka", "--topic", topic, "--bootstrap-servers", bootstrap,
            "--checkpoint-dir", str(work / "checkpoints"), "--registry", str(registry_dir),
            "--run-dir", str(work / "runs"), "--metrics-port", "0",
            "--publish-every-s", str(args.publish_every_s),
        )  # fmt: skip
        for setting in args.train_set:
            train += ["--set", setting]
        start("trainer", train, 60)
        started = time.monotonic()
        # genrec serve needs the registry the trainer's first publish creates
        registry = wait_for(
            "the trainer's first version", lambda: first_version(registry_dir, model),
            args.start_deadline_s, processes,
        )  # fmt: skip
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        serve = ["--model", model, "--alias", "latest", "--stream", "kafka", "--topic", topic,
                 "--bootstrap-servers", bootstrap]  # fmt: skip
        for setting in args.serve_set:
            serve += ["--set", setting]
        log = work / "serve.log"
        server = start_server(registry_dir, port, log, serve)
        processes["serve"] = (server, log)
        stack.callback(stop, server, 30)

        wait_ready(base, server, log, args.start_deadline_s)
        check_alive(processes)
        ready_s = time.monotonic() - started
        watcher = stack.enter_context(VersionWatcher(base, registry))
        # steady state first: a served version has read what was on the topic at ready
        with TopicAdmin(bootstrap) as admin:
            ends = {partition_key(topic, p): o for p, o in admin.end_offsets(topic).items()}
        caught_up = time.monotonic()
        wait_for(
            "a served version covering the topic at ready",
            lambda: watcher.covers(ends), args.start_deadline_s, processes,
        )  # fmt: skip
        caught_up_s = time.monotonic() - caught_up

        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
        stack.callback(producer.close, 10)
        client = stack.enter_context(httpx.Client(base_url=base, timeout=30))
        rng = np.random.default_rng(0)
        feed_before, probes_started = feed_events(base), time.monotonic()
        load = []
        sent: list[tuple[float, str, int, float | None]] = []
        for n in range(args.probes):
            sent.append(probe(producer, topic, PROBE_USER0 + n, client, args.history_deadline_s))
            check_alive(processes)
            load.append(os.getloadavg()[0])
            # a random phase against the publishing period, mean --probe-interval-s apart
            time.sleep(rng.uniform(0, 2 * args.probe_interval_s))
        feed_rate = (feed_events(base) - feed_before) / (time.monotonic() - probes_started)

        # (b): every probe gets until its own deadline; the last probe's bounds the wait
        last = sent[-1][0]
        probes = [(at, key, offset) for at, key, offset, _ in sent]
        wait_for(
            "served versions covering the probes",
            lambda: all(watcher.covering(k, o, t) for t, k, o in probes)
            or time.monotonic() > last + args.version_deadline_s,
            args.version_deadline_s + 60, processes,
        )  # fmt: skip
        with TopicAdmin(bootstrap) as admin:
            ends = {partition_key(topic, p): o for p, o in admin.end_offsets(topic).items()}
        to_version = []
        for at, key, offset, _ in sent:
            seen = watcher.covering(key, offset, at)
            if seen is not None and seen - at <= args.version_deadline_s:
                to_version.append(seen - at)
        to_history = [s for *_, s in sent if s is not None]
        with watcher.lock:
            newest = watcher.seen[-1]
        return {
            "start_to_ready_s": round(ready_s, 1),
            "ready_to_caught_up_s": round(caught_up_s, 1),
            "background_events_per_s_read_by_server": round(feed_rate),
            "versions": watcher.summary(probes_started),
            "final_lag_messages": {k: e - newest[2].get(k, 0) for k, e in ends.items()},
            "load_average_1min_during_probes": {
                "min": round(min(load), 1),
                "max": round(max(load), 1),
            },
            "a_produce_to_served_history": {
                **percentiles(to_history),
                "missed": len(sent) - len(to_history),
            },
            "b_produce_to_served_version": {
                **percentiles(to_version),
                "missed": len(sent) - len(to_version),
            },
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap-servers", help="a running cluster (default: start one)")
    parser.add_argument("--partitions", type=int, default=3, help="of the topic (compose: 3)")
    parser.add_argument("--rate", type=float, default=1000, help="background events/s")
    parser.add_argument("--users", type=int, default=10_000, help="synthetic users")
    parser.add_argument("--items", type=int, default=1000, help="synthetic items")
    parser.add_argument("--publish-every-s", type=float, default=5.0, help="trainer (compose: 5)")
    parser.add_argument(
        "--train-set", action="append", default=[], help="KEY=VALUE for genrec train --set"
    )
    parser.add_argument(
        "--serve-set", action="append", default=[], help="KEY=VALUE for genrec serve --set"
    )
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--probe-interval-s", type=float, default=0.5, help="mean gap")
    parser.add_argument("--history-deadline-s", type=float, default=10.0, help="(a) deadline")
    parser.add_argument("--version-deadline-s", type=float, default=120.0, help="(b) deadline")
    parser.add_argument(
        "--start-deadline-s", type=float, default=300.0, help="to ready, then to caught up"
    )
    args = parser.parse_args()
    try:
        with sigterm_exits(), tempfile.TemporaryDirectory(prefix="freshness-") as work:
            result = run(args, Path(work))
    except RuntimeError as err:  # what failed, with the process's log tail
        raise SystemExit(f"bench/freshness.py: {err}") from None
    settings = {k: v for k, v in vars(args).items() if k != "bootstrap_servers"}
    print(json.dumps({"bench": "freshness", "settings": settings, "cpus": os.cpu_count(),
                      **result}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
