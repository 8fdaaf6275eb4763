"""How the local broker tells whether its process is alive, without starting Kafka: its own
child, a pid recorded by another process, and a ``/proc`` from another PID namespace (a
sandbox or CI runner that unshares the PID namespace but keeps the outer ``/proc``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from connectors.kafka import broker as broker_module
from connectors.kafka.broker import LocalKafkaBroker


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that is not a Kafka broker."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def _recorded(tmp_path, pid: int) -> LocalKafkaBroker:
    broker = LocalKafkaBroker(tmp_path, port=1, controller_port=2)
    broker.state.pid = pid
    return broker


@pytest.mark.skipif(
    not broker_module._proc_is_ours(), reason="/proc belongs to another PID namespace here"
)
def test_a_recorded_pid_of_another_program_is_not_the_broker(tmp_path, sleeper):
    assert not _recorded(tmp_path, sleeper.pid).is_running()


def test_a_recorded_pid_that_exited_is_not_running(tmp_path, sleeper):
    sleeper.kill()
    sleeper.wait()
    assert not _recorded(tmp_path, sleeper.pid).is_running()


def test_foreign_proc_is_not_read(tmp_path, sleeper, monkeypatch):
    # /proc/<pid> would name some other process: only the signal check can be trusted.
    monkeypatch.setattr(broker_module, "_proc_is_ours", lambda: False)
    assert _recorded(tmp_path, sleeper.pid).is_running()
    sleeper.kill()
    sleeper.wait()
    assert not _recorded(tmp_path, sleeper.pid).is_running()


def test_own_child_is_judged_by_its_exit_status(tmp_path, sleeper, monkeypatch):
    monkeypatch.setattr(broker_module, "_proc_is_ours", lambda: False)
    broker = _recorded(tmp_path, sleeper.pid)
    broker._process = sleeper
    assert broker.is_running()
    sleeper.kill()
    sleeper.wait()
    assert not broker.is_running()


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_proc_check_inside_a_new_pid_namespace():
    probe = "from connectors.kafka.broker import _proc_is_ours; print(_proc_is_ours())"
    result = subprocess.run(
        ["unshare", "--pid", "--fork", sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot create a PID namespace here: {result.stderr.strip()[-200:]}")
    assert result.stdout.strip() == "False"
