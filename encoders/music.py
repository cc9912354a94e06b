"""MERT-style music encoder: a transformers HubertModel on the raw 24 kHz waveform.

The conv front end's strides (5,2,2,2,2,2,2) multiply to 320 samples, so 24 kHz audio gives
75 Hz frames, as MERT does. ``mert:tiny`` is for tests; ``mert:base`` has the MERT-95M shape
(hidden 768, 12 layers), random unless weights= is given. A pretrained encoder loads by path:
``mert:FOLDER`` (a ``vlm train mert-*`` checkpoint) or ``hf:FOLDER`` (any transformers HuBERT folder),
both built in ``encoders.hf``. The pretraining itself (masked prediction of acoustic codes and the CQT)
is the ``mert`` family (``vlm/families/mert.py``) with the ``masked_prediction`` objective.

As a feature extractor the encoder never masks: SpecAugment (``apply_spec_augment``) and layerdrop
are off whatever the folder's config says, so train mode (a VLM stage) gives the same features as
eval mode apart from dropout.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from encoders.base import AudioPreprocess, ConvFrames, Encoder, preprocess_from_dict
from encoders.registry import check_config_options, register_encoder
from encoders.vision import resolve_layer

if TYPE_CHECKING:
    from transformers import HubertConfig

MERT_SAMPLE_RATE = 24000
# HuBERT / wav2vec2 front end: 7 convs, total stride 5 * 2**6 = 320 samples.
CONV_STRIDE = (5, 2, 2, 2, 2, 2, 2)
CONV_KERNEL = (10, 3, 3, 3, 3, 2, 2)


class HubertMusicEncoder(Encoder, kind="hubert"):
    """transformers HubertModel; features ``hidden_states[feature_layer]`` [B, frames, D]."""

    modality = "music"

    def __init__(
        self,
        name: str,
        config: dict[str, Any] | HubertConfig,
        preprocess: AudioPreprocess | None = None,
        feature_layer: int = -1,
    ) -> None:
        super().__init__()
        from transformers import HubertConfig, HubertModel

        if isinstance(config, dict):
            config = HubertConfig.from_dict(config)
        # a feature extractor: no SpecAugment masking and no layerdrop, even in train mode (a pretraining
        # checkpoint's config has both on; HF would mask ~5 % of frames of every training batch)
        config.apply_spec_augment, config.layerdrop = False, 0.0
        self.name = name
        self.hubert_config = config
        self.model = HubertModel(config)
        self.output_dim = int(config.hidden_size)
        self.feature_layer = resolve_layer(feature_layer, config.num_hidden_layers + 1, f"HuBERT encoder {name!r}")
        self.preprocess = preprocess or AudioPreprocess(MERT_SAMPLE_RATE, "waveform", normalize=True)
        self.hop = math.prod(config.conv_stride)  # samples per frame
        if isinstance(self.preprocess, AudioPreprocess):     # a shorter clip is zero-padded to one frame
            self.preprocess.min_samples = self.token_count().min_length()

    @property
    def frame_rate(self) -> float:
        """Frames (tokens) per second at the preprocess sample rate."""
        return self.preprocess.sample_rate / self.hop  # type: ignore[attr-defined]

    def forward(self, x: Tensor) -> Tensor:
        """[B, N] normalised waveform -> [B, frames, D]."""
        out = self.model(input_values=x, output_hidden_states=self.feature_layer != -1)
        if self.feature_layer == -1:
            return out.last_hidden_state  # [B, frames, D]
        return out.hidden_states[self.feature_layer]  # [B, frames, D]

    def encode_layers(self, items: list[Tensor], n_layers: int) -> list[Tensor]:
        """Every hidden state from one pass per batch (the base class runs the model once per layer: a long
        clip of a 12-layer model was 13 passes)."""
        if n_layers != self.hubert_config.num_hidden_layers:
            return super().encode_layers(items, n_layers)
        return self.by_shape(items, lambda x: torch.stack(           # L + 1 x [b, T, D] -> [b, L + 1, T, D]
            self.model(input_values=x, output_hidden_states=True).hidden_states, dim=1))

    def token_count(self) -> ConvFrames:
        """Frames after the conv front end: L -> floor((L - kernel) / stride) + 1 per conv."""
        return ConvFrames(tuple(self.hubert_config.conv_kernel), tuple(self.hubert_config.conv_stride))

    def weights_module(self) -> nn.Module:
        return self.model

    def spec_args(self) -> dict[str, Any]:
        return {"config": self.hubert_config.to_dict()}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> HubertMusicEncoder:
        return cls(spec["name"], spec["config"], preprocess_from_dict(spec["preprocess"]), spec["feature_layer"])  # type: ignore[arg-type]


def mert_config(**overrides: Any) -> HubertConfig:
    """A MERT-shaped HubertConfig (75 Hz at 24 kHz). Feature extraction by default: no
    SpecAugment masking and no layerdrop in train mode (the SSL code sets its own masking)."""
    from transformers import HubertConfig

    base: dict[str, Any] = {
        "conv_stride": CONV_STRIDE,
        "conv_kernel": CONV_KERNEL,
        "feat_extract_norm": "group",
        "apply_spec_augment": False,
        "layerdrop": 0.0,
    }
    return HubertConfig(**(base | overrides))


def _mert(name: str, cfg: dict[str, Any], weights: str | None, feature_layer: int | None, **kw: Any) -> Encoder:
    from transformers import HubertConfig

    sample_rate = kw.pop("sample_rate", MERT_SAMPLE_RATE)
    check_config_options(name, HubertConfig, kw)
    pre = AudioPreprocess(sample_rate, "waveform", normalize=True)
    enc = HubertMusicEncoder(name, mert_config(**(cfg | kw)), pre, -1 if feature_layer is None else feature_layer)
    if weights:
        enc.load_weights(weights)
    return enc


@register_encoder("mert:tiny", "music", "MERT-style HuBERT, 24 kHz / 75 Hz, hidden 64, 2 layers, conv_dim 32 (tests)")
def mert_tiny(*, weights: str | None = None, feature_layer: int | None = None, **kw: Any) -> Encoder:
    cfg = {
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
        "conv_dim": (32,) * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4,
    }  # fmt: skip
    return _mert("mert:tiny", cfg, weights, feature_layer, **kw)


@register_encoder(
    "mert:base", "music", "MERT-95M-shaped HuBERT, 24 kHz / 75 Hz, hidden 768, 12 layers; random unless weights="
)
def mert_base(*, weights: str | None = None, feature_layer: int | None = None, **kw: Any) -> Encoder:
    cfg = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
    return _mert("mert:base", cfg, weights, feature_layer, **kw)
