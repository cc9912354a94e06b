"""The modality table: every fact about a modality, in one place that everything reads.

    from vlm.modalities import MODALITIES, modality_of_file
    MODALITIES["music"].placeholder        # "<music>"
    MODALITIES["music"].files              # "audio": music items come from flac / wav / mp3 / ogg files
    MODALITIES["audio"].decode(raw_bytes)  # (waveform [C, N] float32, sample rate)
    MODALITIES["image"].empty()            # a blank raw item (a black image), for encoders that must run

The data pipeline, the model (placeholders, blank items), `vlm chat` (files from the command line)
and the benchmarks all read this table; nothing else keeps a list of modalities.
[Contract] a shard sample's media files fill its placeholders in order, per file kind: the n-th
<image> takes the n-th image file in key order, the n-th <video> the n-th mp4, and audio files
fill the <audio> and <music> placeholders in the order those placeholders appear.
"""
from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# File kinds and their extensions in shards (webdataset field names) and on disk.
FILE_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "image": ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"),    # PIL decodes them all (first frame)
    "audio": ("flac", "wav", "mp3", "ogg"),       # all that soundfile (libsndfile >= 1.1) decodes
    "video": ("mp4",),
}


class MediaError(ValueError):
    """Bytes or a file that do not decode as the modality says; the message is one line. `reason`, when
    set, is the counter the data pipeline files the skipped sample under (default bad_<file kind>)."""

    reason: str | None = None

    def __init__(self, message: object = "", reason: str | None = None):
        super().__init__(message)
        if reason is not None:
            self.reason = reason


def short_error(e: BaseException) -> str:
    """An exception as one line without object addresses (so the same error reads the same every run)."""
    lines = str(e).strip().splitlines()
    text = re.sub(r" ?<[^<>]* at 0x[0-9a-fA-F]+>", "", lines[0] if lines else "")
    return text or type(e).__name__


# ---------------------------------------------------------------------------------------------
# decoders: bytes -> the raw item an encoder's preprocess takes
# ---------------------------------------------------------------------------------------------
def to_rgb(img):
    """A PIL image of any mode -> RGB. PIL's own `convert("RGB")` clips the 16- and 32-bit integer and the
    float modes (I;16, I, F) at 255 instead of scaling them: a 16-bit PNG came out almost all white. Those
    are scaled to 8 bits first (I;16: the high byte; I and F: their min-max range). An image with no
    pixels is a MediaError."""
    import numpy as np
    from PIL import Image

    if img.width == 0 or img.height == 0:
        raise MediaError(f"image has no pixels ({img.width}x{img.height})")
    if img.mode.startswith("I;16"):
        img = Image.fromarray((np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8))
    elif img.mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float64)
        finite = np.isfinite(a)
        if not finite.any():
            raise MediaError(f"image has no finite pixel value ({img.mode} mode, {img.width}x{img.height})")
        # the range of the finite pixels; NaN and -inf read as its low end, +inf as its high end (one NaN pixel
        # made the whole image black)
        lo, hi = float(a[finite].min()), float(a[finite].max())
        a = np.clip(np.nan_to_num(a, nan=lo, posinf=hi, neginf=lo), lo, hi)
        if img.mode == "I" and lo >= 0 and hi <= 255:
            a8 = a.astype(np.uint8)                     # already 8-bit values (an L image opened as I)
        else:
            a8 = ((a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)).round().astype(np.uint8)
        img = Image.fromarray(a8)
    return img if img.mode == "RGB" else img.convert("RGB")


def orientation(img) -> int:
    """The EXIF orientation of an opened image (1: as stored; 2-8: flipped / turned; damaged EXIF: 1)."""
    try:
        o = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001  damaged EXIF: the pixels are still fine
        return 1
    return o if o in (1, 2, 3, 4, 5, 6, 7, 8) else 1


