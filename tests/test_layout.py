"""The packages' imports go one way along the flow (docs/architecture.md).

kernels <- model <- pipeline <- connectors: a package never imports one to its right, at
module level or inside a function. Connectors reach the pipeline's CLI through entry points
(pipeline/plugins.py), not imports. Inside pipeline/ the subpackages keep an order of their
own (PIPELINE_ORDER), and no files of the four packages import each other in a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ORDER = ("kernels", "model", "pipeline", "connectors")
# pipeline/'s subpackages in flow order: a module imports its own subpackage and earlier
# ones, never a later one. plugins.py sits with runtime, cli.py after every subpackage.
PIPELINE_ORDER = (
    "runtime",
    "events",
    "lake",
    "sources",
    "state",
    "stream",
    "offline",
    "backfill",
    "serve",
    "commands",
)
PIPELINE_TOP_LEVEL = {"plugins": 0, "cli": len(PIPELINE_ORDER)}
MAX_PIPELINE_TOP_LEVEL_MODULES = 4


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


def module_files() -> dict[str, Path]:
    """Every module of the four packages by dotted name (a package: its __init__.py)."""
    files = {}
    for package in ORDER:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join(parts)] = path
    return files


def imported_modules(path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """The project modules ``path`` imports, anywhere in it, with the line of the first
    import: ``from pkg import mod`` imports pkg/mod.py when that is a module, else pkg."""
    found: dict[str, int] = {}

    def add(name: str, line: int) -> None:
        while name and name not in modules:  # from a.b import function: module a.b
            name = name.rpartition(".")[0]
        if name:
            found.setdefault(name, line)

    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                add(submodule if submodule in modules else node.module, node.lineno)
    return found


def pipeline_level(module: str) -> int | None:
    """Where a pipeline module sits in PIPELINE_ORDER (None: pipeline/__init__.py, or a
    module of no listed place)."""
    place = module.split(".")[1] if "." in module else None
    if place in PIPELINE_TOP_LEVEL:
        return PIPELINE_TOP_LEVEL[place]
    return PIPELINE_ORDER.index(place) if place in PIPELINE_ORDER else None


def test_pipeline_subpackages_import_only_their_own_and_earlier_ones() -> None:
    modules = module_files()
    offenders = []
    for module, path in modules.items():
        if not module.startswith("pipeline."):
            continue
        level = pipeline_level(module)
        if level is None:
            offenders.append(f"{path.relative_to(REPO)}: has no place in PIPELINE_ORDER")
            continue
        for imported, line in sorted(imported_modules(path, modules).items()):
            other = pipeline_level(imported) if imported.startswith("pipeline.") else None
            if other is not None and other > level:
                offenders.append(f"{path.relative_to(REPO)}:{line}: imports {imported}")
    print("\n".join(offenders))
    assert offenders == []


def test_pipeline_top_level_holds_few_modules() -> None:
    top = sorted(path.name for path in (REPO / "pipeline").glob("*.py"))
    assert len(top) <= MAX_PIPELINE_TOP_LEVEL_MODULES, top
    assert set(top) <= {"__init__.py", *(f"{name}.py" for name in PIPELINE_TOP_LEVEL)}, top
    init = ast.parse((REPO / "pipeline" / "__init__.py").read_text()).body
    assert all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in init)


def import_cycles(graph: dict[str, set[str]]) -> list[str]:
    """Each strongly connected group of modules (Tarjan) as one of its cycles, a path that
    ends where it starts, followed by the group's other modules when there are more."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for child in sorted(graph[node]):
            if child not in index:
                connect(child)
                low[node] = min(low[node], low[child])
            elif child in stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            group = {stack.pop()}
            while node not in group:
                group.add(stack.pop())
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    described = []
    for group in groups:
        cycle = cycle_in(graph, group)
        others = sorted(group - set(cycle))
        described.append(" -> ".join(cycle) + (f" (and {', '.join(others)})" if others else ""))
    return described


def cycle_in(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """The shortest path from the group's first module back to it (breadth first)."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & group):
                if child == start:
                    return [*paths[node], start]
                if child not in paths:
                    paths[child] = [*paths[node], child]
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle in {sorted(group)}")


def test_no_import_cycle_between_files() -> None:
    modules = module_files()
    graph = {
        module: set(imported_modules(path, modules)) - {module} for module, path in modules.items()
    }
    cycles = import_cycles(graph)
    print("\n".join(cycles))
    assert cycles == []
