"""docker-compose.yml is validated, not run (CI has no Docker engine): it must parse, use the
official Kafka image in KRaft mode at the version the local broker runs, wire listeners and
dependencies consistently, and run genrec commands that the real CLI accepts."""

from __future__ import annotations

import argparse
import base64
import fnmatch
from pathlib import Path

import pytest
import yaml

from connectors.kafka.broker import DEFAULT_KAFKA_VERSION
from pipeline.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def _listeners(value: str) -> dict[str, str]:
    """``NAME://host:port,...`` -> {NAME: host:port}."""
    return dict(item.split("://", 1) for item in value.split(","))


def test_kafka_is_the_official_image_in_kraft_mode(services: dict):
    kafka = services["kafka"]
    assert kafka["image"] == f"apache/kafka:{DEFAULT_KAFKA_VERSION}"
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16
    listeners = _listeners(env["KAFKA_LISTENERS"])
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    voter_id, voter_address = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split("@")
    assert int(voter_id) == int(env["KAFKA_NODE_ID"])
    assert voter_address.split(":")[1] == listeners[controller].split(":")[1]
    protocol_map = env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    assert {entry.split(":")[0] for entry in protocol_map} == set(listeners)
    advertised = _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    assert controller not in advertised
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert int(env[key]) == 1
    assert "kafka-broker-api-versions.sh" in " ".join(kafka["healthcheck"]["test"])
    published = {int(p.split(":")[0]) for p in kafka["ports"]}
    assert int(advertised["EXTERNAL"].split(":")[1]) in published


def test_genrec_services_reach_kafka_and_wait_for_it(services: dict):
    advertised = _listeners(services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"])
    genrec = {name: s for name, s in services.items() if name != "kafka"}
    assert {"topics", "producer", "trainer"} <= set(genrec)
    for name, service in genrec.items():
        assert service["environment"]["KAFKA_BOOTSTRAP_SERVERS"] in advertised.values(), name
        assert service["depends_on"], name
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name in ("producer", "trainer"):
        condition = services[name]["depends_on"]["topics"]["condition"]
        assert condition == "service_completed_successfully"


def test_service_commands_are_accepted_by_the_genrec_cli(services: dict):
    parser = build_parser()
    topic = None
    for name in ("topics", "producer", "trainer"):
        command = services[name]["command"]
        assert command[0] == "genrec", name
        args = parser.parse_args(command[1:])  # exits (fails the test) on an unknown flag
        assert callable(args.func), name
        if name == "topics":
            topic = args.name
        else:
            assert args.topic == topic, f"{name} uses topic {args.topic}, topics job made {topic}"


def _flag(command: list[str], name: str) -> str:
    """The value after ``name`` in a service's command list."""
    return command[command.index(name) + 1]


def test_trainer_publishes_every_few_seconds(services: dict):
    args = build_parser().parse_args(services["trainer"]["command"][1:])
    assert args.publish_every_s is not None and args.publish_every_s <= 10


def test_serve_follows_the_trainers_model_on_its_volume_read_only(services: dict):
    serve, trainer = services["serve"], services["trainer"]
    command = serve["command"]
    assert command[:2] == ["genrec", "serve"]
    assert serve["image"] == trainer["image"]
    assert serve["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    trainer_args = build_parser().parse_args(trainer["command"][1:])
    assert _flag(command, "--registry") == trainer_args.registry
    # the trainer publishes under its run name, kafka-<topic>, and the server reads that topic
    assert _flag(command, "--model") == f"kafka-{trainer_args.topic}"
    assert _flag(command, "--stream") == "kafka" and _flag(command, "--topic") == trainer_args.topic
    assert _flag(command, "--alias") == "latest"
    (trainer_volume,) = trainer["volumes"]
    (serve_volume,) = serve["volumes"]
    assert serve_volume == f"{trainer_volume}:ro"
    port = int(_flag(command, "--port"))
    assert f"{port}:{port}" in serve["ports"] and _flag(command, "--host") == "0.0.0.0"
    assert f"127.0.0.1:{port}/readyz" in " ".join(serve["healthcheck"]["test"])


def test_serve_command_is_accepted_by_the_genrec_cli(services: dict):
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "serve" not in commands.choices:
        pytest.skip("genrec serve is not a command yet")
    args = parser.parse_args(services["serve"]["command"][1:])  # exits on an unknown flag
    assert callable(args.func)


def test_stack_test_overrides_only_name_local_stand_ins(services: dict):
    standins = yaml.safe_load((ROOT / "scripts/stack/standins.yml").read_text())["services"]
    # the stand-in broker runs the version the official image of docker-compose.yml has
    assert standins["kafka"]["image"].split(":")[1] == services["kafka"]["image"].split(":")[1]
    assert standins["topics"]["build"]["args"]["BASE_IMAGE"].startswith("genrec-standin/")
    # without the override, the Dockerfile builds on the official Python image
    assert "ARG BASE_IMAGE=python:3.11-slim" in (ROOT / "Dockerfile").read_text()


def test_built_services_have_a_dockerfile_that_installs_genrec(services: dict):
    root = Path(__file__).resolve().parents[2]
    for name, service in services.items():
        build = service.get("build")
        if not build:
            continue
        dockerfile = root / build["context"] / build.get("dockerfile", "Dockerfile")
        text = dockerfile.read_text()
        assert "pip install" in text, f"{dockerfile} does not install genrec for {name}"
        for package in ("model", "kernels", "pipeline", "connectors"):
            assert f"COPY {package} " in text, f"{dockerfile} does not copy {package}/"


def test_the_genrec_image_is_built_once_and_shared(services: dict):
    built = {name: s for name, s in services.items() if "build" in s}
    assert len(built) == 1, f"{sorted(built)} all build an image; build it in one service"
    ((builder, service),) = built.items()
    assert service["build"]["context"] == "."
    image = service["image"]
    for name in ("topics", "producer", "trainer", "serve"):
        assert services[name]["image"] == image, f"{name} does not run {image}"
    # the builder runs first: every other genrec service waits for it
    for name in {"topics", "producer", "trainer", "serve"} - {builder}:
        assert builder in services[name]["depends_on"], name


def test_trainer_restarts_and_reports_health_on_its_metrics_port(services: dict):
    trainer = services["trainer"]
    assert trainer["restart"] in ("unless-stopped", "on-failure", "always")
    args = build_parser().parse_args(trainer["command"][1:])
    port = args.metrics_port
    assert port == 9464 and f"{port}:{port}" in trainer["ports"]
    test = trainer["healthcheck"]["test"]
    probe = " ".join(test)
    assert test[0] == "CMD" and "python" in test[1]  # the slim image has no curl
    assert "urllib.request" in probe and f"127.0.0.1:{port}/metrics" in probe
    assert trainer["healthcheck"]["start_period"]


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    patterns = _dockerignore()
    for path in (".venv", ".git", "checkpoints", "registry", "runs"):
        assert path in patterns, f".dockerignore does not exclude {path}"
    copied = [
        name
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ")
        for name in line.split()[1:-1]  # COPY SRC... DEST
    ]
    assert {"pyproject.toml", "README.md", "pipeline"} <= set(copied)
    for name in copied:
        hit = [p for p in patterns if fnmatch.fnmatch(name, p)]
        assert not hit, f"Dockerfile copies {name}, but .dockerignore excludes it ({hit})"
