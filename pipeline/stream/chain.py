"""Delta chains: links from each delta to its parent, verified on load, kept by retention.

A delta (a checkpoint, or a registry version) holds what changed since its parent; its manifest
links to that parent by number and by the sha256 of the parent's manifest, and the chain ends at
a full one. Checkpoints and registry versions share these rules: ``follow`` walks and verifies
the links (older parents only, so a chain never loops; matching hashes, so a replaced parent is
noticed; bounded length) and ``with_parents`` is what retention keeps so that no kept delta
loses a link. What a delta holds is the writer's business (``pipeline.stream.rowdelta``).

No torch here: the registry's CLI uses it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

# A longer chain is refused as damage: writers start a full one long before this.
MAX_CHAIN = 1000

# A delta's link to its parent: (the parent's number, sha256 of the parent's manifest bytes).
Link = tuple[int, str]
T = TypeVar("T")


def follow(
    child: int,
    link: Link | None,
    load: Callable[[int], tuple[bytes, T, Link | None]],
    name: Callable[[int], str],
    error: type[Exception],
) -> list[T]:
    """The parents delta ``child`` (linked by ``link``) builds on, loaded and verified, the
    full one first; empty when ``link`` is None.

    ``load(number)`` returns (the manifest's raw bytes, the loaded item, its own link) and
    raises ``error`` when it cannot; ``name(number)`` names one in messages. Each link must
    point to an older number (so a chain never loops) whose manifest hashes to what the link
    recorded, and a chain longer than ``MAX_CHAIN`` is damage: all raise ``error``.
    """
    chain: list[T] = []
    while link is not None:
        parent, expected = link
        where = f"{name(child)} is a delta on {name(parent)}"
        if parent >= child:
            raise error(f"{where}, which is not older: the chain is damaged")
        if len(chain) >= MAX_CHAIN:
            raise error(f"{where}: the chain is longer than {MAX_CHAIN}")
        try:
            raw, loaded, link = load(parent)
        except error as err:
            raise error(f"{where}, which does not load: {err}") from err
        if hashlib.sha256(raw).hexdigest() != expected:
            raise error(
                f"{where}, whose manifest is not the one it was written on (sha256 differs): "
                "the parent was replaced"
            )
        chain.append(loaded)
        child = parent
    return chain[::-1]


def with_parents(kept: Iterable[int], parent_of: Mapping[int, int | None]) -> set[int]:
    """``kept`` and every parent their chains name (transitively) among ``parent_of``'s
    keys: what retention must keep so that no kept delta loses a link."""
    out = set(kept)
    todo = list(out)
    while todo:
        parent = parent_of.get(todo.pop())
        if parent is not None and parent in parent_of and parent not in out:
            out.add(parent)
            todo.append(parent)
    return out
