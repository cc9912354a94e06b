"""The one Encoder interface and the preprocessing objects that feed it.

Every encoder in the suite (vision, audio, music, video) is an ``nn.Module`` with
``modality``, ``output_dim``, ``name``, ``preprocess``, ``feature_layer`` and
``forward(x) -> [B, T, D]``. Preprocessing travels with the encoder: it carries the
mean/std, size and sample rate of the weights (timm ``PretrainedCfg`` style), so a
caller never has to know how to feed an encoder.

[Contract] ``preprocess(raw)`` returns the input of ONE item; ``forward`` takes a batch of
such items stacked on dim 0; ``encode`` takes a list of items of possibly different shapes.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlm.errors import UserError
from vlm.registry import Registry

# [Contract] interpolation names are torchvision's InterpolationMode values.
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def as_pil(image: Any):
    """A PIL image, a uint8 HWC array or a CHW tensor -> an RGB PIL image, upright (`vlm.modalities.to_rgb`:
    16-bit and float images scaled to 8 bits, not clipped; `upright`: a PIL image opened from a phone photo
    still carries its EXIF orientation, applied here as decoding applies it to bytes and files; an image
    turned already has none left); an image with no pixels is a one-line error."""
    from PIL import Image

    from vlm.modalities import MediaError, short_error, to_rgb, upright
    if isinstance(image, Tensor):
        from torchvision.transforms.functional import to_pil_image

        image = to_pil_image(image)
    elif not isinstance(image, Image.Image):
        try:
            image = Image.fromarray(image)
        except (TypeError, ValueError, AttributeError) as e:
            raise UserError(f"not an image: a {type(image).__name__} ({short_error(e)}); give a PIL image, "
                            f"a uint8 HWC array, a CHW tensor or a file path") from None
    try:
        return to_rgb(upright(image))
    except MediaError as e:
        raise UserError(f"image: {e}") from None


class Preprocess:
    """Base of the preprocessing objects: a callable with its settings as attributes."""

    kind: ClassVar[str] = ""

    def __call__(self, raw: Any) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "kind")
        return f"{type(self).__name__}({args})"


MAX_IMAGE_SIDE = 8192           # an encoder's input side; larger is a typo (a [100000, 100000] input is 30 GB)
# a centre crop never needs more of the image than this ratio of long to short side: beyond it the resize only
# makes pixels the crop throws away (a 1 x 2,000,000 PNG of 6 KB resized to a 32-pixel short side is 6 GB)
MAX_ASPECT = 32


def _check_image_settings(size: Any, mean: Any, std: Any, crop_pct: Any) -> None:
    """An image preprocess's settings (from code or a checkpoint's config.json), one line naming the field: a size
    that is not 1 or 2 whole numbers in [1, MAX_IMAGE_SIDE], mean / std that are not 3 numbers (std > 0), a crop_pct
    outside (0, 4] were tracebacks at the first image (or a 30 GB allocation)."""
    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    sides = list(size) if isinstance(size, (list, tuple)) else [size]
    if not (1 <= len(sides) <= 2 and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_IMAGE_SIDE
                                         for v in sides)):
        raise UserError(f"image preprocess 'size': one or two whole numbers in [1, {MAX_IMAGE_SIDE}] (pixels), got "
                        f"{size!r}")
    for name, v in (("mean", mean), ("std", std)):
        if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(number(x) for x in v)):
            raise UserError(f"image preprocess '{name}': three numbers (one per RGB channel), got {v!r}")
    if not all(x > 0 for x in std):
        raise UserError(f"image preprocess 'std': every value > 0 (it divides), got {list(std)!r}")
    if not (number(crop_pct) and 0 < crop_pct <= 4):      # timm's volo presets use 1.15 (the crop pads)
        raise UserError(f"image preprocess 'crop_pct': a number in (0, 4] (the crop's side over the resized side; "
                        f"timm's convention), got {crop_pct!r}")


class ImagePreprocess(Preprocess):
    """PIL image -> float tensor [3, H, W], as timm / open_clip eval transforms do it.

    ``crop=True``: resize the shorter side to ``size / crop_pct`` then centre-crop ``size``;
    ``crop=False``: resize (squash) to exactly ``size``.
    ``backend="pil"``: torchvision's transforms on the PIL image (timm, open_clip);
    ``backend="hf"``: what transformers' image processors do by default (their torchvision backend:
    antialiased resize of the uint8 tensor, a centre crop at floor offsets, rescale and normalise in one
    step), so an HF tower's pixels are the ones ``AutoProcessor`` gives for its exported folder, bit for bit,
    for RGB images of any shape up to 32:1. Every image first goes through `as_pil` (16-bit scaled, EXIF
    applied, an alpha channel dropped as LLaVA's and open_clip's loaders drop it, where transformers
    composites it on white) and, when cropping, `_centre` (an image longer than 32:1 cut to its centre).
    """

    kind = "image"

    def __init__(
        self,
        size: int | tuple[int, int],
        mean: tuple[float, ...] | list[float],
        std: tuple[float, ...] | list[float],
        interpolation: str = "bicubic",
        crop: bool = True,
        crop_pct: float = 1.0,
        backend: str = "pil",
    ) -> None:
        from torchvision import transforms as T

        if interpolation not in _INTERPOLATIONS:
            raise UserError(f"unknown interpolation {interpolation!r}; use one of {_INTERPOLATIONS}")
        if backend not in ("pil", "hf"):
            raise UserError(f"unknown image preprocess backend {backend!r}; use 'pil' or 'hf'")
        self.backend = backend
        _check_image_settings(size, mean, std, crop_pct)
        self.size = _pair(size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.interpolation = interpolation
        self.crop = bool(crop)
        self.crop_pct = float(crop_pct)
        mode = T.InterpolationMode(interpolation)
        if self.crop:
            h, w = self.size
            # timm: scale = size / crop_pct; the shorter side goes to it (a square target).
            resize: Any = T.Resize(int(math.floor(min(h, w) / self.crop_pct)), interpolation=mode)
            steps = [resize, T.CenterCrop(self.size)]
        else:
            steps = [T.Resize(self.size, interpolation=mode)]
        self._transform = T.Compose([*steps, T.ToTensor(), T.Normalize(self.mean, self.std)])
        # transformers fuses rescale (1/255) into normalise: mean and std scaled by 255 in float32
        self._hf_mean = (torch.tensor(self.mean, device="cpu") * (1.0 / (1 / 255))).tolist()
        self._hf_std = (torch.tensor(self.std, device="cpu") * (1.0 / (1 / 255))).tolist()

    def _centre(self, image: Any):
        """An RGB PIL image whose long side is over MAX_ASPECT times its short side, cut to its centre of that
        ratio when the preprocess crops (the crop keeps far less of it); any other image as it is. Such an
        image's pixels differ from the uncut resize's by rounding only (the resize's scale is the cut image's)."""
        if not self.crop:
            return image
        w, h = image.size
        if w > MAX_ASPECT * h:
            left = (w - MAX_ASPECT * h) // 2
            return image.crop((left, 0, left + MAX_ASPECT * h, h))
        if h > MAX_ASPECT * w:
            top = (h - MAX_ASPECT * w) // 2
            return image.crop((0, top, w, top + MAX_ASPECT * w))
        return image

    def __call__(self, image: Any) -> Tensor:
        """``image``: a PIL image, a uint8 HWC array or a CHW tensor -> [3, H, W] float."""
        image = self._centre(as_pil(image))
        if self.backend == "hf":
            return self._hf(image)
        return self._transform(image)  # [3, H, W] (as_pil gave RGB)

    def batch(self, images: list[Any]) -> list[Tensor]:
        """`[self(x) for x in images]`, the same values bit for bit; with the "hf" backend the images of one
        size go through the resize / crop / normalise as one tensor (the per-image calls cost more than
        the arithmetic of a small image)."""
        if self.backend != "hf":
            return [self(x) for x in images]
        return list(self.normalize(torch.stack(self.pixels(images))).unbind(0)) if images else []

    def pixels(self, images: list[Any]) -> list[Tensor]:
        """The uint8 [3, H, W] crops of ``images``, before the float conversion and the normalisation:
        ``normalize(pixels([x])[0])`` is ``self(x)`` bit for bit (both backends). A loader worker hands
        these to the process that runs the model, a quarter of the bytes of the float pixels."""
        if self.backend != "hf":
            return [self._pil_pixels(self._centre(as_pil(x))) for x in images]
        import numpy as np
        from PIL import Image

        from vlm.modalities import orientation
        out: list[Tensor | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, x in enumerate(images):                      # one resize for the upright RGB images of one size
            if isinstance(x, Image.Image) and x.mode == "RGB" and x.width and x.height and orientation(x) == 1 \
                    and self._centre(x) is x:
                groups.setdefault(x.size, []).append(i)
            else:
                out[i] = self._hf_crop(self._hf_uint8(self._centre(as_pil(x))))
        for idx in groups.values():
            x = torch.from_numpy(np.stack([np.asarray(images[i]) for i in idx])).permute(0, 3, 1, 2).contiguous()
            for i, t in zip(idx, self._hf_crop(x).unbind(0)):
                out[i] = t
        return out  # type: ignore[return-value]

    def normalize(self, x: Tensor) -> Tensor:
        """uint8 [..., 3, H, W] from `pixels` -> the float input of the encoder: the last steps of `__call__`
        as the libraries do them, so the same values: transformers' fused rescale + normalise (x - 255 mean)
        / (255 std) in float32, or ToTensor's x / 255 then Normalize's (x - mean) / std."""
        if self.backend == "hf":
            x, mean, std = x.to(torch.float32), self._hf_mean, self._hf_std
        else:
            x, mean, std = x.to(torch.get_default_dtype()).div(255), self.mean, self.std
        return x.sub(torch.tensor(mean, dtype=x.dtype).view(-1, 1, 1)).div_(torch.tensor(std, dtype=x.dtype).view(-1, 1, 1))

    def _pil_pixels(self, image: Any) -> Tensor:
        """The PIL path's resize and crop, then ToTensor's uint8 CHW stage (of an RGB image: `as_pil`'s)."""
        import numpy as np

        for step in self._transform.transforms[:-2]:  # resize [, centre crop]; then ToTensor, Normalize
            image = step(image)
        return torch.from_numpy(np.array(image, np.uint8, copy=True)).permute(2, 0, 1).contiguous()

    def _hf_uint8(self, image: Any) -> Tensor:
        import numpy as np
        from transformers.image_transforms import convert_to_rgb

        return torch.from_numpy(np.array(convert_to_rgb(image, return_numpy=True))).permute(2, 0, 1).contiguous()

    def _hf(self, image: Any) -> Tensor:
        """transformers' TorchvisionBackend: resize(shortest_edge | height x width), center_crop, fused
        rescale + normalise (image_processing_backends.py), for one image."""
        return self.normalize(self._hf_crop(self._hf_uint8(image)))  # [3, H, W] uint8 -> float

    def _hf_crop(self, x: Tensor) -> Tensor:
        """[..., 3, H, W] uint8 -> [..., 3, h, w] uint8: the resize and crop of `_hf`."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as tvF

        (h, w), (th, tw) = x.shape[-2:], self.size
        if self.crop:
            short = int(math.floor(min(th, tw) / self.crop_pct))
            size = (int(short * h / w), short) if w <= h else (short, int(short * w / h))
        else:
            size = (th, tw)
        if size != (h, w):
            x = tvF.resize(x, list(size), interpolation=InterpolationMode(self.interpolation), antialias=True)
        if self.crop:
            h, w = x.shape[-2:]
            top, left = int((h - th) / 2.0), int((w - tw) / 2.0)
            x = x[..., top:top + th, left:left + tw]
        return x

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "size": list(self.size),
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "crop": self.crop,
            "crop_pct": self.crop_pct,
            "backend": self.backend,
        }


def scale_loud(w: Tensor, valid: Tensor | None = None) -> Tensor:
    """[B, N] clips (or one clip [N]) whose peak (over `valid` samples; default all) is finite but far beyond any
    audio scale (> 1e6) divided by it: the float32 sum of squares of such a clip overflows (1e19 normalised to all
    zeros, 1e36 to NaN; an in-batch noise mixture's power ratio to inf; a log-mel's power to inf). Every other clip
    is returned bit for bit (x / 1.0 is exact)."""
    if w.dim() == 1:
        return scale_loud(w[None], None if valid is None else valid[None])[0]
    scaled = w.abs() if valid is None else w.abs() * valid
    peak = scaled.amax(1, keepdim=True) if w.numel() else w.new_zeros(w.shape[0], 1)
    big = peak > 1e6
    return w / torch.where(big, peak, torch.ones_like(peak)) if bool(big.any()) else w


def normalize_waveform(wave: Tensor, lengths: Tensor | None = None) -> Tensor:
    """Zero mean, unit variance per clip over its real samples (Wav2Vec2FeatureExtractor `do_normalize`);
    [B, N] with `lengths` [B] (padding stays zero) or [N]. Silence stays zero (no division by zero)."""
    one = wave.dim() == 1
    w = wave[None] if one else wave
    if lengths is None:
        lengths = torch.full((w.shape[0],), w.shape[1], device=w.device)
    valid = torch.arange(w.shape[1], device=w.device)[None] < lengths[:, None]          # [B, N]
    n = valid.sum(1, keepdim=True).clamp(min=1)
    w = scale_loud(w, valid)
    mean = (w * valid).sum(1, keepdim=True) / n
    var = (((w - mean) * valid) ** 2).sum(1, keepdim=True) / n
    out = (w - mean) / torch.sqrt(var + 1e-7) * valid
    return out[0] if one else out


MIN_RATE, MAX_RATE = 100, 1_000_000        # sample rates audio can have (outside: a broken header)


def resample_ratio(orig: int, new: int) -> tuple[int, int]:
    """(orig, new) for torchaudio's resample. Its kernel is [new/g, orig/g + width] for g = gcd(orig, new): a
    common rate is a small ratio (44.1 kHz -> 24 kHz: 147 -> 80), an odd one is not (6007 Hz: 6007 -> 24000,
    gigabytes per clip). Such a ratio is replaced by the nearest one with a denominator <= 200 (an error of
    < 3e-5 in pitch); a rate outside 100 Hz - 1 MHz is a one-line error."""
    import math
    from fractions import Fraction

    if not MIN_RATE <= orig <= MAX_RATE:
        raise UserError(f"audio sample rate {orig} Hz is outside {MIN_RATE} Hz - {MAX_RATE // 1_000_000} MHz")
    g = math.gcd(orig, new)
    if max(orig, new) // g <= 1000:
        return orig, new
    f = Fraction(new, orig).limit_denominator(200)
    return f.denominator, f.numerator


class AudioPreprocess(Preprocess):
    """``(waveform [C, N] or [N], sr)`` -> the encoder input of one clip.

    ``features="log_mel"`` (Whisper): mono, resampled, log-mel [n_mels, frames] of the
    ACTUAL length (``frames = N // hop_length``, no padding to the 30 s window), computed
    as Whisper's feature extractor does: power STFT (hann, n_fft 400, hop 160 at 16 kHz),
    Slaney mel filters, ``log10(max(x, 1e-10))``, dynamic range clamped to 8, ``(x + 4) / 4``.
    ``features="waveform"`` (HuBERT / MERT): mono, resampled, zero-mean unit-variance [N]
    when ``normalize`` (as Wav2Vec2FeatureExtractor ``do_normalize``).
    A path (str / Path) is read with soundfile.
    """

    kind = "audio"

    def __init__(
        self,
        sample_rate: int,
        features: str = "waveform",
        n_mels: int = 80,
        n_fft: int = 400,
        hop_length: int = 160,
        normalize: bool = True,
    ) -> None:
        if features not in ("waveform", "log_mel"):
            raise UserError(f"unknown audio features {features!r}; use 'waveform' or 'log_mel'")
        self.sample_rate = int(sample_rate)
        self.features = features
        self.n_mels = int(n_mels)
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        self.normalize = bool(normalize)
        self._mel: nn.Module | None = None

    def _mel_transform(self) -> nn.Module:
        if self._mel is None:
            import torchaudio

            self._mel = torchaudio.transforms.MelSpectrogram(
                sample_rate=self.sample_rate,
                n_fft=self.n_fft,
                hop_length=self.hop_length,
                n_mels=self.n_mels,
                power=2.0,
                norm="slaney",
                mel_scale="slaney",
                center=True,
                pad_mode="reflect",
            )
        return self._mel

    def load(self, raw: Any, sr: int | None = None) -> Tensor:
        """Raw input -> mono float waveform [N] at ``sample_rate``."""
        import torchaudio.functional as AF

        if isinstance(raw, tuple):
            raw, sr = raw
        if isinstance(raw, (str, Path)):
            import soundfile as sf

            data, sr = sf.read(str(raw), dtype="float32", always_2d=True)  # [N, C]
            raw = torch.from_numpy(data).T  # [C, N]
        if sr is None:
            raise UserError("audio preprocess needs the sample rate: call it with (waveform, sr)")
        wav = torch.as_tensor(raw, dtype=torch.float32)
        if wav.dim() == 2:
            wav = wav.mean(dim=0)  # [C, N] -> [N] mono
        if wav.dim() != 1:
            raise UserError(f"audio waveform must be [C, N] or [N], got shape {tuple(wav.shape)}")
        if int(sr) != self.sample_rate:
            wav = AF.resample(wav, *resample_ratio(int(sr), self.sample_rate))  # [N']
        return wav

    # waveform: a clip shorter than this is zero-padded to it (the encoder sets it: its conv front end's
    # receptive field, so the shortest clip still gives one frame instead of a convolution error)
    min_samples: int = 0

    def __call__(self, raw: Any, sr: int | None = None) -> Tensor:
        wav = self.load(raw, sr)  # [N]
        if self.features == "waveform":
            if wav.numel() < self.min_samples:
                wav = torch.nn.functional.pad(wav, (0, self.min_samples - wav.numel()))
            if self.normalize:
                wav = normalize_waveform(wav)
            return wav  # [N]
        if wav.numel() <= self.n_fft // 2:       # the STFT's reflect padding needs more (a traceback before)
            raise UserError(f"audio clip too short: {wav.numel()} samples at {self.sample_rate} Hz; the log-mel needs "
                            f"more than {self.n_fft // 2} ({1000 * (self.n_fft // 2 + 1) / self.sample_rate:.1f} ms)")
        # a float clip far beyond any audio scale (peak > 1e6) overflows the power spectrum to inf / NaN features:
        # scaled to a peak of 1 (every other clip bit for bit)
        wav = scale_loud(wav)
        mel = self._mel_transform()(wav)[:, :-1]  # [n_mels, N // hop]; Whisper drops the last frame
        if mel.shape[-1] == 0:
            raise UserError(f"audio clip too short: {wav.numel()} samples < hop {self.hop_length}")
        log_spec = torch.clamp(mel, min=1e-10).log10()
        log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
        if not torch.isfinite(log_spec).all():     # (the samples were checked finite where they were decoded)
            raise UserError("audio clip gives non-finite log-mel features (NaN or inf samples?)")
        return (log_spec + 4.0) / 4.0  # [n_mels, frames]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "sample_rate": self.sample_rate,
            "features": self.features,
            "n_mels": self.n_mels,
            "n_fft": self.n_fft,
            "hop_length": self.hop_length,
            "normalize": self.normalize,
        }


class VideoPreprocess(Preprocess):
    """mp4 path or bytes -> [F, 3, H, W]: ``num_frames`` frames sampled uniformly with decord,
    each through the image preprocess. A list of PIL images / a uint8 [F, H, W, 3] array is
    accepted too (already decoded frames, sampled the same way)."""

    kind = "video"

    def __init__(self, num_frames: int, image: ImagePreprocess) -> None:
        if num_frames < 1:
            raise UserError(f"num_frames must be >= 1, got {num_frames}")
        self.num_frames = int(num_frames)
        self.image = image

    def frame_indices(self, total: int) -> list[int]:
        """Uniform sampling: the centres of ``num_frames`` equal segments of the clip."""
        step = total / self.num_frames
        return [min(total - 1, int(step * (i + 0.5))) for i in range(self.num_frames)]

    def decode(self, raw: Any) -> list[Any]:
        """Raw video -> the sampled frames as PIL images."""
        from PIL import Image

        if isinstance(raw, (str, Path, bytes, bytearray)):
            import decord

            src = io.BytesIO(bytes(raw)) if isinstance(raw, (bytes, bytearray)) else str(raw)
            what = str(raw) if isinstance(raw, (str, Path)) else f"{len(raw)} bytes of video"
            try:
                reader = decord.VideoReader(src, ctx=decord.cpu(0), num_threads=1)
                if len(reader) == 0:
                    raise UserError(f"video {raw if isinstance(raw, (str, Path)) else '(bytes)'} has no frames")
                frames = reader.get_batch(self.frame_indices(len(reader))).asnumpy()  # [F, H, W, 3] uint8
            except UserError:
                raise
            except Exception as err:  # decord raises its own DECORDError (opening, or a frame that does not decode)
                raise UserError(f"cannot decode video {what}: {str(err).splitlines()[0]}") from err
            return [Image.fromarray(f) for f in frames]
        frames_in = list(raw)
        return [frames_in[i] for i in self.frame_indices(len(frames_in))]

    def __call__(self, raw: Any) -> Tensor:
        return torch.stack([self.image(f) for f in self.decode(raw)])  # [F, 3, H, W]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "num_frames": self.num_frames, "image": self.image.to_dict()}


def preprocess_from_dict(d: dict[str, Any]) -> Preprocess:
    """Inverse of ``Preprocess.to_dict``."""
    args = {k: v for k, v in d.items() if k != "kind"}
    kind = d.get("kind")
    if kind == "image":
        return ImagePreprocess(**args)
    if kind == "audio":
        return AudioPreprocess(**args)
    if kind == "video":
        return VideoPreprocess(args["num_frames"], preprocess_from_dict(args["image"]))  # type: ignore[arg-type]
    raise UserError(f"unknown preprocess kind {kind!r} in encoder spec")


SPEC_KINDS: Registry[type[Encoder]] = Registry("encoder spec kind")   # Encoder subclasses by `kind`


# ---------------------------------------------------------------------------------------------
# token counts: one item's shape -> the encoder's tokens for it, without the encoder
# ---------------------------------------------------------------------------------------------
class TokenCount:
    """[Contract] a pure, picklable function of one preprocessed item's shape; data workers carry it
    (not the model) to expand placeholders to exactly as many tokens as the encoder will give."""

    prefix: int = 0                               # tokens before the patch grid (CLS, registers)

    def __call__(self, item: Any) -> int:
        return self.count(tuple(item.shape))

    def count(self, shape: tuple[int, ...]) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def grid(self, shape: tuple[int, ...]) -> tuple[int, int] | None:
        """(rows, cols) of the patch tokens after the prefix, or None if the tokens are not a grid."""
        return None


@dataclass(frozen=True)
class GridTokens(TokenCount):
    """Patch tokens of a ViT-style encoder: prefix + ceil(H/ph / pool) * ceil(W/pw / pool)."""

    patch: tuple[int, int]
    prefix: int = 0
    pool: int = 1

    def grid(self, shape: tuple[int, ...]) -> tuple[int, int]:
        return shape[-2] // self.patch[0], shape[-1] // self.patch[1]

    def count(self, shape: tuple[int, ...]) -> int:
        h, w = self.grid(shape)
        return self.prefix + math.ceil(h / self.pool) * math.ceil(w / self.pool)


@dataclass(frozen=True)
class ConvFrames(TokenCount):
    """Frames after a stack of unpadded 1-D convolutions over the last dim: L -> (L - k) // s + 1 each."""

    kernels: tuple[int, ...]
    strides: tuple[int, ...]

    def count(self, shape: tuple[int, ...]) -> int:
        length = int(shape[-1])
        for k, s in zip(self.kernels, self.strides, strict=True):
            length = (length - k) // s + 1
        return max(0, length)

    def min_length(self) -> int:
        """The shortest input that gives one frame (the stack's receptive field): `count` run backwards."""
        length = 1
        for k, s in zip(reversed(self.kernels), reversed(self.strides), strict=True):
            length = (length - 1) * s + k
        return length


@dataclass(frozen=True)
class StridedFrames(TokenCount):
    """ceil(L / stride) over the last dim (a padded strided convolution, e.g. Whisper's conv2)."""

    stride: int

    def count(self, shape: tuple[int, ...]) -> int:
        return (int(shape[-1]) + self.stride - 1) // self.stride


@dataclass(frozen=True)
class PerFrame(TokenCount):
    """A clip [F, ...]: F times the tokens of one frame."""

    frame: TokenCount

    def count(self, shape: tuple[int, ...]) -> int:
        return int(shape[0]) * self.frame.count(shape[1:])


class ProbedTokens(TokenCount):
    """Any encoder: rebuild its architecture from its spec on the meta device (no weights, no memory)
    and run it on a meta tensor of the item's shape; cached per shape. Pickles as the spec alone."""

    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self._cache: dict[tuple[int, ...], int] = {}
        self._encoder: Encoder | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "_cache": dict(self._cache), "_encoder": None}

    def count(self, shape: tuple[int, ...]) -> int:
        if shape not in self._cache:
            if self._encoder is None:
                with torch.device("meta"):
                    self._encoder = spec_class(self.spec["kind"]).from_spec(self.spec)
            with torch.no_grad():
                self._cache[shape] = int(self._encoder(torch.empty((1, *shape), device="meta")).shape[1])
        return self._cache[shape]


class Encoder(nn.Module):
    """Token features of one modality: ``forward(x [B, ...]) -> [B, T, D]``.

    Subclasses declare ``class X(Encoder, kind="...")`` so ``build_encoder_from_spec`` can
    rebuild them from ``spec()``; they implement ``forward``, ``spec_args`` and ``from_spec``.
    """

    modality: str
    output_dim: int
    name: str
    preprocess: Preprocess
    feature_layer: int
    kind: ClassVar[str] = ""
    # Tokens before the patch grid in forward's output (CLS, registers); 0 for audio.
    num_prefix_tokens: int = 0

    def __init_subclass__(cls, kind: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if kind is not None:
            cls.kind = kind
            SPEC_KINDS.register(kind, cls)

    # ----------------------------------------------------------------- interface
    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def token_count(self) -> TokenCount:
        """The picklable shape -> tokens function of this encoder (what data workers carry instead of
        the encoder); default: a dry run of the architecture on the meta device, cached per shape."""
        return ProbedTokens(self.spec())

    def num_tokens(self, item: Tensor) -> int:
        """T for ONE preprocessed item (its shape decides)."""
        count = self.__dict__.get("_token_count")
        if count is None:
            count = self.__dict__["_token_count"] = self.token_count()
        return count(item)

    def patch_grid(self, item: Tensor) -> tuple[int, int] | None:
        """(rows, cols) of the patch tokens after the prefix tokens, or None if not a grid."""
        return None

    def encode(self, items: list[Tensor]) -> list[Tensor]:
        """Variable-size items -> list of [T_i, D]: same-shaped items run as one batch."""
        return self.by_shape(items, self.forward)

    def by_shape(self, items: list[Tensor], run) -> list[Tensor]:
        """`run` ([b, ...] model input -> [b, ...] output) on each group of same-shaped items, stacked; the
        outputs back in the items' order."""
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, item in enumerate(items):
            groups[tuple(item.shape)].append(i)
        out: list[Tensor | None] = [None] * len(items)
        for idx in groups.values():
            feats = run(self._to_model(torch.stack([items[i] for i in idx])))
            for j, i in enumerate(idx):
                out[i] = feats[j]
        return out  # type: ignore[return-value]

    def encode_layers(self, items: list[Tensor], n_layers: int) -> list[Tensor]:
        """Variable-size items -> list of [n_layers + 1, T_i, D]: the features at every `feature_layer` 0..n
        (MARBLE probes). This one encodes the items once per layer; an encoder whose model hands out every
        hidden state in one pass overrides it."""
        saved = self.feature_layer
        try:
            per_layer = []
            for k in range(n_layers + 1):
                self.feature_layer = k
                per_layer.append(self.encode(items))
        finally:
            self.feature_layer = saved
        return [torch.stack([layer[i] for layer in per_layer]) for i in range(len(items))]

    def spec(self) -> dict[str, Any]:
        """JSON-serialisable description; ``build_encoder_from_spec`` rebuilds the same
        architecture (random weights, no file access) so a checkpoint loads into it."""
        return {
            "kind": self.kind,
            "name": self.name,
            "feature_layer": self.feature_layer,
            "preprocess": self.preprocess.to_dict(),
            **self.spec_args(),
        }

    def spec_args(self) -> dict[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Encoder:  # pragma: no cover - interface
        raise NotImplementedError

    def weights_module(self) -> nn.Module:
        """The module that a native checkpoint of this architecture fits (timm / HF / open_clip)."""
        return self

    def load_weights(self, path: str | Path) -> None:
        """Load a local .safetensors file into this encoder (its own state_dict keys, or the
        native keys of the wrapped model, with any common key prefix such as ``model.``)."""
        from encoders.weights import load_into, read_safetensors

        state = read_safetensors(path)
        targets = [self] if self.weights_module() is self else [self, self.weights_module()]
        load_into(targets, state, source=str(path))

    # ------------------------------------------------------------------ helpers
    def _to_model(self, x: Tensor) -> Tensor:
        """Move a batch to the encoder's device and (floating) dtype."""
        p = next(self.parameters(), None)
        if p is None:
            return x
        return x.to(device=p.device, dtype=p.dtype if x.is_floating_point() else x.dtype)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, modality={self.modality!r}, output_dim={self.output_dim}, "
            f"feature_layer={self.feature_layer}"
        )


def spec_class(kind: str) -> type[Encoder]:
    """The Encoder subclass that rebuilds specs of ``kind``."""
    return SPEC_KINDS.get(kind)


def pool_grid(tokens: Tensor, grid: tuple[int, int], prefix: int, k: int) -> Tensor:
    """Average-pool the patch grid of ``tokens`` [B, prefix + h*w, D] by ``k`` (ceil mode),
    keeping the prefix tokens -> [B, prefix + ceil(h/k)*ceil(w/k), D]."""
    if k <= 1:
        return tokens
    b, _, d = tokens.shape
    h, w = grid
    pre, patches = tokens[:, :prefix], tokens[:, prefix:]  # [B, P, D], [B, h*w, D]
    patches = patches.transpose(1, 2).reshape(b, d, h, w)  # [B, D, h, w]
    pooled = F.avg_pool2d(patches, k, k, ceil_mode=True, count_include_pad=False)  # [B, D, h', w']
    return torch.cat([pre, pooled.flatten(2).transpose(1, 2)], dim=1)  # [B, P + h'*w', D]
