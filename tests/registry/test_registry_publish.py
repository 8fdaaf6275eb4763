"""Registry behaviour on every backend: round trip, atomic publish, aliases, retention, checksums."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from registry_backends import Backend
from waits import read_line

from connectors.registry import ChecksumError, Registry, RegistryError, VersionNotFoundError
from connectors.registry.storage import Storage

REPO_ROOT = Path(__file__).resolve().parents[2]


def _publish_n(registry: Registry, n: int) -> list[int]:
    return [registry.publish({"model.pt": f"weights {i}".encode()}).version for i in range(n)]


def _listed(registry: Registry) -> list[int]:
    return [m.version for m in registry.list_versions()]


def test_publish_list_show_read_fetch_round_trip(backend: Backend, tmp_path: Path) -> None:
    registry = backend.open(create=True)
    weights = os.urandom(50_000)
    big = tmp_path / "items.arrow"
    big.write_bytes(os.urandom(30_000))
    first = registry.publish(
        {"model.pt": weights, "vocab/items.arrow": big},
        source_positions={"events:0": 120, "events:1": 7},
        watermark=1_700_000_000,
        metrics={"ndcg@10": 0.17, "hr@10": 0.3},
        config={"dim": 64, "layers": 2},
    )
    second = registry.publish({"model.pt": b"v2"}, parent=first.version, metrics={"loss": 1.5})

    assert (first.version, second.version) == (1, 2)
    assert first.name == "v000001" and second.parent == 1
    assert first.files["model.pt"].sha256 == hashlib.sha256(weights).hexdigest()
    assert first.files["vocab/items.arrow"].size == 30_000
    assert set(first.files) == {"model.pt", "vocab/items.arrow", "config.json"}

    reopened = backend.open()  # a fresh reader sees exactly what was published
    assert _listed(reopened) == [1, 2]
    for ref in (1, "1", "v000001", "v1"):
        assert reopened.show(ref) == first
    assert reopened.show("latest") == second
    shown = reopened.show(1)
    assert shown.source_positions == {"events:0": 120, "events:1": 7}
    assert shown.watermark == 1_700_000_000 and shown.metrics["ndcg@10"] == 0.17
    assert reopened.read_file(1, "model.pt") == weights
    assert reopened.read_file(1, "vocab/items.arrow") == big.read_bytes()
    assert json.loads(reopened.read_file(1, "config.json")) == {"dim": 64, "layers": 2}
    assert reopened.read_file("latest", "model.pt") == b"v2"

    dest = reopened.fetch(1, tmp_path / "served" / "model")
    assert (dest / "model.pt").read_bytes() == weights
    assert (dest / "vocab" / "items.arrow").read_bytes() == big.read_bytes()
    assert json.loads((dest / "manifest.json").read_bytes())["version"] == 1
    with pytest.raises(RegistryError, match="not an empty directory"):
        reopened.fetch(2, dest)

    with pytest.raises(RegistryError, match=r"no artefact 'nope'.*model\.pt"):
        reopened.read_file(1, "nope")
    with pytest.raises(VersionNotFoundError, match="v000003"):
        reopened.show(3)
    with pytest.raises(VersionNotFoundError, match=r"no alias 'prod'.*latest"):
        reopened.show("prod")


def test_open_requires_an_existing_registry(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match=r"no registry at .*registry\.json not found"):
        Registry.open(tmp_path / "missing")
    Registry.open(tmp_path / "missing", create=True)
    assert Registry.open(tmp_path / "missing").list_versions() == []


@pytest.mark.parametrize(
    ("files", "kwargs", "message"),
    [
        ({"../escape": b"x"}, {}, "invalid artefact name"),
        ({".hidden": b"x"}, {}, "invalid artefact name"),
        ({"manifest.json": b"x"}, {}, "invalid artefact name"),
        ({"config.json": b"{}"}, {"config": {}}, "either as config= or"),
        ({}, {}, "nothing to publish"),
        ({"m": b"x"}, {"parent": 9}, "v000009 is not a published version"),
    ],
)
def test_publish_rejects_bad_input(
    tmp_path: Path, files: dict[str, bytes], kwargs: dict, message: str
) -> None:
    registry = Registry.open(tmp_path, create=True)
    with pytest.raises(RegistryError, match=message):
        registry.publish(files, **kwargs)
    assert registry.list_versions() == []


def test_publish_rejects_non_finite_metrics(tmp_path: Path) -> None:
    registry = Registry.open(tmp_path, create=True)
    with pytest.raises(ValueError, match="finite"):
        registry.publish({"m": b"x"}, metrics={"loss": float("nan")})
    assert registry.list_versions() == []


def test_failure_mid_publish_leaves_nothing_visible(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = backend.open(create=True)
    registry.publish({"model.pt": b"good"})
    real_write = Storage.write
    calls = []

    def failing_write(self: Storage, rel: str, source: bytes | Path):
        calls.append(rel)
        if rel.endswith("/b.bin"):
            raise OSError("injected: disk full")
        return real_write(self, rel, source)

    monkeypatch.setattr(Storage, "write", failing_write)
    with pytest.raises(OSError, match="injected"):
        registry.publish({"a.bin": b"1", "b.bin": b"2", "c.bin": b"3"})
    assert any(rel.endswith("/a.bin") for rel in calls)  # it really failed mid-way
    monkeypatch.undo()

    reader = backend.open()
    assert _listed(reader) == [1]
    assert reader.show("latest").version == 1
    assert not (backend.local_dir / "versions" / "v000002").exists()  # cleaned up by publish
    assert reader.publish({"model.pt": b"next"}).version == 2


def test_failure_while_writing_manifest_leaves_nothing_visible(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = backend.open(create=True)
    real_atomic_write = Storage.atomic_write

    def failing_atomic_write(self: Storage, rel: str, data: bytes) -> None:
        if rel.endswith("manifest.json"):
            raise OSError("injected: connection reset")
        real_atomic_write(self, rel, data)

    monkeypatch.setattr(Storage, "atomic_write", failing_atomic_write)
    with pytest.raises(OSError, match="injected"):
        registry.publish({"model.pt": b"w"})
    monkeypatch.undo()
    assert registry.list_versions() == []
    with pytest.raises(VersionNotFoundError):
        registry.show("latest")


# The child publishes version 2, writes two of its four files, then blocks until killed.
_CRASHING_PUBLISHER = """
import sys, time
from connectors.registry import Registry
from connectors.registry.storage import Storage

