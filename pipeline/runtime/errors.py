"""The error every command turns into one line per problem and exit status 2."""

from __future__ import annotations

from pathlib import Path


class ConfigError(ValueError):
    """An invalid configuration: one ``where: key: problem`` line per problem."""

    def __init__(self, lines: str | list[str]) -> None:
        self.lines = [lines] if isinstance(lines, str) else list(lines)
        super().__init__("\n".join(self.lines))


def check_output_directory(out: Path, holds: str) -> None:
    """``ConfigError`` unless ``--out`` can be a directory: neither a file nor under one
    (``holds``: what the directory gets, for the message). Checked before the work starts,
    not when its first file is written."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                where = "is a file" if path == out else f"lies under the file {path}"
                raise ConfigError(f"--out {out} {where}; give a directory ({holds})")
            return
