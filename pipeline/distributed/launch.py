"""Starting a trainer group: ``genrec train --workers N`` and each rank's own settings.

``--workers N`` replaces the process with torchrun (``python -m torch.distributed.run
--standalone --nproc-per-node N --max-restarts R -m pipeline.cli train ...``), the same
command a user runs by hand on several machines (docs/trainer.md). torchrun restarts the
whole group when a rank dies; every rank then resumes the newest complete group checkpoint.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.config import TrainerConfig


def torchrun_command(
    argv: Sequence[str], workers: int, max_restarts: int, python: str = sys.executable
) -> list[str]:
    """The torchrun command that runs ``genrec <argv>`` (``--workers`` removed) on
    ``workers`` local ranks."""
    rest: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            rest.append(arg)
    return [
        python, "-m", "torch.distributed.run", "--standalone",
        "--nproc-per-node", str(workers), "--max-restarts", str(max_restarts),
        "-m", "pipeline.cli", *rest,
    ]  # fmt: skip


def exec_torchrun(argv: Sequence[str], workers: int, max_restarts: int) -> None:
    """Replace this process with torchrun (signals then reach torchrun directly)."""
    command = torchrun_command(argv, workers, max_restarts)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)


def _per_rank(path: str | None, rank: int) -> str | None:
    """``a/b.jsonl`` -> ``a/b.rank-1.jsonl``: one file per rank where a setting names one."""
    if path is None:
        return None
    p = Path(path)
    return str(p.with_name(f"{p.stem}.rank-{rank}{p.suffix}"))


def rank_config(cfg: TrainerConfig, rank: int, world: int) -> TrainerConfig:
    """This rank's settings: its own run directory (logs, dead letters, summary), metrics
    port (``port + rank``) and audit files, and its share of the group's micro-batch
    (``train.batch_events`` is the group's step, as for one trainer: the same events per
    optimizer step whatever the world size); everything else is the group's."""
    obs = cfg.observability
    observability = obs.model_copy(
        update={
            "prometheus_port": obs.prometheus_port + rank if obs.prometheus_port else 0,
            "metrics_log": _per_rank(obs.metrics_log, rank),
            "targets_log": _per_rank(obs.targets_log, rank),
        }
    )
    dead_letter = cfg.dead_letter.model_copy(update={"path": _per_rank(cfg.dead_letter.path, rank)})
    share = -(-cfg.train.batch_events // world)
    assert cfg.run_dir is not None  # set by the config's validator
    return cfg.model_copy(
        update={
            "run_dir": str(Path(cfg.run_dir) / f"rank-{rank}"),
            "observability": observability,
            "dead_letter": dead_letter,
            "train": cfg.train.model_copy(update={"batch_events": share}),
        }
    )
