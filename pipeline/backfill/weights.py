"""Offline-trained weights into a trainer whose vocabulary gave the items other rows.

``genrec train-offline`` numbers items 1..n in its own order (``meta["item_keys"]``); the
online trainer's vocabulary gives each admitted key a row of its ``vocab.capacity``-row table.
Every tensor but the item table is copied as it is (the model settings must agree); each
vocabulary key's embedding row is the offline model's row of the same key, and keys the
offline model never saw keep the trainer's fresh initialisation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from model.serialize import load_checkpoint
from pipeline.offline.training import json_key, offline_checkpoint
from pipeline.stream.state import TrainerState

ITEM_TABLE = "item_emb.weight"


def load_offline_weights(state: TrainerState, directory: str | Path) -> int:
    """Copy the ``train-offline`` model in ``directory`` (its ``--out``, or the
    ``checkpoint`` folder in it) into ``state.model``; returns the rows carried over."""
    path = offline_checkpoint(directory)
    offline, meta = load_checkpoint(path)
    if type(offline) is not type(state.model):
        raise ValueError(
            f"{path}: a {type(offline).__name__} model; the trainer runs "
            f"{type(state.model).__name__} (model.kind)"
        )
    keys = meta.get("item_keys")
    if not isinstance(keys, list):
        raise ValueError(f"{path}: model.json has no item_keys list; re-run train-offline")
    source = offline.state_dict()
    target = state.model.state_dict()
    for name, tensor in target.items():
        if name != ITEM_TABLE and (name not in source or source[name].shape != tensor.shape):
            got = "missing" if name not in source else tuple(source[name].shape)
            raise ValueError(
                f"{path}: tensor {name} is {got}, the trainer's is {tuple(tensor.shape)}; "
                "train offline with the trainer's model settings (model.*, store.max_len)"
            )
    rows = state.vocab.live_rows()
    offline_row = {key: row for row, key in enumerate(keys) if row > 0}
    pairs = [
        (int(r), offline_row[k])
        for r in rows.tolist()
        if (k := json_key(state.vocab.key_of(int(r)))) in offline_row
    ]
    with torch.no_grad():
        for name, tensor in target.items():
            if name != ITEM_TABLE:
                tensor.copy_(source[name])
        if pairs:
            to, frm = np.array(pairs, dtype=np.int64).T
            target[ITEM_TABLE][torch.from_numpy(to)] = source[ITEM_TABLE][torch.from_numpy(frm)]
    return len(pairs)
