"""Run genrec's CLI entry point (``pipeline.cli.main``, what ``python -m pipeline.cli`` runs)
once per run listed in a JSON file, in one interpreter: ``python cli_runs.py RUNS.json``.

RUNS.json is a list of ``{"cwd": DIR, "argv": [...], "env": {...}}``; each run's stdout and
stderr go to ``DIR/stdout-N`` / ``DIR/stderr-N`` and its exit code to ``DIR/rc-N`` (N its
index). An exception escaping ``main`` is written to that stderr as Python would print it
(a "Traceback"), exit code 1. One interpreter for many runs: torch and Beam load once, so a
few dozen crafted inputs cost seconds, not a minute of imports.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import traceback
from pathlib import Path


def run(index: int, cwd: Path, argv: list[str], env: dict[str, str]) -> None:
    from pipeline.cli import main

    saved = dict(os.environ)
    os.environ.update(env)
    os.chdir(cwd)
    logging.root.handlers.clear()  # main's basicConfig binds the handler to this run's stderr
    with (
        open(cwd / f"stdout-{index}", "w") as out,
        open(cwd / f"stderr-{index}", "w") as err,
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            rc = main(argv)
        except SystemExit as exit_:
            rc = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException:
            traceback.print_exc()
            rc = 1
    (cwd / f"rc-{index}").write_text(str(rc))
    os.environ.clear()
    os.environ.update(saved)


def outcome(cwd: Path, index: int) -> tuple[int, str, str]:
    """Run ``index``'s exit code, stdout and stderr, as ``run`` left them in ``cwd``."""
    return (
        int((cwd / f"rc-{index}").read_text()),
        (cwd / f"stdout-{index}").read_text(),
        (cwd / f"stderr-{index}").read_text(),
    )


def error_lines(stderr: str) -> list[str]:
    """genrec's one-line errors in a run's stderr."""
    return [
        line for line in stderr.splitlines() if line.startswith("genrec ") and ": error: " in line
    ]


if __name__ == "__main__":
    for number, spec in enumerate(json.loads(Path(sys.argv[1]).read_text())):
        run(number, Path(spec["cwd"]), spec["argv"], spec.get("env", {}))
