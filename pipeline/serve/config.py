"""Configuration of ``genrec serve``: one pydantic model.

Precedence, lowest first: defaults < YAML file (``--config FILE``) < environment variables
``GENREC_SERVE__<SECTION>__<KEY>=value`` (e.g. ``GENREC_SERVE__HTTP__PORT=8080``; top-level
keys: ``GENREC_SERVE__REGISTRY``) < CLI flags, as ``genrec train``'s
(``pipeline.stream.config``): unknown keys are errors naming where they came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.stream.config import (
    SERVE_ENV_PREFIX,
    KafkaSection,
    Settings,
    TrainerConfig,
    load_settings,
)
from pipeline.stream.publishing import DEFAULT_MAX_VOCAB_BYTES


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HttpSection(_Section):
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0: every interface)")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    max_body_bytes: int = Field(
        1 << 20, ge=1024, description="largest request body; a bigger one is refused with 413"
    )
    max_connections: int = Field(
        256,
        ge=1,
        description="connections and requests in flight at most; more are answered 503 at "
        "once (an overloaded server sheds load instead of queueing it without bound)",
    )
    max_k: int = Field(1000, ge=1, description="largest k of /recommend")
    max_history: int = Field(1000, ge=1, description="most events in a request's history")
    max_candidates: int = Field(1000, ge=1, description="most candidates of one /rank request")


class BatchingSection(_Section):
    max_batch: int = Field(64, ge=1, description="most requests scored in one model call")
    max_wait_ms: float = Field(
        2.0, ge=0.0, description="longest a request waits for others to join its batch"
    )
    max_queue: int = Field(
        1024, ge=1, description="requests waiting at most; more are refused with 503"
    )


class ServeKafkaSection(KafkaSection):
    group_id: str = Field(
        "genrec-serve", description="consumer group (never committed: histories are rebuilt)"
    )


class HistorySection(_Section):
    max_len: int = Field(200, ge=1, description="events kept per user")
    max_users: int = Field(1_000_000, ge=1, description="users kept (LRU by event time)")
    ttl_s: int | None = Field(None, gt=0, description="event-time TTL of history (null: none)")
    tolerance_s: int = Field(3600, ge=0, description="out-of-order tolerance, seconds")
    bootstrap: Path | None = Field(
        None,
        description="a 'genrec backfill bootstrap' (or trainer) checkpoint directory whose "
        "newest checkpoint's histories the server starts from",
    )
    stream: Literal["kafka", "none"] = Field(
        "none", description="kafka: follow the event topic; none: request/bootstrap histories"
    )
    kafka: ServeKafkaSection = Field(default_factory=ServeKafkaSection)
    poll_timeout_s: float = Field(0.2, gt=0, description="longest wait of one Kafka poll")


class ServeConfig(_Section):
    registry: str = Field("./registry", description="model registry: a directory or a URI")
    model: str | None = Field(None, description="the registry's model (null: its only one)")
    alias: str = Field("latest", description="the alias to follow")
    poll_s: float = Field(1.0, gt=0, description="seconds between looks at the alias")
    threads: int = Field(
        0,
        ge=0,
        description="torch CPU threads (0: OMP_NUM_THREADS, else the cores other processes "
        "leave free, pipeline/runtime/threads.py)",
    )
    max_vocab_bytes: int = Field(
        DEFAULT_MAX_VOCAB_BYTES, ge=1, description="largest decompressed vocabulary of a version"
    )
    http: HttpSection = Field(default_factory=HttpSection)
    batching: BatchingSection = Field(default_factory=BatchingSection)
    history: HistorySection = Field(default_factory=HistorySection)

    def source_config(self) -> TrainerConfig:
        """A trainer config naming this server's Kafka source (the ``genrec.sources``
        plugin builds a source from one)."""
        kafka = self.history.kafka.model_dump()
        return TrainerConfig.model_validate({"source": {"kind": "kafka", "kafka": kafka}})


SERVE_SETTINGS = Settings(ServeConfig, SERVE_ENV_PREFIX, "serve")


def load_serve_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> ServeConfig:
    """Defaults < YAML ``path`` < ``GENREC_SERVE__`` variables < ``overrides``."""
    cfg = load_settings(SERVE_SETTINGS, path, overrides, environ)
    assert isinstance(cfg, ServeConfig)
    return cfg
