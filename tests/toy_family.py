"""A new family in one file, through the public API only: its own encoder (the mean colour of each 8x8
patch through a linear map), the registered `linear` projector and the `plain` route (tests/test_architecture.py)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from encoders import Encoder, ImagePreprocess, register_encoder
from encoders.base import GridTokens, preprocess_from_dict
from vlm.families.base import Family, build_multimodal, media_parts, register_family


class PatchColours(Encoder, kind="toy_patch_colours"):
    modality = "image"

    def __init__(self, name: str = "toy-patches", dim: int = 16, preprocess=None):
        super().__init__()
        self.name, self.output_dim, self.feature_layer = name, dim, -1
        self.preprocess = preprocess or ImagePreprocess(32, (0.5,) * 3, (0.5,) * 3)
        self.proj = nn.Linear(3, dim)

    def forward(self, x):
        return self.proj(F.avg_pool2d(x, 8).flatten(2).transpose(1, 2))          # [B, 16, D]

    def token_count(self):
        return GridTokens((8, 8))

    def spec_args(self):
        return {"dim": self.output_dim}

    @classmethod
    def from_spec(cls, spec):
        return cls(spec["name"], spec["dim"], preprocess_from_dict(spec["preprocess"]))


@register_encoder("toy-patches", "image", "mean colour per 8x8 patch (a test's toy family)")
def toy_patches(*, weights=None, feature_layer=None, **kw):
    return PatchColours(**kw)


def build_toy(vision: str = "toy-patches", llm: str = "tiny:llama", seed: int | None = 0):
    encoders, media = media_parts({"type": "projector", "projector": "linear"}, vision=vision)
    return build_multimodal("toy", llm, encoders, media, {"type": "plain"}, "frozen", seed=seed)


register_family(Family("toy", "a test's toy: patch colours -> linear projector -> plain LLM", build_toy,
                       sizes={"tiny": {}}))
