"""The model registry: immutable numbered versions, movable aliases, retention, checksums.

Layout under the registry root (any pyarrow filesystem)::

    registry.json                 marker: this directory is a registry (format version)
    models/<name>/                one named model (e.g. a training run): its own versions,
                                  aliases and writer lock, laid out as below
    versions/v000001/...          the model named "default" (every registry before model
                                  names held only this one, at the root): artefacts of
                                  version 1 (weights, vocabulary, config.json, ...)
    versions/v000001/manifest.json  written LAST: the version exists iff this file exists
    versions/v000002/.publishing  marker of a publish in progress (host, pid, start time)
    aliases/latest.json           alias records, each replaced atomically
    aliases/.publish.lock         the writer lock, held through a publish, an alias move or gc

A ``Registry`` object is one model of a registry root (``Registry.open(uri, model=NAME)``).

A version is full, or a delta on an older version of the same model (``publish(delta_of=)``,
``Manifest.delta_of``): readers resolve its chain with ``chain`` (every link verified, as for
delta checkpoints: ``pipeline.stream.chain``) and ``gc`` keeps every kept version's chain.

Every name read from storage (version directories, manifest file keys, alias files) is
validated before it becomes a path, and no symlink below the root is followed (see
storage.py), so reads, fetches and gc never leave the root or the destination.

See docs/registry.md for the guarantees and the single-publisher rule.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow.fs as pafs
from pydantic import ValidationError

from connectors.registry.errors import (
    ChecksumError,
    ConcurrentPublishError,
    RegistryError,
    UnsafePathError,
    VersionNotFoundError,
)
from connectors.registry.lock import WriterLock
from connectors.registry.manifest import (
    CONFIG_NAME,
    FORMAT_VERSION,
    FULL_FORMAT_VERSION,
    MANIFEST_NAME,
    AliasRecord,
    DeltaLink,
    FileEntry,
    Manifest,
    check_alias_name,
    check_file_name,
    check_file_names,
    check_metrics,
    new_alias,
    parse_version_dir,
    parse_version_ref,
    summarize,
    utc_now,
    version_dir_name,
)
from connectors.registry.storage import Storage, filesystem_from_uri
from pipeline.runtime.runlock import process_alive
from pipeline.stream.chain import MAX_CHAIN, Link, follow, with_parents
from pipeline.stream.publishing import DEFAULT_MAX_VOCAB_BYTES, PublishedModel

log = logging.getLogger(__name__)

MARKER_NAME = "registry.json"
MODELS_DIR = "models"
# The model stored at the root: a registry written before model names has only this one.
DEFAULT_MODEL = "default"
# registry.json's format: 1, one model at the root; 2, named models under models/ (a reader
# of format 1 would not see them, so it must refuse the registry).
REGISTRY_FORMAT = 2
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
PUBLISHING_NAME = ".publishing"
LATEST = "latest"
# A partial version or writer lock from another host (whose process we cannot probe) is
# abandoned after this.
DEFAULT_GRACE_S = 3600.0
# How long a writer waits for another writer's publish or alias move to finish.
LOCK_TIMEOUT_S = 120.0


class _Unchecked:
    def __repr__(self) -> str:
        return "UNCHECKED"


# ``publish(expect_latest=UNCHECKED)``: move latest without comparing it first.
UNCHECKED: Any = _Unchecked()


@dataclass(frozen=True, slots=True)
class GcResult:
    """What ``gc`` removed (or would remove, with ``dry_run``)."""

    removed: tuple[int, ...]  # complete versions beyond retention
    partial: tuple[int, ...]  # abandoned incomplete versions (crashed publishes)
    dry_run: bool


class Registry:
    """One model of a model registry rooted at one directory of a pyarrow filesystem.

    Publish two versions, pin the first under an alias, then see a compare-and-set publish
    refused because ``latest`` is not where the writer expected it:

    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> registry = Registry.open(tmp.name, create=True)
    >>> registry.publish({"weights.bin": b"one"}, metrics={"ndcg@10": 0.25}).version
    1
    >>> registry.publish({"weights.bin": b"two"}, parent=1, expect_latest=1).version
    2
    >>> registry.latest_version(), registry.read_file("latest", "weights.bin")
    (2, b'two')
    >>> registry.promote(1, "stable").version, registry.show("stable").metrics
    (1, {'ndcg@10': 0.25})
    >>> registry.publish({"weights.bin": b"three"}, expect_latest=1)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    connectors.registry.errors.ConcurrentPublishError: ... points to v000002 but this writer expected v000001, ...
    >>> [m.version for m in registry.list_versions()]
    [1, 2]
    >>> tmp.cleanup()
    """

    def __init__(
        self, fs: pafs.FileSystem, root: str, *, model: str | None = None, create: bool = False
    ) -> None:
        """Open model ``model`` of the registry at ``root`` of ``fs``.

        Args:
            fs: any pyarrow filesystem (local, SubTree, S3, GCS, HDFS).
            root: the registry directory within ``fs``.
            model: the model's name; None: the registry's only model (``default`` when it has
                none yet), and an error naming the models when it has several.
            create: create an empty registry (and model) if there is none; otherwise a
                missing registry or model is an error (so a mistyped URI or name does not
                look like an empty registry).
        """
        self._root = Storage(fs, root)
        if self._root.exists(MARKER_NAME):
            registry_format = self._check_marker()
        elif create:
            self._root.make_dirs("")
            registry_format = REGISTRY_FORMAT
            self._write_marker()
        else:
            raise RegistryError(
                f"no registry at {self._root.describe()}: {MARKER_NAME} not found (check "
                "--registry / GENREC_REGISTRY; the trainer creates the registry on its first "
                "publish)"
            )
        self.model = self._pick_model(model, create)
        if self.model == DEFAULT_MODEL:
            self._store = self._root
        else:
            self._store = self._root.child(f"{MODELS_DIR}/{self.model}")
            if create:
                if registry_format < REGISTRY_FORMAT:
                    self._write_marker()  # readers that know only the root model refuse it now
                self._store.make_dirs("")

    @classmethod
    def open(
        cls, uri: str | os.PathLike[str], *, model: str | None = None, create: bool = False
    ) -> Registry:
        """Open a registry's model by local path, ``file://`` URI or pyarrow URI (s3://, ...)."""
        fs, root = filesystem_from_uri(uri)
        return cls(fs, root, model=model, create=create)

    @property
    def location(self) -> str:
        return self._store.describe()

    def models(self) -> list[str]:
        """The names of the registry's models, sorted (``default``: the root's versions)."""
        names = []
        # list_dir leaves out symlinks (with a warning): a planted one is no model
        top = {i.base_name for i in self._root.list_dir("") if i.type == pafs.FileType.Directory}
        if top & {"versions", "aliases"}:
            names.append(DEFAULT_MODEL)
        for info in self._root.list_dir(MODELS_DIR) if MODELS_DIR in top else []:
            if info.type != pafs.FileType.Directory:
                continue
            try:
                names.append(check_model_name(info.base_name))
            except RegistryError as err:
                log.warning("ignoring %s: not a model directory (%s)", info.path, err)
        return sorted(set(names))

    def _pick_model(self, model: str | None, create: bool) -> str:
        names = self.models()
        if model is None:
            if len(names) > 1:
                raise RegistryError(
                    f"registry {self._root.describe()} holds several models: "
                    f"{', '.join(names)}; choose one with --model NAME"
                )
            return names[0] if names else DEFAULT_MODEL
        check_model_name(model)
        if not create and model not in names and not (model == DEFAULT_MODEL and not names):
            raise VersionNotFoundError(
                f"no model {model!r} in registry {self._root.describe()} (its models: "
                f"{', '.join(names) or 'none yet'})"
            )
        return model

    # -- publishing --------------------------------------------------------------------------

    def publish(
        self,
        files: Mapping[str, bytes | Path],
        *,
        parent: int | None = None,
        source_positions: Mapping[str, int] | None = None,
        watermark: int | None = None,
        metrics: Mapping[str, float] | None = None,
        config: Mapping[str, Any] | None = None,
        expect_latest: int | object | None = UNCHECKED,
        lock_timeout_s: float = LOCK_TIMEOUT_S,
        delta_of: int | None = None,
    ) -> Manifest:
        """Publish a new immutable version and move ``latest`` to it.

        The whole publish holds the registry's writer lock (``aliases/.publish.lock``), so
        the ``expect_latest`` check and the move of ``latest`` are atomic against other
        writers on local disks (best effort on object stores, see docs/registry.md).

        Args:
            files: artefact name -> content (bytes, or a local file to copy). Names may contain
                '/' for sub-directories.
            parent: the published version these weights were trained from, if any.
            source_positions: next offset to read per source partition for this state.
            watermark: event-time watermark (epoch seconds) of this state.
            metrics: finite streaming metrics to record.
            config: model/trainer configuration, stored as the artefact ``config.json``.
            expect_latest: left out (``UNCHECKED``), nothing is compared: the publish moves
                ``latest`` to the new version wherever it points now, even where another
                writer moved it since this one last looked. Given, it is a compare-and-set:
                the version ``latest`` must point to now (None: no ``latest`` yet), else
                ``ConcurrentPublishError`` is raised before any version is claimed. Either
                way an unreadable ``aliases/latest.json`` does not stop the publish (nor is
                it compared): it is replaced by a fresh record (its rollback stack is lost),
                with a warning.
            lock_timeout_s: how long to wait for another writer's lock.
            delta_of: ``files`` patch this version (a delta: what changed since it; readers
                apply the chain, see ``chain``) instead of standing alone. Its chain must
                verify, and the link records the sha256 of its manifest.

        Returns:
            The manifest of the new version. Until its manifest is written the version is
            invisible; on any failure the partial directory is removed (or left for ``gc``
            if the process dies).
        """
        artefacts: dict[str, bytes | Path] = {check_file_name(n): src for n, src in files.items()}
        if config is not None:
            if CONFIG_NAME in artefacts:
                raise RegistryError(f"pass the config either as config= or as {CONFIG_NAME!r}")
            artefacts[CONFIG_NAME] = json.dumps(dict(config), indent=2, sort_keys=True).encode()
        if not artefacts:
            raise RegistryError("nothing to publish: files is empty and no config was given")
        check_file_names(artefacts)
        if parent is not None:
            self._check_parent(parent)
        checked_metrics = check_metrics({k: float(v) for k, v in (metrics or {}).items()})
        with self._writer_lock(lock_timeout_s):
            latest, readable = self._latest_record_for_publish()
            if expect_latest is not UNCHECKED:
                self._check_expected_latest(latest, readable, expect_latest)
            link = None if delta_of is None else self._delta_link(delta_of)
            manifest = self._publish_locked(
                artefacts, parent, source_positions, watermark, checked_metrics, link
            )
            self._store.make_dirs("aliases")
            record = (
                new_alias(LATEST, manifest.version, "publish")
                if latest is None
                else latest.moved_to(manifest.version, "publish")
            )
            self._store.atomic_write(_alias_path(LATEST), record.to_json())
        log.info("published %s to %s (%d files)", manifest.name, self.location, len(manifest.files))
        return manifest

    def _check_parent(self, parent: int) -> None:
        try:
            self.show(parent)
        except VersionNotFoundError as err:
            raise VersionNotFoundError(
                f"{err}; the parent of a publish must be a version of model {self.model!r}: a "
                "trainer resuming a checkpoint that published to another model (or to a "
                "registry from before model names: 'default') sets registry.model to that "
                "model, or starts afresh (--no-resume)"
            ) from None

    def _delta_link(self, base: int) -> DeltaLink:
        """The link of a new delta on ``base``, whose chain must verify and leave room for
        one more link (under the writer lock: gc cannot remove the chain meanwhile)."""
        links = self.chain(base)
        if len(links) > MAX_CHAIN:
            raise RegistryError(
                f"{version_dir_name(base)} in {self.location} ends a chain of {len(links)} "
                f"versions: publish a full version (chains stop at {MAX_CHAIN})"
            )
        raw, _ = self._manifest_raw(base)
        return DeltaLink(version=base, manifest_sha256=_sha256(raw))

    def latest_version(self) -> int | None:
        """The version ``latest`` points to; None when there is none yet, and (with a
        warning) when ``aliases/latest.json`` cannot be read."""
        try:
            return self.alias(LATEST).version
        except VersionNotFoundError:
            return None
        except RegistryError as err:
            log.warning("cannot tell which version 'latest' points to: %s", err)
            return None

    def _latest_record_for_publish(self) -> tuple[AliasRecord | None, bool]:
        """``latest``'s record (None if there is none) and whether it was readable. A damaged
        alias file is warned about and replaced: it must not stop the trainer publishing."""
        try:
            return self.alias(LATEST), True
        except VersionNotFoundError:
            return None, True
        except UnsafePathError:
            raise  # a planted symlink is never written through or silently replaced
        except RegistryError as err:
            log.warning(
                "%s is unreadable (%s); this publish starts a fresh 'latest' record "
                "(its rollback stack and history are lost)",
                self._store.describe(_alias_path(LATEST)),
                err,
            )
            return None, False

    def _check_expected_latest(
        self, latest: AliasRecord | None, readable: bool, expected: object
    ) -> None:
        if not readable:
            log.warning(
                "publishing to %s without checking expect_latest=%s: 'latest' is unreadable",
                self.location,
                expected,
            )
            return
        current = None if latest is None else latest.version
        if current != expected:
            raise ConcurrentPublishError(
                f"refusing to publish to {self.location}: 'latest' points to "
                f"{_describe_version(current)} but this writer expected "
                f"{_describe_version(expected)}, so another writer moved it since (another "
                "trainer publishing, or a promote/rollback of 'latest'); run only one trainer per "
                "registry, or give each trainer its own registry (after a deliberate rollback, "
                "restart the trainer)"
            )

    def _publish_locked(
        self,
        artefacts: Mapping[str, bytes | Path],
        parent: int | None,
        source_positions: Mapping[str, int] | None,
        watermark: int | None,
        checked_metrics: dict[str, float],
        delta_of: DeltaLink | None,
    ) -> Manifest:
        version = self._claim_version()
        vdir = _vdir(version)
        try:
            self._store.write(f"{vdir}/{PUBLISHING_NAME}", _publisher_marker())
            entries = {}
            for name in sorted(artefacts):
                written = self._store.write(f"{vdir}/{name}", artefacts[name])
                entries[name] = FileEntry(size=written.size, sha256=written.sha256)
            manifest = Manifest(
                format_version=FULL_FORMAT_VERSION if delta_of is None else FORMAT_VERSION,
                delta_of=delta_of,
                version=version,
                parent=parent,
                created_at=utc_now(),
                source_positions=dict(source_positions or {}),
                watermark=watermark,
                metrics=checked_metrics,
                files=entries,
            )
            # The publication point: one atomic write makes the whole version visible.
            self._store.atomic_write(f"{vdir}/{MANIFEST_NAME}", manifest.to_json())
        except BaseException:
            self._discard_partial(version)
            raise
        with suppress(OSError):  # the version is published; a stale marker is harmless
            self._store.delete_file(f"{vdir}/{PUBLISHING_NAME}")
        return manifest

    @contextmanager
    def _writer_lock(self, timeout_s: float) -> Iterator[None]:
        lock = WriterLock(self._store, grace_s=DEFAULT_GRACE_S, timeout_s=timeout_s)
        lock.acquire()
        try:
            yield
        finally:
            try:
                lock.release()
            except OSError as err:
                log.warning(
                    "could not release the writer lock of %s (%s); the next writer breaks it "
                    "once this process has exited",
                    self.location,
                    err,
                )

    def _claim_version(self) -> int:
        """Take the next version number; partial directories count, so numbers never repeat
        while a crashed publish's leftovers exist."""
        self._store.make_dirs("versions")
        taken = [n for n in (parse_version_dir(i.base_name) for i in self._version_dirs()) if n]
        version = max(taken, default=0) + 1
        while not self._store.claim_dir(_vdir(version)):
            version += 1  # another publisher took it between listing and claiming
        return version

    def _discard_partial(self, version: int) -> None:
        try:
            self._store.delete_dir(_vdir(version))
        except OSError as err:
            log.warning(
                "could not remove partial %s in %s after a failed publish (%s); "
                "it stays invisible and 'genrec registry gc' removes it",
                version_dir_name(version),
                self.location,
                err,
            )

    # -- reading -----------------------------------------------------------------------------

    def list_versions(self) -> list[Manifest]:
        """Manifests of all complete versions, oldest first. Partial versions are skipped;
        a version whose manifest cannot be read is skipped with a warning."""
        manifests = []
        for version in self._complete_versions():
            try:
                manifests.append(self._manifest(version))
            except RegistryError as err:
                log.warning("skipping unreadable version: %s", err)
        return manifests

    def show(self, ref: str | int) -> Manifest:
        """The manifest of a version given by number (``3``, ``"v000003"``) or alias."""
        return self._manifest(self.resolve(ref))

    def chain(self, ref: str | int) -> list[Manifest]:
        """The manifests a version's state is made of: a full version first, then each delta
        on it in order, ``ref``'s last (``[ref's]`` for a full version). Every link is
        verified (``pipeline.stream.chain.follow``: an older parent of this model whose
        manifest hashes to what the link recorded); a damaged link is a ``RegistryError``.
        Files are not read here: ``read_file`` verifies each as it is read."""
        version = self.resolve(ref)
        _, manifest = self._manifest_raw(version)

        def load(number: int) -> tuple[bytes, Manifest, Link | None]:
            raw, parent = self._manifest_raw(number)
            return raw, parent, _link(parent)

        try:
            parents = follow(version, _link(manifest), load, version_dir_name, RegistryError)
        except RegistryError as err:  # the message starts with the delta's version
            raise RegistryError(
                f"{self.location}: {err}; load an older version (e.g. 'genrec registry "
                "rollback latest') or publish a full one"
            ) from None
        return [*parents, manifest]

    def resolve(self, ref: str | int) -> int:
        """Version number for a number, ``vNNNNNN`` name or alias name."""
        version = parse_version_ref(ref)
        if version is not None:
            return version
        record = self.alias(str(ref))
        return record.version

    def load_version(
        self, ref: str | int, max_vocab_bytes: int = DEFAULT_MAX_VOCAB_BYTES
    ) -> PublishedModel:
        """Version ``ref`` ready to score, every file verified and parsed as untrusted
        (``connectors.registry.published``); ``RegistryError`` otherwise."""
        from connectors.registry.published import load_version  # torch: only to score

        return load_version(self, ref, max_vocab_bytes)

    def read_file(self, ref: str | int, name: str) -> bytes:
        """The verified content of one artefact; ``ChecksumError`` if it was altered."""
        manifest = self.show(ref)
        entry = _entry(manifest, check_file_name(name), self.location)
        rel = f"{_vdir(manifest.version)}/{name}"
        data = self._read(rel, manifest)
        _verify(self._store.describe(rel), entry, len(data), _sha256(data))
        return data

    def fetch(self, ref: str | int, dest_dir: str | os.PathLike[str]) -> Path:
        """Copy a version (artefacts and manifest) into a new local directory, verified.

        The copy is assembled next to ``dest_dir`` and renamed into place, so ``dest_dir``
        appears complete or not at all. ``dest_dir`` must not exist or be an empty directory.
        Every file is created new inside that fresh directory (validated names, no symlink
        followed), so nothing outside ``dest_dir`` is written.
        """
        manifest = self.show(ref)
        dest = Path(dest_dir)
        if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
            raise RegistryError(
                f"fetch destination {dest} exists and is not an empty directory (or is a symlink)"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            for name, entry in manifest.files.items():
                rel = f"{_vdir(manifest.version)}/{name}"
                target = _inside(tmp, check_file_name(name))
                target.parent.mkdir(parents=True, exist_ok=True)
                digest, size = hashlib.sha256(), 0
                with _create_new(target) as out:
                    for chunk in self._chunks(rel, manifest):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                _verify(self._store.describe(rel), entry, size, digest.hexdigest())
            (tmp / MANIFEST_NAME).write_bytes(manifest.to_json())
            if dest.exists():
                dest.rmdir()
            tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return dest

    def _manifest(self, version: int) -> Manifest:
        return self._manifest_raw(version)[1]

    def _manifest_raw(self, version: int) -> tuple[bytes, Manifest]:
        """A version's manifest as stored (its bytes, which a delta's link hashes) and parsed."""
        rel = f"{_vdir(version)}/{MANIFEST_NAME}"
        where = self._store.describe(rel)
        try:
            raw = self._store.read_bytes(rel)
        except FileNotFoundError:
            raise VersionNotFoundError(
                f"{version_dir_name(version)} is not a published version in {self.location} "
                "(never published, removed by gc, or its publish did not finish)"
            ) from None
        try:
            manifest = Manifest.model_validate_json(raw)
        except ValidationError as err:
            raise RegistryError(f"{where}: invalid manifest: {summarize(err)}") from err
        if manifest.format_version > FORMAT_VERSION:
            raise RegistryError(
                f"{where}: manifest format {manifest.format_version} is newer than this reader "
                f"supports ({FORMAT_VERSION}); upgrade genrec"
            )
        if manifest.version != version:
            raise RegistryError(f"{where}: manifest says version {manifest.version}")
        return raw, manifest

    def _read(self, rel: str, manifest: Manifest) -> bytes:
        try:
            return self._store.read_bytes(rel)
        except FileNotFoundError:
            raise self._missing(rel, manifest) from None
        except OSError as err:  # e.g. a directory where the manifest lists a file
            raise RegistryError(f"{self._store.describe(rel)}: cannot read it: {err}") from err

    def _chunks(self, rel: str, manifest: Manifest) -> Iterator[bytes]:
        try:
            yield from self._store.iter_chunks(rel)
        except FileNotFoundError:
            raise self._missing(rel, manifest) from None
        except OSError as err:
            raise RegistryError(f"{self._store.describe(rel)}: cannot read it: {err}") from err

    def _missing(self, rel: str, manifest: Manifest) -> RegistryError:
        return RegistryError(
            f"{self._store.describe(rel)} is listed in the manifest of {manifest.name} but "
            "missing (the version was removed by gc while being read, or damaged)"
        )

    def _version_dirs(self) -> list[pafs.FileInfo]:
        # list_dir leaves out symlinks and unsafe names (with a warning): never followed.
        infos = self._store.list_dir("versions")
        return [
            i
            for i in infos
            if i.type == pafs.FileType.Directory and parse_version_dir(i.base_name) is not None
        ]

    def _all_versions(self) -> dict[int, bool]:
        """Every version directory -> whether it is complete (has a manifest), sorted."""
        found = {}
        for info in self._version_dirs():
            version = parse_version_dir(info.base_name)
            assert version is not None
            if info.base_name != version_dir_name(version):
                # e.g. "v1" next to "v000001": not a directory publish wrote, never touched.
                log.warning("ignoring %s: not a version directory name", info.path)
                continue
            try:
                found[version] = self._store.exists(f"{_vdir(version)}/{MANIFEST_NAME}")
            except UnsafePathError as err:
                log.warning("ignoring %s: %s", version_dir_name(version), err)
        return dict(sorted(found.items()))

    def _complete_versions(self) -> list[int]:
        return [v for v, complete in self._all_versions().items() if complete]

    # -- aliases -----------------------------------------------------------------------------

    def aliases(self) -> dict[str, AliasRecord]:
        """All aliases by name."""
        records = {}
        for name in self._alias_names():
            records[name] = self.alias(name)
        return dict(sorted(records.items()))

    def alias(self, alias: str) -> AliasRecord:
        """One alias's record (target, rollback stack, history)."""
        rel = _alias_path(check_alias_name(alias))
        try:
            raw = self._store.read_bytes(rel)
        except FileNotFoundError:
            raise VersionNotFoundError(
                f"no alias {alias!r} in {self.location} (existing: {sorted(self._alias_names())})"
            ) from None
        try:
            record = AliasRecord.model_validate_json(raw)
        except ValidationError as err:
            raise RegistryError(
                f"{self._store.describe(rel)}: invalid alias record: {summarize(err)}"
            ) from err
        if record.alias != alias:
            raise RegistryError(
                f"{self._store.describe(rel)}: the record is for alias {record.alias!r}, not "
                f"{alias!r} (file renamed or damaged); promote {alias!r} again to repair it"
            )
        return record

    def promote(self, ref: str | int, alias: str) -> AliasRecord:
        """Point ``alias`` at a version (number or another alias); creates the alias if new."""
        check_alias_name(alias)
        # Read-modify-write under the writer lock: atomic against publish moving latest.
        with self._writer_lock(LOCK_TIMEOUT_S):
            version = self.show(ref).version
            try:
                record = self.alias(alias).moved_to(version, "promote")
            except VersionNotFoundError:
                record = new_alias(alias, version, "promote")
            self._store.make_dirs("aliases")
            self._store.atomic_write(_alias_path(alias), record.to_json())
        return record

    def rollback(self, alias: str) -> AliasRecord:
        """Point ``alias`` back at its previous target."""
        with self._writer_lock(LOCK_TIMEOUT_S):
            record = self.alias(alias).rolled_back()
            self._manifest(record.version)  # refuses a target that is no longer published
            self._store.atomic_write(_alias_path(alias), record.to_json())
        return record

    def _alias_names(self) -> list[str]:
        """Names of the alias files; files that are not ``<valid alias>.json`` are ignored
        with a warning (list_dir already leaves out symlinks)."""
        names = []
        for info in self._store.list_dir("aliases"):
            name = info.base_name
            if name.startswith(".") or info.type != pafs.FileType.File:
                continue  # the writer lock and atomic_write's temporary files
            alias = name.removesuffix(".json")
            try:
                if alias == name:
                    raise RegistryError(f"{name!r} has no .json suffix")
                names.append(check_alias_name(alias))
            except RegistryError as err:
                log.warning("ignoring %s: not an alias file (%s)", info.path, err)
        return names

    # -- retention ---------------------------------------------------------------------------

    def gc(
        self,
        keep: int,
        *,
        dry_run: bool = False,
        grace_s: float = DEFAULT_GRACE_S,
        lock_timeout_s: float = LOCK_TIMEOUT_S,
    ) -> GcResult:
        """Remove complete versions beyond the newest ``keep`` and abandoned partial ones.

        Never removes an alias's current or previous target (so one rollback always works),
        nor one an alias is moved to while gc runs: gc holds the writer lock, as alias moves do.
        Nor does it remove a version the delta chain of a kept one needs (its base, and that
        one's, back to a full version): every kept version still loads.
        A partial version is abandoned when its publisher's process is gone (same host) or it
        started more than ``grace_s`` seconds ago (other hosts, object stores).
        """
        if keep < 1:
            raise RegistryError(f"gc keep must be >= 1, got {keep}")
        if dry_run:
            removed, partial = self._gc_plan(keep, grace_s)
            return GcResult(removed=removed, partial=partial, dry_run=True)
        # Under the writer lock, plan and deletions alike: an alias moved by a promote,
        # rollback or publish between the plan and a deletion would point at a deleted
        # version. gc therefore waits for a running publish (up to lock_timeout_s).
        with self._writer_lock(lock_timeout_s):
            removed, partial = self._gc_plan(keep, grace_s)
            for version in removed:
                # Manifest first: from that instant readers see the version as gone, never
                # as a version with missing files.
                self._store.delete_file(f"{_vdir(version)}/{MANIFEST_NAME}")
                self._store.delete_dir(_vdir(version))
            for version in partial:
                self._store.delete_dir(_vdir(version))
            self._remove_stale_temp_files(grace_s)
        return GcResult(removed=removed, partial=partial, dry_run=False)

    def _gc_plan(self, keep: int, grace_s: float) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(complete versions beyond retention, abandoned partial versions)."""
        versions = self._all_versions()
        complete = [v for v, done in versions.items() if done]
        protected = set(complete[-keep:])
        for record in self.aliases().values():
            protected.add(record.version)
            protected.update(record.previous[-1:])
        protected = with_parents(protected, self._delta_bases(complete))
        removed = tuple(v for v in complete if v not in protected)
        partial = tuple(
            v for v, done in versions.items() if not done and self._abandoned(v, grace_s)
        )
        return removed, partial

    def _delta_bases(self, versions: list[int]) -> dict[int, int | None]:
        """Version -> the version it is a delta on (None: full). A version whose manifest
        cannot be read cannot be loaded either: its chain needs nothing."""
        bases: dict[int, int | None] = {}
        for version in versions:
            try:
                link = self._manifest(version).delta_of
            except RegistryError as err:
                log.warning("gc: %s", err)
                link = None
            bases[version] = None if link is None else link.version
        return bases

    def _abandoned(self, version: int, grace_s: float) -> bool:
        vdir = _vdir(version)
        try:
            marker = json.loads(self._store.read_bytes(f"{vdir}/{PUBLISHING_NAME}"))
            started = datetime.fromisoformat(marker["started_at"]).timestamp()
            if marker["host"] == socket.gethostname():
                return not process_alive(int(marker["pid"]))
        except FileNotFoundError:
            # Claimed but the marker is not written yet (or was lost): judge by the dir's age.
            mtime = self._store.info(vdir).mtime
            started = mtime.timestamp() if mtime is not None else 0.0
        except (ValueError, KeyError, TypeError):
            started = 0.0  # unreadable marker: nothing proves a publisher is still at work
        return time.time() - started > grace_s

    def _remove_stale_temp_files(self, grace_s: float) -> None:
        # Leftovers of atomic_write calls whose process died between write and move.
        for info in self._store.list_dir("aliases"):
            stale = info.mtime is None or time.time() - info.mtime.timestamp() > grace_s
            if info.base_name.startswith(".") and ".tmp-" in info.base_name and stale:
                self._store.delete_file(f"aliases/{info.base_name}")

    def _check_marker(self) -> int:
        """The registry's format, from its marker."""
        try:
            marker = json.loads(self._root.read_bytes(MARKER_NAME))
            format_version = int(marker["format_version"])
        except (ValueError, KeyError, TypeError) as err:
            raise RegistryError(f"{self._root.describe(MARKER_NAME)} is damaged: {err}") from err
        if format_version > REGISTRY_FORMAT:
            raise RegistryError(
                f"registry {self._root.describe()} has format {format_version}, newer than "
                f"this genrec supports ({REGISTRY_FORMAT}); upgrade genrec"
            )
        return format_version

    def _write_marker(self) -> None:
        marker = {"format_version": REGISTRY_FORMAT, "created_at": utc_now().isoformat()}
        self._root.atomic_write(MARKER_NAME, json.dumps(marker).encode())


def check_model_name(name: str) -> str:
    """A model name is a plain directory name (a run name): letters, digits, ``._+-``."""
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name):
        raise RegistryError(
            f"{name!r} is not a model name: use letters, digits and . _ + - (at most 128, "
            "starting with a letter or digit), e.g. the trainer's run_name"
        )
    return name