def upright(img, o: int | None = None):
    """The image as it is meant to be seen: an EXIF orientation (a phone photo taken sideways) applied
    (`o`: the image's `orientation`, when the caller has read it already)."""
    from PIL import ImageOps
    return ImageOps.exif_transpose(img) if (orientation(img) if o is None else o) != 1 else img


def upright_box(box: tuple[float, float, float, float], size: tuple[int, int], o: int) -> tuple[float, ...]:
    """A [left, top, right, bottom] box in the stored pixels of a (w, h) image -> the same region in the image
    `upright` makes of it (what PIL's exif_transpose does for EXIF orientation o)."""
    w, h = size
    points = {1: lambda x, y: (x, y), 2: lambda x, y: (w - x, y), 3: lambda x, y: (w - x, h - y),
              4: lambda x, y: (x, h - y), 5: lambda x, y: (y, x), 6: lambda x, y: (h - y, x),
              7: lambda x, y: (h - y, w - x), 8: lambda x, y: (y, w - x)}[o]
    (x0, y0), (x1, y1) = points(box[0], box[1]), points(box[2], box[3])
    return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def decode_image(data: bytes, draft_size: tuple[int, int] | None = None):
    """bytes -> RGB PIL image, upright (its EXIF orientation applied). `draft_size` (w, h) of the upright
    image: let the JPEG decoder scale down by 1/2..1/8 while staying >= that size (DCT-domain scaling: most of
    the decode cost of a big JPEG goes away)."""
    from PIL import Image, ImageFile

    try:
        img = Image.open(io.BytesIO(data))
        o = orientation(img)
        if draft_size is not None and img.format == "JPEG":
            img.draft("RGB", draft_size if o < 5 else draft_size[::-1])     # 5-8 turn the image a quarter
        tolerant = ImageFile.LOAD_TRUNCATED_IMAGES    # set process-wide by lmms-eval's tasks: a cut file would
        ImageFile.LOAD_TRUNCATED_IMAGES = False         # decode half grey and be scored; here it fails (and is
        try:                                            # counted), lmms-eval's own loading is left as it was
            img.load()                      # decode here: a truncated file fails now, not in the encoder's resize
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = tolerant
        return to_rgb(upright(img, o))
    except MediaError:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError ...
        raise MediaError(f"cannot decode image ({len(data)} bytes): {short_error(e)}") from None


def decode_audio(data: bytes, draft_size: Any = None):
    """flac / wav / mp3 / ogg bytes -> (waveform Tensor[C, N] float32, sample rate)."""
    import numpy as np
    import soundfile as sf
    import torch

    try:
        wave, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)  # [N, C]
    except Exception as e:  # soundfile.LibsndfileError, RuntimeError, TypeError on garbage
        raise MediaError(f"cannot decode audio ({len(data)} bytes): {short_error(e)}") from None
    if wave.shape[0] == 0:
        raise MediaError("audio file has no samples")
    if not np.isfinite(wave).all():                 # a float file can hold them; they would poison a whole batch
        raise MediaError(f"audio has {int((~np.isfinite(wave)).sum())} non-finite sample(s) (NaN or Inf)")
    return torch.from_numpy(wave.T.copy()), int(sr)  # [C, N]


def decode_video(data: bytes, draft_size: Any = None) -> bytes:
    """Videos stay bytes: the video encoder's preprocess samples and decodes only the frames it needs."""
    return bytes(data)


