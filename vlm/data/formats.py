"""Batch formats: how decoded samples become the batches an objective reads. One per kind of objective:

- `chat`  (next_token): a conversation -> input_ids / labels / attention_mask + media; padded or packed.
- `grounded_chat` (grounded_next_token): `chat` + per image the zoom crop of the sample's `bbox` (`focus`).
- `pairs` (contrastive): a query and its positive (+ hard negatives) -> two sub-batches of prompts,
  `query` and `target` (positives first, then each query's negatives in order), for embeddings.
- `clips` (masked_prediction): an audio file -> a mono waveform crop at the model's sample rate.

    fmt = FORMATS.get("pairs")(processor, max_len=256, negatives=1)
    item, converted = fmt.make(key, fields, shard, seed)      # or SampleError(reason)
    batch = fmt.collate(items, pad_id)

Pair samples (json): {"query": {"text": "<image>\\nFind the caption.", "instruction": "..."},
"positive": {"text": "a red circle"}, "negatives": [{"text": "a blue square"}], "task": ...}; media
files fill the placeholders of query, positive and negatives in that order ([Contract] of
`vlm.modalities`). The instruction, when given, goes after the placeholders the side's text starts with
and before the rest (`with_instruction`: '<image>\nInstruction\nQuery', VLM2Vec / MMEB; query side only).
Clip samples: any sample with an audio file (the first one is used; captions are ignored). Any rate and
channel count (resampled / downmixed and counted as conversions); a sample without audio (`no_audio`) or
shorter than `min_seconds` (`too_short`) is skipped and counted, not an error; non-finite or undecodable
audio is a `bad_audio` error.
"""
from __future__ import annotations

import io
import math
import zlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from vlm.data.collate import collate
from vlm.data.decode import (
    RawSample,
    SampleError,
    decode_item,
    decode_media,
    decode_sample,
    read_meta,
)
from vlm.data.packing import pack_rows, row_fits, truncate
from vlm.data.processor import Processed, Processor
from vlm.data.template import IGNORE
from vlm.data.writer import PAIR_SHAPE, media_fields, pair_sides
from vlm.errors import UserError
from vlm.modalities import (
    FILE_EXTENSIONS,
    MODALITIES,
    PLACEHOLDER_RE,
    media_order,
    orientation,
    placeholder_modalities,
    short_error,
    upright_box,
)
from vlm.registry import Registry

FORMATS: Registry[type["Format"]] = Registry("batch format")


def with_instruction(text: str, instruction: str | None) -> str:
    """An embedding prompt (VLM2Vec / MMEB): the media placeholders `text` starts with, then the
    instruction, then the rest of the text: '<image>\nRepresent the given image with the following
    question:\nWhat colour is it?'. Without an instruction the text is returned as it is. The pairs
    format and `vlm.embed` both build prompts with it, so training and embedding read the same."""
    if not instruction:
        return text
    lead = []
    rest = text.lstrip()
    while (m := PLACEHOLDER_RE.match(rest)) is not None:
        lead.append(m.group(0))
        rest = rest[m.end():].lstrip()
    return "\n".join([*lead, instruction, *([rest] if rest else [])])


def sample_seed(seed: int, key: str, epoch: int) -> int:
    """Per-sample randomness (crops, masks) that is the same whatever the split into ranks and workers."""
    # (surrogateescape: a key from tar member names that are not UTF-8 keeps its bytes; .encode() raised)
    return zlib.crc32(f"{seed}:{epoch}:{key}".encode("utf-8", "surrogateescape")) * 2654435761 % (2**61 - 1)


