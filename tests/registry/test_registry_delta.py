"""Delta versions: a version that holds only the item rows and dense weights changed since
its base loads through a verified chain; a damaged or crafted link is refused in one line;
gc keeps every kept version's chain; registries of full versions only still read."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from registry.tiny_version import CONFIG, ROWS, VOCAB, WEIGHTS, publish

from connectors.registry import Registry, RegistryError
from connectors.registry.manifest import FORMAT_VERSION, FULL_FORMAT_VERSION
from connectors.registry.published import load_version
from pipeline.cli import main
from pipeline.stream import rowdelta
from pipeline.stream.checkpoint import state_from_bytes, state_to_bytes
from pipeline.stream.publishing import MODEL_FILE, ROWS_FILE, VOCAB_FILE

TABLE = "item_emb.weight"


def weights() -> dict[str, torch.Tensor]:
    return state_from_bytes(WEIGHTS)


def delta_files(state: dict[str, torch.Tensor], rows: list[int]) -> dict[str, bytes]:
    """A delta version's files for ``state``, ``rows`` being the table rows changed."""
    rest, changed = rowdelta.split({"model": state}, torch.tensor(rows))
    return {
        MODEL_FILE: state_to_bytes(rest["model"]),
        ROWS_FILE: state_to_bytes(changed),
        VOCAB_FILE: VOCAB,
        "config.json": json.dumps(CONFIG).encode(),
    }


def changed(state: dict[str, torch.Tensor], rows: list[int], step: float) -> dict[str, Any]:
    """``state`` with ``rows`` of the table and every dense weight moved by ``step``."""
    out = {name: t.clone() + (step if name != TABLE else 0) for name, t in state.items()}
    out[TABLE][rows] += step
    return out


@pytest.fixture
def chain(tmp_path: Path) -> tuple[Registry, list[dict[str, torch.Tensor]]]:
    """v1 full, v2 delta on v1, v3 delta on v2; and the state each holds."""
    registry = Registry.open(tmp_path / "reg", create=True)
    states = [weights()]
    assert publish(registry) == 1
    for version, rows in ((2, [0, 3]), (3, [3, 7])):
        states.append(changed(states[-1], rows, 0.5))
        files = delta_files(states[-1], rows)
        assert registry.publish(files, parent=version - 1, delta_of=version - 1).version == version
    return registry, states


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def manifest_path(registry: Registry, version: int) -> Path:
    root = Path(registry.location.removeprefix("local:"))  # local registries only
    return root / "versions" / f"v{version:06d}" / "manifest.json"


def edit_manifest(registry: Registry, version: int, **changes: Any) -> None:
    path = manifest_path(registry, version)
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def link_to(registry: Registry, base: int) -> dict[str, Any]:
    sha = hashlib.sha256(manifest_path(registry, base).read_bytes()).hexdigest()
    return {"version": base, "manifest_sha256": sha}


def test_a_delta_chain_loads_to_the_state_it_was_published_from(chain) -> None:
    registry, states = chain
    assert [m.version for m in registry.chain(3)] == [1, 2, 3]
    assert [m.version for m in registry.chain(1)] == [1]
    for version, state in enumerate(states, 1):
        assert same(load_version(registry, version).model.state_dict(), state), version
    assert load_version(registry, "latest").version == 3
    # a delta holds only what changed: the rows of its table, the dense weights
    rows = state_from_bytes(registry.read_file(3, ROWS_FILE))
    assert rows["index"].tolist() == [3, 7] and rows["weight"].shape == (2, 8)
    assert TABLE not in state_from_bytes(registry.read_file(3, MODEL_FILE))
    full, delta = registry.show(1), registry.show(3)
    # readers from before deltas keep reading full versions and refuse (not misread) deltas
    assert (full.format_version, full.delta_of) == (FULL_FORMAT_VERSION, None)
    assert delta.format_version == FORMAT_VERSION > FULL_FORMAT_VERSION
    assert delta.delta_of is not None and delta.delta_of.version == 2


def test_publishing_a_delta_on_a_damaged_or_missing_base_is_refused(chain) -> None:
    registry, states = chain
    files = delta_files(states[-1], [1])
    with pytest.raises(RegistryError, match="v000009 is not a published version"):
        registry.publish(files, delta_of=9)
    edit_manifest(registry, 2, metrics={"x": 1.0})
    with pytest.raises(RegistryError, match="v000003 is a delta on v000002, whose manifest"):
        registry.publish(files, delta_of=3)
    assert registry.latest_version() == 3  # nothing was published


# (case, how v3's manifest is rewritten, error fragment). v3 is a delta on v2 on v1.
CRAFTED: list[tuple[str, dict[str, Any], str]] = [
    ("outside", {"version": "../../models/other/versions/v000001"}, "invalid manifest"),
    ("negative", {"version": -1}, "invalid manifest"),
    ("itself", {"version": 3}, "v000003 is a delta on v000003, which is not older"),
    ("newer", {"version": 4}, "is a delta on v000004, which is not older"),
    ("replaced", {"manifest_sha256": "0" * 64}, "whose manifest is not the one"),
]


