"""Configuration of the online trainer (``genrec train``): one pydantic v2 model.

Precedence, lowest first: defaults < YAML file (``--config FILE``) < environment variables
``GENREC_<SECTION>__<KEY>=value`` (nested keys joined by ``__``, values parsed as YAML scalars,
e.g. ``GENREC_TRAIN__LR=0.002``, ``GENREC_SOURCE__SYNTHETIC__NUM_USERS=2000``) < CLI flags.
Unknown keys are errors, so a typo never silently falls back to a default.

Relative paths resolve against the working directory: the defaults put checkpoints under
``./checkpoints``, the registry under ``./registry`` and logs/dead letters under
``./runs/train``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ENV_PREFIX = "GENREC_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SyntheticSection(_Section):
    num_users: int = Field(500, ge=1, description="synthetic users")
    num_items: int = Field(1000, ge=40, description="synthetic items")
    events_per_user: int = Field(60, ge=3, description="mean events per user")
    drift_at: float | None = Field(None, description="fraction of the span with an abrupt drift")
    churn: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of items replaced per phase")
    seed: int = Field(0, description="generator seed")


class KafkaSection(_Section):
    bootstrap_servers: str | None = Field(
        None,
        description="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS, else the broker "
        "started by 'genrec kafka up')",
    )
    topic: str = Field("events", description="topic(s) to consume, comma-separated")
    group_id: str = Field("genrec-trainer", description="consumer group (offsets: lag only)")
    start: str = Field(
        "earliest", description="no known offset: earliest, latest, unix seconds or ISO time"
    )
    dead_letter_topic: str | None = Field(
        None, description="dead-letter topic (dead_letter.kind=kafka); default <topic>.dlq"
    )
    session_timeout_s: float = Field(
        45.0, ge=1, description="group session timeout (a killed trainer's partitions wait this)"
    )
    max_poll_interval_s: float = Field(
        300.0, ge=1, description="longest pause between polls (checkpoint + publish)"
    )
    security_protocol: str | None = Field(None, description="PLAINTEXT, SSL, SASL_SSL, ...")
    sasl_mechanism: str | None = Field(None, description="PLAIN, SCRAM-SHA-256/512, ...")
    sasl_username: str | None = Field(None, description="SASL user (password: env only)")
    ssl_cafile: str | None = Field(None, description="CA bundle (PEM)")
    ssl_certfile: str | None = Field(None, description="client certificate (PEM)")
    ssl_keyfile: str | None = Field(None, description="client key (PEM)")


class SourceSection(_Section):
    kind: Literal["synthetic", "file", "kafka"] = Field("synthetic", description="event source")
    path: str | None = Field(None, description="file to replay (kind=file)")
    format: str = Field("auto", description="file format: auto, jsonl, movielens-dat, csv, ...")
    codec: Literal["arrow", "json"] = Field("arrow", description="record codec (synthetic/tables)")
    events_per_record: int | None = Field(None, ge=1, description="events per Arrow record")
    poll_max_records: int | None = Field(
        None, ge=1, description="most records per poll (default: what one micro-batch needs)"
    )
    poll_timeout_s: float = Field(0.5, ge=0.0, description="longest wait for a record")
    synthetic: SyntheticSection = Field(default_factory=SyntheticSection)
    kafka: KafkaSection = Field(default_factory=KafkaSection)


class StoreSection(_Section):
    max_len: int = Field(50, ge=2, description="events per user history = model max_len (N)")
    max_users: int = Field(1_000_000, ge=1, description="users kept (LRU by event time)")
    ttl_s: int | None = Field(None, gt=0, description="event-time TTL of history (null: none)")
    tolerance_s: int = Field(3600, ge=0, description="out-of-order tolerance, seconds")


class VocabSection(_Section):
    capacity: int = Field(30_000, ge=2, description="item embedding rows (row 0 reserved)")
    admission_threshold: int = Field(1, ge=1, description="occurrences before a row is given")
    ttl_s: int | None = Field(None, gt=0, description="free rows unseen this long (event time)")


class ModelSection(_Section):
    embedding_dim: int = Field(64, ge=4, description="D")
    num_layers: int = Field(2, ge=1, description="HSTU layers")
    num_heads: int = Field(1, ge=1, description="attention heads")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout inside HSTU layers")
    input_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on input embeddings")
    attention_backend: Literal["auto", "reference", "triton"] = Field(
        "auto", description="attention kernel backend"
    )


class TrainSection(_Section):
    lr: float = Field(2e-3, gt=0, description="Adam learning rate")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay")
    num_negatives: int = Field(128, ge=1, description="sampled-softmax negatives (live items)")
    temperature: float = Field(0.05, gt=0, description="softmax temperature")
    batch_events: int = Field(256, ge=1, description="events per micro-batch (optimizer step)")
    max_targets: int | None = Field(
        None, ge=1, description="most targets per sequence (default: store.max_len // 2)"
    )
    learn: bool = Field(True, description="false: evaluate only (a frozen model)")
    device: str = Field("cpu", description="torch device")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's)")
    seed: int = Field(0, description="seed for init and negative sampling")
    max_events: int | None = Field(None, ge=1, description="stop after this many more input events")
    duration_s: float | None = Field(None, gt=0, description="stop after this many seconds")


class EvalSection(_Section):
    k: int = Field(10, ge=1, description="cut-off of HR@K / NDCG@K")
    window: int = Field(2000, ge=1, description="targets in the sliding metric window")


class CheckpointSection(_Section):
    dir: str = Field("./checkpoints", description="checkpoint directory")
    every_s: float = Field(60.0, gt=0, description="checkpoint at least this often, seconds")
    every_events: int = Field(50_000, ge=1, description="...or after this many input events")
    keep: int = Field(3, ge=1, description="checkpoints retained")
    resume: bool = Field(True, description="load the newest checkpoint on start")


class RegistrySection(_Section):
    uri: str = Field("./registry", description="registry path or URI (s3://, gs://, ...)")
    enabled: bool = Field(True, description="publish versions")
    every_s: float = Field(300.0, gt=0, description="publish at least this often, seconds")
    every_events: int = Field(100_000, ge=1, description="...or after this many input events")
    publish_on_exit: bool = Field(True, description="publish once more when stopping")


class DeadLetterSection(_Section):
    kind: Literal["jsonl", "kafka"] = Field("jsonl", description="dead-letter output")
    path: str | None = Field(None, description="JSONL file (default <run_dir>/deadletter.jsonl)")


class ObservabilitySection(_Section):
    prometheus_port: int = Field(9464, ge=0, le=65535, description="metrics port (0: off)")
    prometheus_host: str = Field("127.0.0.1", description="metrics bind address")
    log_every_s: float = Field(10.0, gt=0, description="progress log line period, seconds")
    metrics_log: str | None = Field(
        None, description="JSONL metrics log (default <run_dir>/metrics.jsonl)"
    )


class TrainerConfig(_Section):
    """Everything ``genrec train`` can be told; see ``docs/trainer.md``."""

    run_dir: str = Field("./runs/train", description="logs, dead letters, summary")
    source: SourceSection = Field(default_factory=SourceSection)
    store: StoreSection = Field(default_factory=StoreSection)
    vocab: VocabSection = Field(default_factory=VocabSection)
    model: ModelSection = Field(default_factory=ModelSection)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    registry: RegistrySection = Field(default_factory=RegistrySection)
    dead_letter: DeadLetterSection = Field(default_factory=DeadLetterSection)
    observability: ObservabilitySection = Field(default_factory=ObservabilitySection)

    @model_validator(mode="after")
    def _consistent(self) -> TrainerConfig:
        if self.source.kind == "file" and not self.source.path:
            raise ValueError("source.kind=file needs source.path (--path FILE)")
        max_targets = self.max_targets
        if not 1 <= max_targets < self.store.max_len:
            raise ValueError(
                f"train.max_targets={max_targets} must be in [1, store.max_len="
                f"{self.store.max_len})"
            )
        if self.store.max_users < self.train.batch_events:
            raise ValueError(
                f"store.max_users={self.store.max_users} must be >= train.batch_events="
                f"{self.train.batch_events}: one micro-batch may bring that many new users"
            )
        return self

    @property
    def max_targets(self) -> int:
        return self.train.max_targets or max(1, self.store.max_len // 2)

    @property
    def dead_letter_path(self) -> Path:
        return Path(self.dead_letter.path or Path(self.run_dir) / "deadletter.jsonl")

    @property
    def metrics_log_path(self) -> Path:
        return Path(self.observability.metrics_log or Path(self.run_dir) / "metrics.jsonl")


def deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``update``, merging nested mappings key by key."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def nested(path: list[str], value: Any) -> dict[str, Any]:
    """``(["train", "lr"], 0.1)`` -> ``{"train": {"lr": 0.1}}``."""
    out: dict[str, Any] = {path[-1]: value}
    for key in reversed(path[:-1]):
        out = {key: out}
    return out


def _parse_scalar(text: str) -> Any:
    import yaml

    return yaml.safe_load(text) if text.strip() else None


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``GENREC_<SECTION>__<KEY>`` variables as a nested dict (other GENREC_ vars ignored)."""
    environ = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        out = deep_merge(out, nested(path, _parse_scalar(raw)))
    return out


def dotted_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.lr=0.01", ...]`` as a nested dict (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects SECTION.KEY=VALUE, got {item!r}")
        out = deep_merge(out, nested(key.split("."), _parse_scalar(raw)))
    return out


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> TrainerConfig:
    """Defaults < YAML ``path`` < environment < ``overrides`` (nested dict, e.g. CLI flags)."""
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text(encoding="utf-8")
        loaded = yaml.safe_load(text) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a YAML mapping of sections, got {type(loaded)}")
        data = loaded
    data = deep_merge(data, env_overrides(environ))
    data = deep_merge(data, overrides or {})
    return TrainerConfig.model_validate(data)


def describe_options(model: type[BaseModel] = TrainerConfig, prefix: str = "") -> Iterator[str]:
    """One line per config key: ``section.key (default): description``, for --help."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from describe_options(annotation, f"{prefix}{name}.")
            continue
        default = field.get_default(call_default_factory=True)
        yield f"  {prefix}{name} (default {default!r}): {field.description or ''}"
