"""Connection settings for Kafka clients: bootstrap servers plus SASL/SSL, passed through to
kafka-python unchanged.

Every genrec Kafka client (admin, producer, consumer source) takes a ``KafkaClientConfig`` and
calls ``client_kwargs()``, so security settings are spelled once. Settings come from command
line flags or from environment variables (``from_env``); the SASL password is read only from
the environment (``KAFKA_SASL_PASSWORD``) so that it never shows in ``ps`` or shell history.

Environment variables: ``KAFKA_BOOTSTRAP_SERVERS``, ``KAFKA_SECURITY_PROTOCOL``,
``KAFKA_SASL_MECHANISM``, ``KAFKA_SASL_USERNAME``, ``KAFKA_SASL_PASSWORD``,
``KAFKA_SSL_CAFILE``, ``KAFKA_SSL_CERTFILE``, ``KAFKA_SSL_KEYFILE``, ``KAFKA_CONNECT_TIMEOUT_S``.

Connecting: kafka-python clients reach a broker in their constructor and, by default, log
every failed attempt for 30 s before a ``KafkaTimeoutError``. ``connect`` builds them with a
bounded wait (``connect_timeout_s``, 10 s by default) and their per-attempt log lines quiet, and
turns "no broker answered" into ``KafkaUnreachableError``: one line naming the servers and what
to do.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

T = TypeVar("T")

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"]

_ENV_FIELDS = {
    "security_protocol": "KAFKA_SECURITY_PROTOCOL",
    "sasl_mechanism": "KAFKA_SASL_MECHANISM",
    "sasl_username": "KAFKA_SASL_USERNAME",
    "sasl_password": "KAFKA_SASL_PASSWORD",
    "ssl_cafile": "KAFKA_SSL_CAFILE",
    "ssl_certfile": "KAFKA_SSL_CERTFILE",
    "ssl_keyfile": "KAFKA_SSL_KEYFILE",
    "connect_timeout_s": "KAFKA_CONNECT_TIMEOUT_S",
}
DEFAULT_CONNECT_TIMEOUT_S = 10.0


class KafkaUnreachableError(ConnectionError):
    """No bootstrap server answered within the connect timeout (an ``OSError``: the CLI prints
    its message as one line)."""


class KafkaClientConfig(BaseModel):
    """Where the cluster is and how to authenticate to it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = Field(min_length=1, description="comma-separated host:port list")
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    client_id: str = "genrec"
    connect_timeout_s: float = Field(
        DEFAULT_CONNECT_TIMEOUT_S, gt=0, le=3600, description="longest wait for a first broker"
    )

    @model_validator(mode="after")
    def _check_sasl(self) -> KafkaClientConfig:
        uses_sasl = self.security_protocol.startswith("SASL_")
        if uses_sasl and self.sasl_mechanism is None:
            raise ValueError(
                f"security_protocol={self.security_protocol} needs a SASL mechanism "
                "(--sasl-mechanism or KAFKA_SASL_MECHANISM)"
            )
        if not uses_sasl and self.sasl_mechanism is not None:
            raise ValueError(
                f"sasl_mechanism={self.sasl_mechanism} is set but security_protocol is "
                f"{self.security_protocol}; use SASL_PLAINTEXT or SASL_SSL"
            )
        needs_password = self.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
        if needs_password and (self.sasl_username is None or self.sasl_password is None):
            raise ValueError(
                f"SASL mechanism {self.sasl_mechanism} needs a username and a password "
                "(--sasl-username or KAFKA_SASL_USERNAME, and KAFKA_SASL_PASSWORD)"
            )
        return self

    @classmethod
    def from_env(
        cls,
        bootstrap_servers: str | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> KafkaClientConfig:
        """Settings from ``KAFKA_*`` environment variables; explicit arguments win.

        ``overrides`` whose value is None are ignored, so unset CLI flags fall back to the
        environment."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {
            name: env[var] for name, var in _ENV_FIELDS.items() if env.get(var)
        }
        values.update({name: value for name, value in overrides.items() if value is not None})
        servers = bootstrap_servers or env.get("KAFKA_BOOTSTRAP_SERVERS")
        if not servers:
            raise ValueError(
                "no Kafka cluster given: pass --bootstrap-servers, set KAFKA_BOOTSTRAP_SERVERS, "
                "or start a local broker with 'genrec kafka up'"
            )
        return cls(bootstrap_servers=servers, **values)

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for any kafka-python client (KafkaProducer, KafkaConsumer,
        KafkaAdminClient); unset options are left out so kafka-python's defaults apply."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "security_protocol": self.security_protocol,
            "client_id": self.client_id,
            "bootstrap_timeout_ms": int(self.connect_timeout_s * 1000),
        }
        optional = {
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_plain_username": self.sasl_username,
            "sasl_plain_password": (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            ),
            "ssl_cafile": self.ssl_cafile,
            "ssl_certfile": self.ssl_certfile,
            "ssl_keyfile": self.ssl_keyfile,
        }
        kwargs.update({key: value for key, value in optional.items() if value is not None})
        return kwargs


def connect(factory: Callable[..., T], config: KafkaClientConfig, **kwargs: Any) -> T:
    """``factory(**config.client_kwargs(), **kwargs)``: a kafka-python client (KafkaAdminClient,
    KafkaProducer, KafkaConsumer), which connects in its constructor. Raises
    ``KafkaUnreachableError`` if no bootstrap server answers within ``connect_timeout_s``."""
    from kafka.errors import KafkaTimeoutError

    try:
        with _quiet_kafka_logs():
            return factory(**{**config.client_kwargs(), **kwargs})
    except KafkaTimeoutError:
        raise KafkaUnreachableError(
            f"no Kafka broker answered at {config.bootstrap_servers} within "
            f"{config.connect_timeout_s:g}s: start it ('genrec kafka up') or name a running "
            "cluster with --bootstrap-servers / KAFKA_BOOTSTRAP_SERVERS (check the SSL/SASL "
            "settings too); wait longer with --connect-timeout / KAFKA_CONNECT_TIMEOUT_S"
        ) from None


@contextmanager
def _quiet_kafka_logs() -> Iterator[None]:
    # kafka-python logs each failed bootstrap attempt (over a hundred lines in 30 s); the
    # error above says it once. At DEBUG (--log-level DEBUG) they stay, for diagnosis.
    kafka_log = logging.getLogger("kafka")
    if kafka_log.isEnabledFor(logging.DEBUG):
        yield
        return
    level = kafka_log.level
    kafka_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        kafka_log.setLevel(level)


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--bootstrap-servers`` and the SASL/SSL flags to a subcommand's parser."""
    group = parser.add_argument_group("Kafka connection (flags override KAFKA_* variables)")
    group.add_argument(
        "--bootstrap-servers",
        help="host:port[,host:port...]; default: $KAFKA_BOOTSTRAP_SERVERS, else the broker "
        "started by 'genrec kafka up'",
    )
    group.add_argument(
        "--security-protocol",
        choices=["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"],
        help="how to talk to the brokers (default: $KAFKA_SECURITY_PROTOCOL, else PLAINTEXT)",
    )
    group.add_argument(
        "--sasl-mechanism",
        choices=["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"],
        help="SASL mechanism with a SASL_* protocol (default: $KAFKA_SASL_MECHANISM)",
    )
    group.add_argument(
        "--sasl-username", help="SASL user (the password comes from $KAFKA_SASL_PASSWORD)"
    )
    group.add_argument("--ssl-cafile", help="CA bundle (PEM) to verify the brokers")
    group.add_argument("--ssl-certfile", help="client certificate (PEM) for mutual TLS")
    group.add_argument("--ssl-keyfile", help="client private key (PEM) for mutual TLS")
    group.add_argument(
        "--connect-timeout",
        dest="connect_timeout_s",
        type=float,
        metavar="SECONDS",
        help="longest wait for a broker to answer before giving up with an error (default: "
        f"$KAFKA_CONNECT_TIMEOUT_S, else {DEFAULT_CONNECT_TIMEOUT_S:g})",
    )


def client_config_from_args(
    args: argparse.Namespace | Any, default_bootstrap: str | None = None
) -> KafkaClientConfig:
    """Build the config from ``add_client_arguments`` flags (or a config section with the same
    field names, such as the trainer's ``source.kafka``), then ``KAFKA_*`` variables, then
    ``default_bootstrap`` (e.g. the local broker) for the servers."""
    env_servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    return KafkaClientConfig.from_env(
        bootstrap_servers=args.bootstrap_servers or env_servers or default_bootstrap,
        security_protocol=args.security_protocol,
        sasl_mechanism=args.sasl_mechanism,
        sasl_username=args.sasl_username,
        ssl_cafile=args.ssl_cafile,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        connect_timeout_s=args.connect_timeout_s,
    )
