"""Model checkpoints that load without unpickling: tensors via ``weights_only`` and JSON.

A checkpoint directory holds ``weights.pt`` (a state dict, loaded with
``torch.load(weights_only=True)``) and ``model.json`` (model kind, its config dataclass as
a dict, and caller metadata such as the item-key map). It is written to a temporary
sibling and renamed into place, so a reader sees either the old or the new checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.dlrm import DLRM, DLRMConfig
from model.hstu import HSTU, HSTUConfig
from model.popular import MostPopular, PopularConfig
from model.sasrec import SASRec, SASRecConfig

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "model.json"

MODEL_KINDS: dict[str, tuple[type[nn.Module], type]] = {
    "hstu": (HSTU, HSTUConfig),
    "sasrec": (SASRec, SASRecConfig),
    "popular": (MostPopular, PopularConfig),
    "dlrm": (DLRM, DLRMConfig),
}


def build_model(kind: str, config: dict[str, Any]) -> nn.Module:
    """A fresh model of ``kind`` ("hstu", "sasrec", "popular", "dlrm") from its config fields."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {sorted(MODEL_KINDS)}")
    model_cls, config_cls = MODEL_KINDS[kind]
    return model_cls(config_cls(**config))


def model_kind(model: nn.Module) -> str:
    for kind, (model_cls, _) in MODEL_KINDS.items():
        if type(model) is model_cls:
            return kind
    raise TypeError(f"{type(model).__name__} is not a checkpointable model ({sorted(MODEL_KINDS)})")


def save_checkpoint(directory: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``model`` and JSON-serialisable ``meta`` to ``directory`` atomically."""
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save(state, tmp / WEIGHTS_FILE)
        doc = {
            "format_version": FORMAT_VERSION,
            "kind": model_kind(model),
            "config": asdict(model.cfg),  # type: ignore[call-overload]
            "meta": meta,
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(doc, indent=1))
        old = target.with_name(f".{target.name}.old")
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_checkpoint(
    directory: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode, meta) from a directory written by ``save_checkpoint``."""
    path = Path(directory)
    config_path = path / CONFIG_FILE
    if not config_path.exists():
        raise FileNotFoundError(
            f"{config_path}: not found; --checkpoint must be a directory written by "
            "'genrec train-offline' (it holds model.json and weights.pt)"
        )
    doc = json.loads(config_path.read_text())
    if doc.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{config_path}: format_version {doc.get('format_version')!r} is not "
            f"{FORMAT_VERSION}; re-train or use a matching genrec version"
        )
    model = build_model(doc["kind"], doc["config"])
    state = torch.load(path / WEIGHTS_FILE, map_location=map_location, weights_only=True)
    model.load_state_dict(state)
    return model.to(map_location).eval(), doc["meta"]