def _link(manifest: Manifest) -> Link | None:
    link = manifest.delta_of
    return None if link is None else (link.version, link.manifest_sha256)


def _vdir(version: int) -> str:
    return f"versions/{version_dir_name(version)}"


def _alias_path(alias: str) -> str:
    return f"aliases/{alias}.json"


def _publisher_marker() -> bytes:
    marker = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": utc_now()}
    return json.dumps(marker, default=datetime.isoformat).encode()


def _describe_version(version: object) -> str:
    if isinstance(version, int):
        return version_dir_name(version)
    return "no version (no latest alias)" if version is None else repr(version)


def _inside(directory: Path, name: str) -> Path:
    """``directory / name``, refusing any result outside ``directory`` (defence in depth:
    ``name`` is already a validated relative name)."""
    target = directory / name
    if not target.resolve().is_relative_to(directory.resolve()):
        raise UnsafePathError(f"artefact name {name!r} leaves the fetch directory {directory}")
    return target


def _create_new(path: Path) -> BinaryIO:
    """Open a file that must not exist yet, never through a symlink."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.fdopen(os.open(path, flags, 0o644), "wb")


def _entry(manifest: Manifest, name: str, location: str) -> FileEntry:
    try:
        return manifest.files[name]
    except KeyError:
        raise RegistryError(
            f"{manifest.name} in {location} has no artefact {name!r} "
            f"(it has: {', '.join(sorted(manifest.files))})"
        ) from None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _verify(where: str, entry: FileEntry, size: int, sha256: str) -> None:
    if size != entry.size or sha256 != entry.sha256:
        raise ChecksumError(
            f"{where}: content does not match its manifest: expected sha256 {entry.sha256} "
            f"({entry.size} bytes), found sha256 {sha256} ({size} bytes); the file is corrupted "
            "or was modified after publishing: fetch from a replica or publish a new version"
        )
