"""Scoring and top-K retrieval over the whole item catalogue (or a candidate subset)."""

from __future__ import annotations

import torch

from kernels.offsets import segment_ids


def mask_unavailable(
    scores: torch.Tensor, candidate_rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Copy of [M, R] scores with row 0 (padding) and rows outside ``candidate_rows`` at -inf."""
    if candidate_rows is None:
        masked = scores.clone()
        masked[:, 0] = float("-inf")
        return masked
    allowed = torch.zeros(scores.shape[1], dtype=torch.bool, device=scores.device)
    allowed[candidate_rows.to(scores.device)] = True
    allowed[0] = False
    return scores.masked_fill(~allowed, float("-inf"))


def score_items(queries: torch.Tensor, item_table: torch.Tensor) -> torch.Tensor:
    """[M, R] dot products of each query with every item row."""
    return queries @ item_table.T


def top_k(
    scores: torch.Tensor,
    k: int,
    *,
    exclude_items: torch.Tensor | None = None,
    exclude_offsets: torch.Tensor | None = None,
    candidate_rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best k item rows per query, never row 0.

    Args:
        scores: [M, R] item scores (``score_items`` or a baseline's scores).
        k: how many rows to return (capped at R - 1).
        exclude_items, exclude_offsets: optional jagged rows to leave out per query
            (typically the user's history): query m excludes
            ``exclude_items[exclude_offsets[m]:exclude_offsets[m+1]]``.
        candidate_rows: optional rows that may be returned (the live catalogue).

    Returns:
        (scores [M, k], rows [M, k]) best first. When fewer than k rows are allowed, the
        tail has score -inf (its rows are arbitrary and should be dropped).
    """
    masked = mask_unavailable(scores, candidate_rows)
    if exclude_items is not None:
        if exclude_offsets is None or exclude_offsets.numel() != scores.shape[0] + 1:
            raise ValueError(f"exclude_offsets must have M+1 = {scores.shape[0] + 1} entries")
        owners = segment_ids(exclude_offsets.to(scores.device))
        masked[owners, exclude_items.to(scores.device)] = float("-inf")
    return torch.topk(masked, min(k, scores.shape[1] - 1), dim=1)
