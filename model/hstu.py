"""HSTU, research formulation (Zhai et al., ICML 2024; semantics fixed in DESIGN.md).

Per layer: ``xn = LN(x)``; ``u, v, q, k = split(SiLU(xn W))``; pointwise causal attention
(``kernels.hstu_attention``) with a learned position bias [N] and time bias [129] shared by
all heads; ``y = x + W_o(dropout(u * LN(attn)))``. No softmax, no FFN. Input is
``item_emb * sqrt(D) + learned position``; the output is L2-normalised.
``layer_norm="plain"`` uses layer norms without a learned scale and shift (eps 1e-6), as
the research code does; ``"affine"`` (the config default, so older checkpoints load) learns them.

``output="concat"`` projects ``[u, LN(attn), u * LN(attn)]`` instead of the product alone, as
dlrm_v3's STU layer does; ``attention_bias_init`` starts every relative position bias at that
value (plus the N(0, 0.02) noise). SiLU attention with near-zero scores is near zero, so a
positive start makes each layer begin as a (length-scaled) sum over the history, which is what
softmax attention gives at init. ``hstu_form`` holds the two sets of these settings: the
research code's (retrieval) and the ranking one (docs/quality.md, "Ranking (online)").
"""

from __future__ import annotations

import math
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
OUTPUTS = ("gated", "concat")
# The research code's form: HSTUConfig's defaults, and what every HSTU written before the
# ranking form (hstu_form) had.
RESEARCH_FORM: dict[str, Any] = {"alpha": 1.0, "output": "gated", "attention_bias_init": 0.0}


def head_dim(embedding_dim: int, num_heads: int, dim: int = 0) -> int:
    """A head's q/k (or v) width: ``dim``, or ``embedding_dim // num_heads`` when it is 0."""
    return dim or embedding_dim // num_heads


def hstu_form(
    ranking: bool, embedding_dim: int, num_heads: int = 1, dqk: int = 0
) -> dict[str, Any]:
    """HSTU's attention scale, output and initial position bias: the research code's for a
    retrieval-only model; with ranking tasks dlrm_v3's scale (1/sqrt of the q/k head width)
    and concatenated output, and position biases starting at 1.

    >>> hstu_form(False, 64)
    {'alpha': 1.0, 'output': 'gated', 'attention_bias_init': 0.0}
    >>> hstu_form(True, 64, num_heads=4)
    {'alpha': 0.25, 'output': 'concat', 'attention_bias_init': 1.0}
    """
    if not ranking:
        return dict(RESEARCH_FORM)
    alpha = 1.0 / math.sqrt(head_dim(embedding_dim, num_heads, dqk))
    return {"alpha": alpha, "output": "concat", "attention_bias_init": 1.0}


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
    alpha: float = RESEARCH_FORM["alpha"]
    attention_backend: str = "auto"
    layer_norm: str = "affine"
    output: str = RESEARCH_FORM["output"]  # or "concat" (module docstring)
    attention_bias_init: float = RESEARCH_FORM["attention_bias_init"]
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
        if self.output not in OUTPUTS:
            raise ValueError(f"HSTUConfig.output must be one of {OUTPUTS}, got {self.output!r}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"HSTUConfig.alpha must be finite and > 0, got {self.alpha}")
        if not math.isfinite(self.attention_bias_init):
            raise ValueError(
                f"HSTUConfig.attention_bias_init must be finite, got {self.attention_bias_init}"
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
        return (
            head_dim(self.embedding_dim, self.num_heads, self.dqk),
            head_dim(self.embedding_dim, self.num_heads, self.dv),
        )


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
        self.concat = cfg.output == "concat"
        self.out = nn.Linear(cfg.num_heads * self.dv * (3 if self.concat else 1), d)
        self.pos_bias = nn.Parameter(torch.empty(cfg.max_len))
        self.time_bias = nn.Parameter(torch.empty(NUM_TIME_BUCKETS))
        self.reset_biases()

    @torch.no_grad()
    def reset_biases(self) -> None:
        """Relative biases N(0, 0.02), the position bias shifted by ``attention_bias_init``."""
        nn.init.normal_(self.pos_bias, mean=self.cfg.attention_bias_init, std=BIAS_INIT_STD)
        nn.init.normal_(self.time_bias, std=BIAS_INIT_STD)

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
        a = self.norm_attn(attn)
        y = torch.cat([u, a, u * a], dim=-1) if self.concat else u * a
        return x + self.out(self.dropout(y))


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
        projection xavier uniform (bias as ``nn.Linear``), relative biases N(0, 0.02) (the
        position bias around ``attention_bias_init``)."""
        super().reference_init()
        for layer in self.layers:
            nn.init.normal_(layer.uvqk.weight, std=BIAS_INIT_STD)
            layer.uvqk.bias.zero_()
            layer.uvqk.bias.requires_grad_(False)
            nn.init.xavier_uniform_(layer.out.weight)
            layer.reset_biases()

    def encode(self, batch: JaggedBatch) -> torch.Tensor:
        """States for every event; history position i depends on events 0..i and on t_{i+1};
        a candidate row on the history, itself and the request time."""
        x = self.embed_inputs(batch)
        q_ts = query_timestamps(batch)
        for layer in self.layers:
            x = layer(x, batch.offsets, q_ts, batch.timestamps, batch.num_targets)
        return F.normalize(x, dim=-1)