def audio_track(container: Any, rate: int, t0: float = 0.0, t1: float | None = None):
    """The first audio stream of an open PyAV container, mono float32 at `rate`, from t0 to t1 seconds
    (None: its end; zero-padded to t1 - t0 when the track is shorter). Seeks to t0 and decodes only the span.
    PyAV, not decord's AudioReader: that one keeps ~0.3 MB per clip it opens (a data worker grew by 10 GB
    in a long omni run). [N] numpy array."""
    import av
    import numpy as np
    stream = container.streams.audio[0]
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    if t0 > 0:
        container.seek(int(t0 / stream.time_base), stream=stream, backward=True)
    chunks, first = [], None
    for frame in container.decode(stream):
        if frame.pts is None:
            continue
        ts = float(frame.pts * stream.time_base)
        if t1 is not None and ts >= t1:
            break
        first = ts if first is None else first
        chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
    chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]      # what it still holds
    wave = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    skip = max(0, int(round((t0 - (first if first is not None else t0)) * rate)))   # decoding began before t0
    wave = wave[skip:]
    if t1 is None:
        return wave
    want = int(round((t1 - t0) * rate))
    return np.pad(wave[:want], (0, max(0, want - wave.shape[0])))


def _black_image():
    from PIL import Image
    return Image.new("RGB", (64, 64))


def _silence():
    import torch
    return torch.zeros(1, 16000), 16000                               # one second, mono


def _black_clip():
    return [_black_image()] * 8                                        # decoded frames; the preprocess samples them


@dataclass(frozen=True)
class Modality:
    name: str
    placeholder: str                              # the token a prompt marks an item with
    files: str                                    # the file kind (FILE_EXTENSIONS) its items come from
    decode: Callable[..., Any]                    # (bytes, draft_size=None) -> raw item
    empty: Callable[[], Any]                      # a blank raw item
    tokens_per_second: float | None = None        # default LLM tokens per second of media (time pooling)

    @property
    def extensions(self) -> tuple[str, ...]:
        return FILE_EXTENSIONS[self.files]


# Qwen2-Audio pools Whisper's 50 Hz by 2 (25 tokens/s); MERT's 75 Hz frames pooled by 4 (18.75 tokens/s)
# keep a music clip of a few seconds at a few dozen tokens (MusiLingo pools far more).
MODALITIES: dict[str, Modality] = {
    "image": Modality("image", "<image>", "image", decode_image, _black_image),
    "audio": Modality("audio", "<audio>", "audio", decode_audio, _silence, tokens_per_second=25.0),
    "music": Modality("music", "<music>", "audio", decode_audio, _silence, tokens_per_second=18.75),
    "video": Modality("video", "<video>", "video", decode_video, _black_clip),
}
PLACEHOLDERS: dict[str, str] = {m.name: m.placeholder for m in MODALITIES.values()}
MODALITY_OF_PLACEHOLDER: dict[str, str] = {v: k for k, v in PLACEHOLDERS.items()}
PLACEHOLDER_RE = re.compile("(" + "|".join(re.escape(p) for p in PLACEHOLDERS.values()) + ")")


def placeholder_modalities(text: str) -> list[str]:
    """The modality of each placeholder in `text`, in order."""
    return [MODALITY_OF_PLACEHOLDER[p] for p in PLACEHOLDER_RE.findall(text)]


def file_kind(ext: str) -> str | None:
    """'jpg' -> 'image', '0.flac' -> 'audio', 'json' -> None."""
    ext = ext.rsplit(".", 1)[-1].lower()
    return next((k for k, exts in FILE_EXTENSIONS.items() if ext in exts), None)


def media_order(name: str) -> tuple[int, str]:
    """Sort key of media fields in key order: numeric prefix first ('2.jpg' before '10.jpg')."""
    head = name.split(".", 1)[0]
    return (int(head), name) if head.isdigit() else (-1, name)


def read_file(modality: str, path: str | Path) -> Any:
    """A media file from disk as the raw item of `modality` (what `vlm chat` and users pass)."""
    p = Path(path)
    if not p.is_file():
        raise MediaError(f"{p}: a folder, not {'an' if modality[0] in 'aeiou' else 'a'} {modality} file" if p.is_dir()
                         else f"{modality} file not found: {p}")
    m = MODALITIES[modality]
    if m.files == "video":
        return str(p)                                               # decord reads the path itself
    return m.decode(p.read_bytes())
