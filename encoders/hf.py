"""``hf:<local folder>``: a transformers checkpoint folder (config.json + safetensors).

CLIP / SigLIP (full model or vision-only config) -> HFVisionEncoder; Whisper -> its encoder;
HuBERT -> the MERT-style music encoder. Never remote code, never a hub download; the spec
stores the config dict, so rebuilding does not need the folder.

    enc = build_encoder("hf:/models/clip-vit-large-patch14-336")   # CLIP: feature_layer -2 unless given
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

from encoders.audio import WhisperAudioEncoder, whisper_preprocess
from encoders.base import AudioPreprocess, Encoder, ImagePreprocess
from encoders.music import MERT_SAMPLE_RATE, HubertMusicEncoder
from encoders.registry import register_encoder
from encoders.vision import _HF_VISION, HFVisionEncoder
from encoders.weights import load_into, read_folder_weights
from vlm.errors import UserError

# model_type in config.json -> (builder family, key holding the vision config or None)
_SUPPORTED: dict[str, tuple[str, str | None]] = {
    "clip": ("clip", "vision_config"),
    "clip_vision_model": ("clip", None),
    "siglip": ("siglip", "vision_config"),
    "siglip_vision_model": ("siglip", None),
    "whisper": ("whisper", None),
    "hubert": ("hubert", None),
}
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise UserError(f"corrupt JSON in {path}: {err}") from err


def _size(value: Any) -> int | tuple[int, int] | None:
    """HF image-processor sizes: int, {"shortest_edge"}, {"height", "width"}."""
    if value is None or isinstance(value, int):
        return value
    if "shortest_edge" in value:
        return int(value["shortest_edge"])
    return int(value["height"]), int(value["width"])


def image_preprocess_from_hf(proc: dict[str, Any], family: str, image_size: int) -> ImagePreprocess:
    """ImagePreprocess from a CLIP / SigLIP preprocessor_config.json (defaults: the family's)."""
    _, _, _, mean, std, crop = _HF_VISION[family]
    crop = bool(proc.get("do_center_crop", crop))
    size = _size(proc.get("crop_size") if crop else proc.get("size")) or image_size
    return ImagePreprocess(
        size=size,
        mean=proc.get("image_mean", mean),
        std=proc.get("image_std", std),
        interpolation=_PIL_RESAMPLE.get(int(proc.get("resample", 3)), "bicubic"),
        crop=crop,
        backend="hf",
    )


def _config_dict(cfg: dict[str, Any], key: str | None, folder: Path) -> dict[str, Any]:
    if key is None:
        return cfg
    sub = cfg.get(key)
    if sub is None:
        return {}  # the vision config class fills its defaults
    if not isinstance(sub, dict):
        raise UserError(f"{folder / 'config.json'}: {key!r} is not an object")
    return sub


@register_encoder("mert:", "music", "a pretrained MERT folder: mert:<folder> (a `vlm train mert-*` checkpoint or any "
                  "transformers HuBERT folder)")
def build_mert_folder(target: str, *, weights: str | None = None, feature_layer: int | None = None,
                      **kw: Any) -> Encoder:
    """``mert:FOLDER``: the HuBERT part of a mert checkpoint (its config.json + model.safetensors; the
    prediction heads beside them are not part of the encoder), as the music encoder of any family."""
    config_path = Path(target).expanduser() / "config.json"
    if config_path.is_file():
        model_type = _read_json(config_path).get("model_type")
        if model_type != "hubert":
            raise UserError(f"mert:{target}: {config_path} is a {model_type!r} model, not a HuBERT / MERT encoder")
    enc = build_hf(target, weights=weights, feature_layer=feature_layer, **kw)
    enc.name = f"mert:{target}"
    return enc


@functools.cache
def _note_rate_assumed(folder: str) -> None:
    """Said once per folder: HuBERT-shaped checkpoints are trained at 16 kHz (HuBERT, wav2vec2) or 24 kHz
    (MERT), and a folder that does not say which is read at MERT's rate."""
    print(f"{folder}: no sampling_rate in preprocessor_config.json; reading its audio at {MERT_SAMPLE_RATE} Hz "
          "(MERT's rate; a checkpoint trained at 16 kHz needs the file or the encoder option sample_rate: 16000)",
          file=sys.stderr)


@register_encoder("hf:", "image|audio|music", "local transformers folder (CLIP, SigLIP, Whisper, HuBERT): hf:<folder>")
def build_hf(target: str, *, weights: str | None = None, feature_layer: int | None = None, **kw: Any) -> Encoder:
    """Build from a local folder; weights from its safetensors (or the ``weights`` file).
    ``allow_random=True`` accepts a folder without weights (random init)."""
    folder = Path(target).expanduser()
    config_path = folder / "config.json"
    if not folder.is_dir():
        raise UserError(f"not a local folder: {folder} (hub names are not downloaded)")
    if not config_path.is_file():
        raise UserError(f"no config.json in {folder}")
    cfg = _read_json(config_path)
    model_type = cfg.get("model_type")
    if model_type not in _SUPPORTED:
        raise UserError(f"unsupported HF model type {model_type!r} in {config_path}; supported: {sorted(_SUPPORTED)}")
    family, key = _SUPPORTED[model_type]
    config = _config_dict(cfg, key, folder)
    proc_path = folder / "preprocessor_config.json"
    proc = _read_json(proc_path) if proc_path.is_file() else {}
    allow_random = kw.pop("allow_random", False)
    # CLIP's default is its penultimate layer, as LLaVA-1.5 reads it and as the clip-vit-l-336 / tiny-clip
    # presets do (the same weights give the same features either way); the others their last layer
    layer = (-2 if family == "clip" else -1) if feature_layer is None else feature_layer
    name = f"hf:{target}"

    enc: Encoder
    if family in _HF_VISION:
        vision = HFVisionEncoder(name, family, config, None, layer, kw.pop("feature_select", None))
        vision.preprocess = image_preprocess_from_hf(proc, family, vision.hf_vision_config.image_size)
        enc = vision
    elif family == "whisper":
        enc = WhisperAudioEncoder(name, config, whisper_preprocess(proc, config.get("num_mel_bins", 80)), layer)
    else:  # hubert: MERT-style music encoder; 24 kHz unless the folder says otherwise
        where = f"{name} option sample_rate" if "sample_rate" in kw else f"{proc_path}: sampling_rate"
        if "sample_rate" not in kw and "sampling_rate" not in proc:
            _note_rate_assumed(str(folder))
        rate = kw.pop("sample_rate", proc.get("sampling_rate", MERT_SAMPLE_RATE))
        normalize = proc.get("do_normalize", True)
        if isinstance(rate, bool) or not isinstance(rate, int) or rate < 1000:
            raise UserError(f"{where} must be an integer number of Hz (>= 1000), got {rate!r}")
        if not isinstance(normalize, bool):
            raise UserError(f"{proc_path}: do_normalize must be true or false, got {normalize!r}")
        pre = AudioPreprocess(rate, "waveform", normalize=normalize)
        enc = HubertMusicEncoder(name, config, pre, layer)
    if kw:
        raise UserError(f"unknown options for {name}: {sorted(kw)}")

    if weights:
        enc.load_weights(weights)
    elif any(folder.glob("*.safetensors")) or not allow_random:
        load_into([enc.weights_module()], read_folder_weights(folder), source=str(folder))
    return enc
