"""The LLaVA projector and the media tokenizer built on it: encoder -> (time pooling) -> projector.

`linear` is LLaVA-1's projector, `mlp2x_gelu` LLaVA-1.5's (Linear -> GELU -> Linear; the same
parameter names as transformers' LlavaMultiModalProjector, so export is a rename-free copy).
`pool=k` averages every k consecutive encoder tokens first: the tokens-per-second knob for audio
and music (Qwen2-Audio pools Whisper's 50 Hz by 2 to 25 tokens/s).

    tok = build_media({"type": "projector", "encoder": "audio", "pool": 2}, "audio", model_encoders, 896)
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from encoders.base import TokenCount
from vlm.connectors.base import MEDIA, PROJECTORS, MediaContext, MediaTokenizer, TimePooled, build_projector
from vlm.errors import require
from vlm.modalities import MODALITIES


class MLPProjector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, kind: str = "mlp2x_gelu"):
        super().__init__()
        self.kind = kind
        self.linear_1 = nn.Linear(in_dim, out_dim)
        if kind != "linear":
            self.act = nn.GELU()
            self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D_enc] -> [B, T, D_lm]
        x = self.linear_1(x)
        if self.kind != "linear":
            x = self.linear_2(self.act(x))
        return x


@PROJECTORS.register("linear")
def linear(in_dim: int, out_dim: int) -> MLPProjector:
    """One linear layer (LLaVA-1)."""
    return MLPProjector(in_dim, out_dim, "linear")


@PROJECTORS.register("mlp2x_gelu")
def mlp2x_gelu(in_dim: int, out_dim: int) -> MLPProjector:
    """Linear -> GELU -> Linear (LLaVA-1.5)."""
    return MLPProjector(in_dim, out_dim, "mlp2x_gelu")


PROJECTORS.register("mlp", mlp2x_gelu)


def default_pool(modality: str, encoder: nn.Module) -> int:
    """The pooling that brings an encoder's frames per second near the modality's tokens per second."""
    tps, rate = MODALITIES[modality].tokens_per_second, getattr(encoder, "frame_rate", None)
    return max(1, round(rate / tps)) if tps and rate else 1


@MEDIA.register("projector")
class ProjectorTokenizer(MediaTokenizer):
    """Every encoder token (pooled over time by `pool`) through the projector (LLaVA)."""

    def __init__(self, modality: str, encoder: nn.Module, d_lm: int, projector: str = "mlp2x_gelu",
                 pool: int | None = None):
        """pool None: the modality table's tokens per second over the encoder's frame rate (1 for images)."""
        super().__init__(modality, encoder)
        self.pool = int(pool) if pool is not None else default_pool(modality, encoder)
        require(self.pool >= 1, f"projector connector: pool must be >= 1 (encoder tokens per LLM token), got {pool}")
        self.projector = build_projector(projector, encoder.output_dim, d_lm)
        self.projector_kind = projector

    def settings(self) -> dict[str, Any]:
        return {"type": "projector", **self.slot_settings(), "projector": self.projector_kind, "pool": self.pool}

    def token_count(self) -> TokenCount:
        inner = self.encoder.token_count()
        return inner if self.pool == 1 else TimePooled(inner, self.pool)

    def _project(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D_enc] -> [B, ceil(T/pool), D_lm]
        if self.pool > 1:
            x = F.avg_pool1d(x.transpose(1, 2), self.pool, self.pool, ceil_mode=True).transpose(1, 2)
        return self.projector(x)

    def forward(self, items: list[torch.Tensor], context: MediaContext | None = None) -> list[torch.Tensor]:
        feats = self.encoder.encode(items)                                          # list of [T_i, D_enc]
        if len({f.shape for f in feats}) > 1:
            return [self._project(f[None])[0] for f in feats]
        return list(self._project(torch.stack(feats)).unbind(0))                   # N x [T, D_lm]
