"""genrec's CPU thread policy for torch: as many intra-op threads as other processes leave
cores free, re-read while training, unless a count is given.

torch's own default is one intra-op (OpenMP) thread per core. Every op then ends at a
barrier that waits for all of them, so when another process takes a core the op waits for
a descheduled thread: on a 2-core machine ``genrec train`` ran 3.1x slower than with one
thread beside one CPU-bound process, and 20-33x slower on a busy one (issue 23, item 12).
One fixed thread avoids that but gives up the second core of an idle machine (1.37x fewer
events/s there). So the default follows the machine: each training step calls ``step()``,
which about once a second reads how much CPU the other processes used since the last look
(``/proc/stat`` less this process's own time, so our own spinning threads do not count) and
sets torch to the cores they left free, between 1 and torch's own default. A neighbour that
starts mid-run costs at most about a second at the old count. Off Linux (no ``/proc/stat``)
the default is one thread. Figures and the benchmark (``bench/threads.py``):
docs/benchmarks.md, "Threads".

An explicit count (``--threads N``, ``train.threads``) wins, else ``OMP_NUM_THREADS`` in the
environment, the usual way to give every process of a host one setting; either is fixed.
torch's thread count is a setting of the process, and so is this policy.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.runtime.errors import ConfigError

log = logging.getLogger(__name__)

FIRST_LOOK_S = 0.25  # the first decision comes soon: short runs matter too
LOOK_EVERY_S = 1.0
# A core counts as free when at least this much of it is (0.75 free: 2 threads on an idle
# 2-core machine with a little background work; a busy neighbour leaves one).
FREE_MARGIN = 0.25


@dataclass
class Sample:
    busy_s: float  # CPU seconds all processes used (all cores)
    own_s: float  # CPU seconds this process used (all its threads)
    at: float  # monotonic seconds


class FollowFreeCores:
    """Sets torch's intra-op threads to the cores other processes leave free (``sample``:
    the machine's and this process's CPU time now; tests give their own)."""

    def __init__(
        self,
        most: int,
        cores: int,
        sample: Callable[[], Sample | None] | None = None,
        first_look_s: float = FIRST_LOOK_S,
        look_every_s: float = LOOK_EVERY_S,
    ) -> None:
        self.most, self.cores, self.threads = most, cores, 1
        self.look_every_s = look_every_s
        self._sample = sample or machine_sample
        self._last = self._sample()
        self._due = time.monotonic() + first_look_s

    def step(self) -> None:
        now = time.monotonic()
        if now < self._due:
            return
        self._due = now + self.look_every_s
        sample = self._sample()
        last, self._last = self._last, sample
        if sample is None or last is None or sample.at <= last.at:
            return
        others = max(0.0, (sample.busy_s - last.busy_s) - (sample.own_s - last.own_s))
        free = self.cores - others / (sample.at - last.at)
        threads = max(1, min(self.most, int(free + FREE_MARGIN)))
        if threads != self.threads:
            import torch

            torch.set_num_threads(threads)
            log.debug("torch threads %d -> %d (%.2f cores free)", self.threads, threads, free)
            self.threads = threads


_policy: FollowFreeCores | None = None  # None: a fixed count


def set_torch_threads(threads: int | None) -> None:
    """Apply the policy: ``threads`` intra-op threads when given (not None or 0), else
    ``OMP_NUM_THREADS``'s when that is set, else one thread now and the free cores from the
    first ``step()`` on; one inter-op thread. ``ConfigError`` for a negative ``threads`` or
    an ``OMP_NUM_THREADS`` that is not a count."""
    global _policy
    import torch

    if threads is not None and threads < 0:
        raise ConfigError(
            f"--threads {threads}: give a count >= 1, or 0 for the default (the free cores)"
        )
    most = _torch_default()
    fixed = threads or _environment_threads()
    # off Linux its samples are None and it keeps the one thread set here
    _policy = None if fixed else FollowFreeCores(most, os.cpu_count() or 1)
    torch.set_num_threads(fixed or 1)
    if torch.get_num_interop_threads() != 1:
        # torch takes this once per process, before any inter-op work: a process that has
        # started its pool already (not genrec's own code) keeps it.
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)


def step() -> None:
    """Called once per training step (cheap): re-reads the free cores when it is time."""
    if _policy is not None:
        _policy.step()


@functools.cache
def _torch_default() -> int:
    """torch's own intra-op count before genrec first sets it (one per physical core of those
    this process may use): the most the policy takes."""
    import torch

    return max(1, torch.get_num_threads())


def machine_sample() -> Sample | None:
    """The machine's busy CPU seconds and this process's, now; None off Linux."""
    try:
        with open("/proc/stat", "rb") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    # user nice system idle iowait irq softirq steal (guest time is inside user)
    ticks = [int(v) for v in fields[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]
    own = os.times()
    return Sample(busy / os.sysconf("SC_CLK_TCK"), own.user + own.system, time.monotonic())


def _environment_threads() -> int | None:
    """``OMP_NUM_THREADS`` as a count (None: not set). OpenMP only warns about a bad value
    and torch then takes one thread per core, the setting this policy avoids: refuse it."""
    text = os.environ.get("OMP_NUM_THREADS")
    if text is None:
        return None
    if not re.fullmatch(r"[0-9]+", text.strip()) or int(text) < 1:
        raise ConfigError(
            f"OMP_NUM_THREADS={text!r} is not a thread count: set a whole number >= 1, or "
            "unset it for genrec's default (the free cores)"
        )
    return int(text)
