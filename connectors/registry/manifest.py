"""The registry's metadata documents: version manifests and alias records (JSON, pydantic).

A version directory is complete exactly when its ``manifest.json`` exists: the manifest is
written last, so its presence proves that every file it lists was fully written before.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from connectors.registry.errors import RegistryError

# Bump when a reader of the old format could misread the new one; readers refuse newer formats.
# 2: a version may be a delta (``delta_of``). Full versions are still written as 1, so that
# readers from before deltas keep reading them; they refuse a delta instead of misreading it.
FORMAT_VERSION = 2
FULL_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
# The model config a version holds (``publish(config=...)``).
CONFIG_NAME = "config.json"
# Alias records keep this many earlier targets and log entries (latest moves on every publish).
HISTORY_LIMIT = 100

# Always used with fullmatch: '$' would also match before a trailing newline ("prod\n"), and
# [0-9] rather than \d, which matches non-ASCII digits too.
_VERSION_DIR = re.compile(r"v([0-9]+)")
_VERSION_REF = re.compile(r"v?([0-9]+)")
_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
# One path component: never empty, '.', '..', hidden, absolute, nor containing '/', '\\',
# NUL or control characters.
_FILE_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.=+-]*")


def summarize(err: ValidationError) -> str:
    """A pydantic error on one line: ``field: problem; ...``."""
    problems = []
    for error in err.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "document"
        problems.append(f"{where}: {error['msg']}")
    return "; ".join(problems)


def version_dir_name(version: int) -> str:
    """``7`` -> ``"v000007"`` (zero-padded so that names sort like numbers up to 999999)."""
    return f"v{version:06d}"


def parse_version_dir(name: str) -> int | None:
    """``"v000007"`` -> ``7``; None for anything that is not a version directory."""
    match = _VERSION_DIR.fullmatch(name)
    return int(match.group(1)) if match else None


def parse_version_ref(ref: str | int) -> int | None:
    """A version given as ``7``, ``"7"`` or ``"v000007"``; None if ``ref`` is an alias name."""
    if isinstance(ref, int):
        return ref
    match = _VERSION_REF.fullmatch(ref)
    return int(match.group(1)) if match else None


def check_alias_name(alias: str) -> str:
    """Validate an alias name; version-like names are refused so refs stay unambiguous."""
    if not _ALIAS.fullmatch(alias) or _VERSION_REF.fullmatch(alias):
        raise RegistryError(
            f"invalid alias name {alias!r}: use a letter followed by up to 63 letters, digits, "
            "'_', '.' or '-', and not a version-like name such as 'v3'"
        )
    return alias


def check_file_name(name: str) -> str:
    """Validate an artefact name: a relative path of simple parts, not the manifest itself.

    Publish checks the names it is given and every reader checks the names it finds in a
    manifest, so no name can address anything outside its version directory.
    """
    parts = name.split("/")
    if name == MANIFEST_NAME or not all(_FILE_PART.fullmatch(part) for part in parts):
        raise RegistryError(
            f"invalid artefact name {name!r}: use '/'-separated parts of letters, digits, "
            f"'_', '.', '=', '+', '-' (not starting with '.' or '-'), and not {MANIFEST_NAME!r}"
        )
    return name


def check_file_names(names: Iterable[str]) -> list[str]:
    """Validate a version's artefact names, and that none is also used as a directory
    (``"a"`` and ``"a/b"`` cannot both be files)."""
    checked = sorted(check_file_name(name) for name in names)
    directories = {"/".join(n.split("/")[:i]) for n in checked for i in range(1, n.count("/") + 1)}
    clashes = sorted(directories.intersection(checked))
    if clashes:
        raise RegistryError(
            f"artefact names {clashes} are also used as directories of other artefacts; "
            "rename one of each pair"
        )
    return checked


def check_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Refuse NaN and infinities: JSON cannot represent them."""
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:
        raise ValueError(f"metrics must be finite numbers (JSON has no NaN/inf): {bad}")
    return metrics


def utc_now() -> datetime:
    return datetime.now(UTC)


