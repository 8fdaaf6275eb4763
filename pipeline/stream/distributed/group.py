"""The trainer group as torch.distributed sees it: rank, world size and the few collectives
the group trainer needs (``pipeline.stream.distributed.trainer``).

Ranks find each other through torchrun's environment (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``). Gloo on CPU, NCCL on CUDA; every collective waits at
most ``timeout_s`` for the other ranks, so a rank whose peer died fails (and torchrun
restarts the group) instead of waiting forever.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


class GroupError(RuntimeError):
    """A collective failed: another rank died or stopped answering (torchrun restarts the
    group from its last complete checkpoint)."""


@contextmanager
def _collective(name: str, rank: int) -> Iterator[None]:
    try:
        yield
    except RuntimeError as err:  # gloo/NCCL report a dead or silent peer as RuntimeError
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GroupError(
            f"rank {rank} lost the trainer group in {name} ({first}); another rank died or "
            "timed out (distributed.timeout_s): under torchrun the group restarts from its last "
            "complete checkpoint"
        ) from err


def world_from_env(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(rank, world size) from torchrun's variables; (0, 1) outside torchrun."""
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
    except ValueError as err:
        raise ValueError(
            f"RANK={env.get('RANK')!r} / WORLD_SIZE={env.get('WORLD_SIZE')!r} are not integers "
            "(they are set by torchrun)"
        ) from err
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is not a rank of WORLD_SIZE={world} (set by torchrun)")
    return rank, world


def _store(world: int, timeout: datetime.timedelta) -> dist.Store | None:
    """The rendezvous store, keyed by torchrun's restart count: torchrun keeps its store
    across the restarts of a group, and the backend's keys (each rank's address) from a dead
    generation would otherwise be read by the next one, which then connects to dead peers
    (seen as gloo "Connection refused" and hangs in connectFullMesh). None outside torchrun's
    agent store: ``init_process_group`` then rendezvous through ``env://`` itself."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    client = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, False, timeout
    )
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"genrec/restart-{restart}", client)


@dataclass(frozen=True)
class Group:
    """This process's place in an initialised process group."""

    rank: int
    world: int
    device: torch.device  # where tensors of collectives live (cuda for nccl)

    @classmethod
    def join(cls, backend: str, device: str, timeout_s: float) -> Group:
        """Join the group torchrun started; ``backend`` "auto": nccl on cuda, else gloo."""
        rank, world = world_from_env()
        on_cuda = torch.device(device).type == "cuda"
        chosen = ("nccl" if on_cuda else "gloo") if backend == "auto" else backend
        if on_cuda:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
        if not dist.is_initialized():
            timeout = datetime.timedelta(seconds=timeout_s)
            dist.init_process_group(
                chosen, store=_store(world, timeout), rank=rank, world_size=world, timeout=timeout
            )
        where = (
            torch.device("cuda", torch.cuda.current_device()) if on_cuda else torch.device("cpu")
        )
        return cls(rank, world, where)

    def leave(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order."""
        out: list[Any] = [None] * self.world
        with _collective("all_gather", self.rank):
            dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank."""
        box = [obj if self.rank == src else None]
        with _collective("broadcast", self.rank):
            dist.broadcast_object_list(box, src=src)
        return box[0]

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks, in place (every rank gets the same bits)."""
        with _collective("all_reduce", self.rank):
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast_tensors_(self, tensors: list[torch.Tensor], src: int = 0) -> None:
        """Overwrite ``tensors`` with rank ``src``'s, in place."""
        with _collective("broadcast", self.rank):
            for tensor in tensors:
                dist.broadcast(tensor, src=src)

    def barrier(self) -> None:
        with _collective("barrier", self.rank):
            dist.barrier()
