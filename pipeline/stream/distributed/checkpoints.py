"""Coordinated checkpoints of a trainer group: one part per rank, one shared part, a marker.

Layout under ``checkpoint.dir`` (a directory every rank sees; on several machines a shared
filesystem)::

    shared/ckpt-<seq>/            rank 0: model, optimizer, item vocabulary (the same on
                                  every rank), the group's watermark
    rank-<r>-of-<w>/ckpt-<seq>/   rank r: its users' sequence store, its partitions'
                                  positions, its counters and progressive metrics
    complete/<n>.json             group checkpoint n: which seq of each part belongs to it
    owner.json                    who owns the directory: {"world": w}

Every part is an ordinary ``CheckpointStore`` checkpoint (atomic, checksummed). Group
checkpoint ``n`` is complete only once its marker exists: rank 0 writes it after every
rank reported its part written (a gather, i.e. a barrier), so a rank that died halfway
leaves parts without a marker, which restore ignores. Restore takes the newest marker
whose parts all load, on every rank; a marker's content is checked before use.

A checkpoint directory belongs to one kind of trainer: a single process (``ckpt-<seq>/``
directly inside it) or a group of ``w`` ranks (the layout above); neither can continue the
other's state, since a rank's store holds only its partitions' users. ``claim_directory``
records the owner in ``owner.json`` (``{"world": 1}`` for a single trainer) the first time and
refuses the other kinds afterwards; a directory from before that record is judged by its
layout.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.stream.checkpoint import Checkpoint, CheckpointError, CheckpointStore

SHARED = "shared"
MARKERS = "complete"
OWNER = "owner.json"
_PART = re.compile(r"rank-(\d+)-of-(\d+)")
_MARKER = re.compile(r"(\d{8})\.json")
_SINGLE = re.compile(r"ckpt-[0-9]+")


def part_name(rank: int, world: int) -> str:
    return f"rank-{rank}-of-{world}"


@dataclass(frozen=True)
class Marker:
    """Group checkpoint ``n``: the seq of the shared part and of every rank's part."""

    n: int
    world: int
    parts: dict[str, int]

    def to_json(self) -> str:
        return json.dumps({"n": self.n, "world": self.world, "parts": self.parts}, indent=2)

    @classmethod
    def parse(cls, raw: bytes, where: Path) -> Marker:
        """A marker from untrusted bytes; ``CheckpointError`` says what is wrong."""
        try:
            data = json.loads(raw)
        except ValueError as err:
            raise CheckpointError(f"{where} is not JSON: {err}") from err
        if not isinstance(data, dict):
            raise CheckpointError(f"{where} is not a JSON object")
        n, world, parts = data.get("n"), data.get("world"), data.get("parts")
        if type(n) is not int or type(world) is not int or world < 1 or n < 1:
            raise CheckpointError(f"{where}: n and world must be positive integers")
        expected = {SHARED, *(part_name(r, world) for r in range(world))}
        if not isinstance(parts, dict) or set(parts) != expected:
            raise CheckpointError(f"{where}: parts must name exactly {sorted(expected)}")
        if any(type(seq) is not int or seq < 1 for seq in parts.values()):
            raise CheckpointError(f"{where}: every part's seq must be a positive integer")
        return cls(n, world, dict(parts))


