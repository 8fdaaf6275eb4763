"""Starting a trainer group: ``genrec train --workers N`` and each rank's own settings.

``--workers N`` runs torchrun in this process (``python -m torch.distributed.run --standalone
--nproc-per-node N --max-restarts R -m pipeline.cli train ...``, the same command a user runs
by hand on several machines, docs/trainer.md). torchrun restarts the whole group when a rank
dies; every rank then resumes the newest complete group checkpoint.

Running torchrun here, rather than in place of this process, lets ``genrec`` say how the group
ended in one line: on SIGTERM / SIGINT torchrun passes the signal to every rank, waits for
them (each takes the group's final checkpoint) and raises ``SignalException``, which torchrun
run by hand reports as a traceback and exit 1; here it is a clean stop, exit 0, once every
rank wrote its summary after its final checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from pipeline.runtime.stopping import SIGNALS
from pipeline.stream.config import TrainerConfig
from pipeline.stream.distributed.group import GroupError

log = logging.getLogger(__name__)


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


def run_torchrun(
    argv: Sequence[str], workers: int, cfg: TrainerConfig, stop: threading.Event
) -> int:
    """Run ``genrec <argv>`` (``--workers`` removed) on ``workers`` local ranks under
    torchrun until the group ends; 0 after a clean end or a clean stop on SIGTERM / SIGINT,
    ``GroupError`` (one line) otherwise."""
    if stop.is_set():  # signalled while starting: there is nothing to stop yet
        log.info("stopped before the trainer group started")
        return 0
    from torch.distributed.run import parse_args
    from torch.distributed.run import run as torchrun

    command = torchrun_command(argv, workers, cfg.distributed.max_restarts)
    # How long torchrun lets the ranks finish (their final checkpoint) after passing them a
    # signal, before it kills them; its default, 30 s, may be shorter than a checkpoint.
    os.environ.setdefault(
        "TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(math.ceil(cfg.distributed.timeout_s))
    )
    launched = time.time()
    # torchrun installs its own handlers (which raise SignalException) when it starts the
    # ranks; a signal before that must end the launch the same way, not set ``stop`` unseen.
    previous = {sig: signal.signal(sig, _raise_signal) for sig in SIGNALS}
    try:
        # torchrun makes a log directory in the system's temporary directory and leaves it
        # behind (empty: the ranks' output is not redirected); give it one that goes.
        with tempfile.TemporaryDirectory(prefix="genrec-torchrun-") as logs:
            torchrun(parse_args(["--log-dir", logs, *command[3:]]))
    except SignalException as err:
        unfinished = [r for r in range(workers) if not _finished_since(cfg, r, workers, launched)]
        if unfinished:
            raise GroupError(
                f"{err.sigval.name}: rank(s) {unfinished} of the trainer group did not finish "
                "cleanly (no summary written since the launch; see their lines above); the next "
                "start resumes from the last complete group checkpoint"
            ) from None
        log.info("%s: the trainer group stopped after its final checkpoint", err.sigval.name)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        raise GroupError(
            f"the trainer group failed: rank {rank} (pid {failure.pid}) exited with "
            f"{_exit_status(failure)} after {cfg.distributed.max_restarts} restart(s) "
            "(distributed.max_restarts); its error is in the lines above"
        ) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _raise_signal(signum: int, _frame: FrameType | None) -> None:
    sigval = signal.Signals(signum)
    raise SignalException(f"got {sigval.name}", sigval=sigval)


def _finished_since(cfg: TrainerConfig, rank: int, world: int, since: float) -> bool:
    """Whether ``rank`` wrote its summary (a rank's last act) since ``since``."""
    summary = Path(rank_config(cfg, rank, world).run_dir or "") / "summary.json"
    try:
        return summary.stat().st_mtime >= since
    except OSError:
        return False


def _exit_status(failure: ProcessFailure) -> str:
    if failure.exitcode < 0:
        return f"signal {failure.signal_name()}"
    return f"exit code {failure.exitcode}"


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
