"""Model registry: immutable versions with manifests, aliases, retention, checksums.

Works on a local directory or any pyarrow filesystem URI; see ``docs/registry.md``.
"""

from connectors.registry.errors import ChecksumError, RegistryError, VersionNotFoundError
from connectors.registry.manifest import AliasMove, AliasRecord, FileEntry, Manifest
from connectors.registry.registry import GcResult, Registry

__all__ = [
    "AliasMove",
    "AliasRecord",
    "ChecksumError",
    "FileEntry",
    "GcResult",
    "Manifest",
    "Registry",
    "RegistryError",
    "VersionNotFoundError",
]
