"""Processor: one raw sample (conversation + raw media) -> model inputs, the way the model needs them.

    proc = model.processor
    x = proc({"conversations": [{"from": "human", "value": "<image>\\nWhat colour?"},
                                {"from": "gpt", "value": "Red."}]},
             media={"image": [pil_image]})
    x.input_ids, x.labels, x.media   # lists of ints; {"image": [Tensor[3, H, W]]}

Each media item goes through its modality's preprocess; the number of placeholder tokens it expands
to comes from the model's token counts (`encoders.base.TokenCount`: pure functions of the item's
shape), so the data pipeline can never disagree with the model about it. A Processor holds no
weights: data-loader workers get it pickled (tokenizer, preprocess settings, token counts).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from vlm.data.template import ChatTemplate, Tokenized, normalise_conversation
from vlm.errors import UserError
from vlm.modalities import placeholder_modalities


@dataclass
class Processed:
    input_ids: list[int]
    labels: list[int]
    media: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)


class Processor:
    def __init__(self, tokenizer, preprocess: dict[str, Callable], token_counts: dict[str, Callable[[torch.Tensor], int]],
                 system: str | None = None, trains_text: bool = True):
        """tokenizer: None for models without text (a music encoder's pretraining); preprocess and
        token_counts: per modality, picklable, no weights. trains_text: False where text-only input has nothing
        to train (IAA: it runs the frozen LLM alone); training data loaders drop such samples (`not_for_model`)."""
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.token_counts = token_counts
        self.system = system
        self.trains_text = trains_text
        self._template: ChatTemplate | None = None

    @property
    def template(self) -> ChatTemplate:
        if self._template is None:
            if self.tokenizer is None:
                raise UserError("this model has no tokenizer: it takes no conversations")
            self._template = ChatTemplate(self.tokenizer, self.system)
        return self._template

    def with_tokenizer(self, tokenizer) -> "Processor":
        """The same processor over another tokenizer object (one that gives the same ids)."""
        return Processor(tokenizer, self.preprocess, self.token_counts, self.system, self.trains_text)

    @property
    def placeholder_ids(self) -> frozenset[int]:
        return frozenset(self.template.placeholder_id.values())

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        if tok is None:
            return 0
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def num_media_tokens(self, modality: str, item: torch.Tensor) -> int:
        """LLM tokens one preprocessed media item becomes."""
        return self.token_counts[modality](item)

    def preprocess_media(self, modality: str, raw: Any) -> torch.Tensor:
        if modality not in self.preprocess:
            raise UserError(f"this model has no {modality} encoder")
        if isinstance(raw, tuple):
            return self.preprocess[modality](*raw)  # audio: (waveform, sample_rate)
        return self.preprocess[modality](raw)

    def preprocess_media_batch(self, modality: str, raws: list[Any]) -> list[torch.Tensor]:
        """`[preprocess_media(modality, x) for x in raws]`, batched where the preprocess can (`batch`)."""
        batch = getattr(self.preprocess.get(modality), "batch", None)
        if batch is None or any(isinstance(x, tuple) for x in raws):
            return [self.preprocess_media(modality, x) for x in raws]
        return batch(raws)

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
