"""Training FLOPs of a retrieval run, computed from the shapes (docs/scaling.md, "Compute").

What is counted is what ``torch.utils.flop_counter.FlopCounterMode`` counts: the matrix
products, 2 FLOPs per multiply-add. Per layer, for a batch of sequences of lengths L_b
(T = sum L_b tokens, S = sum L_b^2 query-key pairs: attention is computed as a full
square and masked, as the reference kernel and SASRec's do), and M next-item targets:

* HSTU: the uvqk projection 2·T·D·H(2·dv + 2·dqk), the output projection 2·T·H·dv·D, and
  the attention scores and weighted sum 2·S·H·(dqk + dv).
* SASRec: q/k/v 2·T·D·3D, the output projection 2·T·D·D, the attention 2·S·2D, and the FFN
  2·T·2·D·F.
* The sampled-softmax logits: 2·M·K·D (each target's state against its K negatives).

Training is 3x the forward pass: every product's backward computes the gradients of both
its operands (the embedding tables train, so even the first layer's input needs one).
Left out, as the counter leaves them: embedding lookups (gathers: memory, no arithmetic),
the element-wise work (layer norms, SiLU, the positive logit's dot product, normalising
the item table), the optimizer step, padding to a batch's longest sequence, and the
full-ranking evaluation. They are O(T·D) against the O(T·D²) and O(S·D) kept.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from model.hstu import HSTUConfig
from model.sasrec import SASRecConfig

BACKWARD_FACTOR = 2  # a product's backward: one product per operand


@dataclass(frozen=True)
class TokenCounts:
    """The sizes of a set of training sequences that the FLOPs depend on."""

    tokens: int  # T: events
    square: int  # S: sum of squared lengths
    targets: int  # M: next-item targets

    @classmethod
    def of_lengths(cls, lengths: np.ndarray) -> TokenCounts:
        """Sequences of ``lengths`` where every event but the first is a target (positives
        "all")."""
        lengths = np.asarray(lengths, dtype=np.int64)
        nonempty = lengths[lengths > 0]
        return cls(int(nonempty.sum()), int((nonempty**2).sum()), int((nonempty - 1).sum()))

    def times(self, factor: int) -> TokenCounts:
        return TokenCounts(self.tokens * factor, self.square * factor, self.targets * factor)


def resolved_config(kind: str, model_config: dict[str, Any]) -> HSTUConfig | SASRecConfig:
    """The model's config dataclass with the defaults of the fields ``model_config`` leaves
    out (``num_rows`` does not change a FLOP count)."""
    config_cls = {"hstu": HSTUConfig, "sasrec": SASRecConfig}.get(kind)
    if config_cls is None:
        raise ValueError(f"FLOPs are counted for hstu and sasrec, not {kind!r}")
    known = {f.name for f in fields(config_cls)} - {"num_rows"}
    return config_cls(num_rows=2, **{k: v for k, v in model_config.items() if k in known})


def encoder_forward_flops(kind: str, model_config: dict[str, Any], counts: TokenCounts) -> int:
    """Forward FLOPs of the encoder's layers over sequences of ``counts``."""
    cfg = resolved_config(kind, model_config)
    d, t, s = cfg.embedding_dim, counts.tokens, counts.square
    if isinstance(cfg, HSTUConfig):
        dqk, dv = cfg.head_dims()
        h = cfg.num_heads
        per_layer = 2 * t * d * h * (2 * dv + 2 * dqk) + 2 * t * h * dv * d + 2 * s * h * (dqk + dv)
    else:
        ffn = cfg.ffn_dim or d
        per_layer = 2 * t * d * 3 * d + 2 * t * d * d + 2 * s * 2 * d + 2 * t * 2 * d * ffn
    return cfg.num_layers * per_layer


def logits_forward_flops(embedding_dim: int, targets: int, num_negatives: int) -> int:
    """Forward FLOPs of the sampled-softmax logits: each target's state against its K
    negatives."""
    return 2 * targets * num_negatives * embedding_dim


def training_flops(
    kind: str, model_config: dict[str, Any], counts: TokenCounts, num_negatives: int
) -> int:
    """Forward plus backward FLOPs of one pass of training over sequences of ``counts``."""
    dim = resolved_config(kind, model_config).embedding_dim
    forward = encoder_forward_flops(kind, model_config, counts) + logits_forward_flops(
        dim, counts.targets, num_negatives
    )
    return (1 + BACKWARD_FACTOR) * forward
