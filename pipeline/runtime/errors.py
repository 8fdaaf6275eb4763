"""The error every command turns into one line per problem and exit status 2."""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid configuration: one ``where: key: problem`` line per problem."""

    def __init__(self, lines: str | list[str]) -> None:
        self.lines = [lines] if isinstance(lines, str) else list(lines)
        super().__init__("\n".join(self.lines))
