"""Configuration of the online trainer (``genrec train``): one pydantic v2 model.

Precedence, lowest first: defaults < YAML file (``--config FILE``) < environment variables
``GENREC_<SECTION>__<KEY>=value`` (nested keys joined by ``__``, values parsed as YAML scalars,
e.g. ``GENREC_TRAIN__LR=0.002``, ``GENREC_SOURCE__SYNTHETIC__NUM_USERS=2000``; top-level keys
without a section: ``GENREC_RUN_NAME``, ``GENREC_RUN_DIR``) < CLI flags. Unknown keys are
errors, so a typo never silently falls back to a default; every error names where the bad
value came from (``FILE:LINE``, the environment variable, or ``--set/flag``).

Run state is kept per run, so runs on different sources never resume each other's
checkpoints: the run is ``run_name`` if set, else derived from the source (``synthetic``,
``file-<file stem>``, ``kafka-<topic>``), and ``checkpoint.dir`` / ``run_dir`` default to
``./checkpoints/<run>`` / ``./runs/<run>`` (logs, dead letters, summary). The registry stays
shared at ``./registry``: several runs may publish to one registry. Relative paths resolve
against the working directory.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.runtime.errors import ConfigError

ENV_PREFIX = "GENREC_"
# ``genrec serve``'s variables (pipeline/serve/config.py): never the trainer's keys.
SERVE_ENV_PREFIX = "GENREC_SERVE__"
# Where CLI values (named flags and --set items, merged by pipeline/commands/train.py) came from.
CLI_ORIGIN = "--set/flag"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SyntheticSection(_Section):
    num_users: int = Field(500, ge=1, description="synthetic users")
    num_items: int = Field(1000, ge=40, description="synthetic items")
    events_per_user: int = Field(60, ge=3, description="mean events per user")
    drift_at: float | None = Field(None, description="fraction of the span with an abrupt drift")
    churn: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of items replaced per phase")
    seed: int = Field(0, description="generator seed")
    actions: bool = Field(
        False,
        description="impressions with click/view actions (ranking data, "
        "pipeline/lake/synthetic_actions.py) instead of item sequences; no drift_at or churn",
    )

    @model_validator(mode="after")
    def _actions_have_no_drift_or_churn(self) -> SyntheticSection:
        if self.actions and (self.drift_at is not None or self.churn > 0):
            raise ValueError(
                "drift_at and churn apply to the item-sequence generator only; unset them "
                "or set source.synthetic.actions=false"
            )
        return self


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
    connect_timeout_s: float | None = Field(
        None,
        gt=0,
        description="longest wait for a broker to answer at start (default: "
        "KAFKA_CONNECT_TIMEOUT_S, else 10)",
    )


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


# Settings that only HSTU reads, with their value for the other kinds.
HSTU_ONLY_DEFAULTS: dict[str, Any] = {
    "layer_norm": "plain",
    "attention_backend": "auto",
    "attention_alpha": None,
    "hstu_output": None,
    "attention_bias_init": None,
}
# ModelSection's names of model.hstu.hstu_form's keys (filled in when unset).
HSTU_FORM_SETTINGS = {
    "attention_alpha": "alpha",
    "hstu_output": "output",
    "attention_bias_init": "attention_bias_init",
}


class ModelSection(_Section):
    kind: Literal["hstu", "sasrec", "dlrm"] = Field(
        "hstu",
        description="hstu, sasrec (model/sasrec.py, its other options default) or dlrm "
        "(model/dlrm.py: ranking only, needs ranking_tasks)",
    )
    embedding_dim: int = Field(64, ge=4, description="D")
    num_layers: int = Field(2, ge=1, description="encoder layers")
    num_heads: int = Field(1, ge=1, description="attention heads")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout inside HSTU layers")
    input_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on input embeddings")
    attention_backend: Literal["auto", "reference", "triton"] = Field(
        "auto", description="HSTU's attention kernel backend (hstu only)"
    )
    layer_norm: Literal["plain", "affine"] = Field(
        "plain",
        description="HSTU layer norms: plain (no learned scale/shift, the reference's) or "
        "affine (hstu only)",
    )
    attention_alpha: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="HSTU's attention scale (SiLU(alpha * q.k + biases)); default: 1 (the "
        "research code's) without ranking_tasks, 1/sqrt(embedding_dim / num_heads) (dlrm_v3's) "
        "with them (hstu only)",
    )
    hstu_output: Literal["gated", "concat"] | None = Field(
        None,
        description="HSTU layer output: gated, W_o(u * LN(attn)) (the research code's), or "
        "concat, W_o([u, LN(attn), u * LN(attn)]) (dlrm_v3's STU); default: gated without "
        "ranking_tasks, concat with them (hstu only)",
    )
    attention_bias_init: float | None = Field(
        None,
        allow_inf_nan=False,
        description="HSTU's initial relative position bias: 0 without ranking_tasks, 1 with "
        "them, so that SiLU attention starts as a sum over the history (hstu only)",
    )
    init: Literal["reference", "genrec"] = Field(
        "reference", description="parameter init: reference (Meta's research code's) or genrec"
    )
    action_inputs: bool = Field(
        False,
        description="add each event's action and value embeddings to its input token "
        "(model/actions.py)",
    )
    value_boundaries: list[float] | None = Field(
        None,
        description="value buckets of action_inputs, increasing (default: between the half "
        "stars of 0.5-5 ratings, model/actions.py)",
    )
    ranking_tasks: list[dict[str, Any]] = Field(
        default_factory=list,
        description="ranking heads trained online next to retrieval: specs 'NAME:RULE[@W]' "
        "(e.g. 'like:value>=4', 'click:action:click,purchase'; several in one string joined "
        "by ',' or ';') or dicts {name, actions, min_value, weight}; none: retrieval only",
    )
    ranking_hidden: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [64], description="hidden widths of the ranking head MLP"
    )

    @field_validator("ranking_tasks", mode="before")
    @classmethod
    def _ranking_tasks(cls, value: Any) -> list[dict[str, Any]]:
        # here, not at the top: the parsers' imports (numpy, torch) are not needed for --help
        from model.ranking_heads import check_tasks
        from pipeline.events.ranking_tasks import parse_ranking_task, parse_ranking_tasks

        if value is None:
            return []
        if isinstance(value, str):
            return list(parse_ranking_tasks(value, setting=None))
        if not isinstance(value, list):
            raise ValueError("write a list of task specs or dicts, or one spec string")
        docs = [
            parse_ranking_task(item, setting=None) if isinstance(item, str) else item
            for item in value
            if not (isinstance(item, str) and not item.strip())
        ]
        if not all(isinstance(doc, dict) for doc in docs):
            raise ValueError("each task is a spec string such as 'like:value>=4' or a dict")
        return list(check_tasks(docs))  # the error line names the key and its origin

    @model_validator(mode="after")
    def _kind_settings(self) -> ModelSection:
        # the other kinds have neither setting: a non-default value would silently do nothing
        if self.kind != "hstu":
            for name, default in HSTU_ONLY_DEFAULTS.items():
                if getattr(self, name) != default:
                    raise ValueError(
                        f"model.{name} is HSTU-only; leave it unset with model.kind={self.kind}"
                    )
        else:
            from model.hstu import hstu_form  # here: model/ imports torch, --help needs none

            form = hstu_form(bool(self.ranking_tasks), self.embedding_dim, self.num_heads)
            for name, key in HSTU_FORM_SETTINGS.items():
                if getattr(self, name) is None:  # unset: the form of this model's task
                    setattr(self, name, form[key])
        if self.kind == "dlrm" and not self.ranking_tasks:
            raise ValueError(
                "model.kind=dlrm is a ranking-only model: set model.ranking_tasks (what it "
                "predicts)"
            )
        return self


class TrainSection(_Section):
    lr: float = Field(2e-3, gt=0, description="Adam learning rate")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay")
    adam_beta2: float = Field(0.98, gt=0, lt=1, description="Adam beta2 (the reference's 0.98)")
    num_negatives: int = Field(128, ge=1, description="sampled-softmax negatives (live items)")
    per_position_negatives: bool = Field(
        True, description="draw num_negatives per target (the reference) instead of per step"
    )
    sparse_embeddings: bool = Field(
        True,
        description="item table: sparse gradients and lazy Adam on the rows a step touches "
        "(step cost independent of vocab.capacity)",
    )
    temperature: float = Field(0.05, gt=0, description="softmax temperature")
    batch_events: int = Field(256, ge=1, description="events per micro-batch (optimizer step)")
    max_targets: int | None = Field(
        None, ge=1, description="most targets per sequence (default: store.max_len // 2)"
    )
    positives: str = Field(
        "all",
        description="which new events are retrieval targets (and test-then-train scored): all, "
        "value>=4 (also >, <=, <, ==) or action:click,purchase (names or codes); the others "
        "are context",
    )
    retrieval_weight: float = Field(
        0.2,
        ge=0,
        description="with model.ranking_tasks: weight of the retrieval loss beside the ranking "
        "loss (0.2 as Meta's dlrm_v3 and train-offline; 0 trains the heads only, retrieval is "
        "still scored); without ranking tasks retrieval is the only loss",
    )
    learn: bool = Field(True, description="false: evaluate only (a frozen model)")
    device: str = Field("cpu", description="torch device")
    threads: int | None = Field(
        None,
        ge=1,
        description=(
            "torch CPU threads (default: OMP_NUM_THREADS when set, else the cores other "
            "processes leave free, re-read about once a second)"
        ),
    )
    seed: int = Field(0, description="seed for init and negative sampling")
    max_events: int | None = Field(
        None,
        ge=1,
        description="stop after this many more input events in this run (torchrun's restarts "
        "of a group continue the count)",
    )
    duration_s: float | None = Field(None, gt=0, description="stop after this many seconds")

    @field_validator("positives")
    @classmethod
    def _positives_rule(cls, value: str) -> str:
        # here, not at the top: the parser's imports (numpy, pyarrow) are not needed for --help
        from pipeline.events.positives import parse_positives

        parse_positives(value, setting=None)  # the error line names the key and its origin
        return value


class EvalSection(_Section):
    k: int = Field(10, ge=1, description="cut-off of HR@K / NDCG@K")
    window: int = Field(2000, ge=1, description="targets in the sliding metric window")


class CheckpointSection(_Section):
    dir: str | None = Field(
        None, description="checkpoint directory (default ./checkpoints/<run>, see run_name)"
    )
    every_s: float = Field(60.0, gt=0, description="checkpoint at least this often, seconds")
    every_events: int = Field(50_000, ge=1, description="...or after this many input events")
    keep: int = Field(
        3, ge=1, description="full checkpoints retained, each with the deltas written on it"
    )
    full_every: int = Field(
        10,
        ge=1,
        description="every Nth checkpoint is full; the others are deltas holding only the item "
        "rows and users changed since the previous one (with train.sparse_embeddings; 1: "
        "always full)",
    )
    resume: bool = Field(True, description="load the newest checkpoint on start")


class RegistrySection(_Section):
    uri: str = Field("./registry", description="registry path or URI (s3://, gs://, ...)")
    enabled: bool = Field(True, description="publish versions")
    every_s: float = Field(
        300.0,
        gt=0,
        description="publish at least this often, seconds (each publish follows a checkpoint; "
        "with deltas a few seconds is affordable)",
    )
    every_events: int = Field(100_000, ge=1, description="...or after this many input events")
    full_every: int = Field(
        10,
        ge=1,
        description="every Nth version is full; the others are deltas holding only the item "
        "rows changed since the previous version and the dense weights (with "
        "train.sparse_embeddings; 1: always full, readable by genrec before deltas)",
    )
    publish_on_exit: bool = Field(True, description="publish once more when stopping")
    model: str | None = Field(
        None,
        description="the registry model versions are published to, with its own versions and "
        "'latest' (default: the run name, see run_name; 'default': a registry's model from "
        "before model names)",
    )

    @field_validator("model")
    @classmethod
    def _model_is_a_directory_name(cls, value: str | None) -> str | None:
        return _directory_name(value, "model name", "<registry>/models/<model>")


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
    targets_log: str | None = Field(
        None,
        description="audit file: the event id of every event scored as a target, one per line, "
        "appended as scored (null: off)",
    )


class DistributedSection(_Section):
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="torch.distributed backend of a trainer group (auto: nccl on cuda)"
    )
    timeout_s: float = Field(
        120.0, gt=0, description="longest wait for the other ranks in one collective, seconds"
    )
    max_restarts: int = Field(
        3, ge=0, description="genrec train --workers: restarts of the group after a rank dies"
    )


class TrainerConfig(_Section):
    """Everything ``genrec train`` can be told; see ``docs/trainer.md``."""

    run_name: str | None = Field(
        None,
        description="names the run state (./checkpoints/<run>, ./runs/<run>); default from the "
        "source: synthetic (synthetic-actions), file-<file stem>, kafka-<topic>",
    )
    run_dir: str | None = Field(
        None, description="logs, dead letters, summary (default ./runs/<run>, see run_name)"
    )
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
    distributed: DistributedSection = Field(default_factory=DistributedSection)

    @field_validator("run_name")
    @classmethod
    def _run_name_is_a_directory_name(cls, value: str | None) -> str | None:
        return _directory_name(
            value, "directory name", "./checkpoints/<run_name> and ./runs/<run_name>"
        )

    @model_validator(mode="after")
    def _consistent(self) -> TrainerConfig:
        if self.source.kind == "file" and not self.source.path:
            raise ValueError("source.kind=file needs source.path (--path FILE)")
        # Explicit directories win; otherwise each run gets its own, so a Kafka run never
        # tries to resume the synthetic demo's checkpoint (positions of another source).
        if self.run_dir is None:
            self.run_dir = f"./runs/{self.run}"
        if self.checkpoint.dir is None:
            self.checkpoint.dir = f"./checkpoints/{self.run}"
        max_targets = self.max_targets
        if not 1 <= max_targets < self.store.max_len:
            raise ValueError(
                f"train.max_targets={max_targets} must be in [1, store.max_len="
                f"{self.store.max_len})"
            )
        if "retrieval_weight" in self.train.model_fields_set and not self.model.ranking_tasks:
            raise ValueError(
                f"train.retrieval_weight={self.train.retrieval_weight} weighs retrieval against "
                "the ranking heads: set model.ranking_tasks, or leave it out"
            )
        if self.store.max_users < self.train.batch_events:
            raise ValueError(
                f"store.max_users={self.store.max_users} must be >= train.batch_events="
                f"{self.train.batch_events}: one micro-batch may bring that many new users"
            )
        return self

    @property
    def run(self) -> str:
        """``run_name``, else the name derived from the source (see ``derived_run_name``)."""
        return self.run_name or derived_run_name(self.source)

    @property
    def registry_model(self) -> str:
        """The registry model this run publishes to: ``registry.model``, else the run name."""
        return self.registry.model or self.run

    @property
    def max_targets(self) -> int:
        return self.train.max_targets or max(1, self.store.max_len // 2)

    @property
    def dead_letter_path(self) -> Path:
        return Path(self.dead_letter.path or Path(self.run_dir) / "deadletter.jsonl")

    @property
    def metrics_log_path(self) -> Path:
        return Path(self.observability.metrics_log or Path(self.run_dir) / "metrics.jsonl")


_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def _directory_name(value: str | None, what: str, names: str) -> str | None:
    """``value`` when it is safe as one path component (None passes), else ValueError."""
    if value is not None and not _RUN_NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a {what}: use letters, digits and . _ + - (it names {names})"
        )
    return value


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def derived_run_name(source: SourceSection) -> str:
    """``synthetic`` (``synthetic-actions``), ``file-<file stem>`` or ``kafka-<topic>`` (several
    topics joined by +)."""
    if source.kind == "synthetic":
        # Apart from the item-sequence demo: its checkpoint holds another stream's positions.
        return "synthetic-actions" if source.synthetic.actions else "synthetic"
    if source.kind == "file":
        return "file-" + _UNSAFE.sub("_", Path(source.path or "").stem)
    topics = [t.strip() for t in source.kafka.topic.split(",") if t.strip()]
    return "kafka-" + "+".join(_UNSAFE.sub("_", t) for t in topics)


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


@dataclass(frozen=True)
class _Origin:
    """Where a configuration value came from, for error messages."""

    where: str  # "train.yaml:3", "GENREC_TRAIN__LR='abc'" or CLI_ORIGIN
    env_path: tuple[str, ...] | None = None  # the variable's key path, when from the environment


# One layer of settings (YAML file, environment, CLI): key path, at every depth -> origin.
_Origins = dict[tuple[str, ...], _Origin]


def _parse_scalar(text: str, where: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}: the value is not valid YAML ({problem})") from None


def _section_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


@dataclass(frozen=True)
class Settings:
    """A command's settings: its pydantic model, the prefix of its environment variables
    and the command whose ``--help`` lists the keys."""

    root: type[BaseModel]
    env_prefix: str
    command: str


def _env_layer(
    environ: Mapping[str, str] | None, settings: Settings
) -> tuple[dict[str, Any], _Origins]:
    environ = os.environ if environ is None else environ
    top_level = {
        name
        for name, field in settings.root.model_fields.items()
        if _section_model(field.annotation) is None
    }
    prefix = settings.env_prefix
    data: dict[str, Any] = {}
    origins: _Origins = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(prefix) or (
            prefix == ENV_PREFIX and name.startswith(SERVE_ENV_PREFIX)
        ):
            continue
        key = name[len(prefix) :]
        if "__" not in key and key.lower() not in top_level:
            continue  # GENREC_REGISTRY, GENREC_KAFKA_HOME, ...: settings of other commands
        path = tuple(part.lower() for part in key.split("__"))
        origin = _Origin(f"{name}={raw!r}", env_path=path)
        if not all(path):
            raise ConfigError(
                f"{origin.where}: empty key in the name; use {prefix}<SECTION>__<KEY>"
            )
        data = deep_merge(data, nested(list(path), _parse_scalar(raw, origin.where)))
        for depth in range(1, len(path) + 1):
            origins[path[:depth]] = origin
    return data, origins


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``GENREC_<SECTION>__<KEY>`` and top-level ``GENREC_<KEY>`` variables as a nested dict.

    Other ``GENREC_`` variables (``GENREC_REGISTRY``, ``GENREC_KAFKA_HOME``, ...) are ignored.
    """
    return _env_layer(environ, TRAINER_SETTINGS)[0]


