"""Connectors plug into the pipeline by entry points, so that the pipeline never imports them.

``connectors/`` depends on ``pipeline/`` (it implements its ``Source``, ``DeadLetterSink`` and
publishing interfaces), never the other way round. What the CLI needs from a connector is
named in ``pyproject.toml`` under ``[project.entry-points."genrec.*"]`` and looked up here:

- ``genrec.commands``: modules with ``register(subparsers)`` adding ``genrec`` subcommands;
- ``genrec.sources``: ``source.kind`` -> ``factory(cfg: TrainerConfig) -> Source``;
- ``genrec.dead_letters``: ``dead_letter.kind`` -> ``factory(cfg) -> DeadLetterSink``;
- ``genrec.registries``: ``"default"`` -> ``open(uri, model=None, create=False)`` -> a
  registry's model (the trainer passes its run name).

Entry points are package metadata: they exist once genrec is installed (``scripts/setup.sh``
or ``pip install -e .``), which is also what puts the ``genrec`` command on the path.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any


class PluginNotFoundError(LookupError):
    """No installed connector provides what the configuration asks for."""


def _entries(group: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=group)}


def modules(group: str) -> list[str]:
    """The modules the entry points of ``group`` name, by entry-point name."""
    return [ep.module for _, ep in sorted(_entries(group).items())]


def load(group: str, name: str, what: str) -> Any:
    """The object entry point ``name`` of ``group`` names; ``what`` says what it is for
    (``"--source kafka"``) in the error when no installed connector provides it."""
    entry = _entries(group).get(name)
    if entry is None:
        known = ", ".join(sorted(_entries(group))) or "none"
        raise PluginNotFoundError(
            f"{what} needs a connector registered as {name!r} in the {group!r} entry points "
            f"(installed: {known}); install genrec with its connectors (bash scripts/setup.sh "
            "or pip install -e .)"
        )
    return entry.load()
