"""``snapshot(directory)``: every entry below a directory, to prove that code left it alone."""

from __future__ import annotations

import os
from pathlib import Path


def snapshot(directory: Path) -> dict[str, object]:
    """Every entry below ``directory`` (symlinks not followed) with its content or target."""
    found: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(directory):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(directory))
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                found[rel] = ("dir",)
            else:
                found[rel] = ("file", path.read_bytes(), path.stat().st_mtime_ns)
    return found