def dotted_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.lr=0.01", ...]`` as a nested dict (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        path = key.split(".")
        if not sep or not all(path):
            raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. train.lr=0.01")
        out = deep_merge(out, nested(path, _parse_scalar(raw, f"--set {item!r}")))
    return out


def _yaml_error_line(path: str | Path, err: Any) -> str:
    """``FILE:LINE:COL: problem (context)`` of a ``yaml.MarkedYAMLError``."""
    mark = err.problem_mark or err.context_mark
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    line = f"{where}: {err.problem or err.context or 'invalid YAML'}"
    if err.problem and err.context:
        at = f" at line {err.context_mark.line + 1}" if err.context_mark else ""
        line += f" ({err.context}{at})"
    return line


def _yaml_key_origins(node: Any, path: str | Path, prefix: tuple[str, ...] = ()) -> _Origins:
    """Key path -> ``FILE:LINE`` of the key, from the composed YAML node tree."""
    import yaml

    out: _Origins = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                keys = (*prefix, str(key_node.value))
                out[keys] = _Origin(f"{path}:{key_node.start_mark.line + 1}")
                out.update(_yaml_key_origins(value_node, path, keys))
    return out


def _yaml_layer(path: str | Path) -> tuple[dict[str, Any], _Origins]:
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file ({err.strerror or err})") from None
    # Compose, then construct: the node tree gives each key's line for later error messages.
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        loaded = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as err:
        raise ConfigError(_yaml_error_line(path, err)) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: {err}") from None
    finally:
        loader.dispose()
    if loaded is None:
        return {}, {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"{path}: expected a mapping of sections (source:, train:, ...), "
            f"got a YAML {type(loaded).__name__}"
        )
    return loaded, _yaml_key_origins(node, path)


