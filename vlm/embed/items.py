"""What one embedding is of: text, media (one item per modality), or both, and an optional instruction.

    Item(text="a red circle", instruction="Find me an everyday image that matches the given caption:")
    Item(image=pil_image)                                   # '<image>\\nRepresent the given image in one word:'
    Item(image=pil_image, text="What colour is it?", instruction="Represent the given image with the following question:")

For our checkpoints an item becomes one user turn (`prompt()`): the placeholders of its media first, then
the instruction, then the text (`vlm.data.formats.with_instruction`, the same rule the pairs format
trains with). A text that already holds placeholders keeps them where they are. CLIP-style models ignore
the instruction (MMEB runs them without) and sum the image and text embeddings of a pair.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlm.errors import UserError
from vlm.modalities import MODALITIES, PLACEHOLDER_RE, MediaError, read_file

# E5-V / PromptEOL style: a media item without text or instruction is summarised "in one word".
MEDIA_ONLY_PROMPT = "Represent the given {modality} in one word:"


@dataclass
class Item:
    text: str | None = None
    image: Any = None                 # PIL image, or a preprocessed tensor
    audio: Any = None                 # (waveform [C, N], sample rate), or a preprocessed tensor
    music: Any = None
    video: Any = None                 # mp4 bytes or path
    instruction: str | None = None

    @property
    def media(self) -> dict[str, Any]:
        """modality -> the raw item, in the modality table's order."""
        return {m: getattr(self, m) for m in MODALITIES if getattr(self, m) is not None}

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.media) + (("text",) if self.text else ())

    def prompt(self) -> str:
        """The user turn our checkpoints embed."""
        from vlm.data.formats import with_instruction
        media = self.media
        if self.text and PLACEHOLDER_RE.search(self.text):
            return with_instruction(self.text, self.instruction)
        lead = [MODALITIES[m].placeholder for m in media]
        if not self.text and not self.instruction and media:
            return "\n".join([*lead, MEDIA_ONLY_PROMPT.format(modality=next(iter(media)))])
        return with_instruction("\n".join([*lead, *([self.text] if self.text else [])]), self.instruction)

    def size(self) -> int:
        """A cheap length estimate (for batching similar lengths together)."""
        return len(self.text or "") + len(self.instruction or "") + 64 * len(self.media)


class UnreadableMedia(UserError):
    """A media file of an item that is missing or does not decode (a harness may skip that item and count it)."""


def read_media(modality: str, value: Any, draft_size: tuple[int, int] | None = None) -> Any:
    """A path (str / Path) becomes the modality's raw item (the modality table's decoder; a JPEG may decode
    at the smallest scale >= `draft_size`, as the data pipeline does); anything else is taken as a raw
    item already. A missing or broken file is a one-line UserError naming it."""
    if isinstance(value, (str, os.PathLike)):
        try:
            if draft_size is not None and MODALITIES[modality].files == "image" and Path(value).is_file():
                return MODALITIES[modality].decode(Path(value).read_bytes(), draft_size)
            return read_file(modality, Path(value))
        except MediaError as e:
            raise UnreadableMedia(f"{modality} {value}: {e}") from None
        except OSError as e:
            raise UnreadableMedia(f"{modality} {value}: cannot be read ({e.strerror or e})") from None
    return value
