"""SASRec baseline (Kang & McAuley, 2018): causal softmax self-attention plus pointwise FFN.

Transformer blocks over the same input layer, item table, output normalisation and loss as
HSTU. ``style="genrec"``: pre-LN blocks with a GELU FFN; ``style="reference"``: the block of
the original SASRec code that Meta's research code uses (the normalised input is the
attention query and the residual, keys/values are the raw input; then LN and a ReLU FFN
with its own residual; padded positions zeroed after each block; layer norms without learned
scale and shift, no final layer norm). The blocks run on a right-padded [B, n, D] tensor:
padding happens at one explicit boundary (``pad_jagged``/``unpad_jagged``) and, because
attention is causal and padding sits after each sequence's last event, real positions never
see padded ones, so a sequence's output does not depend on the rest of the batch. With
candidates (``batch.num_targets``) the causal mask becomes ``kernels.reference.attention_mask``:
a candidate attends to its history and itself only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kernels.reference import attention_mask, pad_jagged, unpad_jagged
from model.actions import DEFAULT_VALUE_BOUNDARIES, check_boundaries
from model.base import SequentialEncoder, encoder_inputs
from model.jagged import JaggedBatch
from model.ranking_heads import check_tasks

SASREC_STYLES = ("genrec", "reference")


@dataclass
class SASRecConfig:
    """SASRec hyperparameters. ``ffn_dim`` of 0 means ``embedding_dim``."""

    num_rows: int
    embedding_dim: int = 64
    num_layers: int = 2
    num_heads: int = 1
    ffn_dim: int = 0
    max_len: int = 200
    dropout: float = 0.2
    input_dropout: float = 0.2
    style: str = "genrec"
    action_inputs: bool = False  # actions and values as inputs (model.actions)
    value_boundaries: tuple[float, ...] = DEFAULT_VALUE_BOUNDARIES
    # ranking tasks (model.ranking_heads JSON form); none: a retrieval-only model
    ranking_tasks: tuple[dict[str, Any], ...] = ()
    ranking_hidden: tuple[int, ...] = (64,)

    def __post_init__(self) -> None:
        if self.style not in SASREC_STYLES:
            raise ValueError(
                f"SASRecConfig.style must be one of {SASREC_STYLES}, got {self.style!r}"
            )
        self.value_boundaries = check_boundaries(self.value_boundaries)  # JSON gives a list
        self.ranking_tasks = check_tasks(self.ranking_tasks)
        self.ranking_hidden = tuple(self.ranking_hidden)


class SASRecBlock(nn.Module):
    """x + MHA(LN(x)) then x + FFN(LN(x)), causal over the padded time axis."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        d = cfg.embedding_dim
        if d % cfg.num_heads:
            raise ValueError(f"embedding_dim {d} is not divisible by num_heads {cfg.num_heads}")
        self.num_heads = cfg.num_heads
        self.norm_attn = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.attn_out = nn.Linear(d, d)
        self.norm_ffn = nn.LayerNorm(d)
        ffn = cfg.ffn_dim or d
        self.ffn = nn.Sequential(
            nn.Linear(d, ffn), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(ffn, d)
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.attn_dropout = cfg.dropout

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
        """``allowed``: [B, n, n] bool, True where query i may attend to key j; None = causal."""
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm_attn(x)).split(d, dim=-1)
        heads = [t.reshape(b, n, self.num_heads, -1).transpose(1, 2) for t in (q, k, v)]
        attn = F.scaled_dot_product_attention(
            *heads,
            attn_mask=None if allowed is None else allowed[:, None],
            is_causal=allowed is None,
            dropout_p=self.attn_dropout if self.training else 0.0,
        )
        x = x + self.dropout(self.attn_out(attn.transpose(1, 2).reshape(b, n, d)))
        return x + self.dropout(self.ffn(self.norm_ffn(x)))


class ReferenceSASRecBlock(nn.Module):
    """The original SASRec block as Meta's research code has it: q = LN(x);
    x = LN(q + MHA(q, x, x)); x = x + FFN(x) (ReLU, dropout after each linear); padded
    positions zeroed. Its layer norms learn no scale or shift (eps 1e-8)."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        d = cfg.embedding_dim
        if d % cfg.num_heads:
            raise ValueError(f"embedding_dim {d} is not divisible by num_heads {cfg.num_heads}")
        self.num_heads = cfg.num_heads
        self.norm_attn = nn.LayerNorm(d, eps=1e-8, elementwise_affine=False)
        self.attn = nn.MultiheadAttention(d, cfg.num_heads, dropout=cfg.dropout, batch_first=True)
        self.norm_ffn = nn.LayerNorm(d, eps=1e-8, elementwise_affine=False)
        ffn = cfg.ffn_dim or d
        self.ffn = nn.Sequential(
            nn.Linear(d, ffn),
            nn.Dropout(cfg.dropout),
            nn.ReLU(),
            nn.Linear(ffn, d),
            nn.Dropout(cfg.dropout),
        )

    def forward(
        self, x: torch.Tensor, valid: torch.Tensor, allowed: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``allowed``: [B, n, n] bool, True where query i may attend to key j; None = causal."""
        n = x.shape[1]
        if allowed is None:
            blocked = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
        else:  # MultiheadAttention takes a per-head [B * heads, n, n] mask of blocked pairs
            blocked = ~allowed.repeat_interleave(self.num_heads, dim=0)
        q = self.norm_attn(x)
        attn, _ = self.attn(q, x, x, attn_mask=blocked, need_weights=False)
        x = self.norm_ffn(q + attn)
        return (x + self.ffn(x)) * valid


class SASRec(SequentialEncoder):
    """SASRec sequential encoder: ``encode(batch) -> [T, D]`` L2-normalised states."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__(**encoder_inputs(cfg))
        self.cfg = cfg
        block = ReferenceSASRecBlock if cfg.style == "reference" else SASRecBlock
        self.blocks = nn.ModuleList(block(cfg) for _ in range(cfg.num_layers))
        # the reference's blocks end in their FFN residual: no final layer norm
        self.norm_out: nn.Module = (
            nn.Identity() if cfg.style == "reference" else nn.LayerNorm(cfg.embedding_dim)
        )

    def encode(self, batch: JaggedBatch) -> torch.Tensor:
        """States for every event; history position i depends on events 0..i only, a candidate
        row on the history and itself."""
        x = self.embed_inputs(batch)
        if batch.total == 0:
            return x
        n = batch.max_length()
        x = pad_jagged(x, batch.offsets, n)
        allowed = None
        if batch.num_targets is not None:
            is_candidate = pad_jagged(batch.candidate_mask(), batch.offsets, n)
            allowed = attention_mask(n, is_candidate, x.device)
        if self.cfg.style == "reference":
            lengths = batch.lengths().to(x.device)
            valid = (torch.arange(n, device=x.device) < lengths[:, None]).unsqueeze(-1)
            x = x * valid
            for block in self.blocks:
                x = block(x, valid.to(x.dtype), allowed)
        else:
            for block in self.blocks:
                x = block(x, allowed)
        x = unpad_jagged(self.norm_out(x), batch.offsets)
        return F.normalize(x, dim=-1)