class Format:
    """Subclasses: `make` one sample, `collate` a batch; `packs` formats also `fits` / `pack` rows."""

    packs: ClassVar[bool] = False

    def __init__(self, processor: Processor, max_len: int, draft_size: tuple[int, int] | None = None, **settings: Any):
        if settings:
            raise UserError(f"batch format '{type(self).__name__}' takes no settings {sorted(settings)}")
        self.processor, self.max_len, self.draft_size = processor, max_len, draft_size

    def make(self, key: str, fields: dict[str, bytes], shard: str, seed: int = 0) -> tuple[Any, list[str]]:
        raise NotImplementedError  # pragma: no cover - interface

    def collate(self, items: list[Any], pad_id: int) -> dict:
        raise NotImplementedError  # pragma: no cover - interface

    def takes(self) -> frozenset[str] | None:
        """The modalities a sample's media may be of (the model's encoders); None: any (the format picks
        what it reads). Stage loaders drop other samples before decoding (`vlm.data.filters`)."""
        return frozenset(self.processor.preprocess)

    def media_tensors(self, media: dict[str, list[Any]]) -> tuple[dict[str, list[torch.Tensor]], list[str]]:
        """Raw media -> preprocessed tensors, and the conversions made (resampled / downmixed audio)."""
        pre, out, converted = self.processor.preprocess, {}, []
        for m, items in media.items():
            if m not in pre:
                raise SampleError("unsupported_modality", f"the model has no {m} encoder")
            if MODALITIES[m].files == "audio":
                sr = getattr(pre[m], "sample_rate", None)
                converted += ["audio_resampled" for _, r in items if sr is not None and r != sr]
                converted += ["audio_downmixed" for w, _ in items if w.shape[0] > 1]
            try:
                out[m] = [self.processor.preprocess_media(m, x) for x in items]
            except Exception as e:  # anything a broken file makes a decoder raise; a MediaError may name its reason
                reason = getattr(e, "reason", None) or f"bad_{MODALITIES[m].files}"
                raise SampleError(reason, f"{m}: {short_error(e)}") from None
        return out, converted


@FORMATS.register("chat")
class ChatFormat(Format):
    packs = True

    def make(self, key, fields, shard, seed=0):
        return self.process(decode_sample(key, fields, shard, self.draft_size))

    def process(self, raw: RawSample) -> tuple[Processed, list[str]]:
        """A decoded sample -> Processed (media preprocessed, templated, truncated) + conversions made."""
        answers = [t.get("text") for t in raw.turns if isinstance(t, dict) and t.get("role") == "assistant"]
        if answers and not any(isinstance(a, str) and a.strip() for a in answers):
            raise SampleError("no_answer", "every assistant turn is empty: it would teach an empty answer")
        tensors, converted = self.media_tensors(raw.media)
        try:
            p = self.processor.from_turns(raw.turns, tensors, key=raw.key, preprocessed=True)
        except UserError as e:
            raise SampleError("processor", str(e)) from None
        if all(t == IGNORE for t in p.labels):
            raise SampleError("no_answer", "no assistant turn: nothing to learn from")
        cut = truncate(p, self.max_len, self.processor.placeholder_ids)
        if cut is None:
            raise SampleError("too_long", f"{len(p)} tokens > max_len {self.max_len} and media past the cut")
        if cut is not p and all(t == IGNORE for t in cut.labels):
            raise SampleError("too_long", f"{len(p)} tokens > max_len {self.max_len}: the cut leaves no answer token")
        return cut, converted + (["truncated"] if cut is not p else [])

    def collate(self, items, pad_id):
        return collate(items, pad_id)

    def fits(self, row: list[Processed], item: Processed, max_media: int | None) -> bool:
        return row_fits(row, item, self.max_len, max_media)

    def pack(self, rows: list[list[Processed]], pad_id: int, keys: list[str]) -> dict:
        return pack_rows(rows, self.max_len, pad_id, keys)


@dataclass
class Grounded(Processed):
    focus: list[int] = field(default_factory=list)   # per image item: `preprocess.focus` of its box, -1: none


def sample_box(meta: dict) -> tuple[float, float, float, float] | None:
    """The region of the sample's first image the answer is about: json `bbox` [left, top, right, bottom]
    in pixels (top level, or in `labels` as synthetic-world writes it); None when the sample has none."""
    box = meta.get("bbox", (meta.get("labels") or {}).get("bbox") if isinstance(meta.get("labels"), dict) else None)
    if box is None:
        return None
    ok = isinstance(box, list | tuple) and len(box) == 4 and all(isinstance(v, int | float) and math.isfinite(v)
                                                                  for v in box)
    if not ok or box[2] < box[0] or box[3] < box[1]:
        raise SampleError("bad_bbox", f"json 'bbox' must be [left, top, right, bottom] numbers, got {box!r}")
    return tuple(float(v) for v in box)


