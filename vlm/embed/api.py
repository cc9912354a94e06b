"""The Embedder: one API over our checkpoints, vlm2vec checkpoints and open_clip models.

    emb = Embedder.load("runs/vlm2vec-tiny/final", device="auto", dtype="float32", batch_size=32)
    v = emb.embed(texts=["a red circle", "two blue stars"])                        # [2, D] float32 numpy
    v = emb.embed(images=["a.jpg"], texts=["What colour is it?"],
                  instruction="Represent the given image with the following question:")   # image + text pairs
    v = emb.embed(audio=["clip.flac"])                       # needs a checkpoint with an audio encoder
    emb.dim, emb.modalities, emb.fingerprint

Given several of texts / images / audio / music / video, they are zipped: row i embeds all of them
together (one prompt with the media and the text). `instruction` is one string for every row or a list
(one per row). Rows are sorted by length for batching (less padding) and returned in the input order;
the next batch is prepared on a thread while the model runs the current one.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from vlm.embed.backends import Backend, load_backend
from vlm.embed.items import Item
from vlm.errors import UserError, is_utf8, text_of
from vlm.modalities import MODALITIES, short_error

MEDIA_ARG = {"image": "images", "audio": "audio", "music": "music", "video": "video"}     # modality -> embed()'s keyword


def check_media(where: str, modality: str, value: Any) -> None:
    """One media entry of `Embedder.embed`: None (the row has none), a file path, or a raw item of the
    modality; a wrong type or an image with no pixels is a one-line UserError naming the entry."""
    from PIL import Image
    if isinstance(value, torch.Tensor) and modality == "image" and not (
            value.ndim == 3 and value.shape[0] in (1, 3) and min(value.shape[1:]) >= 1):
        raise UserError(f"{where}: a tensor of shape {list(value.shape)}; an image tensor is [C, H, W] with C 1 or 3")
    if value is None or isinstance(value, (str, os.PathLike, torch.Tensor)):
        return
    if modality == "image":
        if isinstance(value, Image.Image):
            if value.width == 0 or value.height == 0:
                raise UserError(f"{where}: the image has no pixels ({value.width}x{value.height})")
            try:                        # an image opened lazily decodes here: a truncated or closed file is named
                value.load()
            except (OSError, ValueError) as e:
                raise UserError(f"{where}: the image does not read ({short_error(e)})") from None
            return
        if isinstance(value, np.ndarray) and value.ndim in (2, 3) and value.dtype == np.uint8 and value.size:
            return
        raise UserError(f"{where}: a {type(value).__name__}; give a file path, a PIL image, a uint8 HWC array "
                        f"or a preprocessed tensor")
    if modality in ("audio", "music") and not (isinstance(value, tuple) and len(value) == 2):
        raise UserError(f"{where}: a {type(value).__name__}; give a file path, a (waveform, sample rate) pair "
                        f"or a preprocessed tensor")
    if modality == "video" and not isinstance(value, (bytes, bytearray)):
        raise UserError(f"{where}: a {type(value).__name__}; give a file path or the video file's bytes")


class Embedder:
    def __init__(self, backend: Backend, batch_size: int = 32):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.backend, self.batch_size = backend, batch_size

    @classmethod
    def load(cls, spec: str, device: str = "auto", dtype: str = "float32", batch_size: int = 32) -> Embedder:
        """A checkpoint folder (any MultimodalLM: llava / iaa / dragonfly / vlm2vec ...) or
        `open_clip:ARCH[:CKPT]`. Weights load on first use."""
        return cls(load_backend(os.fspath(spec) if isinstance(spec, os.PathLike) else spec, device, dtype), batch_size)

    # ---------------------------------------------------------------- what it is
    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def spec(self) -> str:
        return self.backend.spec

    @property
    def fingerprint(self) -> str:
        return self.backend.fingerprint

    def matches(self, recorded: str, content: str | None = None) -> bool:
        """Whether an export's recorded fingerprint (or content) is this model's (`Backend.matches`)."""
        return self.backend.matches(recorded, content)

    @property
    def modalities(self) -> tuple[str, ...]:
        """What it embeds: 'text' and the media modalities of its encoders."""
        return ("text", *self.backend.modalities)

    @property
    def dim(self) -> int:
        return self.backend.dim

    # ---------------------------------------------------------------- embedding
    def embed(self, texts: Sequence[str] | None = None, images: Sequence[Any] | None = None,
              audio: Sequence[Any] | None = None, music: Sequence[Any] | None = None,
              video: Sequence[Any] | None = None, instruction: str | Sequence[str] | None = None,
              batch_size: int | None = None) -> np.ndarray:
        """[N, D] float32, L2-normalised rows. Media are raw items or file paths (read when their batch is
        prepared, so a long list of files never sits decoded in memory)."""
        from PIL import Image
        given = {"texts": texts, "images": images, "audio": audio, "music": music, "video": video}
        for name, v in given.items():      # one item where a list of them belongs: list() would split it
            if isinstance(v, (str, bytes, Image.Image)):
                raise UserError(f"{name}: give a list (one entry per row), got a single {type(v).__name__}")
        for name, v in given.items():
            if v is not None and not hasattr(v, "__iter__"):
                raise UserError(f"{name}: give a list (one entry per row), got a {type(v).__name__}")
        given = {k: list(v) for k, v in given.items() if v is not None}
        if not given:
            raise UserError("nothing to embed: give texts, images, audio, music or video")
        sizes = {k: len(v) for k, v in given.items()}
        if len(set(sizes.values())) != 1:
            raise UserError(f"texts / media are zipped row by row and must have one length, got {sizes}")
        n = next(iter(sizes.values()))
        if isinstance(instruction, (list, tuple)):
            if len(instruction) != n:
                raise UserError(f"{len(instruction)} instructions for {n} rows")
            instructions = list(instruction)
        else:
            instructions = [instruction] * n
        for i, ins in enumerate(instructions):
            where = f"instruction{f'[{i}]' if isinstance(instruction, (list, tuple)) else ''}"
            if ins is not None and not isinstance(ins, str):
                raise UserError(f"{where} is a {type(ins).__name__}, not a string")
            if ins is not None and not is_utf8(ins):
                raise UserError(f"{where} {text_of(ins)!r}: not UTF-8 text (a byte that is not)")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise UserError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        items = []
        for i in range(n):
            media = {m: given[MEDIA_ARG[m]][i] for m in MODALITIES if MEDIA_ARG[m] in given}
            for m, v in media.items():
                check_media(f"{MEDIA_ARG[m]}[{i}]", m, v)
            media = {m: (Image.fromarray(v) if isinstance(v, np.ndarray) else v)    # arrays as PIL for every backend
                     for m, v in media.items() if v is not None}
            text = given["texts"][i] if "texts" in given else None
            if text is not None and not isinstance(text, str):
                raise UserError(f"texts[{i}] is a {type(text).__name__}, not a string")
            if text is not None and not is_utf8(text):
                raise UserError(f"texts[{i}] {text_of(text)!r}: not UTF-8 text (a byte that is not)")
            if not media and not (text or "").strip():
                raise UserError(f"row {i}: nothing to embed (texts[{i}] is {'empty' if text is not None else 'None'}"
                                f"{' and no media' if len(given) > 1 else ''})")
            items.append(Item(text=text, instruction=instructions[i], **media))
        return self.embed_items(items, batch_size).numpy()

    def embed_items(self, items: list[Item], batch_size: int | None = None) -> torch.Tensor:
        """[N, D] float32 (CPU tensor), in the order of `items`."""
        if not items:
            raise UserError("nothing to embed: no items")
        for it in items:
            self.backend.check(it)
        bs = batch_size or self.batch_size
        order, batches = [], []
        for group in self.backend.groups(items):       # (IAA: rows with media batched apart from rows without)
            group = sorted(group, key=lambda i: -items[i].size())
            order += group
            batches += [[items[i] for i in group[k:k + bs]] for k in range(0, len(group), bs)]
        prepare = self.backend.preparer()
        out: torch.Tensor | None = None
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(prepare, batches[0])
            done = 0
            for k in range(len(batches)):
                batch = pending.result()
                if k + 1 < len(batches):
                    pending = pool.submit(prepare, batches[k + 1])
                vec = self.backend.forward(batch)                                 # [b, D]
                if out is None:
                    out = torch.empty(len(items), vec.shape[-1], dtype=torch.float32)
                out[order[done:done + len(vec)]] = vec
                done += len(vec)
        return out
