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

import json
from dataclasses import dataclass, field
from typing import Any

from vlm.data.template import normalise_conversation
from vlm.data.writer import media_fields
from vlm.errors import UserError
from vlm.modalities import (
    FILE_EXTENSIONS,
    MODALITIES,
    MediaError,
    file_kind,
    placeholder_modalities,
    short_error,
)

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


# ---------------------------------------------------------------------------------------------
# media
# ---------------------------------------------------------------------------------------------
def decode_item(modality: str, data: bytes, draft_size: tuple[int, int] | None = None) -> Any:
    """One media file's bytes as the modality's raw item (the modality table's decoder)."""
    try:
        return MODALITIES[modality].decode(data, draft_size)
    except MediaError as e:
        raise SampleError(f"bad_{MODALITIES[modality].files}", str(e)) from None


def decode_image(data: bytes, draft_size: tuple[int, int] | None = None):
    return decode_item("image", data, draft_size)


def decode_audio(data: bytes):
    return decode_item("audio", data)


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


KNOWN_FIELDS = {"json", "txt", "cls", "caption"}


def unread_fields_note(fields: dict[str, bytes]) -> str:
    """'' or, for a sample some of whose files nothing reads, why: `a.b.jpg` in a tar is key `a` with the field
    `b.jpg` (webdataset splits the file name at its first dot), so a key with a dot hides its json and text; an
    extension no modality decodes (`.aac`, `.mkv`) is no media file."""
    names = [n for n in fields if not n.startswith("__") and n.lower() not in KNOWN_FIELDS]
    dotted = [n for n in names if "." in n and n.rsplit(".", 1)[-1].lower() in KNOWN_FIELDS]
    if dotted:
        return (f" (its files include {', '.join(sorted(dotted)[:3])}: a sample key with a dot? webdataset splits "
                f"a file name at its first dot, so 'a.b.json' is key 'a' with the field 'b.json')")
    unknown = [n for n in names if file_kind(n) is None]
    if unknown:
        return (f" (file(s) {', '.join(repr(n) for n in sorted(unknown)[:3])} not read: not an extension of "
                f"{'/'.join(FILE_EXTENSIONS)} files here, which are {', '.join(e for v in FILE_EXTENSIONS.values() for e in v)})")
    return ""


def read_meta(fields: dict[str, bytes]) -> dict:
    """The sample's json ({} without one); a broken one is a SampleError('bad_json')."""
    if "json" not in fields:
        return {}
    try:
        meta = json.loads(fields["json"])
    except (ValueError, UnicodeDecodeError, RecursionError) as e:      # (RecursionError: nested too deep)
        raise SampleError("bad_json", f"json does not parse: {short_error(e)[:200]}") from None
    if not isinstance(meta, dict):
        raise SampleError("bad_json", "json is not an object")
    return meta


def decode_media(order: list[str], fields: dict[str, bytes], draft_size: tuple[int, int] | None = None,
                 strict: bool = True) -> dict[str, list[Any]]:
    """The media of placeholders `order` (their modalities, in order) from the sample's files, by the
    [Contract] of `vlm.modalities`: each file kind fills its placeholders in key order. Too few files for
    the placeholders (or, when `strict`, too many) is a SampleError naming which."""
    files = media_fields(fields)
    for kind, names in files.items():
        want = sum(MODALITIES[m].files == kind for m in order)
        if want > len(names):
            raise SampleError("missing_media", f"{want} <{kind}> placeholder(s) but {len(names)} {kind} file(s)"
                                               + unread_fields_note(fields))
        if strict and want < len(names):
            raise SampleError("unused_media", f"{len(names)} {kind} file(s) but {want} placeholder(s)")
    pools = {kind: iter(names) for kind, names in files.items()}
    media: dict[str, list[Any]] = {}
    for m in order:
        media.setdefault(m, []).append(decode_item(m, fields[next(pools[MODALITIES[m].files])], draft_size))
    return media


# ---------------------------------------------------------------------------------------------
# the sample
# ---------------------------------------------------------------------------------------------
def _caption_turns(caption: str, files: dict[str, list[str]], meta: dict) -> list[dict]:
    """A caption sample -> [user: '<m>\\nDescribe the m briefly.', assistant: caption]."""
    if files["image"]:
        modality, n = "image", len(files["image"])
    elif files["video"]:
        modality, n = "video", len(files["video"])
    elif files["audio"]:
        modality = "music" if meta.get("modality") == "music" else "audio"
        n = len(files["audio"])
    else:
        raise SampleError("missing_media", "caption sample without a media file")
    prompt = CAPTION_PROMPT.format(placeholder="\n".join([MODALITIES[modality].placeholder] * n), what=modality)
    return [{"role": "user", "text": prompt}, {"role": "assistant", "text": caption}]


def decode_sample(key: str, fields: dict[str, bytes], shard: str = "",
                  draft_size: tuple[int, int] | None = None) -> RawSample:
    """One sample's raw fields -> its turns and decoded media in placeholder order (videos stay bytes)."""
    meta = read_meta(fields)
    conv = meta.pop("conversations", None)
    if conv is not None:
        try:
            turns = normalise_conversation(conv, key)
        except UserError as e:
            raise SampleError("bad_conversation", str(e)) from None
    else:
        caption = meta.get("caption")
        if not isinstance(caption, str) and "txt" in fields:
            try:                      # utf-8-sig: a BOM is not part of the caption; other bytes are not guessed at
                caption = fields["txt"].decode("utf-8-sig").strip()
            except UnicodeDecodeError as e:
                raise SampleError("bad_text", f"its txt caption is not UTF-8 (byte {e.start})") from None
        if (not isinstance(caption, str) or not caption) and "cls" in fields:
            raise SampleError("class_label_only", "a classification sample (cls + media, no text): zero-shot "
                              "benchmarks read it (wds:DIR), training and chat formats need text")
        if not isinstance(caption, str) or not caption:
            raise SampleError("no_text", "neither conversations, caption nor txt" + unread_fields_note(fields))
        try:
            turns = _caption_turns(caption, media_fields(fields), meta)
        except SampleError as e:
            e.args = (str(e) + unread_fields_note(fields),)
            raise
    order = [m for t in turns for m in placeholder_modalities(t["text"])]
    return RawSample(key, shard, turns, decode_media(order, fields, draft_size), meta=meta, caption=conv is None)
