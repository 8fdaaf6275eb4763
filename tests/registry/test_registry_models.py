"""Named models: each training run publishes under its own name, with its own versions and
``latest``; a registry from before model names (versions at the root) still reads, as the
model ``default``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.registry import Registry, RegistryError, VersionNotFoundError
from pipeline.cli import main

REPO = Path(__file__).resolve().parents[2]
TRAIN_FLAGS = [
    "--source", "synthetic", "--max-events", "256", "--batch-events", "64", "--threads", "1",
    "--metrics-port", "0",
    "--set", "model.embedding_dim=8", "--set", "store.max_len=8", "--set", "vocab.capacity=64",
    "--set", "train.num_negatives=4",
]  # fmt: skip


def _train(tmp_path: Path, registry: Path, run: str, publish_every: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "train", *TRAIN_FLAGS, "--registry", str(registry),
         "--set", f"run_name={run}", "--publish-every-events", str(publish_every)],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_two_runs_publish_to_one_registry_with_separate_latest(tmp_path: Path, capsys) -> None:
    registry = tmp_path / "registry"
    # Two runs at once: a publishes after 128 events and on exit, b only on exit.
    runs = [_train(tmp_path, registry, "run-a", 128), _train(tmp_path, registry, "run-b", 10**6)]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-3000:]
    a = Registry.open(registry, model="run-a")
    b = Registry.open(registry, model="run-b")
    assert a.models() == ["run-a", "run-b"]
    assert (a.latest_version(), b.latest_version()) == (2, 1)
    trainer = json.loads(b.read_file("latest", "config.json"))["trainer"]
    assert trainer["run_name"] == "run-b"
    # Which model is meant must be said once there are several: the error names them.
    with pytest.raises(RegistryError, match="several models: run-a, run-b; choose one"):
        Registry.open(registry)
    with pytest.raises(VersionNotFoundError, match=r"no model 'run-c' .*run-a, run-b"):
        Registry.open(registry, model="run-c")
    capsys.readouterr()
    assert main(["registry", "list", "--registry", str(registry)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run-a, run-b" in err and "--model" in err, err
    assert main(["registry", "list", "--registry", str(registry), "--model", "run-b"]) == 0
    assert "v000001" in capsys.readouterr().out
    # aliases move per model: promoting run-b's v1 leaves run-a alone
    assert main(["registry", "promote", "1", "prod", "--registry", str(registry),
                 "--model", "run-b"]) == 0  # fmt: skip
    assert "prod" not in a.aliases() and b.alias("prod").version == 1


def _old_layout_registry(path: Path) -> None:
    """A registry as genrec wrote it before model names: versions and aliases at the root,
    registry.json of format 1."""
    registry = Registry.open(path, model="default", create=True)
    for n in range(3):
        registry.publish({"model.pt": f"weights {n}".encode()})
    registry.promote(2, "prod")
    marker = {"format_version": 1, "created_at": "2026-01-01T00:00:00+00:00"}
    (path / "registry.json").write_text(json.dumps(marker))
    assert sorted(p.name for p in path.iterdir()) == ["aliases", "registry.json", "versions"]


def test_an_old_layout_registry_still_lists_loads_promotes_and_collects(
    tmp_path: Path, capsys
) -> None:
    path = tmp_path / "registry"
    _old_layout_registry(path)
    old = Registry.open(path)  # its only model: no name needed
    assert old.model == "default" and old.models() == ["default"]
    assert [m.version for m in old.list_versions()] == [1, 2, 3]
    assert old.read_file("prod", "model.pt") == b"weights 1"
    base = ["--registry", str(path)]
    assert main(["registry", "promote", "3", "prod", *base]) == 0
    assert main(["registry", "rollback", "prod", *base]) == 0
    assert main(["registry", "gc", "--keep", "1", *base]) == 0
    assert main(["registry", "show", "prod", "--model", "default", *base]) == 0
    assert "v000002" in capsys.readouterr().out
    # A named run publishing into it leaves the old model where it is, readable by name.
    Registry.open(path, model="run-a", create=True).publish({"model.pt": b"a"})
    assert json.loads((path / "registry.json").read_text())["format_version"] == 2
    assert Registry.open(path, model="default").read_file("latest", "model.pt") == b"weights 2"
    assert Registry.open(path, model="run-a").read_file("latest", "model.pt") == b"a"
    with pytest.raises(RegistryError, match="several models: default, run-a"):
        Registry.open(path)
    # a trainer resuming a checkpoint that published v3 of the old layout, now under its name
    with pytest.raises(VersionNotFoundError, match=r"sets registry\.model to that model"):
        Registry.open(path, model="run-a").publish({"model.pt": b"b"}, parent=3)


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "-x", "a" * 200])
def test_a_bad_model_name_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(RegistryError, match="is not a model name"):
        Registry.open(tmp_path / "registry", model=name, create=True)
