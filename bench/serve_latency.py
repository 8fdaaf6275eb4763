"""Latency of ``genrec serve`` over real HTTP; prints one JSON.

For each item-table size in ``--items`` (default 30,000 and 1,000,000 rows) it publishes a
synthetic version (``publish_version``: a seeded, untrained HSTU of the trainer's default
shape with a ranking head, item keys 0..N-1) into a fresh registry, starts ``genrec serve``
in its own process with the default configuration (``--stream none``) and sends open-loop
``POST /recommend`` requests (k=10, each with a 50-event history in the request) at each
rate of ``--rates`` for ``--seconds`` seconds from an async httpx client: requests leave on
a fixed schedule whether or not earlier ones answered, so a slow server shows as latency,
not as a lower rate. Reported per rate: sent, answered, errors, p50/p99/max latency (ms),
and the highest rate whose p99 <= 100 ms. Then, at the first rate, a new version is
published mid-run (``--reload``): the latency of requests around the swap, errors, and the
versions seen.

Example (the figures of docs/benchmarks.md, "Serving")::

    python3 bench/serve_latency.py --items 30000,1000000 --rates 50,100,200,400 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TASKS = ({"name": "click", "actions": [2], "min_value": None, "weight": 1.0},)


def publish_version(
    registry: str | Path,
    num_items: int,
    *,
    seed: int = 0,
    dim: int = 64,
    max_len: int = 50,
    tasks: tuple[dict[str, Any], ...] = TASKS,
    keys: list[Any] | None = None,
) -> int:
    """Publish a seeded, untrained HSTU over items ``keys`` (default 0..num_items-1) to the
    registry at ``registry`` (created if missing), as ``genrec train`` publishes; returns
    the version."""
    import torch

    from connectors.registry import Registry
    from model.hstu import HSTU, HSTUConfig
    from pipeline.state.vocab import ItemVocabulary
    from pipeline.stream.checkpoint import state_to_bytes
    from pipeline.stream.publishing import MODEL_FILE, VOCAB_FILE

    torch.manual_seed(seed)
    cfg = HSTUConfig(
        num_rows=num_items + 1, embedding_dim=dim, max_len=max_len, ranking_tasks=tasks
    )
    net = HSTU(cfg)
    vocab = ItemVocabulary(num_items + 1)
    items = np.arange(num_items, dtype=np.int64) if keys is None else keys
    vocab.observe(items, np.full(num_items, 1_700_000_000, np.int64))
    manifest = Registry.open(str(registry), create=True).publish(
        {MODEL_FILE: state_to_bytes(net.state_dict()), VOCAB_FILE: vocab.snapshot()},
        config={"model": "hstu", "hstu": asdict(cfg)},
    )
    return manifest.version
