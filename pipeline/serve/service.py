"""The parts of a running ``genrec serve``, wired from its configuration.

``build_service`` opens the registry's model (the ``genrec.registries`` plugin), loads the
histories (empty, or a bootstrap checkpoint's), builds the Kafka source the trainer's way
(the ``genrec.sources`` plugin, with the server's own consumer group) when
``history.stream`` is kafka, and loads the alias's version once. ``genrec serve`` serves the
application on a socket ``bind`` opened (port 0: any free port) with uvicorn
(``make_server``), until SIGINT / SIGTERM.
"""

from __future__ import annotations

import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipeline import plugins
from pipeline.runtime import threads
from pipeline.runtime.errors import ConfigError
from pipeline.serve.batcher import MicroBatcher
from pipeline.serve.config import ServeConfig
from pipeline.serve.feed import HistoryFeed
from pipeline.serve.histories import ServeHistories
from pipeline.serve.metrics import ServeMetrics
from pipeline.serve.reload import VersionFollower
from pipeline.serve.version import (
    Ranking,
    RankQuery,
    Recommendation,
    RecommendQuery,
    RequestError,
    rank,
    recommend,
)
from pipeline.sources.base import TimeSeekable
from pipeline.stream.publishing import PublishError

log = logging.getLogger(__name__)


class Service:
    """The followed version, the histories, their feed and the request batchers."""

    def __init__(
        self,
        cfg: ServeConfig,
        follower: VersionFollower,
        histories: ServeHistories,
        feed: HistoryFeed | None,
    ) -> None:
        self.cfg = cfg
        self.follower = follower
        self.histories = histories
        self.feed = feed
        self.metrics = ServeMetrics(follower, histories, feed)
        # one scoring thread: batches run one after another (pipeline.serve.batcher)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="genrec-serve-score")
        batching = cfg.batching
        wait_s = batching.max_wait_ms / 1000
        self.recommender: MicroBatcher[RecommendQuery, Recommendation] = MicroBatcher(
            self._recommend, self.executor, batching.max_batch, wait_s, batching.max_queue
        )
        self.ranker: MicroBatcher[RankQuery, Ranking] = MicroBatcher(
            self._rank, self.executor, batching.max_batch, wait_s, batching.max_queue
        )

    def _recommend(self, queries: list[RecommendQuery]) -> list[Recommendation | RequestError]:
        served = self.follower.current  # read once: the whole batch is one version's
        if served is None:
            return [_not_ready()] * len(queries)
        threads.step()  # torch's threads follow the cores other processes leave free
        self.metrics.batch_size.observe(len(queries))
        return recommend(served, self.histories, queries, int(time.time()))

    def _rank(self, queries: list[RankQuery]) -> list[Ranking | RequestError]:
        served = self.follower.current
        if served is None:
            return [_not_ready()] * len(queries)
        threads.step()
        self.metrics.batch_size.observe(len(queries))
        return rank(served, self.histories, queries, int(time.time()))

    async def start(self) -> None:
        """Start the batchers (on the running event loop), the follower and the feed."""
        self.recommender.start()
        self.ranker.start()
        self.follower.start()
        if self.feed is not None:
            self.feed.start()

    async def stop(self) -> None:
        await self.recommender.stop()
        await self.ranker.stop()
        self.follower.stop()
        if self.feed is not None:
            self.feed.stop()
        self.executor.shutdown(wait=True)


def _not_ready() -> RequestError:
    return RequestError(503, "no model version is loaded yet; see /readyz")


def build_service(cfg: ServeConfig) -> Service:
    """Registry, histories and feed of ``cfg``; the alias's version loaded once (a server
    whose alias has no version yet starts unready and keeps looking)."""
    threads.set_torch_threads(cfg.threads)
    open_model = plugins.load("genrec.registries", "default", "genrec serve")
    try:
        registry = open_model(cfg.registry, model=cfg.model)
    except PublishError as err:
        raise ConfigError(f"registry: {err}") from None
    follower = VersionFollower(registry, cfg.alias, cfg.poll_s, cfg.max_vocab_bytes)
    follower.check()
    h = cfg.history
    if h.bootstrap is not None:
        histories = ServeHistories.from_checkpoint(
            h.bootstrap, h.max_len, h.max_users, h.ttl_s, h.tolerance_s
        )
        users, events = histories.counts()
        log.info("histories of %d users (%d events) from %s", users, events, h.bootstrap)
    else:
        histories = ServeHistories(h.max_len, h.max_users, h.ttl_s, h.tolerance_s)
    feed = None
    if h.stream == "kafka":
        make_source = plugins.load("genrec.sources", "kafka", "history.stream: kafka")
        source = make_source(cfg.source_config())
        if histories.cutoff is not None and isinstance(source, TimeSeekable):
            source.start_at(histories.cutoff)  # the bootstrap holds what came before
        feed = HistoryFeed(source, histories, h.poll_timeout_s)
    return Service(cfg, follower, histories, feed)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto given: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it a keep-alive answer waited ~40 ms for the client's delayed ACK (Nagle)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ConfigError(f"http: cannot listen on {host}:{port} ({err.strerror or err})") from None
    sock.listen(2048)
    return sock


def make_server(app: Any, sock: socket.socket, max_connections: int) -> Any:
    """A uvicorn server of ``app`` on ``sock`` (``server.run(sockets=[sock])``) that answers
    503 at once past ``max_connections`` connections and requests in flight."""
    import uvicorn

    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on",
        limit_concurrency=max_connections,
    )  # fmt: skip
    return uvicorn.Server(config)
