"""What the pipeline needs of a model registry: its files' names, its errors and a published
version to score with (the publishing port).

The pipeline never imports a registry implementation: ``genrec train`` and ``genrec backfill
recommend`` get one from the ``genrec.registries`` plugin (``pipeline.plugins``;
``connectors/registry`` by default), opened on a model (``TrainerConfig.registry_model``: each
run has its own versions and ``latest``). The trainer's persistence
(``pipeline.stream.persistence``) calls ``latest_version()``, ``show(version)`` and
``publish(files, parent=, source_positions=, watermark=, metrics=, config=, expect_latest=,
delta_of=)`` with the files ``MODEL_FILE`` and ``VOCAB_FILE`` (and ``ROWS_FILE`` in a delta);
``backfill recommend`` reads ``model`` (the opened model's name) and calls
``load_version(ref, max_vocab_bytes)``, which returns a ``PublishedModel`` (a delta's chain
applied). An implementation's errors derive from these, so that the trainer and the
CLI can handle them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the registry's CLI does not load torch
    import numpy as np
    import torch

    from model.base import SequentialEncoder
    from pipeline.state.vocab import ItemVocabulary

# The decompressed vocabulary's default bound when loading a version: ~25M items with int keys.
DEFAULT_MAX_VOCAB_BYTES = 1 << 30
# Users a version scores per batch by default: a batch's scores are B x vocab.capacity
# floats, twice.
DEFAULT_BATCH_USERS = 1024

# The files of a published version: the model's weights and the item vocabulary. In a delta
# version (``publish(delta_of=)``) MODEL_FILE holds the weights without the item table, and
# ROWS_FILE the table's rows changed since the version it is a delta of (``rowdelta.split``).
MODEL_FILE = "model.pt"
VOCAB_FILE = "vocab.npz"
ROWS_FILE = "item_rows.pt"


class PublishError(Exception):
    """A registry cannot be opened, read or written; the message says which and why."""


class ConcurrentPublishError(PublishError):
    """Another writer moved ``latest`` since this trainer looked: the publish was refused
    before any version became visible (the trainer stops instead of forking the lineage)."""


@dataclass(frozen=True)
class PublishedModel:
    """One registry version, ready to score: the model, its vocabulary and catalogue."""

    version: int
    model: SequentialEncoder
    vocab: ItemVocabulary
    live: torch.Tensor  # the rows that may be recommended (the live catalogue)
    row_keys: np.ndarray  # row -> item key: int64 when every key is an int, else str
