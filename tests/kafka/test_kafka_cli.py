"""``genrec kafka up|status|down``, ``genrec topics`` and ``genrec produce`` end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from connectors.kafka.admin import TopicAdmin
from connectors.kafka.broker import LocalKafkaBroker
from pipeline.cli import main

pytestmark = pytest.mark.kafka


def test_up_status_down_manage_one_broker_across_processes(
    kafka_cluster, kafka_home, tmp_path, capsys
):
    if kafka_cluster.broker is None:
        pytest.skip("starts its own local broker; KAFKA_BOOTSTRAP_SERVERS is external")
    directory = tmp_path / "cli-broker"
    assert main(["kafka", "up", "--dir", str(directory), "--heap", "256m"]) == 0
    bootstrap = capsys.readouterr().out.strip()
    try:
        # Another process sees the daemonised broker through the state file.
        status = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "kafka", "status", "--dir", str(directory)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert status.returncode == 0, status.stderr
        state = json.loads(status.stdout)
        assert state["running"] is True
        assert state["bootstrap_servers"] == bootstrap
        with TopicAdmin(bootstrap) as admin:
            assert admin.list_topics() == []
        # `up` again is a no-op that prints the same address.
        assert main(["kafka", "up", "--dir", str(directory)]) == 0
        assert capsys.readouterr().out.strip() == bootstrap
    finally:
        assert main(["kafka", "down", "--dir", str(directory)]) == 0
    assert not LocalKafkaBroker(directory).is_running()
    assert main(["kafka", "status", "--dir", str(directory)]) == 1


def test_topics_and_produce_commands(kafka_bootstrap: str, kafka_topic: str, capsys):
    servers = ["--bootstrap-servers", kafka_bootstrap]
    assert main(["topics", "create", kafka_topic, "--partitions", "2", *servers]) == 0
    assert main(["topics", "create", kafka_topic, "--partitions", "2", *servers]) == 0
    out = capsys.readouterr().out
    assert f"created topic {kafka_topic}" in out
    assert f"already exists: topic {kafka_topic}" in out

    produce = ["produce", "--topic", kafka_topic, "--synthetic", "--users", "15", "--items", "200"]
    extra = ["--events-per-user", "8", "--codec", "arrow", "--batch-events", "50", "--no-progress"]
    assert main([*produce, *extra, *servers]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["codec"] == "arrow"
    assert stats["events"] == sum(stats["events_per_partition"].values())

    assert main(["topics", "describe", kafka_topic, *servers]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["partitions"] == 2
    assert sum(described["end_offsets"].values()) == stats["messages"]

    assert main(["topics", "delete", kafka_topic, *servers]) == 0
    assert capsys.readouterr().out.strip() == f"deleted topic {kafka_topic}"
    assert main(["topics", "list", *servers]) == 0
    assert kafka_topic not in capsys.readouterr().out.split()
