"""The packages' imports go one way along the flow (docs/architecture.md).

kernels <- model <- pipeline <- connectors: a package never imports one to its right, at
module level or inside a function. Connectors reach the pipeline's CLI through entry points
(pipeline/plugins.py), not imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ORDER = ("kernels", "model", "pipeline", "connectors")


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", ORDER[:-1])
def test_a_package_imports_none_downstream_of_it(package: str) -> None:
    downstream = set(ORDER[ORDER.index(package) + 1 :])
    offenders = {
        str(path.relative_to(REPO)): sorted(imported_packages(path) & downstream)
        for path in sorted((REPO / package).rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_every_connector_entry_point_names_an_importable_object() -> None:
    import tomllib

    from pipeline import plugins

    groups = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]
    for group, entries in groups.items():
        for name in entries:
            assert plugins.load(group, name, f"{group}:{name}") is not None
    with pytest.raises(plugins.PluginNotFoundError, match=r"--source nope needs a connector"):
        plugins.load("genrec.sources", "nope", "--source nope")
