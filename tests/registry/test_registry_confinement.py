"""Property: whatever names and symlinks are planted in a registry, its reads, fetches,
listings, alias moves, publishes and gc never read, write or delete outside the registry root
and the fetch destination.

Each example builds a registry next to an ``outside`` directory holding a secret, plants one
attack (a crafted manifest or alias name, or a symlink to the outside), runs every operation
and checks that the secret was never returned or copied and that ``outside`` is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from registry_backends import BACKENDS, make_backend
from tree_snapshot import snapshot

from connectors.registry import Registry, RegistryError

SECRET = b"the secret that must never leave 'outside'"
ABSOLUTE = "<absolute path of the secret>"

_PARTS = ["..", ".", "", "secret.txt", "outside", "model.pt", "v000001", "a", "\\..", "..\\"]
_PARTS += ["\n", "\r", "\x00", "\x1b[31m", "é", "名", "~", "-x", ABSOLUTE]
NAMES = st.one_of(
    st.lists(st.sampled_from(_PARTS), min_size=1, max_size=5).map("/".join),
    st.text(alphabet=st.sampled_from(list("./\\\n\x00a1é名 ")), max_size=12),
    st.sampled_from(["../../outside/secret.txt", "../../../outside/secret.txt", ABSOLUTE]),
)
NAME_ATTACKS = ["manifest-name", "alias-name", "version-dir-name", "manifest-dir"]
# Symlinks (and FIFOs) are a local-disk attack: object stores have none, and their test double
# is a local directory underneath, which would follow them like any local tool.
LOCAL_ATTACKS = [
    "fifo-file",
    "link-file",
    "link-manifest",
    "link-version",
    "link-alias",
    "link-versions",
    "link-aliases",
    "link-lock",
]


def _entry(data: bytes) -> dict[str, object]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _manifest(version: int, files: dict[str, bytes]) -> str:
    entries = {name: _entry(data) for name, data in files.items()}
    return json.dumps({"version": version, "created_at": "2026-01-01T00:00:00Z", "files": entries})


def _plant(attack: str, name: str, root: Path, outside: Path) -> None:
    """Tamper with the registry at ``root`` as an attacker with write access would."""
    secret = outside / "secret.txt"
    if attack == "manifest-name":
        (root / "versions" / "v000002").mkdir()
        (root / "versions" / "v000002" / "manifest.json").write_text(_manifest(2, {name: SECRET}))
    elif attack == "alias-name":
        target = root / "aliases" / f"{name}.json"
        # Only names the test itself can create inside aliases/ without leaving it.
        if "/" not in name and "\x00" not in name and name not in (".", ".."):
            target.write_text(json.dumps({"alias": name, "version": 1}))
    elif attack == "version-dir-name":
        if "/" not in name and "\x00" not in name and name not in ("", ".", ".."):
            (root / "versions" / name).mkdir(exist_ok=True)
            (root / "versions" / name / "manifest.json").write_text(_manifest(1, {"s": SECRET}))
    elif attack == "manifest-dir":
        (root / "versions" / "v000002" / "sub").mkdir(parents=True)
        (root / "versions" / "v000002" / "sub" / "x").write_bytes(SECRET)
        (root / "versions" / "v000002" / "manifest.json").write_text(_manifest(2, {"sub": b""}))
    elif attack == "fifo-file":
        (root / "versions" / "v000001" / "model.pt").unlink()
        os.mkfifo(root / "versions" / "v000001" / "model.pt")
    elif attack == "link-file":
        vdir = root / "versions" / "v000001"
        (vdir / "model.pt").unlink()
        (vdir / "model.pt").symlink_to(secret)
        (vdir / "manifest.json").write_text(_manifest(1, {"model.pt": SECRET}))
    elif attack == "link-manifest":
        (outside / "manifest.json").write_text(
            _manifest(1, {"../../../outside/secret.txt": SECRET})
        )
        (root / "versions" / "v000001" / "manifest.json").unlink()
        (root / "versions" / "v000001" / "manifest.json").symlink_to(outside / "manifest.json")
    elif attack == "link-version":
        (root / "versions" / "v000002").symlink_to(outside / "v000002", target_is_directory=True)
    elif attack == "link-alias":
        (root / "aliases" / "prod.json").symlink_to(outside / "prod.json")
    elif attack in ("link-versions", "link-aliases"):
        top = attack.removeprefix("link-")
        shutil.rmtree(root / top)
        (root / top).symlink_to(outside / top, target_is_directory=True)
    elif attack == "link-lock":
        (root / "aliases" / ".publish.lock").symlink_to(secret)


def _outside_tree(outside: Path) -> None:
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    (outside / "prod.json").write_text(json.dumps({"alias": "prod", "version": 2}))
    (outside / "v000002").mkdir()
    (outside / "v000002" / "secret.txt").symlink_to(outside / "secret.txt")
    (outside / "v000002" / "manifest.json").write_text(_manifest(2, {"secret.txt": SECRET}))
    for top in ("versions", "aliases"):  # what a symlinked top directory would point at
        (outside / top / "v000002").mkdir(parents=True)
        (outside / top / "v000002" / "manifest.json").write_text(_manifest(2, {"s": SECRET}))
        (outside / top / "v000002" / "s").write_bytes(SECRET)
    (outside / "aliases" / "latest.json").write_text(json.dumps({"alias": "latest", "version": 2}))


def _run_everything(registry: Registry, name: str, fetch_dir: Path) -> list[bytes]:
    """Every operation, on the planted and the generated names; what each returned."""
    returned: list[bytes] = []

    def attempt(operation) -> None:
        try:
            result = operation()
        except RegistryError:
            return  # refusing is fine; what matters is what was read or written
        returned.append(repr(result).encode() if not isinstance(result, bytes) else result)

    attempt(registry.list_versions)
    attempt(registry.aliases)
    attempt(registry.latest_version)
    for ref in (1, 2, "latest", "prod", name):
        attempt(lambda ref=ref: registry.show(ref))
        for file_name in ("model.pt", "secret.txt", "s", name):
            attempt(lambda ref=ref, file_name=file_name: registry.read_file(ref, file_name))
    for index, ref in enumerate((1, 2, "latest", "prod")):
        dest = fetch_dir / f"out{index}"
        attempt(lambda ref=ref, dest=dest: registry.fetch(ref, dest))
        if dest.exists():
            returned.extend(p.read_bytes() for p in dest.rglob("*") if p.is_file())
    attempt(lambda: registry.promote(1, name))
    attempt(lambda: registry.promote(2, "prod"))
    attempt(lambda: registry.rollback("prod"))
    attempt(lambda: registry.publish({"model.pt": b"new"}, lock_timeout_s=0.2))
    attempt(lambda: registry.publish({"model.pt": b"cas"}, expect_latest=1, lock_timeout_s=0.2))
    attempt(lambda: registry.gc(keep=1, grace_s=0))
    attempt(registry.list_versions)
    return returned


@pytest.mark.parametrize("backend_name", BACKENDS)
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_registry_never_leaves_its_root(backend_name: str, data: st.DataObject) -> None:
    attacks = NAME_ATTACKS + (LOCAL_ATTACKS if backend_name != "object-store" else [])
    attack = data.draw(st.sampled_from(attacks), label="attack")
    name = data.draw(NAMES, label="name")
    # Durability is not under test here: skipping fsync keeps hundreds of examples fast.
    with tempfile.TemporaryDirectory() as tmp, mock.patch("os.fsync"):
        base = Path(tmp)
        outside = base / "outside"
        _outside_tree(outside)
        name = name.replace(ABSOLUTE, str(outside / "secret.txt"))
        backend = make_backend(backend_name, base)
        registry = backend.open(create=True)
        registry.publish({"model.pt": b"w1"})
        _plant(attack, name, backend.local_dir, outside)
        before = snapshot(outside)
        fetch_dir = base / "fetch"
        fetch_dir.mkdir()

        returned = _run_everything(backend.open(), name, fetch_dir)

        assert not [r for r in returned if SECRET in r], f"{attack} {name!r} leaked the secret"
        assert snapshot(outside) == before, f"{attack} {name!r} changed 'outside'"
        assert sorted(os.listdir(base)) == ["fetch", "outside", "registry"]
        assert all(p.name.startswith("out") for p in fetch_dir.iterdir())  # no temp dirs left
