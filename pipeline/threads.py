"""genrec's CPU thread policy for torch: one intra-op and one inter-op thread unless asked.

torch's own default is one intra-op (OpenMP) thread per core. Every op then ends at a
barrier that waits for all of them, so when another process takes a core the op waits for
a descheduled thread: on a 2-core machine ``genrec train`` ran 3.1x slower than with one
thread beside one CPU-bound process, and 20-33x slower on a busy one (issue 23, item 12).
The trainers' ops are small (a micro-batch of a few hundred events), so on an idle machine
a second thread gains about 5%. One thread stays near the best setting whatever runs beside
it; more throughput comes from more processes (``train --workers``, Beam/Dask workers), each
with one thread. Figures and the benchmark (``bench/threads.py``): docs/benchmarks.md,
"Threads".

An explicit count (``--threads N``, ``train.threads``) wins, else ``OMP_NUM_THREADS`` in the
environment, the usual way to give every process of a host one setting.
"""

from __future__ import annotations

import contextlib
import os
import re

from pipeline.config import ConfigError

DEFAULT_THREADS = 1


def set_torch_threads(threads: int | None) -> None:
    """Apply the policy: ``threads`` intra-op threads when given (not None or 0), else
    ``OMP_NUM_THREADS``'s when that is set, else ``DEFAULT_THREADS``; one inter-op thread.
    ``ConfigError`` for a negative ``threads`` or an ``OMP_NUM_THREADS`` that is not a count."""
    import torch

    if threads is not None and threads < 0:
        raise ConfigError(f"--threads {threads}: give a count >= 1, or 0 for the default (1)")
    torch.set_num_threads(threads or _environment_threads() or DEFAULT_THREADS)
    if torch.get_num_interop_threads() != 1:
        # torch takes this once per process, before any inter-op work: a process that has
        # started its pool already (not genrec's own code) keeps it.
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)


def _environment_threads() -> int | None:
    """``OMP_NUM_THREADS`` as a count (None: not set). OpenMP only warns about a bad value
    and torch then takes one thread per core, the setting this policy avoids: refuse it."""
    text = os.environ.get("OMP_NUM_THREADS")
    if text is None:
        return None
    if not re.fullmatch(r"[0-9]+", text.strip()) or int(text) < 1:
        raise ConfigError(
            f"OMP_NUM_THREADS={text!r} is not a thread count: set a whole number >= 1, or "
            "unset it for genrec's default of one thread"
        )
    return int(text)
