"""What the trainer needs of a model registry: its files' names and the errors it handles
(the publishing port).

The pipeline never imports a registry implementation: ``genrec train`` gets one from the
``genrec.registries`` plugin (``pipeline.plugins``; ``connectors/registry`` by default),
opened on the run's model (``TrainerConfig.registry_model``: each run has its own versions
and ``latest``), and hands it to ``OnlineTrainer``, whose persistence
(``pipeline.stream.persistence``) calls ``latest_version()``, ``show(version)`` and
``publish(files, parent=, source_positions=, watermark=, metrics=, config=, expect_latest=)``
with the files ``MODEL_FILE`` and ``VOCAB_FILE``.
An implementation's errors derive from these, so that the trainer and the CLI can handle them.
"""

from __future__ import annotations

# The files of a published version: the model's weights and the item vocabulary.
MODEL_FILE = "model.pt"
VOCAB_FILE = "vocab.npz"


class PublishError(Exception):
    """A registry cannot be opened, read or written; the message says which and why."""


class ConcurrentPublishError(PublishError):
    """Another writer moved ``latest`` since this trainer looked: the publish was refused
    before any version became visible (the trainer stops instead of forking the lineage)."""
