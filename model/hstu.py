"""HSTU, research formulation (Zhai et al., ICML 2024; semantics fixed in DESIGN.md).

Per layer: ``xn = LN(x)``; ``u, v, q, k = split(SiLU(xn W))``; pointwise causal attention
(``kernels.hstu_attention``) with a learned position bias [N] and time bias [129] shared by
all heads; ``y = x + W_o(dropout(u * LN(attn)))``. No softmax, no FFN. Input is
``item_emb * sqrt(D) + learned position``; the output is L2-normalised.
``layer_norm="plain"`` uses layer norms without a learned scale and shift (eps 1e-6), as
the research code does; ``"affine"`` (the config default, so older checkpoints load) learns them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kernels import NUM_TIME_BUCKETS, hstu_attention
from model.actions import DEFAULT_VALUE_BOUNDARIES, check_boundaries
from model.base import SequentialEncoder, encoder_inputs, query_timestamps
from model.jagged import JaggedBatch
from model.ranking_heads import check_tasks

BIAS_INIT_STD = 0.02
LAYER_NORMS = ("affine", "plain")


@dataclass
class HSTUConfig:
    """HSTU hyperparameters. ``dqk``/``dv`` of 0 mean ``embedding_dim // num_heads``."""

    num_rows: int
    embedding_dim: int = 64
    num_layers: int = 2
    num_heads: int = 1
    dqk: int = 0
    dv: int = 0
    max_len: int = 200
    dropout: float = 0.2
    input_dropout: float = 0.2
    alpha: float = 1.0
    attention_backend: str = "auto"
    layer_norm: str = "affine"
    action_inputs: bool = False  # actions and values as inputs (model.actions)
    value_boundaries: tuple[float, ...] = DEFAULT_VALUE_BOUNDARIES
    # ranking tasks (model.ranking_heads JSON form); none: a retrieval-only model
    ranking_tasks: tuple[dict[str, Any], ...] = ()
    ranking_hidden: tuple[int, ...] = (64,)

    def __post_init__(self) -> None:
        if self.layer_norm not in LAYER_NORMS:
            raise ValueError(
                f"HSTUConfig.layer_norm must be one of {LAYER_NORMS}, got {self.layer_norm!r}"
            )
        self.value_boundaries = check_boundaries(self.value_boundaries)  # JSON gives a list
        self.ranking_tasks = check_tasks(self.ranking_tasks)
        self.ranking_hidden = tuple(self.ranking_hidden)

    def norm(self, width: int) -> nn.LayerNorm:
        """A layer norm over ``width`` features in this config's style."""
        if self.layer_norm == "plain":
            return nn.LayerNorm(width, eps=1e-6, elementwise_affine=False)
        return nn.LayerNorm(width)

    def head_dims(self) -> tuple[int, int]:
        default = self.embedding_dim // self.num_heads
        return (self.dqk or default, self.dv or default)


class HSTULayer(nn.Module):
    """One HSTU layer over jagged [T, D] states."""

    def __init__(self, cfg: HSTUConfig):
        super().__init__()
        self.cfg = cfg
        self.num_heads = cfg.num_heads
        self.dqk, self.dv = cfg.head_dims()
        d = cfg.embedding_dim
        self.norm_in = cfg.norm(d)
        self.uvqk = nn.Linear(d, cfg.num_heads * (2 * self.dv + 2 * self.dqk))
        self.norm_attn = cfg.norm(cfg.num_heads * self.dv)
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.num_heads * self.dv, d)
        self.pos_bias = nn.Parameter(torch.randn(cfg.max_len) * BIAS_INIT_STD)
        self.time_bias = nn.Parameter(torch.randn(NUM_TIME_BUCKETS) * BIAS_INIT_STD)

    def forward(
        self,
        x: torch.Tensor,
        offsets: torch.Tensor,
        q_ts: torch.Tensor,
        k_ts: torch.Tensor,
        num_targets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = self.num_heads
        hv, hqk = h * self.dv, h * self.dqk
        u, v, q, k = torch.split(F.silu(self.uvqk(self.norm_in(x))), [hv, hv, hqk, hqk], dim=-1)
        attn = hstu_attention(
            q.reshape(-1, h, self.dqk),
            k.reshape(-1, h, self.dqk),
            v.reshape(-1, h, self.dv),
            offsets,
            max_len=self.cfg.max_len,
            alpha=self.cfg.alpha,
            query_timestamps=q_ts,
            key_timestamps=k_ts,
            pos_bias=self.pos_bias,
            time_bias=self.time_bias,
            num_targets=num_targets,
            backend=self.cfg.attention_backend,  # type: ignore[arg-type]
        ).reshape(-1, hv)
        return x + self.out(self.dropout(u * self.norm_attn(attn)))


class HSTU(SequentialEncoder):
    """HSTU sequential encoder: ``encode(batch) -> [T, D]`` L2-normalised states."""

    def __init__(self, cfg: HSTUConfig):
        super().__init__(**encoder_inputs(cfg))
        self.cfg = cfg
        self.layers = nn.ModuleList(HSTULayer(cfg) for _ in range(cfg.num_layers))

    @torch.no_grad()
    def reference_init(self) -> None:
        """The research code's init: the input layer as ``SequentialEncoder``; per layer
        uvqk weight N(0, 0.02) without bias (the bias is zeroed and frozen), output
        projection xavier uniform (bias as ``nn.Linear``), relative biases N(0, 0.02)."""
        super().reference_init()
        for layer in self.layers:
            nn.init.normal_(layer.uvqk.weight, std=BIAS_INIT_STD)
            layer.uvqk.bias.zero_()
            layer.uvqk.bias.requires_grad_(False)
            nn.init.xavier_uniform_(layer.out.weight)
            nn.init.normal_(layer.pos_bias, std=BIAS_INIT_STD)
            nn.init.normal_(layer.time_bias, std=BIAS_INIT_STD)

    def encode(self, batch: JaggedBatch) -> torch.Tensor:
        """States for every event; history position i depends on events 0..i and on t_{i+1};
        a candidate row on the history, itself and the request time."""
        x = self.embed_inputs(batch)
        q_ts = query_timestamps(batch)
        for layer in self.layers:
            x = layer(x, batch.offsets, q_ts, batch.timestamps, batch.num_targets)
        return F.normalize(x, dim=-1)
