"""What the online trainer tells the outside: Prometheus metrics, log lines, a metrics log.

* ``TrainerMetrics`` owns a private Prometheus ``CollectorRegistry`` (so tests and several
  trainers in one process never collide) and serves it on ``host:port`` (127.0.0.1 by
  default; port 0 disables the endpoint). Metric names start with ``genrec_``. The endpoint
  serves at most ``MAX_CONNECTIONS`` connections at once, one thread each (more are closed at
  once), and closes a connection idle for ``IDLE_TIMEOUT_S``: idle or slow clients cannot
  pile up threads and memory in the trainer.
* ``progress_line`` formats the periodic log line (rate, ETA when the run is bounded, metrics).
* ``MetricsLog`` appends one JSON object per line, the file the demo plots.

``set_consumer_lag(partition, lag)`` is the hook for sources that know their lag (Kafka).
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
from collections.abc import Mapping
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import IO, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

log = logging.getLogger(__name__)

# A scrape is one short request every few seconds; more connections at once are clients
# misbehaving, and each costs a thread.
MAX_CONNECTIONS = 8
IDLE_TIMEOUT_S = 5.0


class _QuietHandler(WSGIRequestHandler):
    timeout = IDLE_TIMEOUT_S  # a connection that sends nothing this long is closed

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: a scrape every few seconds would flood the trainer's log."""


class _BoundedServer(ThreadingMixIn, WSGIServer):
    """A thread per connection, at most ``MAX_CONNECTIONS`` of them."""

    daemon_threads = True
    request_queue_size = 128  # a burst of connects waits in the kernel, not in SYN retries

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # over the limit: closed, no thread
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # An idle timeout or a client that hung up: nothing for the trainer's log.
        log.debug("metrics connection from %s ended with an error", client_address, exc_info=True)


class _BoundedServerV6(_BoundedServer):
    address_family = socket.AF_INET6


class TrainerMetrics:
    """Prometheus gauges and counters of one trainer."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter("genrec_events", "input events decoded (valid)", registry=r)
        self.trained = Counter("genrec_trained_events", "events applied to the model", registry=r)
        self.targets = Counter("genrec_targets", "events scored then trained on", registry=r)
        self.rejected = Counter(
            "genrec_rejected", "rejected inputs by reason", ["reason"], registry=r
        )
        self.rate = Gauge("genrec_events_per_second", "input events per second", registry=r)
        self.loss = Gauge("genrec_loss", "last micro-batch sampled-softmax loss", registry=r)
        self.window = Gauge(
            "genrec_window_metric", "windowed progressive metric", ["metric"], registry=r
        )
        self.ranking = Gauge(
            "genrec_ranking_metric",
            "progressive ranking metric per task (ne, auc, log_loss, accuracy, count)",
            ["task", "metric"],
            registry=r,
        )
        self.checkpoint_time = Gauge(
            "genrec_checkpoint_timestamp_seconds", "unix time of the last checkpoint", registry=r
        )
        self.checkpoint_age = Gauge(
            "genrec_checkpoint_age_seconds", "seconds since the last checkpoint", registry=r
        )
        self.published = Gauge("genrec_published_version", "last published version", registry=r)
        self.store_users = Gauge("genrec_store_users", "users in the sequence store", registry=r)
        self.store_events = Gauge("genrec_store_events", "events in the sequence store", registry=r)
        self.vocab_size = Gauge("genrec_vocab_size", "items with an embedding row", registry=r)
        self.watermark = Gauge("genrec_watermark_seconds", "event-time watermark", registry=r)
        self.lag = Gauge("genrec_consumer_lag", "records behind the end", ["partition"], registry=r)
        self.dead_letters = Gauge(
            "genrec_dead_letters",
            "dead letters written (kind: sent, or truncated to fit the sink)",
            ["kind"],
            registry=r,
        )
        self.port = 0
        self._server: _BoundedServer | None = None
        if port:
            self._serve(host, port)

    def _serve(self, host: str, port: int) -> None:
        from prometheus_client import make_wsgi_app

        server_class = _BoundedServerV6 if ":" in host else _BoundedServer
        try:
            server = make_server(
                host, port, make_wsgi_app(self.registry), server_class, _QuietHandler
            )
        except OSError as err:
            log.warning(
                "cannot serve Prometheus metrics on %s:%d (%s); training continues without "
                "the endpoint (set observability.prometheus_port / --metrics-port)",
                host,
                port,
                err,
            )
            return
        assert isinstance(server, _BoundedServer)
        self._server = server
        threading.Thread(target=server.serve_forever, name="genrec-metrics", daemon=True).start()
        self.port = port
        log.info("Prometheus metrics on http://%s:%d/metrics", host, port)

    def close(self) -> None:
        """Stop serving the endpoint (if it runs) and free its port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def set_consumer_lag(self, partition: str, lag: int) -> None:
        """Hook for sources that know how far behind they are."""
        self.lag.labels(partition=partition).set(lag)

    def add_rejects(self, counts: Mapping[str, int]) -> None:
        for reason, n in counts.items():
            if n:
                self.rejected.labels(reason=reason).inc(n)

    def set_ranking(self, figures: Mapping[str, float]) -> None:
        """``{task}/{metric}`` figures (``pipeline.stream.ranking.figures``)."""
        for name, value in figures.items():
            if not math.isnan(value):
                task, _, metric = name.rpartition("/")
                self.ranking.labels(task=task, metric=metric).set(value)

    def set_window(self, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            if not math.isnan(value):
                self.window.labels(metric=name).set(value)


def duration(seconds: float) -> str:
    """H:MM:SS of a number of seconds (an ETA in a progress line)."""
    seconds = max(0, int(seconds))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def progress_line(snapshot: Mapping[str, Any], total: int | None) -> str:
    """``events=... (rate/s) NN% ETA ... loss ... ndcg@10(win) ...`` from a metrics snapshot.

    ``events`` counts since the first checkpoint (resumed runs included); the percentage and
    the ETA are of this run (``run_events``) against ``total``, the events it reads at most
    (``max_events``, or what a finite source has left; None: no percentage)."""
    done = snapshot["run_events"]
    rate = snapshot["events_per_s"]
    parts = [f"events={snapshot['events_seen']:,}", f"{rate:,.0f}/s"]
    if total:
        eta = (total - done) / rate if rate > 0 else math.inf
        # An Arrow record is never split, so the last poll may overshoot max_events.
        parts.append(f"{min(100.0, 100 * done / total):.0f}%")
        parts.append("ETA " + (duration(max(0.0, eta)) if math.isfinite(eta) else "?"))
    parts.append(f"targets={snapshot['targets']:,}")
    parts.append(f"loss={snapshot['loss']:.3f}")
    for name, value in snapshot["window"].items():
        parts.append(f"{name}(win)={value:.4f}")
    parts.append(f"rejected={sum(snapshot['rejected'].values()):,}")
    parts.append(f"users={snapshot['store_users']:,}")
    parts.append(f"items={snapshot['vocab_size']:,}")
    return " ".join(parts)


class MetricsLog:
    """Appends one JSON object per line (NaN written as null)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = self.path.open("a", encoding="utf-8")

    def write(self, record: Mapping[str, Any]) -> None:
        if self._file is None:
            raise ValueError(f"metrics log {self.path} is closed")
        self._file.write(json.dumps(_finite(record)) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
