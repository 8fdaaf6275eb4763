"""Finding the cluster: an unreachable broker is one error line within the connect timeout,
and a broker started with ``genrec kafka up --dir`` is the default of every other command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from connectors.kafka.broker import free_port
from pipeline.cli import main

CONNECT_TIMEOUT_S = 2


@pytest.mark.parametrize(
    "command",
    [
        ["topics", "list"],
        ["produce", "--topic", "events", "--synthetic", "--users", "5", "--no-progress"],
        ["train", "--source", "kafka", "--max-events", "10", "--no-publish"],
    ],
    ids=["topics", "produce", "train"],
)
def test_an_unreachable_broker_is_one_line_within_the_connect_timeout(
    command: list[str], tmp_path: Path
):
    stopped = f"127.0.0.1:{free_port()}"  # nothing listens there: a stopped broker
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": stopped,
        "KAFKA_CONNECT_TIMEOUT_S": str(CONNECT_TIMEOUT_S),
    }
    if command[0] == "train":
        command = [*command, "--run-dir", str(tmp_path / "run"), "--checkpoint-dir"]
        command.append(str(tmp_path / "ckpt"))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *command],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    took = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, done.stderr[-2000:]
    assert f"no Kafka broker answered at {stopped} within {CONNECT_TIMEOUT_S}s" in errors[0]
    assert "KAFKA_CONNECT_TIMEOUT_S" in errors[0]
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) <= 2, done.stderr[-2000:]  # the line and a hint
    # The connect timeout bounds the wait (the rest is interpreter and torch start-up).
    assert took < CONNECT_TIMEOUT_S + 25, f"took {took:.1f}s"


@pytest.mark.kafka
def test_commands_find_the_broker_started_with_kafka_up_dir(
    kafka_cluster, kafka_home: Path, create_topic, tmp_path: Path, monkeypatch, capsys
):
    if kafka_cluster.broker is None:
        pytest.skip("needs the locally started broker; KAFKA_BOOTSTRAP_SERVERS is external")
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    broker = kafka_cluster.broker
    # The session's broker runs in a directory of its own, not the default one: `kafka up`
    # on it starts nothing new and makes it the broker the other commands use.
    assert main(["kafka", "up", "--dir", str(broker.data_dir)]) == 0
    assert capsys.readouterr().out.strip() == broker.bootstrap_servers

    assert main(["kafka", "status"]) == 0
    assert json.loads(capsys.readouterr().out)["bootstrap_servers"] == broker.bootstrap_servers
    kafka_topic = create_topic()
    assert main(["topics", "list"]) == 0
    assert kafka_topic in capsys.readouterr().out.split()
    produce = ["produce", "--topic", kafka_topic, "--synthetic", "--users", "5"]
    assert main([*produce, "--events-per-user", "4", "--no-progress"]) == 0
    produced = json.loads(capsys.readouterr().out)["events"]
    train = ["train", "--source", "kafka", "--topic", kafka_topic, "--no-publish"]
    where = ["--run-dir", str(tmp_path / "run"), "--checkpoint-dir", str(tmp_path / "ckpt")]
    assert main([*train, *where, "--max-events", str(produced)]) == 0
    assert json.loads(capsys.readouterr().out)["events_seen"] == produced


@pytest.mark.kafka
def test_max_events_on_a_topic_of_small_arrow_records(
    kafka_bootstrap: str, create_topic, tmp_path: Path, capsys
):
    topic = create_topic(partitions=3)
    servers = ["--bootstrap-servers", kafka_bootstrap]
    produce = ["produce", "--topic", topic, "--synthetic", "--users", "60", "--no-progress"]
    small = ["--events-per-user", "20", "--codec", "arrow", "--batch-events", "50"]
    assert main([*produce, *small, *servers]) == 0
    assert json.loads(capsys.readouterr().out)["events"] > 1000
    train = ["train", "--source", "kafka", "--topic", topic, "--no-publish", *servers]
    where = ["--run-dir", str(tmp_path / "run"), "--checkpoint-dir", str(tmp_path / "ckpt")]
    assert main([*train, *where, "--metrics-port", "0", "--max-events", "600"]) == 0
    seen = json.loads(capsys.readouterr().out)["events_seen"]
    # A message holds at most 50 events (--batch-events); records are never split.
    assert 600 <= seen < 650, f"{seen} events for --max-events 600"


@pytest.mark.kafka
def test_a_topic_error_is_one_line(kafka_bootstrap: str, kafka_topic: str):
    servers = ["--bootstrap-servers", kafka_bootstrap]
    with pytest.raises(SystemExit) as ended:
        main(["topics", "describe", kafka_topic, *servers])  # never created
    message = str(ended.value.code)
    assert message.startswith(f"genrec topics: error: cannot describe topic '{kafka_topic}'")
    assert "\n" not in message
