"""Shared encoders with one interface (see ``encoders.base.Encoder``).

    from encoders import build_encoder, list_encoders
    enc = build_encoder("tiny-clip")                       # a registered preset
    enc = build_encoder("timm:vit_small_patch16_224.augreg_in21k", weights="model.safetensors")
    x = enc.preprocess(pil_image)                          # [3, H, W]
    feats = enc(x[None])                                   # [1, T, D]

Importing the package registers the presets and builders (no model is built, no heavy
library is imported until a builder runs).
"""

from encoders import audio, hf, music, video, vision  # noqa: F401  (registration)
from encoders.base import AudioPreprocess, Encoder, ImagePreprocess, Preprocess, VideoPreprocess
from encoders.registry import build_encoder, build_encoder_from_spec, list_encoders, register_encoder

__all__ = [
    "AudioPreprocess",
    "Encoder",
    "ImagePreprocess",
    "Preprocess",
    "VideoPreprocess",
    "build_encoder",
    "build_encoder_from_spec",
    "list_encoders",
    "register_encoder",
]
