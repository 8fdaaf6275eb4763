"""Delta checkpoints of the item table: write the rows changed since the parent, compose chains.

With sparse item training (``train.sparse_embeddings``) a step changes only the item rows it
looked up (inputs, targets, negatives, rows reassigned to new items) and their lazy-Adam
moments, so between two checkpoints most of a large table is untouched. A delta checkpoint
therefore holds the model's and the optimizer's state **without** the capacity-sized tensors
(``ROW_TENSORS``: the table and its two moments; dense parameters, scalars such as Adam's
step, hyper-parameters are written whole) and, as ``item_rows``, the changed rows' indices with
their values in each capacity-sized tensor. Restoring starts from the full checkpoint at the
root of the chain and writes each delta's rows over it in chain order; the newest delta's
rest (dense parameters, optimizer scalars) completes the state. Paths are explicit, never
guessed from shapes: a dense weight may happen to have as many rows as the table.
The links of a chain are ``pipeline.stream.chain``'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

KeyPath = tuple[str | int, ...]
# The capacity-sized tensors, as paths into {"model": state_dict, "optimizer": state_dict}.
ROW_TENSORS: dict[str, KeyPath] = {
    "weight": ("model", "item_emb.weight"),
    "exp_avg": ("optimizer", "rows", "state", 0, "exp_avg"),
    "exp_avg_sq": ("optimizer", "rows", "state", 0, "exp_avg_sq"),
}
INDEX = "index"


def present(nets: Mapping[str, Any]) -> frozenset[str]:
    """Which of ``ROW_TENSORS`` ``nets`` holds (Adam's moments exist after its first step)."""
    return frozenset(name for name, path in ROW_TENSORS.items() if _get(nets, path) is not None)


def split(nets: Mapping[str, Any], rows: torch.Tensor) -> tuple[dict[str, Any], dict[str, Any]]:
    """(``nets`` without the row tensors, {"index": rows, name: those rows of each}).

    ``nets`` is ``{"model": model.state_dict(), "optimizer": optimizer.state_dict()}``; it is
    not modified (containers on the paths are copied, tensors are not).
    """
    rows = rows.to(torch.int64).cpu()
    changed: dict[str, Any] = {INDEX: rows}
    rest: dict[str, Any] = dict(nets)
    for name, path in ROW_TENSORS.items():
        tensor = _get(nets, path)
        if tensor is not None:
            changed[name] = tensor.detach().index_select(0, rows.to(tensor.device)).cpu()
            rest = _without(rest, path)
    return rest, changed


def compose(
    base: Mapping[str, Any], deltas: Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]]
) -> dict[str, Any]:
    """The state of the last delta: ``base`` (a full ``nets``) patched by each ``(rest,
    changed)`` of ``split`` in chain order, completed by the last ``rest``.

    ``base``'s row tensors are patched in place. ``ValueError`` for a delta that does not fit
    the base (missing or extra tensors, index out of range, rows of another shape or dtype).
    """
    tables = {name: _get(base, path) for name, path in ROW_TENSORS.items()}
    tables = {name: t for name, t in tables.items() if t is not None}
    last: Mapping[str, Any] | None = None
    for number, (rest, changed) in enumerate(deltas, 1):
        where = f"delta {number} of the chain"
        names = set(changed) - {INDEX}
        if names != set(tables):
            raise ValueError(
                f"{where} holds rows of {sorted(names)} but its base has {sorted(tables)}"
            )
        index = changed.get(INDEX)
        if not torch.is_tensor(index) or index.dim() != 1 or index.dtype != torch.int64:
            raise ValueError(f"{where}: its row index is not a 1-D int64 tensor")
        for name, table in tables.items():
            values = changed[name]
            rows = table.shape[0]
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= rows):
                raise ValueError(f"{where}: a row index is outside the table of {rows} rows")
            wanted = (index.numel(), *table.shape[1:])
            if not torch.is_tensor(values) or tuple(values.shape) != wanted:
                raise ValueError(f"{where}: {name} rows are not of shape {wanted}")
            if values.dtype != table.dtype:
                raise ValueError(f"{where}: {name} rows are {values.dtype}, not {table.dtype}")
            table.index_copy_(0, index.to(table.device), values.to(table.device))
        last = rest
    if last is None:
        return dict(base)
    out: dict[str, Any] = dict(last)
    for name, table in tables.items():
        out = _with(out, ROW_TENSORS[name], table)
    return out


def _get(tree: Any, path: KeyPath) -> Any:
    for key in path:
        if not isinstance(tree, Mapping) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _without(tree: Mapping[str, Any], path: KeyPath) -> dict[str, Any]:
    head, *tail = path
    out = dict(tree)
    if tail:
        out[head] = _without(tree[head], tuple(tail))  # type: ignore[index]
    else:
        del out[head]  # type: ignore[arg-type]
    return out


def _with(tree: Mapping[Any, Any], path: KeyPath, value: Any) -> dict[Any, Any]:
    head, *tail = path
    out = dict(tree)
    if not tail:
        out[head] = value
        return out
    inner = tree.get(head)
    if not isinstance(inner, Mapping):
        raise ValueError(f"the delta's state has no {head!r} to put the rows into")
    out[head] = _with(inner, tuple(tail), value)
    return out
