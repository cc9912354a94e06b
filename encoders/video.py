"""Video encoder: sampled frames through an image encoder, plus a temporal position signal.

    enc = build_encoder("video:timm:vit_tiny_patch16_224", num_frames=8, frame_pool=2)
    clip = enc.preprocess("clip.mp4")       # [F, 3, H, W], F frames sampled uniformly (decord)
    feats = enc(clip[None])                 # [1, F * T', D]

Each frame's tokens get the embedding of its frame index (learned, or fixed sinusoidal);
``frame_pool=k`` average-pools each frame's patch grid k x k first (prefix tokens kept).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor, nn

from encoders.base import Encoder, GridTokens, PerFrame, VideoPreprocess, pool_grid, spec_class
from encoders.registry import build_encoder, register_encoder
from vlm.errors import UserError


def sinusoidal_table(n: int, dim: int) -> Tensor:
    """Transformer sinusoidal positions [n, dim] (sin on even dims, cos on odd)."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]  # [n, 1]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))  # [ceil(dim/2)]
    table = torch.zeros(n, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table  # [n, dim]


class VideoEncoder(Encoder, kind="video"):
    """Frames -> image encoder -> (pool) -> + temporal embedding -> [B, F * T', D]."""

    modality = "video"

    def __init__(
        self,
        name: str,
        image: Encoder,
        num_frames: int = 8,
        frame_pool: int = 1,
        temporal: str = "learned",
        max_frames: int | None = None,
    ) -> None:
        super().__init__()
        if image.modality != "image":
            raise UserError(f"video encoder {name!r} needs an image encoder, got {image.name!r} ({image.modality})")
        if temporal not in ("learned", "sinusoidal", "none"):
            raise UserError(f"temporal must be 'learned', 'sinusoidal' or 'none', got {temporal!r}")
        if frame_pool < 1:
            raise UserError(f"frame_pool must be >= 1, got {frame_pool}")
        self.name = name
        self.image = image
        self.num_frames = int(num_frames)
        self.frame_pool = int(frame_pool)
        self.temporal = temporal
        self.max_frames = int(max_frames or num_frames)
        self.output_dim = image.output_dim
        self.feature_layer = image.feature_layer
        self.num_prefix_tokens = image.num_prefix_tokens
        self.preprocess = VideoPreprocess(num_frames, image.preprocess)  # type: ignore[arg-type]
        table = sinusoidal_table(self.max_frames, self.output_dim)  # [max_frames, D]
        if temporal == "learned":
            self.frame_embed = nn.Parameter(torch.randn(self.max_frames, self.output_dim) * 0.02)  # ViT pos-embed init
        else:
            self.register_buffer("frame_embed", table * (temporal == "sinusoidal"), persistent=False)

    def _pool(self, tokens: Tensor, frame: Tensor) -> Tensor:
        """Pool one batch of frame tokens [N, T, D] -> [N, T', D]."""
        if self.frame_pool == 1:
            return tokens
        grid = self.image.patch_grid(frame)
        if grid is None:
            raise UserError(f"frame_pool needs a patch grid; image encoder {self.image.name!r} has none")
        return pool_grid(tokens, grid, self.image.num_prefix_tokens, self.frame_pool)

    def forward(self, x: Tensor) -> Tensor:
        b, f = x.shape[:2]
        if f > self.max_frames:
            raise UserError(f"{self.name}: {f} frames > max_frames {self.max_frames}")
        tokens = self.image(x.flatten(0, 1))  # [B*F, T, D]
        tokens = self._pool(tokens, x[0, 0])  # [B*F, T', D]
        tokens = tokens.view(b, f, tokens.shape[1], -1)  # [B, F, T', D]
        tokens = tokens + self.frame_embed[:f, None, :].to(tokens.dtype)  # + [F, 1, D]
        return tokens.flatten(1, 2)  # [B, F*T', D]

    def token_count(self) -> PerFrame:
        frame = self.image.token_count()
        if self.frame_pool > 1:
            if not isinstance(frame, GridTokens):
                raise UserError(f"frame_pool needs a patch grid; image encoder {self.image.name!r} has none")
            frame = dataclasses.replace(frame, pool=self.frame_pool)
        return PerFrame(frame)

    def weights_module(self) -> nn.Module:
        return self.image.weights_module()

    def spec_args(self) -> dict[str, Any]:
        return {
            "image": self.image.spec(),
            "num_frames": self.num_frames,
            "frame_pool": self.frame_pool,
            "temporal": self.temporal,
            "max_frames": self.max_frames,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> VideoEncoder:
        image = spec_class(spec["image"]["kind"]).from_spec(spec["image"])
        return cls(spec["name"], image, spec["num_frames"], spec["frame_pool"], spec["temporal"], spec["max_frames"])


_VIDEO_OPTIONS = ("num_frames", "frame_pool", "temporal", "max_frames")


@register_encoder("video:", "video", "frames through an image encoder + temporal embedding: video:<image encoder name>")
def build_video(target: str, *, weights: str | None = None, feature_layer: int | None = None, **kw: Any) -> Encoder:
    """``weights`` go to the image encoder (its native checkpoint) or to the whole video encoder."""
    opts = {k: kw.pop(k) for k in _VIDEO_OPTIONS if k in kw}
    image = build_encoder(target, feature_layer=feature_layer, **kw)
    enc = VideoEncoder(f"video:{target}", image, **opts)
    if weights:
        enc.load_weights(weights)
    return enc


@register_encoder(
    "video:tiny", "video", "tiny-vit frames, 4 frames, 2x2 frame pooling, learned temporal embedding (tests)"
)
def video_tiny(*, weights: str | None = None, feature_layer: int | None = None, **kw: Any) -> Encoder:
    opts = {"num_frames": 4, "frame_pool": 2} | {k: kw.pop(k) for k in _VIDEO_OPTIONS if k in kw}
    image = build_encoder("tiny-vit", feature_layer=feature_layer, **kw)
    enc = VideoEncoder("video:tiny", image, **opts)
    if weights:
        enc.load_weights(weights)
    return enc
