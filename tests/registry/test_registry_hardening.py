"""Registry hardening: names and symlinks read from storage, alias names, compare-and-set
publishing with the writer lock, and recovery from a damaged ``aliases/latest.json``."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from registry_backends import Backend

from connectors.registry import (
    ConcurrentPublishError,
    Registry,
    RegistryError,
    UnsafePathError,
    VersionNotFoundError,
)
from connectors.registry import lock as lock_module
from connectors.registry.lock import LOCK_NAME
from connectors.registry.manifest import check_file_names, parse_version_dir, parse_version_ref
from connectors.registry.storage import Storage
from pipeline import cli

SECRET = b"secret outside the registry"
LOCAL_BACKENDS = ("path", "file-uri", "subtree")


def _entry(data: bytes) -> dict[str, object]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _craft_manifest(vdir: Path, version: int, files: dict[str, bytes]) -> None:
    """Write a manifest as an attacker would: any names, checksums matching ``files``."""
    vdir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "version": version,
        "created_at": "2026-01-01T00:00:00Z",
        "files": {name: _entry(data) for name, data in files.items()},
    }
    (vdir / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"  # a sibling of the registry root (tmp_path / "registry")
    path.write_bytes(SECRET)
    return path


@pytest.mark.parametrize(
    "name",
    [
        "../../secret.txt",
        "../../../secret.txt",
        "model.pt/../../../secret.txt",
        "./model.pt",
        "a//b",
        "a\\..\\b",
        "model.pt\n",
        "/etc/hostname",
    ],
)
def test_crafted_manifest_names_are_refused_on_read_and_fetch(
    backend: Backend, secret: Path, tmp_path: Path, name: str
) -> None:
    registry = backend.open(create=True)
    registry.publish({"model.pt": b"w"})
    _craft_manifest(backend.local_dir / "versions" / "v000002", 2, {name: SECRET})

    with pytest.raises(
        RegistryError, match=r"invalid manifest: files: Value error, invalid artefact name"
    ):
        registry.read_file(2, name)
    dest = tmp_path / "out" / "model"
    with pytest.raises(RegistryError, match="invalid artefact name"):
        registry.fetch(2, dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["registry", "secret.txt"]
    assert [m.version for m in registry.list_versions()] == [1]  # skipped with a warning
    assert secret.read_bytes() == SECRET


def test_fetch_never_writes_outside_the_destination(tmp_path: Path) -> None:
    registry = Registry.open(tmp_path / "registry", create=True)
    _craft_manifest(tmp_path / "registry" / "versions" / "v000001", 1, {"../escaped": b"x"})
    (tmp_path / "registry" / "versions" / "escaped").write_bytes(b"x")
    (tmp_path / "dest").mkdir()
    with pytest.raises(RegistryError, match=r"invalid artefact name '\.\./escaped'"):
        registry.fetch(1, tmp_path / "dest" / "model")
    assert not (tmp_path / "dest" / "escaped").exists()
    assert list((tmp_path / "dest").iterdir()) == []


def test_file_and_directory_name_clash_is_refused(tmp_path: Path) -> None:
    registry = Registry.open(tmp_path, create=True)
    with pytest.raises(RegistryError, match=r"\['a'\] are also used as directories"):
        registry.publish({"a": b"1", "a/b": b"2"})
    assert check_file_names(["a/b", "a/c", "ab"]) == ["a/b", "a/c", "ab"]


@pytest.mark.parametrize("backend_name", LOCAL_BACKENDS)
def test_symlinked_artefact_is_refused(secret: Path, tmp_path: Path, backend_name: str) -> None:
    from registry_backends import make_backend

    backend = make_backend(backend_name, tmp_path)
    registry = backend.open(create=True)
    registry.publish({"model.pt": b"w"})
    vdir = backend.local_dir / "versions" / "v000001"
    (vdir / "model.pt").unlink()
    (vdir / "model.pt").symlink_to(secret)
    manifest = json.loads((vdir / "manifest.json").read_text())
    manifest["files"]["model.pt"] = _entry(SECRET)  # the attacker controls the manifest too
    (vdir / "manifest.json").write_text(json.dumps(manifest))

    with pytest.raises(UnsafePathError, match=r"v000001/model\.pt is a symlink"):
        registry.read_file(1, "model.pt")
    with pytest.raises(UnsafePathError):
        registry.fetch(1, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("backend_name", LOCAL_BACKENDS)
def test_symlinked_version_dir_is_ignored_and_never_deleted(
    secret: Path, tmp_path: Path, backend_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    from registry_backends import make_backend

    backend = make_backend(backend_name, tmp_path)
    registry = backend.open(create=True)
    for i in range(3):
        registry.publish({"model.pt": f"w{i}".encode()})
    outside = tmp_path / "outside"
    _craft_manifest(outside, 4, {"secret.txt": SECRET})
    os.symlink(secret, outside / "secret.txt")
    (backend.local_dir / "versions" / "v000004").symlink_to(outside, target_is_directory=True)

    with caplog.at_level(logging.WARNING):
        assert [m.version for m in registry.list_versions()] == [1, 2, 3]
    assert "ignoring symlink" in caplog.text and "v000004" in caplog.text
    with pytest.raises(UnsafePathError, match="v000004 is a symlink"):
        registry.read_file(4, "secret.txt")
    assert registry.gc(keep=1).removed == (1,)  # 2 is latest's rollback target
    assert sorted(p.name for p in outside.iterdir()) == ["manifest.json", "secret.txt"]
    assert secret.read_bytes() == SECRET
    assert registry.publish({"model.pt": b"w5"}).version == 5  # v000004 stays taken


@pytest.mark.parametrize("what", ["alias-file", "aliases-dir", "versions-dir"])
def test_symlinked_alias_and_top_directories_are_refused(
    secret: Path, tmp_path: Path, what: str
) -> None:
    root = tmp_path / "registry"
    registry = Registry.open(root, create=True)
    registry.publish({"model.pt": b"w"})
    outside = tmp_path / "outside"
    if what == "alias-file":
        record = {"alias": "prod", "version": 1}
        (tmp_path / "prod.json").write_text(json.dumps(record))
        (root / "aliases" / "prod.json").symlink_to(tmp_path / "prod.json")
        with pytest.raises(UnsafePathError, match=r"aliases/prod\.json is a symlink"):
            registry.show("prod")
        assert sorted(registry.aliases()) == ["latest"]
        return
    top = "aliases" if what == "aliases-dir" else "versions"
    (root / top).rename(outside)
    (root / top).symlink_to(outside, target_is_directory=True)
    before = sorted(p.name for p in outside.iterdir())
    with pytest.raises(UnsafePathError, match=f"{top} is a symlink"):
        registry.publish({"model.pt": b"w2"})
    with pytest.raises(UnsafePathError):
        registry.show(1 if top == "versions" else "latest")
    assert sorted(p.name for p in outside.iterdir()) == before


@pytest.mark.parametrize("alias", ["prod\n", "prod\r", "\nprod", "pr/od", "..", "prod\x00"])
def test_alias_names_are_fully_matched(tmp_path: Path, alias: str) -> None:
    registry = Registry.open(tmp_path, create=True)
    registry.publish({"model.pt": b"w"})
    with pytest.raises(RegistryError, match="invalid alias name"):
        registry.promote(1, alias)
    assert sorted(p.name for p in (tmp_path / "aliases").iterdir()) == ["latest.json"]


def test_cli_promote_refuses_alias_with_trailing_newline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("connectors.registry.commands",))
    Registry.open(tmp_path, create=True).publish({"model.pt": b"w"})
    assert cli.main(["registry", "promote", "1", "prod\n", "--registry", str(tmp_path)]) == 1
    assert "invalid alias name 'prod\\n'" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "aliases").iterdir()) == ["latest.json"]


def test_version_names_are_fully_matched() -> None:
    assert parse_version_dir("v000001") == 1
    assert parse_version_dir("v000001\n") is None
    assert parse_version_dir("v\u0661") is None  # an Arabic-Indic digit: not a version
    assert parse_version_ref("3") == 3
    assert parse_version_ref("3\n") is None


def test_alias_file_names_and_records_are_validated(tmp_path: Path) -> None:
    registry = Registry.open(tmp_path, create=True)
    registry.publish({"model.pt": b"w"})
    aliases = tmp_path / "aliases"
    (aliases / "v2.json").write_text(json.dumps({"alias": "v2", "version": 1}))
    (aliases / "notes.txt").write_text("not an alias")
    (aliases / "prod.json").write_text(json.dumps({"alias": "../prod", "version": 1}))
    with pytest.raises(RegistryError, match="invalid alias record"):
        registry.alias("prod")
    (aliases / "prod.json").write_text(json.dumps({"alias": "canary", "version": 1}))
    with pytest.raises(RegistryError, match="the record is for alias 'canary', not 'prod'"):
        registry.alias("prod")
    (aliases / "prod.json").unlink()
    assert sorted(registry.aliases()) == ["latest"]


# -- compare-and-set publishing ----------------------------------------------------------------


def _versions_on_disk(backend: Backend) -> list[str]:
    return sorted(p.name for p in (backend.local_dir / "versions").iterdir())


def test_expect_latest_compare_and_set(backend: Backend) -> None:
    registry = backend.open(create=True)
    assert registry.latest_version() is None
    with pytest.raises(ConcurrentPublishError, match=r"'latest' points to no version"):
        registry.publish({"model.pt": b"w"}, expect_latest=3)
    assert registry.publish({"model.pt": b"w1"}, expect_latest=None).version == 1
    assert registry.latest_version() == 1
    assert registry.publish({"model.pt": b"w2"}, expect_latest=1).version == 2

    other_trainer = backend.open()
    with pytest.raises(ConcurrentPublishError) as caught:
        other_trainer.publish({"model.pt": b"fork"}, expect_latest=1)
    message = str(caught.value)
    assert "points to v000002 but this writer expected v000001" in message
    assert "only one trainer per registry" in message
    with pytest.raises(ConcurrentPublishError):
        other_trainer.publish({"model.pt": b"fork"}, expect_latest=None)
    assert _versions_on_disk(backend) == ["v000001", "v000002"]  # nothing claimed or visible
    assert registry.show("latest").version == 2
    assert not (backend.local_dir / LOCK_NAME).exists()  # released after each publish


def test_check_and_move_of_latest_are_atomic_between_writers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "registry"
    first = Registry.open(root, create=True)
    first.publish({"model.pt": b"w1"})
    second = Registry.open(root)
    outcome: list[BaseException | int] = []
    started = threading.Event()

    def racing_publish() -> None:
        started.set()
        try:
            outcome.append(second.publish({"model.pt": b"b"}, expect_latest=1).version)
        except BaseException as err:  # checked below
            outcome.append(err)

    racer = threading.Thread(target=racing_publish)
    real_write = Storage.write

    def write_then_race(self: Storage, rel: str, source: bytes | Path):
        # While the first writer holds the lock mid-publish, the second one checks latest.
        if rel.endswith("/model.pt") and not racer.is_alive() and not outcome:
            racer.start()
            assert started.wait(10), "racing publisher did not start within 10 s"
        return real_write(self, rel, source)

    monkeypatch.setattr(Storage, "write", write_then_race)
    assert first.publish({"model.pt": b"a"}, expect_latest=1).version == 2
    racer.join(30)
    assert not racer.is_alive(), "racing publisher still running after 30 s"
    assert len(outcome) == 1 and isinstance(outcome[0], ConcurrentPublishError), outcome
    assert "points to v000002 but this writer expected v000001" in str(outcome[0])
    assert sorted(p.name for p in (root / "versions").iterdir()) == ["v000001", "v000002"]


def _lock(backend: Backend, host: str, pid: int, age_s: float, process: str = "old") -> Path:
    path = backend.local_dir / LOCK_NAME
    path.parent.mkdir(exist_ok=True)
    started = datetime.now(UTC) - timedelta(seconds=age_s)
    holder = {"host": host, "pid": pid, "process": process, "started_at": started.isoformat()}
    path.write_text(json.dumps({**holder, "token": "t"}))
    return path


def test_a_live_writer_lock_blocks_publish_and_promote(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = backend.open(create=True)
    registry.publish({"model.pt": b"w"})
    # Held by another thread of this very process: alive.
    lock = _lock(backend, socket.gethostname(), os.getpid(), 0, process=lock_module._PROCESS)
    held = rf"held by another writer \(host .*pid {os.getpid()}"
    with pytest.raises(ConcurrentPublishError, match=held):
        registry.publish({"model.pt": b"w2"}, lock_timeout_s=0.2)
    assert _versions_on_disk(backend) == ["v000001"]
    _lock(backend, "another-host", 1, age_s=60)  # recent, and its host cannot be probed
    with pytest.raises(ConcurrentPublishError, match="delete the lock file"):
        registry.publish({"model.pt": b"w2"}, lock_timeout_s=0.2)
    monkeypatch.setattr("connectors.registry.registry.LOCK_TIMEOUT_S", 0.2)
    with pytest.raises(ConcurrentPublishError):
        registry.promote(1, "prod")
    assert lock.exists() and sorted(registry.aliases()) == ["latest"]


@pytest.mark.parametrize(
    ("host", "pid", "age_s"),
    [("this", "dead", 0.0), ("this", "mine", 0.0), ("another-host", "dead", 7200.0)],
    ids=["dead-pid", "earlier-process-with-my-pid", "old-foreign"],
)
def test_stale_writer_lock_is_broken(
    backend: Backend, host: str, pid: str, age_s: float, caplog: pytest.LogCaptureFixture
) -> None:
    registry = backend.open(create=True)
    holder_pid = _dead_pid() if pid == "dead" else os.getpid()
    lock = _lock(backend, socket.gethostname() if host == "this" else host, holder_pid, age_s)
    with caplog.at_level(logging.WARNING):
        assert registry.publish({"model.pt": b"w"}, expect_latest=None).version == 1
    assert "breaking stale registry lock" in caplog.text
    assert not lock.exists()
    assert sorted(p.name for p in lock.parent.iterdir()) == ["latest.json"]


def _dead_pid() -> int:
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return int(child.stdout)


# -- a damaged aliases/latest.json -------------------------------------------------------------


@pytest.mark.parametrize("damage", [b"", b'{"alias": "latest", "vers', b"[]"])
def test_damaged_latest_does_not_stop_publishing(
    backend: Backend, damage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    registry = backend.open(create=True)
    registry.publish({"model.pt": b"w1"})
    latest = backend.local_dir / "aliases" / "latest.json"
    latest.write_bytes(damage)
    with caplog.at_level(logging.WARNING):
        assert registry.latest_version() is None
        assert "cannot tell which version 'latest' points to" in caplog.text
        assert registry.publish({"model.pt": b"w2"}, expect_latest=1).version == 2
    assert "aliases/latest.json is unreadable" in caplog.text
    assert "without checking expect_latest=1" in caplog.text
    record = registry.alias("latest")
    assert (record.version, record.previous) == (2, [])  # a fresh record
    assert registry.publish({"model.pt": b"w3"}, expect_latest=2).version == 3
    with pytest.raises(VersionNotFoundError):
        registry.show(4)
