"""Actions and values as model inputs: one embedding each, summed into the event's token.

As Meta's dlrm_v3 does for MovieLens ratings, each history event's action code and value
(bucketised) are looked up in their own tables and added to the item's input token, so the
model reads *how* a user interacted, not only with what.

Values are bucketised by ``boundaries`` (increasing): bucket i holds
``boundaries[i-1] <= value < boundaries[i]`` (bucket 0 everything below the first boundary,
bucket ``len(boundaries)`` everything from the last one up); an event without a value (NaN)
gets its own bucket, ``len(boundaries) + 1``. The default boundaries sit between the half
stars of a 0.5-5 star rating (MovieLens), so each rating 0.5, 1, ..., 5 has its own bucket.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

# Action codes 0..255: pipeline.events.schema.MAX_ACTION_CODE + 1 (model/ cannot import it).
NUM_ACTION_CODES = 256
DEFAULT_VALUE_BOUNDARIES: tuple[float, ...] = (0.75, 1.25, 1.75, 2.25, 2.75, 3.25, 3.75, 4.25, 4.75)
# Small: at the start the item and position signal dominates each token, so a model with
# these inputs begins as the one without them and learns how much actions and values matter.
EVENT_INPUT_INIT_STD = 0.02


def check_boundaries(boundaries: Sequence[float]) -> tuple[float, ...]:
    """``boundaries`` as a tuple; ValueError unless finite and strictly increasing."""
    out = tuple(float(b) for b in boundaries)
    if not all(math.isfinite(b) for b in out) or any(a >= b for a, b in pairwise(out)):
        raise ValueError(
            f"value_boundaries must be finite and strictly increasing, got {list(out)}; "
            f"e.g. {list(DEFAULT_VALUE_BOUNDARIES)} for 0.5-5 star ratings"
        )
    return out


class ActionValueInputs(nn.Module):
    """[T] action codes and [T] values (NaN = absent) -> [T, D] summed embeddings."""

    def __init__(self, embedding_dim: int, boundaries: Sequence[float]) -> None:
        super().__init__()
        bounds = check_boundaries(boundaries)
        self.action_emb = nn.Embedding(NUM_ACTION_CODES, embedding_dim)
        self.value_emb = nn.Embedding(len(bounds) + 2, embedding_dim)  # + the absent bucket
        # not persistent: the boundaries live in the model's config, not its weights
        self.register_buffer("boundaries", torch.tensor(bounds), persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.normal_(self.action_emb.weight, std=EVENT_INPUT_INIT_STD)
        nn.init.normal_(self.value_emb.weight, std=EVENT_INPUT_INIT_STD)

    def value_buckets(self, values: torch.Tensor | None, total: int) -> torch.Tensor:
        """int64 [T] bucket of each value; every event is absent when ``values`` is None."""
        absent = self.value_emb.num_embeddings - 1
        if values is None:
            return torch.full((total,), absent, dtype=torch.int64, device=self.boundaries.device)
        buckets = torch.bucketize(values, self.boundaries, right=True)
        return torch.where(torch.isnan(values), absent, buckets)

    def forward(self, action_types: torch.Tensor, values: torch.Tensor | None) -> torch.Tensor:
        if action_types.numel() and int(action_types.max()) >= NUM_ACTION_CODES:
            raise ValueError(
                f"action code {int(action_types.max())} is outside 0..{NUM_ACTION_CODES - 1}"
            )
        buckets = self.value_buckets(values, action_types.numel())
        return self.action_emb(action_types) + self.value_emb(buckets)
