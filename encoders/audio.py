"""Whisper-style audio encoder: log-mel frames -> 50 Hz tokens (transformers' WhisperEncoder).

WhisperEncoder refuses any input but its window (``2 * max_source_positions`` mel frames:
3,000 = 30 s for real checkpoints, 100 = 1 s for ``whisper:tiny``), so ``encode`` pads or
chunks each clip to windows and keeps only the ``ceil(frames / 2)`` tokens of real audio.

    enc = build_encoder("whisper:tiny")
    mel = enc.preprocess(waveform, sr)      # [80, frames] at the clip's real length
    [tokens] = enc.encode([mel])            # [ceil(frames / 2), D]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from encoders.base import AudioPreprocess, Encoder, StridedFrames, preprocess_from_dict
from encoders.registry import check_config_options, register_encoder
from encoders.vision import resolve_layer
from vlm.errors import UserError

if TYPE_CHECKING:
    from transformers import WhisperConfig


class WhisperAudioEncoder(Encoder, kind="whisper"):
    """transformers WhisperEncoder; features ``hidden_states[feature_layer]`` (-1: after the
    final layer norm). ``whisper_config`` is the full WhisperConfig."""

    modality = "audio"

    def __init__(
        self,
        name: str,
        config: dict[str, Any] | WhisperConfig,
        preprocess: AudioPreprocess | None = None,
        feature_layer: int = -1,
    ) -> None:
        super().__init__()
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        if isinstance(config, dict):
            config = WhisperConfig.from_dict(config)
        self.name = name
        self.whisper_config = config
        self.model = WhisperEncoder(config)
        self.window = 2 * int(config.max_source_positions)  # mel frames the encoder accepts
        self.tokens_per_window = int(config.max_source_positions)  # conv2 has stride 2
        self.output_dim = int(config.d_model)
        self.feature_layer = resolve_layer(feature_layer, config.encoder_layers + 1, f"Whisper encoder {name!r}")
        self.preprocess = preprocess or AudioPreprocess(16000, "log_mel", n_mels=config.num_mel_bins)

    def _pad_value(self, mel: Tensor) -> Tensor:
        """The normalised log-mel of silence for this clip: Whisper clamps to (max - 8) in log10,
        then maps x -> (x + 4) / 4, so silence is max(-1.5, item_max - 2)."""
        return torch.clamp(mel.amax(dim=(-2, -1)) - 2.0, min=-1.5)  # [...]

    def _fit(self, mel: Tensor) -> Tensor:
        """Pad (with silence) or crop the last dim of [..., n_mels, frames] to the window."""
        frames = mel.shape[-1]
        if frames >= self.window:
            return mel[..., : self.window]
        pad = self._pad_value(mel)[..., None, None].expand(*mel.shape[:-1], self.window - frames)
        return torch.cat([mel, pad], dim=-1)  # [..., n_mels, window]

    def forward(self, x: Tensor) -> Tensor:
        """[B, n_mels, frames] -> [B, max_source_positions, D]; inputs that are not the window
        length are padded with silence or cropped (use ``encode`` to drop the padded tokens)."""
        if x.shape[-2] != self.whisper_config.num_mel_bins:
            raise UserError(f"{self.name}: expected {self.whisper_config.num_mel_bins} mel bins, got {x.shape[-2]}")
        x = self._fit(x)  # [B, n_mels, window]
        out = self.model(input_features=x, output_hidden_states=self.feature_layer != -1)
        if self.feature_layer == -1:
            return out.last_hidden_state  # [B, P, D]
        return out.hidden_states[self.feature_layer]  # [B, P, D]

    @property
    def frame_rate(self) -> float:
        """Tokens per second of audio: mel frames per second, halved by conv2."""
        return self.preprocess.sample_rate / self.preprocess.hop_length / 2  # type: ignore[attr-defined]

    def token_count(self) -> StridedFrames:
        """Tokens of real audio: conv2 (kernel 3, stride 2, pad 1) maps L frames to ceil(L/2);
        windows are even, so chunking keeps the total at ceil(frames / 2)."""
        return StridedFrames(2)

    def encode(self, items: list[Tensor]) -> list[Tensor]:
        """Clips of any length -> [ceil(frames_i / 2), D] each: every clip is cut into windows
        (the last one padded with silence), all windows run as one batch, padded tokens go."""
        windows: list[Tensor] = []
        owners: list[tuple[int, int]] = []  # (item index, valid tokens in this window)
        for i, mel in enumerate(items):
            for start in range(0, max(1, mel.shape[-1]), self.window):
                chunk = mel[:, start : start + self.window]  # [n_mels, <= window]
                windows.append(self._fit(chunk))
                owners.append((i, (chunk.shape[-1] + 1) // 2))
        feats = self.forward(self._to_model(torch.stack(windows)))  # [W, P, D]
        parts: list[list[Tensor]] = [[] for _ in items]
        for (i, valid), f in zip(owners, feats, strict=True):
            parts[i].append(f[:valid])  # [valid, D]
        return [torch.cat(p) for p in parts]  # [T_i, D]

    def weights_module(self) -> nn.Module:
        return self.model

    def spec_args(self) -> dict[str, Any]:
        return {"config": self.whisper_config.to_dict()}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> WhisperAudioEncoder:
        return cls(spec["name"], spec["config"], preprocess_from_dict(spec["preprocess"]), spec["feature_layer"])  # type: ignore[arg-type]


def whisper_preprocess(folder_cfg: dict[str, Any] | None, n_mels: int) -> AudioPreprocess:
    """AudioPreprocess from a WhisperFeatureExtractor's preprocessor_config.json (if any)."""
    cfg = folder_cfg or {}
    return AudioPreprocess(
        sample_rate=cfg.get("sampling_rate", 16000),
        features="log_mel",
        n_mels=cfg.get("feature_size", n_mels),
        n_fft=cfg.get("n_fft", 400),
        hop_length=cfg.get("hop_length", 160),
    )


