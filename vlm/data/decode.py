"""Decoding one sample's bytes: its conversation and its media, in placeholder order.

    raw = decode_sample(ref.key, read_fields(ref), ref.shard, draft_size=(32, 32))
    raw.turns    # normalised [{'role', 'text'}] (a caption becomes a one-question conversation)
    raw.media    # {"image": [PIL ...], "audio": [(Tensor[C, N], sr)], "music": [...], "video": [mp4 bytes]}

[Contract] (the schema, `vlm.data.writer`): the n-th `<image>` takes the n-th image file in key order,
the n-th `<video>` the n-th mp4; audio files fill `<audio>` and `<music>` placeholders in the order
those placeholders appear. Anything wrong raises `SampleError(reason, message)`; the reader skips the
sample and counts the reason.
"""
from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from vlm.data.template import normalise_conversation, placeholder_modalities
from vlm.data.writer import media_fields
from vlm.errors import UserError

CAPTION_PROMPT = "{placeholder}\nDescribe the {what} briefly."


class SampleError(Exception):
    """A sample that cannot be used; `reason` is the counter it goes to (bad_image, missing_media ...)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class RawSample:
    key: str
    shard: str
    turns: list[dict]                                   # [{'role', 'text'}]
    media: dict[str, list[Any]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)            # the json minus conversations
    caption: bool = False                               # built from a caption, not conversations


def short_error(e: BaseException) -> str:
    """An exception as one line without object addresses (so the same error reads the same every run)."""
    lines = str(e).strip().splitlines()
    text = re.sub(r" ?<[^<>]* at 0x[0-9a-fA-F]+>", "", lines[0] if lines else "")
    return text or type(e).__name__


# ---------------------------------------------------------------------------------------------
# media
# ---------------------------------------------------------------------------------------------
def decode_image(data: bytes, draft_size: tuple[int, int] | None = None):
    """bytes -> RGB PIL image. `draft_size` (w, h): let the JPEG decoder scale down by 1/2..1/8 while
    staying >= that size (DCT-domain scaling: most of the decode cost of a big JPEG goes away)."""
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        if draft_size is not None and img.format == "JPEG":
            img.draft("RGB", draft_size)
        return img.convert("RGB")
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError ...
        raise SampleError("bad_image", f"cannot decode image ({len(data)} bytes): {short_error(e)}") from None


def decode_audio(data: bytes) -> tuple[torch.Tensor, int]:
    """flac/wav bytes -> (waveform Tensor[C, N] float32, sample rate)."""
    import soundfile as sf

    try:
        wave, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)  # [N, C]
    except Exception as e:  # soundfile.LibsndfileError, RuntimeError, TypeError on garbage
        raise SampleError("bad_audio", f"cannot decode audio ({len(data)} bytes): {short_error(e)}") from None
    if wave.shape[0] == 0:
        raise SampleError("bad_audio", "audio file has no samples")
    return torch.from_numpy(wave.T.copy()), int(sr)  # [C, N]


def draft_size_of(preprocess: Any) -> tuple[int, int] | None:
    """The smallest decode size (w, h) an ImagePreprocess still resizes *down* from, if it says."""
    size = getattr(preprocess, "size", None)
    if size is None:
        return None
    h, w = size
    if getattr(preprocess, "crop", False):  # shorter side -> size / crop_pct, then centre crop
        s = int(min(h, w) / getattr(preprocess, "crop_pct", 1.0))
        return s, s
    return w, h


# ---------------------------------------------------------------------------------------------
# the sample
# ---------------------------------------------------------------------------------------------
def _caption_turns(caption: str, media: dict[str, list[str]], meta: dict) -> list[dict]:
    """A caption sample -> [user: '<m>\\nDescribe the m briefly.', assistant: caption]."""
    if media["image"]:
        modality, n = "image", len(media["image"])
    elif media["video"]:
        modality, n = "video", len(media["video"])
    elif media["audio"]:
        modality = "music" if meta.get("modality") == "music" else "audio"
        n = len(media["audio"])
    else:
        raise SampleError("missing_media", "caption sample without a media file")
    what = {"image": "image", "video": "video", "audio": "audio", "music": "music"}[modality]
    prompt = CAPTION_PROMPT.format(placeholder="\n".join([f"<{modality}>"] * n), what=what)
    return [{"role": "user", "text": prompt}, {"role": "assistant", "text": caption}]


def decode_sample(key: str, fields: dict[str, bytes], shard: str = "",
                  draft_size: tuple[int, int] | None = None) -> RawSample:
    """One sample's raw fields -> its turns and decoded media in placeholder order (videos stay bytes)."""
    meta: dict = {}
    if "json" in fields:
        try:
            meta = json.loads(fields["json"])
        except (ValueError, UnicodeDecodeError) as e:
            raise SampleError("bad_json", f"json does not parse: {e}") from None
        if not isinstance(meta, dict):
            raise SampleError("bad_json", "json is not an object")
    files = media_fields(fields)
    conv = meta.pop("conversations", None)
    if conv is not None:
        try:
            turns = normalise_conversation(conv, key)
        except UserError as e:
            raise SampleError("bad_conversation", str(e)) from None
    else:
        caption = meta.get("caption")
        if not isinstance(caption, str) and "txt" in fields:
            caption = fields["txt"].decode("utf-8", errors="replace").strip()
        if not isinstance(caption, str) or not caption:
            raise SampleError("no_text", "neither conversations, caption nor txt")
        turns = _caption_turns(caption, files, meta)

    order = [m for t in turns for m in placeholder_modalities(t["text"])]
    audio_order = [m for m in order if m in ("audio", "music")]
    want = {"image": order.count("image"), "video": order.count("video"), "audio": len(audio_order)}
    for kind, n in want.items():
        have = len(files[kind])
        if n > have:
            raise SampleError("missing_media", f"{n} <{kind}> placeholder(s) but {have} {kind} file(s)")
        if n < have:
            raise SampleError("unused_media", f"{have} {kind} file(s) but {n} placeholder(s)")

    sample = RawSample(key, shard, turns, meta=meta, caption=conv is None)
    if files["image"]:
        sample.media["image"] = [decode_image(fields[f], draft_size) for f in files["image"]]
    if files["video"]:
        sample.media["video"] = [fields[f] for f in files["video"]]  # decoded by the video preprocess
    for modality, f in zip(audio_order, files["audio"]):
        sample.media.setdefault(modality, []).append(decode_audio(fields[f]))
    return sample
