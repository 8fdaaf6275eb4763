"""No code in pipeline/ reads or overrides another class's (or module's) underscore members.

An underscore name is private to the class or module that defines it (dunders are not
private). Checked with ``ast`` over every module of pipeline/, each offence reported as
``file:line: what``:

- ``x._name`` where ``x`` is not ``self`` or ``cls``: another object's, class's or module's
  private member (``other._state``, ``super()._step``, ``module._helper``), unless the
  enclosing class defines ``_name`` itself and ``x`` is not ``super()`` (its own member, on
  another instance: a ``restore`` classmethod filling the instance it built);
- ``self._name`` (or ``cls._name``) in a class that neither defines ``_name`` in its body nor
  assigns it on ``self``/``cls``: a private member inherited from a base class;
- a method ``_name`` defined in a class whose project base class (any package of the
  repository, followed through its bases) defines ``_name`` too: an override of a private
  member;
- ``from module import _name``: another module's private name.

argparse's sub-command API exists only under private names (ARGPARSE_PRIVATE): allowed.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("kernels", "model", "pipeline", "connectors")
SELF_NAMES = ("self", "cls")
# The types of add_subparsers() and of argument groups, and a parser's arguments.
ARGPARSE_PRIVATE = {"_SubParsersAction", "_ActionsContainer", "_actions"}


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def base_names(node: ast.ClassDef) -> list[str]:
    """The names a class's bases are spelled with (``Base``, ``module.Base`` -> ``Base``)."""
    names = []
    for base in node.bases:
        if isinstance(base, ast.Subscript):  # Generic[T], ModelHandler[A, B, C]
            base = base.value
        if isinstance(base, ast.Name):
            names.append(base.id)
        elif isinstance(base, ast.Attribute):
            names.append(base.attr)
    return names


def body_names(node: ast.ClassDef) -> set[str]:
    """Names a class body defines: methods, nested classes, class attributes."""
    names = set()
    for item in node.body:
        if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(item.name)
        elif isinstance(item, ast.Assign):
            names.update(t.id for t in item.targets if isinstance(t, ast.Name))
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            names.add(item.target.id)
    return names


def own_nodes(node: ast.ClassDef) -> Iterator[ast.AST]:
    """The nodes of a class's body, leaving out nested classes (their ``self`` is another)."""
    stack: list[ast.AST] = list(node.body)
    while stack:
        child = stack.pop()
        if isinstance(child, ast.ClassDef):
            continue
        yield child
        stack.extend(ast.iter_child_nodes(child))


def self_attribute(node: ast.AST) -> str | None:
    """``_name`` of ``self._name`` / ``cls._name``, else None."""
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in SELF_NAMES
        and private(node.attr)
    ):
        return node.attr
    return None


def assigned_on_self(node: ast.ClassDef) -> set[str]:
    """``_name`` of every ``self._name = ...`` (any assignment form) in the class."""
    names = set()
    for child in own_nodes(node):
        if isinstance(child, ast.Attribute) and isinstance(child.ctx, ast.Store | ast.Del):
            name = self_attribute(child)
            if name is not None:
                names.add(name)
    return names


def project_classes() -> dict[str, list[ast.ClassDef]]:
    """Every class of the repository's packages, by name."""
    classes: dict[str, list[ast.ClassDef]] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(parse(path)):
                if isinstance(node, ast.ClassDef):
                    classes.setdefault(node.name, []).append(node)
    return classes


def inherited_names(node: ast.ClassDef, classes: dict[str, list[ast.ClassDef]]) -> set[str]:
    """What the class's project base classes (transitively) define in their bodies."""
    names: set[str] = set()
    seen: set[int] = {id(node)}
    pending = list(base_names(node))
    while pending:
        for base in classes.get(pending.pop(), []):
            if id(base) not in seen:
                seen.add(id(base))
                names |= body_names(base)
                pending.extend(base_names(base))
    return names


def offences(path: Path, classes: dict[str, list[ast.ClassDef]]) -> list[str]:
    where = path.relative_to(REPO)
    found = []

    def visit(node: ast.AST, own: set[str]) -> None:
        """Check ``node`` and its children; ``own``: the enclosing class's own members."""
        if isinstance(node, ast.ClassDef):
            own = check_class(node)
        elif isinstance(node, ast.Attribute) and private(node.attr):
            owner = node.value
            is_self = isinstance(owner, ast.Name) and owner.id in SELF_NAMES
            is_super = isinstance(owner, ast.Call) and ast.unparse(owner.func) == "super"
            mine = node.attr in own and not is_super
            if not is_self and not mine and node.attr not in ARGPARSE_PRIVATE:
                found.append(f"{where}:{node.lineno}: reads {ast.unparse(node)}")
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if private(alias.name):
                    found.append(f"{where}:{node.lineno}: imports {alias.name} from {node.module}")
        for child in ast.iter_child_nodes(node):
            visit(child, own)

    def check_class(node: ast.ClassDef) -> set[str]:
        """Report the class's overrides and inherited reads; returns its own members."""
        own = body_names(node) | assigned_on_self(node)
        inherited = inherited_names(node, classes)
        for item in node.body:
            is_method = isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
            if is_method and private(item.name) and item.name in inherited:
                found.append(
                    f"{where}:{item.lineno}: {node.name}.{item.name} overrides a base "
                    "class's private member"
                )
        for child in own_nodes(node):
            name = self_attribute(child)
            if name is not None and name not in own:
                found.append(
                    f"{where}:{child.lineno}: {node.name} reads {name}, which it does not "
                    "define (a base class's private member)"
                )
        return {name for name in own if private(name)}

    visit(parse(path), set())
    return sorted(set(found), key=lambda line: (line.split(":")[0], int(line.split(":")[1])))


def pipeline_offences() -> list[str]:
    classes = project_classes()
    found = []
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        found += offences(path, classes)
    return found


def test_pipeline_reads_and_overrides_no_other_class_or_module_private_member() -> None:
    found = pipeline_offences()
    print("\n".join(found))
    assert found == []
