"""Sampled softmax over uniformly drawn negatives (the HSTU paper's training loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.base import ItemRows

DEFAULT_NUM_NEGATIVES = 128
DEFAULT_TEMPERATURE = 0.05
# Logit of a per-position negative that equals its target (the reference's value: finite,
# so a row whose negatives are all hits still has a defined softmax).
ACCIDENTAL_HIT_LOGIT = -5e4


def sample_negatives(
    num_negatives: int,
    num_rows: int,
    candidate_rows: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """[K] item rows drawn uniformly with replacement from 1..R-1, or from ``candidate_rows``."""
    return _draw_rows((num_negatives,), num_rows, candidate_rows, generator, device)


def sample_negatives_per_position(
    num_positions: int,
    num_negatives: int,
    num_rows: int,
    candidate_rows: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """[M, K] item rows: K independent uniform draws (with replacement) for each of M
    positions, from 1..R-1 or from ``candidate_rows`` (the reference's sampler)."""
    return _draw_rows((num_positions, num_negatives), num_rows, candidate_rows, generator, device)


def _draw_rows(
    shape: tuple[int, ...],
    num_rows: int,
    candidate_rows: torch.Tensor | None,
    generator: torch.Generator | None,
    device: torch.device | str,
) -> torch.Tensor:
    if candidate_rows is None:
        if num_rows < 2:
            raise ValueError(f"need at least one item row to sample from, got R={num_rows}")
        return torch.randint(1, num_rows, shape, generator=generator).to(device)
    if candidate_rows.numel() == 0:
        raise ValueError("candidate_rows is empty; there is nothing to sample negatives from")
    picks = torch.randint(0, candidate_rows.numel(), shape, generator=generator)
    return candidate_rows.to(device)[picks.to(device)]


def sampled_softmax_loss(
    queries: torch.Tensor,
    targets: torch.Tensor,
    item_table: torch.Tensor | ItemRows,
    *,
    num_negatives: int = DEFAULT_NUM_NEGATIVES,
    temperature: float = DEFAULT_TEMPERATURE,
    weights: torch.Tensor | None = None,
    candidate_rows: torch.Tensor | None = None,
    negatives: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    per_position: bool = False,
) -> torch.Tensor:
    """Mean (or weighted mean) of -log softmax of the target among K sampled negatives.

    By default one set of K negatives is drawn per call and shared by all M targets, so
    the cost is [M, K] logits rather than [M, K, D] gathered embeddings; an accidental hit
    (a negative equal to the target) is left out of that target's softmax (-inf).
    With ``per_position`` (the reference's loss) each target gets its own K negatives
    ([M, K], ``sample_negatives_per_position``) and an accidental hit's logit is set to
    ``ACCIDENTAL_HIT_LOGIT``.
    Logits are cosine similarities (inputs are L2-normalised) divided by ``temperature``.

    Args:
        queries: [M, D] states predicting each target (``select_targets(...).queries``).
        targets: [M] int64 target rows.
        item_table: [R, D] normalised item table (``model.item_embeddings()``), or
            ``model.item_rows()``, which computes only the rows indexed.
        num_negatives: K, ignored when ``negatives`` is given.
        temperature: softmax temperature (paper: 0.05).
        weights: optional [M] per-target weights; the loss is sum(w * l) / sum(w).
        candidate_rows: optional rows to draw negatives from (the live catalogue);
            default rows 1..R-1.
        negatives: optional explicit negative rows (tests, custom samplers): [K], or
            [M, K] with ``per_position``.
        generator: random generator for reproducible draws.
        per_position: draw K negatives per target instead of K shared ones.

    Returns:
        Scalar loss (0 with a gradient path when there are no targets).
    """
    if queries.shape[0] != targets.shape[0]:
        raise ValueError(f"{queries.shape[0]} queries but {targets.shape[0]} targets")
    if queries.shape[0] == 0:
        return queries.sum() * 0.0
    if per_position:
        logits = _per_position_logits(
            queries,
            targets,
            item_table,
            num_negatives,
            temperature,
            candidate_rows,
            negatives,
            generator,
        )
        losses = -F.log_softmax(logits, dim=1)[:, 0]
        return _weighted_mean(losses, weights)
    if negatives is None:
        negatives = sample_negatives(
            num_negatives, item_table.shape[0], candidate_rows, generator, queries.device
        )
    pos = (queries * item_table[targets]).sum(-1, keepdim=True)  # [M, 1]
    neg = queries @ item_table[negatives].T  # [M, K]
    neg = neg.masked_fill(negatives.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
    logits = torch.cat([pos, neg], dim=1) / temperature
    losses = -F.log_softmax(logits, dim=1)[:, 0]
    return _weighted_mean(losses, weights)


def _per_position_logits(
    queries: torch.Tensor,
    targets: torch.Tensor,
    item_table: torch.Tensor | ItemRows,
    num_negatives: int,
    temperature: float,
    candidate_rows: torch.Tensor | None,
    negatives: torch.Tensor | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """[M, 1 + K] logits of each target (column 0) and its own K negatives; an accidental
    hit's logit is ``ACCIDENTAL_HIT_LOGIT``."""
    m = queries.shape[0]
    if negatives is None:
        negatives = sample_negatives_per_position(
            m, num_negatives, item_table.shape[0], candidate_rows, generator, queries.device
        )
    if negatives.dim() != 2 or negatives.shape[0] != m:
        raise ValueError(
            f"per-position negatives must have shape [M={m}, K], got {list(negatives.shape)}"
        )
    pos = (queries * item_table[targets]).sum(-1, keepdim=True) / temperature  # [M, 1]
    neg = torch.einsum("md,mkd->mk", queries, item_table[negatives]) / temperature  # [M, K]
    neg = neg.masked_fill(negatives == targets.unsqueeze(1), ACCIDENTAL_HIT_LOGIT)
    return torch.cat([pos, neg], dim=1)


def _weighted_mean(losses: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return losses.mean()
    weights = weights.to(losses.dtype)
    return (losses * weights).sum() / weights.sum().clamp(min=torch.finfo(losses.dtype).tiny)
