"""A small valid registry version as ``genrec train`` publishes it (config.json, model.pt,
vocab.npz), without training: for tests that load or score versions."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import numpy as np

from connectors.registry import Registry
from model.hstu import HSTU, HSTUConfig
from pipeline.state.vocab import ItemVocabulary
from pipeline.stream.checkpoint import state_to_bytes

ROWS = 20
ITEMS = tuple(range(1, 11))  # the item keys the version knows


def _files() -> tuple[dict[str, Any], bytes, bytes]:
    cfg = HSTUConfig(num_rows=ROWS, embedding_dim=8, num_layers=1, max_len=10)
    vocab = ItemVocabulary(ROWS)
    vocab.observe(np.array(ITEMS, dtype=np.int64), np.arange(len(ITEMS), dtype=np.int64))
    config = {"model": "hstu", "hstu": asdict(cfg), "trainer": {"run_name": "tiny"}}
    return config, state_to_bytes(HSTU(cfg).state_dict()), vocab.snapshot()


CONFIG, WEIGHTS, VOCAB = _files()


def publish(registry: Registry, config: bytes | None = None, vocab: bytes | None = None) -> int:
    """Publish the version (or one with this config.json / vocab.npz instead); its number."""
    files = {
        "config.json": json.dumps(CONFIG).encode() if config is None else config,
        "model.pt": WEIGHTS,
        "vocab.npz": VOCAB if vocab is None else vocab,
    }
    return registry.publish(files).version