class FileEntry(BaseModel):
    """Size and sha256 of one artefact of a version."""

    model_config = ConfigDict(frozen=True)

    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class DeltaLink(BaseModel):
    """A delta version's base: the version its files patch, and the sha256 of that version's
    manifest as it was when the delta was published (a replaced base breaks the link)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = Field(ge=1, strict=True)
    manifest_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Manifest(BaseModel):
    """Everything a reader needs to trust and interpret one immutable published version.

    Attributes:
        format_version: layout/format of this document (``FORMAT_VERSION`` when written).
        version: the version number (the directory is ``version_dir_name(version)``).
        parent: the version this one was trained from, if any.
        created_at: publication time (UTC).
        source_positions: next offset to read per source partition, covering exactly the
            events that produced these weights (``"topic:partition" -> offset``).
        watermark: event-time watermark (epoch seconds) of the state, if known.
        metrics: streaming metrics at publication time (finite floats).
        files: artefact name -> size and sha256.
        delta_of: for a delta version, the version whose state its files patch (its parent
            in the delta chain, which ends at a full version); None for a full version.
    """

    # Unknown fields from a newer writer of the same format version are ignored.
    model_config = ConfigDict(frozen=True, extra="ignore")

    format_version: int = FORMAT_VERSION
    version: int = Field(ge=1)
    parent: int | None = None
    created_at: datetime
    source_positions: dict[str, int] = Field(default_factory=dict)
    watermark: int | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    files: dict[str, FileEntry]
    delta_of: DeltaLink | None = None

    @field_validator("metrics")
    @classmethod
    def _finite_metrics(cls, metrics: dict[str, float]) -> dict[str, float]:
        return check_metrics(metrics)

    @field_validator("files")
    @classmethod
    def _safe_file_names(cls, files: dict[str, FileEntry]) -> dict[str, FileEntry]:
        # A manifest read from storage is untrusted: its names become paths on read and fetch.
        try:
            check_file_names(files)
        except RegistryError as err:
            raise ValueError(str(err)) from None
        return files

    @model_validator(mode="after")
    def _delta_format(self) -> Manifest:
        if self.delta_of is not None and self.format_version < FORMAT_VERSION:
            raise ValueError(f"a delta version's format_version must be {FORMAT_VERSION}")
        return self

    @property
    def name(self) -> str:
        return version_dir_name(self.version)

    @property
    def total_size(self) -> int:
        return sum(entry.size for entry in self.files.values())

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=2).encode()


class AliasMove(BaseModel):
    """One change of an alias's target, for the audit log."""

    model_config = ConfigDict(frozen=True)

    version: int
    action: Literal["publish", "promote", "rollback"]
    at: datetime


class AliasRecord(BaseModel):
    """An alias: its current target, the earlier targets rollback returns to, and a log.

    ``previous`` is a stack (most recent last): ``promote`` pushes the old target, ``rollback``
    pops it. ``history`` is append-only (capped at ``HISTORY_LIMIT``) and records every move.
    """

    model_config = ConfigDict(frozen=True)

    alias: str
    version: int
    previous: list[int] = Field(default_factory=list)
    history: list[AliasMove] = Field(default_factory=list)

    @field_validator("alias")
    @classmethod
    def _valid_alias(cls, alias: str) -> str:
        try:
            return check_alias_name(alias)
        except RegistryError as err:
            raise ValueError(str(err)) from None

    def moved_to(self, version: int, action: Literal["publish", "promote"]) -> AliasRecord:
        """This alias pointing at ``version``; the current target becomes rollback's target."""
        if version == self.version:
            return self
        return AliasRecord(
            alias=self.alias,
            version=version,
            previous=[*self.previous, self.version][-HISTORY_LIMIT:],
            history=_log(self.history, version, action),
        )

    def rolled_back(self) -> AliasRecord:
        """This alias pointing at its previous target again."""
        if not self.previous:
            raise RegistryError(
                f"alias {self.alias!r} (-> {version_dir_name(self.version)}) has no previous "
                "target to roll back to; use promote to point it at a version"
            )
        target = self.previous[-1]
        return AliasRecord(
            alias=self.alias,
            version=target,
            previous=self.previous[:-1],
            history=_log(self.history, target, "rollback"),
        )

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=2).encode()


def new_alias(alias: str, version: int, action: Literal["publish", "promote"]) -> AliasRecord:
    return AliasRecord(alias=alias, version=version, history=_log([], version, action))


def _log(
    history: list[AliasMove], version: int, action: Literal["publish", "promote", "rollback"]
) -> list[AliasMove]:
    return [*history, AliasMove(version=version, action=action, at=utc_now())][-HISTORY_LIMIT:]