TINY_WHISPER_CFG: dict[str, Any] = {
    "d_model": 64, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 128,
    "decoder_layers": 1, "decoder_attention_heads": 2, "decoder_ffn_dim": 128,
    "num_mel_bins": 80, "max_source_positions": 50,  # window 100 mel frames = 1 s
}  # fmt: skip


@register_encoder("whisper:tiny", "audio", "Whisper encoder, d_model 64, 2 layers, 1 s window (100 mel frames) (tests)")
def whisper_tiny(*, weights: str | None = None, feature_layer: int | None = None, **kw: Any) -> Encoder:
    from transformers import WhisperConfig

    check_config_options("whisper:tiny", WhisperConfig, kw)
    enc = WhisperAudioEncoder(
        "whisper:tiny", WhisperConfig(**(TINY_WHISPER_CFG | kw)), None, -1 if feature_layer is None else feature_layer
    )
    if weights:
        enc.load_weights(weights)
    return enc


# Whisper-base's encoder shape (d_model 512, 6 layers, 8 heads, FFN 2048, 80 mels, the 30 s window).
BASE_WHISPER_CFG: dict[str, Any] = {
    "d_model": 512, "encoder_layers": 6, "encoder_attention_heads": 8, "encoder_ffn_dim": 2048,
    "decoder_layers": 1, "decoder_attention_heads": 8, "decoder_ffn_dim": 2048,
    "num_mel_bins": 80, "max_source_positions": 1500,
}  # fmt: skip


@register_encoder("whisper:base", "audio", "Whisper-base-shaped encoder, d_model 512, 6 layers, 30 s window; random unless weights=")
def whisper_base(*, weights: str | None = None, feature_layer: int | None = None, **kw: Any) -> Encoder:
    from transformers import WhisperConfig

    check_config_options("whisper:base", WhisperConfig, kw)
    enc = WhisperAudioEncoder(
        "whisper:base", WhisperConfig(**(BASE_WHISPER_CFG | kw)), None, -1 if feature_layer is None else feature_layer
    )
    if weights:
        enc.load_weights(weights)
    return enc