real_write = Storage.write
written = []

def write(self, rel, source):
    result = real_write(self, rel, source)
    if not rel.endswith(".publishing"):
        written.append(rel)
    if len(written) == 2:
        print("READY", flush=True)
        time.sleep(600)
    return result

Storage.write = write
Registry.open(sys.argv[1]).publish({f"part{i}.bin": bytes(1000) for i in range(4)})
"""


def test_killed_publisher_leaves_invisible_partial_that_gc_removes(uri_backend: Backend) -> None:
    registry = uri_backend.open(create=True)
    registry.publish({"model.pt": b"v1"})
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_PUBLISHER, uri_backend.uri],
        stdout=subprocess.PIPE,
        cwd=REPO_ROOT,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert read_line(child.stdout, 120, "the publisher to be READY").strip() == "READY"
        partial = uri_backend.local_dir / "versions" / "v000002"
        assert sorted(p.name for p in partial.iterdir()) == [
            ".publishing",
            "part0.bin",
            "part1.bin",
        ]
        # While the publisher lives its version is invisible and gc leaves it alone (gc
        # itself waits for the publisher's writer lock: its plan, without the lock, shows it).
        assert _listed(registry) == [1]
        assert registry.gc(keep=5, dry_run=True).partial == ()
        assert partial.exists()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()

    assert _listed(registry) == [1]
    assert registry.show("latest").version == 1
    with pytest.raises(VersionNotFoundError, match="did not finish"):
        registry.show(2)
    assert registry.publish({"model.pt": b"v3"}).version == 3  # numbers are not reused
    result = registry.gc(keep=5)
    assert result.partial == (2,) and result.removed == ()
    assert not partial.exists()
    assert _listed(registry) == [1, 3]


def test_gc_judges_foreign_partials_by_age(backend: Backend) -> None:
    registry = backend.open(create=True)
    registry.publish({"model.pt": b"v1"})
    partial = backend.local_dir / "versions" / "v000002"
    partial.mkdir()
    marker = {"host": "another-host", "pid": 1, "started_at": "2020-01-01T00:00:00+00:00"}
    (partial / ".publishing").write_text(json.dumps(marker))
    assert registry.gc(keep=1, grace_s=1e12).partial == ()  # might still be publishing
    assert registry.gc(keep=1, grace_s=60).partial == (2,)
    assert not partial.exists()


def test_promote_rollback_and_history(backend: Backend) -> None:
    registry = backend.open(create=True)
    _publish_n(registry, 3)

    registry.promote(1, "prod")
    record = registry.promote("v3", "prod")
    assert (record.version, record.previous) == (3, [1])
    assert registry.show("prod").version == 3
    registry.promote("prod", "canary")  # an alias can be promoted by alias
    assert registry.alias("canary").version == 3

    record = registry.rollback("prod")
    assert (record.version, record.previous) == (1, [])
    assert backend.open().show("prod").version == 1
    assert [(m.action, m.version) for m in record.history] == [
        ("promote", 1),
        ("promote", 3),
        ("rollback", 1),
    ]
    with pytest.raises(RegistryError, match="no previous target"):
        registry.rollback("prod")

    latest = registry.rollback("latest")  # undo a bad publish for readers of 'latest'
    assert latest.version == 2 and registry.show("latest").version == 2
    assert sorted(registry.aliases()) == ["canary", "latest", "prod"]

    with pytest.raises(VersionNotFoundError):
        registry.promote(7, "prod")
    with pytest.raises(RegistryError, match="invalid alias name"):
        registry.promote(1, "v2")
    with pytest.raises(RegistryError, match="invalid alias name"):
        registry.promote(1, "../x")
    with pytest.raises(VersionNotFoundError, match="no alias 'staging'"):
        registry.rollback("staging")
    assert registry.alias("prod").version == 1


def test_gc_keeps_newest_k_and_alias_targets(backend: Backend) -> None:
    registry = backend.open(create=True)
    _publish_n(registry, 6)
    registry.promote(1, "prod")
    registry.promote(2, "prod")  # prod -> 2, rollback target 1

    planned = registry.gc(keep=2, dry_run=True)
    assert planned.removed == (3, 4) and planned.dry_run
    assert _listed(registry) == [1, 2, 3, 4, 5, 6]

    result = registry.gc(keep=2)
    assert result.removed == (3, 4)
    assert _listed(backend.open()) == [1, 2, 5, 6]
    assert not (backend.local_dir / "versions" / "v000003").exists()
    assert registry.rollback("prod").version == 1  # one rollback always survives gc

    # Now prod -> 1 (nothing to roll back to) and latest -> 6 (rollback target 5).
    assert registry.gc(keep=1).removed == (2,)
    assert _listed(registry) == [1, 5, 6]
    with pytest.raises(RegistryError, match="keep must be >= 1"):
        registry.gc(keep=0)


def test_corrupted_file_is_detected(backend: Backend, tmp_path: Path) -> None:
    registry = backend.open(create=True)
    weights = bytes(range(256)) * 40
    registry.publish({"model.pt": weights, "vocab.json": b"{}"})
    stored = backend.local_dir / "versions" / "v000001" / "model.pt"
    damaged = bytearray(stored.read_bytes())
    damaged[1234] ^= 0x01
    stored.write_bytes(bytes(damaged))

    expected = hashlib.sha256(weights).hexdigest()
    found = hashlib.sha256(damaged).hexdigest()
    with pytest.raises(ChecksumError) as caught:
        registry.read_file(1, "model.pt")
    message = str(caught.value)
    assert "v000001/model.pt" in message and expected in message and found in message
    assert registry.read_file(1, "vocab.json") == b"{}"  # other files still load

    dest = tmp_path / "out"
    with pytest.raises(ChecksumError):
        registry.fetch(1, dest)
    assert not dest.exists() and not list(tmp_path.glob(".out.tmp-*"))

    stored.write_bytes(weights[:-1])  # truncation is caught too
    with pytest.raises(ChecksumError, match="10239 bytes"):
        registry.read_file("latest", "model.pt")


def test_damaged_manifest_is_reported_and_skipped_in_listing(backend: Backend) -> None:
    registry = backend.open(create=True)
    _publish_n(registry, 2)
    (backend.local_dir / "versions" / "v000001" / "manifest.json").write_text("{not json")
    assert _listed(registry) == [2]
    with pytest.raises(RegistryError, match=r"v000001/manifest.json: invalid manifest"):
        registry.show(1)


def test_concurrent_publishers_never_share_a_version(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    Registry.open(root, create=True)
    errors: list[BaseException] = []

    def publisher(tag: str) -> None:
        try:
            registry = Registry.open(root)
            for i in range(5):
                registry.publish({"model.pt": f"{tag}{i}".encode()})
        except BaseException as err:  # surfaced by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=publisher, args=(tag,)) for tag in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
        assert not thread.is_alive(), "a publisher thread did not finish in 300 s"
    assert errors == []
    registry = Registry.open(root)
    assert _listed(registry) == list(range(1, 11))
    contents = sorted(registry.read_file(v, "model.pt") for v in range(1, 11))
    assert contents == sorted(f"{t}{i}".encode() for t in "ab" for i in range(5))
