"""Errors raised by the model registry; every message names the registry, version and file."""

from __future__ import annotations


class RegistryError(Exception):
    """Base class: something about the registry's contents or a request on it is wrong."""


class VersionNotFoundError(RegistryError, LookupError):
    """A version number or alias does not resolve to a complete, published version."""


class ChecksumError(RegistryError):
    """A stored file does not match the size or sha256 recorded in its manifest."""
