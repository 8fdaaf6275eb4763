"""Delta versions from the trainer: between full versions (``registry.full_every``) a publish
holds only the item rows changed since the previous version and the dense weights, and every
version loads (``load_version``, the chain applied) to exactly the state it was published from,
also when checkpoints (which track their own changed rows) fall between publishes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from test_delta_checkpoints import SYNTHETIC, overrides

from connectors.registry import Registry, RegistryError
from connectors.registry.published import load_version
from pipeline.lake.synthetic import SyntheticConfig
from pipeline.sources.synthetic import SyntheticSource
from pipeline.stream.checkpoint import CheckpointStore
from pipeline.stream.config import load_config
from pipeline.stream.deadletter import MemoryDeadLetterSink
from pipeline.stream.publishing import MODEL_FILE, ROWS_FILE
from pipeline.stream.trainer import OnlineTrainer


def run(
    tmp_path: Path, name: str, after: Callable[[Registry, int], None] | None = None, **registry: Any
) -> tuple[Registry, dict[int, dict]]:
    """Train over the synthetic stream, publishing every 192 events and checkpointing every
    128 (so checkpoints land between publishes), calling ``after(registry, version)`` after
    each publish; the weights at each published version."""
    cfg_overrides = overrides(tmp_path, name)
    cfg_overrides["registry"] = {"uri": str(tmp_path / "reg"), "every_events": 192, **registry}
    cfg = load_config(overrides=cfg_overrides, environ={})
    reg = Registry.open(cfg.registry.uri, model=cfg.registry_model, create=True)
    trainer = OnlineTrainer(
        cfg,
        SyntheticSource(SyntheticConfig(**SYNTHETIC), events_per_record=64),
        MemoryDeadLetterSink(),
        checkpoints=CheckpointStore(cfg.checkpoint.dir),
        registry=reg,
    )
    weights: dict[int, dict] = {}
    publish = trainer.publish

    def publish_and_remember() -> int | None:
        version = publish()
        if version is not None:
            weights[version] = {k: t.clone() for k, t in trainer.state.model.state_dict().items()}
            if after is not None:
                after(reg, version)
        return version

    trainer.publish = publish_and_remember  # type: ignore[method-assign]
    trainer.run()
    return reg, weights


def test_every_delta_version_loads_to_the_state_it_was_published_from(tmp_path: Path) -> None:
    registry, weights = run(tmp_path, "deltas", full_every=3)
    manifests = registry.list_versions()
    assert [m.version for m in manifests] == sorted(weights) and len(manifests) >= 6
    bases = [None if m.delta_of is None else m.delta_of.version for m in manifests]
    # full at least every 3rd; each delta is on the version just before it
    assert bases[0] is None and any(bases)
    assert all(b is None or b == m.version - 1 for b, m in zip(bases, manifests, strict=True))
    assert all(len(registry.chain(m.version)) <= 3 for m in manifests)
    for manifest in manifests:
        loaded = load_version(registry, manifest.version).model.state_dict()
        expected = weights[manifest.version]
        assert loaded.keys() == expected.keys()
        for key, tensor in expected.items():
            assert torch.equal(loaded[key], tensor), (manifest.version, key)
    # a delta's weights hold only the changed rows: far less than a full version's
    full = next(m for m in manifests if m.delta_of is None).files[MODEL_FILE].size
    for manifest in (m for m in manifests if m.delta_of is not None):
        assert manifest.files[MODEL_FILE].size + manifest.files[ROWS_FILE].size < full / 2


def test_full_every_1_publishes_only_full_versions(tmp_path: Path) -> None:
    registry, _ = run(tmp_path, "full", full_every=1)
    manifests = registry.list_versions()
    assert len(manifests) >= 6 and all(m.delta_of is None for m in manifests)
    assert all(ROWS_FILE not in m.files for m in manifests)


def test_a_damaged_base_makes_the_trainer_publish_a_full_version(tmp_path: Path) -> None:
    def damage_v1(registry: Registry, version: int) -> None:
        if version == 2:  # a delta on v1: replace v1's manifest under it
            path = tmp_path / "reg" / "models" / registry.model / "versions" / "v000001"
            manifest = json.loads((path / "manifest.json").read_text())
            manifest["metrics"]["loss"] = -1.0
            (path / "manifest.json").write_text(json.dumps(manifest))

    registry, weights = run(tmp_path, "damaged", after=damage_v1, full_every=10)
    manifests = {m.version: m for m in registry.list_versions()}
    assert manifests[2].delta_of is not None and manifests[3].delta_of is None
    with pytest.raises(RegistryError, match="v000002 is a delta on v000001, whose manifest"):
        load_version(registry, 2)
    loaded = load_version(registry, 3).model.state_dict()
    assert all(torch.equal(loaded[k], t) for k, t in weights[3].items())
    assert manifests[4].delta_of is not None and manifests[4].delta_of.version == 3
