"""``gc`` against alias moves: a version an alias points at is never deleted, including one
an alias is moved to while gc runs (both hold the registry's writer lock)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from connectors.registry import Registry, VersionNotFoundError
from connectors.registry.storage import Storage

RACES = 20
VERSIONS = 6  # per race: gc deletes all but the newest two (latest and its previous)
# Each directory deletion takes this much longer (a slow disk or object store), so that a
# promote started at gc's first deletion lands before gc reaches the promoted version.
SLOW_DELETE_S = 0.03
WAIT_S = 30.0


def test_gc_never_deletes_a_version_promoted_during_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deleting = threading.Event()  # gc has planned and started deleting
    delete_dir = Storage.delete_dir

    def slow_delete_dir(store: Storage, rel: str) -> None:
        deleting.set()
        time.sleep(SLOW_DELETE_S)
        delete_dir(store, rel)

    monkeypatch.setattr(Storage, "delete_dir", slow_delete_dir)
    registry = Registry.open(tmp_path / "registry", create=True)
    errors: list[BaseException] = []

    def gc() -> None:
        try:
            registry.gc(keep=1)
        except BaseException as err:  # reported by the test, not lost in the thread
            errors.append(err)

    def promote(target: int) -> None:
        try:
            assert deleting.wait(WAIT_S), "gc deleted nothing"
            registry.promote(target, "prod")
        except VersionNotFoundError:
            pass  # gc removed the version first: prod did not move, which is fine
        except BaseException as err:
            errors.append(err)

    for race in range(RACES):
        first = registry.publish({"w": f"{race}-0".encode()}).version
        for n in range(1, VERSIONS):
            registry.publish({"w": f"{race}-{n}".encode()})
        deleting.clear()
        # the last version gc deletes: promoted while gc deletes the ones before it
        threads = [
            threading.Thread(target=gc),
            threading.Thread(target=promote, args=(first + VERSIONS - 3,)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=WAIT_S)
            assert not thread.is_alive(), "gc or promote hung"
        assert not errors, errors
        if "prod" in registry.aliases():
            # prod's target is still published: scoring with it and rolling back work
            target = registry.alias("prod").version
            assert registry.show("prod").version == target, f"race {race}: prod -> gone v{target}"
