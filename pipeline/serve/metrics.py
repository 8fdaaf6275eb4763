"""Prometheus metrics of ``genrec serve`` (``/metrics``), in a private registry as the
trainer's (``pipeline.stream.observability``); names start with ``genrec_serve_``.

Request latency is a histogram per route and status; the served version, its age (since
it was published) and the age of its event-time watermark, the histories' size and the age
of their newest event are gauges read when scraped.
"""

from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from pipeline.serve.feed import HistoryFeed
from pipeline.serve.histories import ServeHistories
from pipeline.serve.reload import VersionFollower

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    def __init__(
        self, follower: VersionFollower, histories: ServeHistories, feed: HistoryFeed | None
    ) -> None:
        self.registry = r = CollectorRegistry()
        self.latency = Histogram(
            "genrec_serve_request_seconds", "request latency", ["route", "status"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.requests = Counter(
            "genrec_serve_requests", "requests answered", ["route", "status"], registry=r
        )
        self.batch_size = Histogram(
            "genrec_serve_batch_size", "requests per model call", buckets=BATCH_BUCKETS, registry=r
        )

        def served(value: str) -> float:
            current = follower.current
            if current is None:
                return float("nan")
            now = time.time()
            if value == "version":
                return float(current.version)
            if value == "age":
                return now - current.created_at
            return float("nan") if current.watermark is None else now - current.watermark

        Gauge("genrec_serve_version", "the version serving", registry=r).set_function(
            lambda: served("version")
        )
        Gauge(
            "genrec_serve_model_age_seconds", "seconds since the serving version was published",
            registry=r,
        ).set_function(lambda: served("age"))  # fmt: skip
        Gauge(
            "genrec_serve_model_watermark_age_seconds",
            "seconds since the serving version's event-time watermark",
            registry=r,
        ).set_function(lambda: served("watermark"))
        Gauge(
            "genrec_serve_versions_refused", "versions that failed verification", registry=r
        ).set_function(lambda: len(follower.refused))
        Gauge("genrec_serve_version_swaps", "versions swapped in", registry=r).set_function(
            lambda: follower.swaps
        )
        Gauge("genrec_serve_history_users", "users with a history", registry=r).set_function(
            lambda: histories.counts()[0]
        )
        Gauge("genrec_serve_history_events", "events in the histories", registry=r).set_function(
            lambda: histories.counts()[1]
        )
        Gauge(
            "genrec_serve_history_newest_event_age_seconds",
            "seconds since the event time of the newest stored event",
            registry=r,
        ).set_function(
            lambda: time.time() - histories.newest_event if histories.newest_event else float("nan")
        )
        if feed is not None:
            for name, what in (
                ("events", "valid events read from the stream"),
                ("stored", "events the histories accepted"),
                ("rejected", "records or rows that did not validate"),
                ("errors", "polls that failed"),
            ):
                Gauge(f"genrec_serve_feed_{name}", what, registry=r).set_function(
                    lambda name=name: getattr(feed, name)
                )

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.latency.labels(route=route, status=str(status)).observe(seconds)
        self.requests.labels(route=route, status=str(status)).inc()

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus's text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