@pytest.mark.parametrize("case", CRAFTED, ids=[c[0] for c in CRAFTED])
def test_a_crafted_link_is_refused_in_one_line(chain, case) -> None:
    registry, _ = chain
    _, link, fragment = case
    edit_manifest(registry, 3, delta_of={**link_to(registry, 2), **link})
    for attempt in (lambda: load_version(registry, 3), lambda: registry.chain("latest")):
        with pytest.raises(RegistryError) as caught:
            attempt()
        message = str(caught.value)
        assert fragment in message and "\n" not in message, message
    # the rest of the chain is intact
    assert load_version(registry, 2).version == 2


def test_a_cycle_a_missing_base_and_a_base_of_another_model_are_refused(chain) -> None:
    registry, states = chain
    # a cycle: v2 -> v3 -> v2 (one of its links always points to a newer version)
    edit_manifest(registry, 2, delta_of=link_to(registry, 3))
    edit_manifest(registry, 3, delta_of=link_to(registry, 2))
    with pytest.raises(RegistryError, match="v000002 is a delta on v000003, which is not older"):
        load_version(registry, 3)
    # a base that gc removed (or never was)
    edit_manifest(registry, 3, delta_of={**link_to(registry, 1), "version": 1})
    manifest_path(registry, 1).unlink()
    with pytest.raises(RegistryError, match="v000001, which does not load: v000001 is not a pub"):
        load_version(registry, 3)
    # a correctly linked base whose model has another shape (or is another model)
    other = {**CONFIG, "hstu": {**CONFIG["hstu"], "num_layers": 2}}
    four = publish(registry, json.dumps(other).encode())
    five = registry.publish(delta_files(states[-1], [1]), delta_of=four).version
    with pytest.raises(RegistryError, match=r"holds another model \(config.json differs"):
        load_version(registry, five)


def test_a_damaged_delta_file_is_refused_and_a_follower_keeps_its_version(chain) -> None:
    registry, states = chain
    served = load_version(registry, "latest")  # what a reader following latest holds
    rows_file = manifest_path(registry, 2).parent / ROWS_FILE
    rows_file.write_bytes(rows_file.read_bytes()[:-1] + b"x")
    with pytest.raises(RegistryError, match=f"v000002/{ROWS_FILE}: content does not match"):
        served = load_version(registry, "latest")
    assert served.version == 3 and same(served.model.state_dict(), states[-1])
    # verified rows that do not fit the table: one line, not an IndexError
    registry.publish(
        {**delta_files(states[-1], [1]), ROWS_FILE: state_to_bytes(
            {"index": torch.tensor([ROWS]), "weight": torch.zeros(1, 8)}
        )},
        delta_of=1,
    )  # fmt: skip
    with pytest.raises(RegistryError, match=r"its delta chain does not apply: .*outside the table"):
        load_version(registry, "latest")


def test_gc_never_removes_a_version_a_kept_chain_needs(chain) -> None:
    registry, states = chain
    assert registry.gc(keep=1, dry_run=True).removed == ()  # v3 needs v2 and v1
    registry.publish(delta_files(states[-1], [0]), delta_of=3)  # v4 on v3
    assert publish(registry) == 5  # full
    registry.publish(delta_files(weights(), [2]), delta_of=5)  # v6 on v5
    registry.promote(2, "pinned")
    result = registry.gc(keep=1)
    assert result.removed == (3, 4)  # v6's chain (5) and pinned v2's chain (1) stay
    assert [m.version for m in registry.list_versions()] == [1, 2, 5, 6]
    assert same(load_version(registry, "pinned").model.state_dict(), states[1])
    assert load_version(registry, 6).version == 6


def test_a_registry_of_full_versions_from_before_deltas_still_reads(tmp_path: Path) -> None:
    registry = Registry.open(tmp_path / "reg", create=True)
    version = publish(registry)
    # a manifest as genrec wrote it before deltas: no delta_of key at all
    path = manifest_path(registry, version)
    document = json.loads(path.read_text())
    del document["delta_of"]
    path.write_text(json.dumps(document))
    assert registry.chain("latest") == [registry.show(version)]
    assert same(load_version(registry, "latest").model.state_dict(), weights())
    assert registry.gc(keep=1).removed == ()


def test_registry_show_names_the_base_of_a_delta(chain, capsys) -> None:
    registry, _ = chain
    capsys.readouterr()
    root = str(manifest_path(registry, 1).parents[2])
    assert main(["registry", "show", "3", "--registry", root]) == 0
    assert "delta of:         v000002" in capsys.readouterr().out
    assert main(["registry", "show", "1", "--registry", root]) == 0
    assert "delta of:         - (a full version)" in capsys.readouterr().out