@FORMATS.register("grounded_chat")
class GroundedChatFormat(ChatFormat):
    """`chat` plus, per image, the high-resolution crop that holds the centre of the sample's `bbox`
    (`sample_box`): `batch["focus"]` [N_images] (-1 where a sample has no box, and for its later images),
    in the order of `batch["media"]["image"]`. The model's image preprocess must have `focus(size, box)`
    (the zoom connector's). Boxes are in the stored image's pixels (as datasets annotate them); an EXIF
    orientation turns them with the pixels, a draft-decoded image scales them."""

    def __init__(self, processor, max_len, draft_size=None):
        super().__init__(processor, max_len, draft_size)
        pre = processor.preprocess.get("image")
        if not callable(getattr(pre, "focus", None)):
            raise UserError("batch format 'grounded_chat' needs an image connector that zooms (the dragonfly "
                            "family's); this model's image preprocess has no crops to focus on")
        self.image = pre

    def make(self, key, fields, shard, seed=0):
        from PIL import Image
        raw = decode_sample(key, fields, shard, self.draft_size)
        box = sample_box(raw.meta)
        images = raw.media.get("image", [])
        focus = [-1] * len(images)
        if box is not None and images:
            first = media_fields(fields)["image"][0]
            with Image.open(io.BytesIO(fields[first])) as stored:       # the header only: size, orientation
                o = orientation(stored)
                box = upright_box(box, stored.size, o)                  # decoding turned the pixels: turn the box
                w, h = stored.size if o < 5 else stored.size[::-1]
            sx, sy = images[0].size[0] / w, images[0].size[1] / h
            focus[0] = self.image.focus(images[0].size, (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy))
        p, converted = self.process(raw)
        return Grounded(p.input_ids, p.labels, p.media, focus), converted

    @staticmethod
    def _focus(samples) -> torch.Tensor:
        return torch.tensor([f for s in samples for f in s.focus], dtype=torch.long)

    def collate(self, items, pad_id):
        return {**collate(items, pad_id), "focus": self._focus(items)}

    def pack(self, rows, pad_id, keys):
        return {**pack_rows(rows, self.max_len, pad_id, keys), "focus": self._focus([s for r in rows for s in r])}


@dataclass
class Pair:
    query: Processed
    targets: list[Processed]                   # the positive, then the hard negatives

    def __len__(self) -> int:
        return max(len(self.query), *(len(t) for t in self.targets))


@FORMATS.register("pairs")
class PairFormat(Format):
    def __init__(self, processor, max_len, draft_size=None, negatives: int = 0):
        super().__init__(processor, max_len, draft_size)
        self.negatives = int(negatives)

    def make(self, key, fields, shard, seed=0):
        meta = read_meta(fields)
        named, why = pair_sides(meta, self.negatives)   # only the sides trained on are read (and decoded)
        if why is not None:
            raise SampleError("bad_pair", f"{why} {PAIR_SHAPE}")
        negatives = meta.get("negatives") or []            # a list here (pair_sides checked it)
        if len(negatives) < self.negatives:
            raise SampleError("too_few_negatives", f"{len(negatives)} negatives, the objective takes {self.negatives} "
                              "(its objective_settings.negatives)")
        sides = [side for _, side in named]
        orders = [placeholder_modalities(s["text"]) for s in sides]
        # the files of the negatives left out come last (files fill placeholders in key order): not read
        media = decode_media([m for o in orders for m in o], fields, self.draft_size,
                             strict=len(negatives) == self.negatives)
        tensors, converted = self.media_tensors(media)
        cursor = {m: 0 for m in tensors}
        out = []
        for side, order in zip(sides, orders):
            own = {}
            for m in order:
                own.setdefault(m, []).append(tensors[m][cursor[m]])
                cursor[m] += 1
            text = with_instruction(side["text"], side.get("instruction"))
            try:
                p = self.processor.from_turns([{"role": "user", "text": text}], own, add_generation_prompt=True,
                                              key=key, preprocessed=True)
            except UserError as e:
                raise SampleError("processor", str(e)) from None
            if len(p) > self.max_len:
                raise SampleError("too_long", f"a side of {len(p)} tokens > max_len {self.max_len}")
            out.append(p)
        return Pair(out[0], out[1:]), converted

    def collate(self, items: list[Pair], pad_id: int) -> dict:
        targets = [p.targets[0] for p in items] + [t for p in items for t in p.targets[1:]]
        return {"query": collate([p.query for p in items], pad_id), "target": collate(targets, pad_id)}


