"""Property: whatever names and symlinks are planted in a checkpoint directory, ``load``,
``latest``, ``loadable`` and ``save`` (with its pruning) never read, write or delete outside it.

Each example saves two checkpoints next to an ``outside`` directory holding a secret, plants
one attack (crafted blob names in a manifest, or a symlink to the outside), runs every
operation and checks that the secret never came back and ``outside`` is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import suppress
from pathlib import Path
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tree_snapshot import snapshot

from pipeline.stream.checkpoint import CheckpointError, CheckpointStore

SECRET = b"the secret that must never leave 'outside'"
ABSOLUTE = "<absolute path of the secret>"

_PARTS = ["..", ".", "", "secret.txt", "outside", "a", "ckpt-00000001", "\\..", "\n", "\x00"]
_PARTS += ["é", "名", "manifest.json", ABSOLUTE]
NAMES = st.one_of(
    st.lists(st.sampled_from(_PARTS), min_size=1, max_size=5).map("/".join),
    st.text(alphabet=st.sampled_from(list("./\\\n\x00a1é名 ")), max_size=12),
    st.sampled_from(["../../outside/secret.txt", "../outside/secret.txt", ABSOLUTE]),
)
ATTACKS = [
    "manifest-name",
    "link-blob",
    "link-manifest",
    "link-ckpt-dir",
    "link-newest-dir",
    "link-temp-dir",
    "link-in-pruned-dir",
]
# A pid that cannot exist (above Linux's PID_MAX_LIMIT): its temp dirs count as abandoned.
DEAD_PID = 2**22 + 1


def _entry(data: bytes) -> dict[str, object]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _manifest(seq: int, files: dict[str, bytes]) -> str:
    entries = {name: _entry(data) for name, data in files.items()}
    return json.dumps(
        {"format_version": 1, "seq": seq, "created_at": "x", "meta": {}, "files": entries}
    )


def _plant(attack: str, name: str, store: Path, outside: Path) -> None:
    secret = outside / "secret.txt"
    first = store / "ckpt-00000001"
    if attack == "manifest-name":
        (first / "manifest.json").write_text(_manifest(1, {name: SECRET}))
    elif attack == "link-blob":
        (first / "a").unlink()
        (first / "a").symlink_to(secret)
        (first / "manifest.json").write_text(_manifest(1, {"a": SECRET}))
    elif attack == "link-manifest":
        (first / "manifest.json").unlink()
        (first / "manifest.json").symlink_to(outside / "ckpt" / "manifest.json")
    elif attack == "link-ckpt-dir":
        (store / "ckpt-00000000").symlink_to(outside / "ckpt", target_is_directory=True)
    elif attack == "link-newest-dir":
        (store / "ckpt-00000009").symlink_to(outside / "ckpt", target_is_directory=True)
    elif attack == "link-temp-dir":
        (store / f".tmp-{DEAD_PID}-abc").symlink_to(outside / "ckpt", target_is_directory=True)
    elif attack == "link-in-pruned-dir":
        (first / "escape").symlink_to(outside / "ckpt", target_is_directory=True)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(attack=st.sampled_from(ATTACKS), name=NAMES)
def test_checkpoint_store_never_leaves_its_directory(attack: str, name: str) -> None:
    # Durability is not under test here: skipping fsync keeps the examples fast.
    with tempfile.TemporaryDirectory() as tmp, mock.patch("os.fsync"):
        base = Path(tmp)
        outside = base / "outside"
        (outside / "ckpt").mkdir(parents=True)
        (outside / "secret.txt").write_bytes(SECRET)
        (outside / "ckpt" / "secret.txt").write_bytes(SECRET)
        (outside / "ckpt" / "manifest.json").write_text(_manifest(1, {"secret.txt": SECRET}))
        name = name.replace(ABSOLUTE, str(outside / "secret.txt"))
        store = CheckpointStore(base / "ckpt", keep=2)
        store.save({"a": b"1"}, {"step": 1})
        store.save({"a": b"2"}, {"step": 2})
        _plant(attack, name, store.directory, outside)
        before = snapshot(outside)

        returned: list[bytes] = []
        for seq in (0, 1, 2, 9):
            with suppress(CheckpointError):
                returned.extend(store.load(seq).state.values())
        returned.extend(blob for ckpt in store.loadable() for blob in ckpt.state.values())
        latest = store.latest()
        returned.extend(latest.state.values() if latest else [])
        for step in (3, 4):  # each save prunes to the newest two
            store.save({"a": str(step).encode()}, {"step": step})
        returned.extend(blob for ckpt in store.loadable() for blob in ckpt.state.values())

        assert SECRET not in returned, f"{attack} {name!r} leaked the secret"
        assert snapshot(outside) == before, f"{attack} {name!r} changed 'outside'"
        assert sorted(os.listdir(base)) == ["ckpt", "outside"]
        latest = store.latest()
        assert latest is not None and latest.meta == {"step": 4}