def _cli_origins(data: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> _Origins:
    out: _Origins = {}
    for key, value in data.items():
        keys = (*prefix, str(key))
        out[keys] = _Origin(CLI_ORIGIN)
        if isinstance(value, Mapping):
            out.update(_cli_origins(value, keys))
    return out


def _model_at(path: tuple[str, ...], root: type[BaseModel]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = root
    for part in path:
        field = model.model_fields.get(part) if model else None
        model = _section_model(field.annotation) if field else None
    return model


def _key_path(loc: tuple[str, ...], root: type[BaseModel]) -> tuple[str, ...]:
    """The config keys of a pydantic error location (without union member tags)."""
    out: list[str] = []
    model: type[BaseModel] | None = root
    for part in loc:
        if model is None:
            break
        out.append(part)
        field = model.model_fields.get(part)
        if field is None:  # an unknown key
            break
        model = _section_model(field.annotation)
    return tuple(out)


def _find_origin(keys: tuple[str, ...], layers: list[_Origins]) -> _Origin | None:
    """The highest-precedence layer that set ``keys``, else one that set a key below it."""
    for origins in layers:
        if keys in origins:
            return origins[keys]
    for origins in layers:
        for path, origin in origins.items():
            if path[: len(keys)] == keys:
                return origin
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unknown_key_line(keys: tuple[str, ...], origin: _Origin | None, settings: Settings) -> str:
    parent = _model_at(keys[:-1], settings.root)
    names = list(parent.model_fields) if parent else []
    match = difflib.get_close_matches(keys[-1], names, n=1)
    dotted = ".".join(keys)
    if origin is not None and origin.env_path is not None:
        hint = ""
        if match:
            fixed = (*keys[:-1], match[0], *origin.env_path[len(keys) :])
            hint = f" (did you mean {settings.env_prefix}{'__'.join(fixed).upper()}?)"
        return f"{origin.where}: unknown key {dotted}{hint}"
    if match:
        hint = f" (did you mean {'.'.join((*keys[:-1], match[0]))}?)"
    else:
        hint = f" (see 'genrec {settings.command} --help' for the keys)"
    where = f"{origin.where}: " if origin else ""
    return f"{where}{dotted}: unknown key{hint}"


def _error_line(error: Mapping[str, Any], layers: list[_Origins], settings: Settings) -> str:
    """One pydantic error as ``where: key: problem``."""
    keys = _key_path(tuple(str(part) for part in error["loc"]), settings.root)
    problem = str(error["msg"]).removeprefix("Value error, ")
    if not keys:  # a check across keys (TrainerConfig._consistent): the message names them
        return problem
    origin = _find_origin(keys, layers)
    if error["type"] == "extra_forbidden":
        return _unknown_key_line(keys, origin, settings)
    if origin is not None and origin.env_path is not None:
        return f"{origin.where}: {problem}"  # the variable's name and value say it all
    where = f"{origin.where}: " if origin else ""
    return f"{where}{'.'.join(keys)}: {problem} (got {_short(error['input'])})"


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> TrainerConfig:
    """Defaults < YAML ``path`` < environment < ``overrides`` (nested dict, e.g. CLI flags).

    Raises ``ConfigError`` with one ``where: key: problem`` line per problem.
    """
    cfg = load_settings(TRAINER_SETTINGS, path, overrides, environ)
    assert isinstance(cfg, TrainerConfig)
    return cfg


def load_settings(
    settings: Settings,
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> BaseModel:
    """``settings.root`` from defaults < YAML ``path`` < environment (``settings.env_prefix``)
    < ``overrides``; ``ConfigError`` with one ``where: key: problem`` line per problem."""
    layers = [_yaml_layer(path)] if path is not None else []
    layers.append(_env_layer(environ, settings))
    cli = dict(overrides or {})
    layers.append((cli, _cli_origins(cli)))
    data: dict[str, Any] = {}
    for layer, _ in layers:
        data = deep_merge(data, layer)
    try:
        return settings.root.model_validate(data)
    except ValidationError as err:
        origins = [layer_origins for _, layer_origins in reversed(layers)]
        lines = [_error_line(e, origins, settings) for e in err.errors(include_url=False)]
        raise ConfigError(lines) from err


TRAINER_SETTINGS = Settings(TrainerConfig, ENV_PREFIX, "train")


def describe_options(model: type[BaseModel] = TrainerConfig, prefix: str = "") -> Iterator[str]:
    """One line per config key: ``section.key (default): description``, for --help."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from describe_options(annotation, f"{prefix}{name}.")
            continue
        default = field.get_default(call_default_factory=True)
        yield f"  {prefix}{name} (default {default!r}): {field.description or ''}"
