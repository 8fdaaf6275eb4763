"""Errors raised by the model registry; every message names the registry, version and file."""

from __future__ import annotations

from pipeline.stream import publishing


class RegistryError(publishing.PublishError):
    """Base class: something about the registry's contents or a request on it is wrong."""


class VersionNotFoundError(RegistryError, LookupError):
    """A version number or alias does not resolve to a complete, published version."""


class ChecksumError(RegistryError):
    """A stored file does not match the size or sha256 recorded in its manifest."""


class UnsafePathError(RegistryError):
    """A path below the registry root is a symlink or not a plain relative name: refused, so
    that nothing outside the root is ever read, written or deleted."""


class ConcurrentPublishError(RegistryError, publishing.ConcurrentPublishError):
    """Another writer moved ``latest`` (or holds the publish lock): this publish was refused
    before any version became visible."""
