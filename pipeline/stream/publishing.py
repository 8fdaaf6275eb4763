"""What the trainer needs of a model registry: the errors it handles (the publishing port).

The pipeline never imports a registry implementation: ``genrec train`` gets one from the
``genrec.registries`` plugin (``pipeline.plugins``; ``connectors/registry`` by default),
opened on the run's model (``TrainerConfig.registry_model``: each run has its own versions
and ``latest``), and hands it to ``OnlineTrainer``, which calls ``latest_version()``, ``show(version)`` and
``publish(files, parent=, source_positions=, watermark=, metrics=, config=, expect_latest=)``.
An implementation's errors derive from these, so that the trainer and the CLI can handle them.
"""

from __future__ import annotations


class PublishError(Exception):
    """A registry cannot be opened, read or written; the message says which and why."""


class ConcurrentPublishError(PublishError):
    """Another writer moved ``latest`` since this trainer looked: the publish was refused
    before any version became visible (the trainer stops instead of forking the lineage)."""
