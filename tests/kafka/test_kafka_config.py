"""Client settings: environment and flags become kafka-python keyword arguments, and
inconsistent SASL/SSL settings are rejected with what to set."""

from __future__ import annotations

import argparse

import pytest
from pydantic import ValidationError

from connectors.kafka.config import (
    KafkaClientConfig,
    add_client_arguments,
    client_config_from_args,
)


def test_env_settings_pass_through_to_kafka_python():
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "b1:9093,b2:9093",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "trainer",
        "KAFKA_SASL_PASSWORD": "s3cret",
        "KAFKA_SSL_CAFILE": "/etc/ca.pem",
        "KAFKA_CONNECT_TIMEOUT_S": "4.5",
    }
    config = KafkaClientConfig.from_env(env=env)
    assert config.client_kwargs() == {
        "bootstrap_servers": ["b1:9093", "b2:9093"],
        "security_protocol": "SASL_SSL",
        "client_id": "genrec",
        "bootstrap_timeout_ms": 4500,
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "trainer",
        "sasl_plain_password": "s3cret",
        "ssl_cafile": "/etc/ca.pem",
    }
    assert "s3cret" not in repr(config)


def test_plaintext_leaves_security_options_unset():
    kwargs = KafkaClientConfig(bootstrap_servers="localhost:9092").client_kwargs()
    assert kwargs == {
        "bootstrap_servers": ["localhost:9092"],
        "security_protocol": "PLAINTEXT",
        "client_id": "genrec",
        "bootstrap_timeout_ms": 10_000,
    }


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"security_protocol": "SASL_SSL"}, "needs a SASL mechanism"),
        ({"sasl_mechanism": "PLAIN"}, "use SASL_PLAINTEXT or SASL_SSL"),
        (
            {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"},
            "needs a username and a password",
        ),
    ],
)
def test_inconsistent_sasl_settings_are_rejected(settings: dict, message: str):
    with pytest.raises(ValidationError, match=message):
        KafkaClientConfig(bootstrap_servers="b:9092", **settings)


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "from-env:9092")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")
    parser = argparse.ArgumentParser()
    add_client_arguments(parser)
    args = parser.parse_args(["--bootstrap-servers", "flag:9092", "--ssl-cafile", "ca.pem"])
    config = client_config_from_args(args, default_bootstrap="local:1")
    assert config.bootstrap_servers == "flag:9092"
    assert config.security_protocol == "SSL"
    assert config.ssl_cafile == "ca.pem"


def test_missing_cluster_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    parser = argparse.ArgumentParser()
    add_client_arguments(parser)
    args = parser.parse_args([])
    assert client_config_from_args(args, default_bootstrap="local:1").bootstrap_servers == (
        "local:1"
    )
    with pytest.raises(ValueError, match="genrec kafka up"):
        client_config_from_args(args)
