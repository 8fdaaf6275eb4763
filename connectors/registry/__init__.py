"""Model registry: immutable versions with manifests, aliases, retention, checksums.

Works on a local directory or any pyarrow filesystem URI; see ``docs/registry.md``.
"""

from connectors.registry.errors import (
    ChecksumError,
    ConcurrentPublishError,
    RegistryError,
    UnsafePathError,
    VersionNotFoundError,
)
from connectors.registry.manifest import AliasMove, AliasRecord, FileEntry, Manifest
from connectors.registry.registry import UNCHECKED, GcResult, Registry

__all__ = [
    "UNCHECKED",
    "AliasMove",
    "AliasRecord",
    "ChecksumError",
    "ConcurrentPublishError",
    "FileEntry",
    "GcResult",
    "Manifest",
    "Registry",
    "RegistryError",
    "UnsafePathError",
    "VersionNotFoundError",
]
