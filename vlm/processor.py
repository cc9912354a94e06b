"""Processor: one raw sample (conversation + raw media) -> model inputs, the way the model needs them.

    proc = model.processor
    x = proc({"conversations": [{"from": "human", "value": "<image>\\nWhat colour?"},
                                {"from": "gpt", "value": "Red."}]},
             media={"image": [pil_image]})
    x.input_ids, x.labels, x.media   # lists of ints; {"image": [Tensor[3, H, W]]}

Each media item goes through its encoder's own preprocess; the number of placeholder tokens it
expands to is asked of the model (`num_media_tokens`), so the data pipeline can never disagree
with the model about it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from vlm.data.template import ChatTemplate, Tokenized, normalise_conversation, placeholder_modalities
from vlm.errors import UserError


@dataclass
class Processed:
    input_ids: list[int]
    labels: list[int]
    media: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)


class Processor:
    def __init__(self, tokenizer, preprocess: dict[str, Callable], num_media_tokens: Callable[[str, torch.Tensor], int],
                 system: str | None = None):
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.num_media_tokens = num_media_tokens
        self.template = ChatTemplate(tokenizer, system)

    def preprocess_media(self, modality: str, raw: Any) -> torch.Tensor:
        if modality not in self.preprocess:
            raise UserError(f"this model has no {modality} encoder")
        if isinstance(raw, torch.Tensor) and getattr(raw, "_vlm_preprocessed", False):
            return raw
        if modality in ("audio", "music") and isinstance(raw, tuple):
            return self.preprocess[modality](*raw)  # (waveform, sample_rate)
        return self.preprocess[modality](raw)

    def __call__(self, sample: dict, media: dict[str, list] | None = None, add_generation_prompt: bool = False,
                 key: str = "sample", preprocessed: bool = False) -> Processed:
        turns = normalise_conversation(sample.get("conversations"), key)
        return self.from_turns(turns, media or {}, add_generation_prompt, key, preprocessed)

    def from_turns(self, turns: list[dict], media: dict[str, list], add_generation_prompt: bool = False,
                   key: str = "sample", preprocessed: bool = False) -> Processed:
        order = [m for t in turns for m in placeholder_modalities(t["text"])]
        items = {m: list(v) for m, v in media.items() if v}
        for m in set(order) | set(items):
            want, have = order.count(m), len(items.get(m, []))
            if want != have:
                raise UserError(f"{key}: {want} <{m}> placeholder(s) but {have} {m} item(s)")
        tensors = {m: [x if preprocessed else self.preprocess_media(m, x) for x in v] for m, v in items.items()}
        cursor = {m: 0 for m in tensors}
        counts = []
        for m in order:
            counts.append(self.num_media_tokens(m, tensors[m][cursor[m]]))
            cursor[m] += 1
        tok: Tokenized = self.template.tokenize(turns, counts, add_generation_prompt)
        return Processed(tok.input_ids, tok.labels, tensors)

    def prompt(self, text: str, media: dict[str, list] | None = None, system: str | None = None) -> Processed:
        """A single user turn ready for generation."""
        turns = ([{"role": "system", "text": system}] if system else []) + [{"role": "user", "text": text}]
        return self.from_turns(turns, media or {}, add_generation_prompt=True, key="prompt")
