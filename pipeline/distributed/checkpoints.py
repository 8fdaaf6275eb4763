"""Coordinated checkpoints of a trainer group: one part per rank, one shared part, a marker.

Layout under ``checkpoint.dir`` (a directory every rank sees; on several machines a shared
filesystem)::

    shared/ckpt-<seq>/            rank 0: model, optimizer, item vocabulary (the same on
                                  every rank), the group's watermark
    rank-<r>-of-<w>/ckpt-<seq>/   rank r: its users' sequence store, its partitions'
                                  positions, its counters and progressive metrics
    complete/<n>.json             group checkpoint n: which seq of each part belongs to it

Every part is an ordinary ``CheckpointStore`` checkpoint (atomic, checksummed). Group
checkpoint ``n`` is complete only once its marker exists: rank 0 writes it after every
rank reported its part written (a gather, i.e. a barrier), so a rank that died halfway
leaves parts without a marker, which restore ignores. Restore takes the newest marker
whose parts all load, on every rank; a marker's content is checked before use.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.checkpoint import Checkpoint, CheckpointError, CheckpointStore

SHARED = "shared"
MARKERS = "complete"
_PART = re.compile(r"rank-(\d+)-of-(\d+)")
_MARKER = re.compile(r"(\d{8})\.json")


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
        self._refuse_other_world()
        self.own = CheckpointStore(self.directory / part_name(rank, world), keep=keep)
        self.shared = CheckpointStore(self.directory / SHARED, keep=keep)
        self.markers_dir = self.directory / MARKERS
        self.markers_dir.mkdir(parents=True, exist_ok=True)
        self.keep = keep

    def _refuse_other_world(self) -> None:
        """Stores are split by partition share: another world size cannot use them."""
        if not self.directory.is_dir():
            return
        if any(p.name.startswith("ckpt-") for p in self.directory.iterdir()):
            raise CheckpointError(
                f"{self.directory} holds checkpoints of a single trainer process; a group of "
                f"{self.world} ranks cannot continue them (its store is not split by partition). "
                "Run it with one process, or give the group another checkpoint.dir"
            )
        for entry in self.directory.iterdir():
            match = _PART.fullmatch(entry.name)
            if match and int(match.group(2)) != self.world:
                raise CheckpointError(
                    f"{self.directory} holds the checkpoints of a group of {match.group(2)} "
                    f"ranks ({entry.name}); this group has {self.world}. Each rank's store holds "
                    "the users of its partitions, so resharding is not supported: run with "
                    f"--workers {match.group(2)}, or give this group another checkpoint.dir"
                )

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
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(marker.to_json())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
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
