"""The LLaVA projector: encoder tokens -> LLM space, optionally pooled over time first.

`linear` is LLaVA-1's projector, `mlp2x_gelu` LLaVA-1.5's (Linear -> GELU -> Linear; the same
parameter names as transformers' LlavaMultiModalProjector, so export is a rename-free copy).
`pool=k` averages every k consecutive tokens first: the tokens-per-second knob for audio and
music (Qwen2-Audio pools Whisper's 50 Hz by 2 to 25 tokens/s).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vlm.connectors import register_connector


class MLPProjector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, kind: str = "mlp2x_gelu", pool: int = 1):
        super().__init__()
        self.kind, self.pool = kind, int(pool)
        if kind == "linear":
            self.linear_1 = nn.Linear(in_dim, out_dim)
        else:
            self.linear_1 = nn.Linear(in_dim, out_dim)
            self.act = nn.GELU()
            self.linear_2 = nn.Linear(out_dim, out_dim)

    def num_tokens(self, n_in: int) -> int:
        return math.ceil(n_in / self.pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D_enc] -> [B, ceil(T/pool), D_lm]
        if self.pool > 1:
            x = F.avg_pool1d(x.transpose(1, 2), self.pool, self.pool, ceil_mode=True).transpose(1, 2)
        x = self.linear_1(x)
        if self.kind != "linear":
            x = self.linear_2(self.act(x))
        return x


@register_connector("linear")
def _linear(in_dim, out_dim, pool=1):
    return MLPProjector(in_dim, out_dim, "linear", pool)


@register_connector("mlp2x_gelu", "mlp")
def _mlp(in_dim, out_dim, pool=1):
    return MLPProjector(in_dim, out_dim, "mlp2x_gelu", pool)