@dataclass
class Clip:
    wave: torch.Tensor                          # [N] mono, at the model's sample rate, not normalised
    length: int                                 # real samples (the rest is zero padding)

    def __len__(self) -> int:
        return self.length


def audio_notes(x: torch.Tensor) -> list[str]:
    """Kept but counted (DataStats.converted): a silent clip (every sample 0, also a stereo pair that cancels in
    the downmix) and a clipped one (>= 1 % of its samples exactly at a full-scale peak: a clipped recording sits
    on its limit, a sampled sine almost never repeats its maximum)."""
    a = x.abs()
    peak = a.max() if x.numel() else x.new_zeros(())
    if peak == 0:
        return ["audio_silent"]
    if peak >= 0.99 and (a == peak).sum() >= 0.01 * x.numel():
        return ["audio_clipped"]
    return []


CLIP_SECONDS, MIN_CLIP_SECONDS = 5.0, 1.5    # MERT's crop; shorter clips are skipped (the CQT's lowest band: ~1.4 s)


@FORMATS.register("clips")
class ClipFormat(Format):
    """`clip_seconds` of the sample's first audio file at the model's rate: a random crop (seeded per
    sample) of longer clips, zero padding after shorter ones down to `min_seconds` (shorter: skipped)."""

    def __init__(self, processor, max_len, draft_size=None, modality: str = "music", clip_seconds: float = CLIP_SECONDS,
                 min_seconds: float = MIN_CLIP_SECONDS):
        super().__init__(processor, max_len, draft_size)
        if modality not in processor.preprocess:
            raise UserError(f"the model has no {modality} input (it takes {sorted(processor.preprocess)})")
        self.modality = modality
        self.sample_rate = int(processor.preprocess[modality].sample_rate)
        self.clip = int(round(clip_seconds * self.sample_rate))
        self.min = int(round(min_seconds * self.sample_rate))

    def takes(self) -> None:
        return None                             # the first audio file, whatever else the sample holds

    def make(self, key, fields, shard, seed=0):
        audio = sorted((n for n in fields if n.rsplit(".", 1)[-1].lower() in FILE_EXTENSIONS["audio"]), key=media_order)
        if not audio:
            raise SampleError("no_audio", "no audio file")
        wave, sr = decode_item(self.modality, fields[audio[0]])
        converted = (["audio_resampled"] if sr != self.sample_rate else []) + \
                    (["audio_downmixed"] if wave.shape[0] > 1 else [])
        try:
            x = self.processor.preprocess[self.modality].load(wave, sr)          # [N] mono, resampled
        except Exception as e:
            raise SampleError("bad_audio", f"{self.modality}: {short_error(e)}") from None
        if not torch.isfinite(x).all():
            raise SampleError("bad_audio", "non-finite samples")
        converted += audio_notes(x)
        n = x.shape[0]
        if n < self.min:
            raise SampleError("too_short", f"{n / self.sample_rate:.2f} s < min {self.min / self.sample_rate:.2f} s")
        if n > self.clip:
            start = torch.randint(0, n - self.clip + 1, (), generator=torch.Generator().manual_seed(seed)).item()
            x = x[start:start + self.clip]
        length = x.shape[0]
        return Clip(torch.nn.functional.pad(x, (0, self.clip - length)), length), converted

    def collate(self, items: list[Clip], pad_id: int) -> dict:
        return {"audio": torch.stack([c.wave for c in items]),                       # [B, N]
                "audio_lengths": torch.tensor([c.length for c in items])}             # [B]


def build_format(name: str, processor: Processor, max_len: int, draft_size=None, **settings) -> Format:
    try:
        return FORMATS.get(name)(processor, max_len, draft_size, **settings)
    except TypeError as e:
        raise UserError(f"batch format '{name}': {e}") from None