class GroupCheckpoints:
    """This rank's view of the group's checkpoints (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike[str], rank: int, world: int, keep: int) -> None:
        self.directory = Path(directory)
        self.rank, self.world = rank, world
        claim_directory(self.directory, world)
        self.own = CheckpointStore(self.directory / part_name(rank, world), keep=keep)
        self.shared = CheckpointStore(self.directory / SHARED, keep=keep)
        self.markers_dir = self.directory / MARKERS
        self.markers_dir.mkdir(parents=True, exist_ok=True)
        self.keep = keep

    @property
    def own_key(self) -> str:
        return part_name(self.rank, self.world)

    def markers(self) -> Iterator[Marker]:
        """Complete group checkpoints, newest first; unreadable markers are skipped."""
        names = sorted(
            (e.name for e in os.scandir(self.markers_dir) if _MARKER.fullmatch(e.name)),
            reverse=True,
        )
        for name in names:
            where = self.markers_dir / name
            try:
                marker = Marker.parse(where.read_bytes(), where)
            except (OSError, CheckpointError):
                continue
            if marker.world == self.world and f"{marker.n:08d}.json" == name:
                yield marker

    def next_n(self) -> int:
        return max((m.n for m in self.markers()), default=0) + 1

    def load(self, marker: Marker) -> Checkpoint:
        """This rank's part and the shared part of ``marker``, as one checkpoint (the shared
        part's meta first, this rank's on top)."""
        own = self.own.load(marker.parts[self.own_key])
        shared = self.shared.load(marker.parts[SHARED])
        if own.parents or shared.parents:
            raise CheckpointError(f"group checkpoint {marker.n} has delta parts")
        for part in (own, shared):
            group = part.meta.get("group")
            if not isinstance(group, dict) or group.get("n") != marker.n:
                raise CheckpointError(f"{part.path} is not part of group checkpoint {marker.n}")
        return Checkpoint(
            seq=own.seq,
            path=own.path,
            created_at=own.created_at,
            # the shared part's "group" (the watermark) wins over this rank's (rank)
            meta={**shared.meta, **own.meta, "group": shared.meta["group"]},
            state={**shared.state, **own.state},
        )

    def write_marker(self, n: int, parts: Mapping[str, int]) -> Path:
        """Rank 0, after every part is written: group checkpoint ``n`` is complete."""
        marker = Marker(n, self.world, dict(parts))
        path = self.markers_dir / f"{n:08d}.json"
        _write_synced(path, marker.to_json())
        self._prune_markers()
        return path

    def _prune_markers(self) -> None:
        # the parts of older markers are pruned by their stores (keep newest)
        names = sorted(e.name for e in os.scandir(self.markers_dir) if _MARKER.fullmatch(e.name))
        for name in names[: -self.keep]:
            (self.markers_dir / name).unlink(missing_ok=True)


def group_meta(n: int, world: int, **extra: Any) -> dict[str, Any]:
    """The ``group`` entry of a part's meta."""
    return {"n": n, "world": world, **extra}


def claim_directory(directory: Path, world: int, *, record: bool = False) -> None:
    """Refuse (``CheckpointError``, with what to do) a checkpoint directory that another kind
    of trainer owns (``world`` 1: a single trainer process; more: a group of that many
    ranks); with ``record``, make an unowned one this kind's (the caller holds its lock)."""
    owner = _owner(directory)
    if owner is None:
        if record:
            _write_owner(directory, world)
        return
    if owner == world:
        return
    if owner == 1:
        raise CheckpointError(
            f"{directory} holds checkpoints of a single trainer process; a group of {world} "
            "ranks cannot continue them (its store is not split by partition). Run it with one "
            "process, or give the group another checkpoint.dir"
        )
    if world == 1:
        raise CheckpointError(
            f"{directory} holds the checkpoints of a trainer group of {owner} ranks; a single "
            "trainer cannot continue them (each rank's store holds only its partitions' users): "
            f"run it with --workers {owner}, or give this trainer another checkpoint.dir"
        )
    raise CheckpointError(
        f"{directory} holds the checkpoints of a group of {owner} ranks; this group has "
        f"{world}. Each rank's store holds the users of its partitions, so resharding is not "
        f"supported: run with --workers {owner}, or give this group another checkpoint.dir"
    )


def _owner(directory: Path) -> int | None:
    """The world size of the trainer that owns ``directory`` (1: a single process); None
    while nobody does."""
    path = directory / OWNER
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return _owner_by_layout(directory)
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror}") from err
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not (isinstance(data, dict) and set(data) == {"world"} and _positive(data["world"])):
        raise CheckpointError(
            f'{path} is damaged (not {{"world": N}}): it records which trainer owns '
            f"{directory} (1: a single process, N: a group of N ranks). Write the right one "
            "back, or move the directory aside"
        )
    return int(data["world"])


def _owner_by_layout(directory: Path) -> int | None:
    """The owner of a directory written before ``owner.json`` existed, from its entries."""
    if not directory.is_dir():
        return None
    names = [entry.name for entry in os.scandir(directory)]
    single = any(_SINGLE.fullmatch(name) for name in names)
    groups = sorted({int(m.group(2)) for name in names if (m := _PART.fullmatch(name))})
    if single + len(groups) > 1:
        raise CheckpointError(
            f"{directory} holds the checkpoints of several kinds of trainer (ckpt-* of a single "
            f"process and/or rank-*-of-N of groups of {', '.join(map(str, groups))} ranks); none "
            "can continue the others': move the directory aside and give each kind its own "
            "checkpoint.dir"
        )
    if single:
        return 1
    return groups[0] if groups else None


def _positive(value: Any) -> bool:
    return type(value) is int and value >= 1


def _write_owner(directory: Path, world: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    _write_synced(directory / OWNER, json.dumps({"world": world}) + "\n")


def _write_synced(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all (a temporary file, fsynced, renamed into place)."""
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
