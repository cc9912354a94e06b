"""Chat templating: a LLaVA-format conversation -> input_ids + labels, media placeholders expanded.

[Contract] every placeholder (`<image>`, `<audio>`, `<music>`, `<video>`) in the text becomes
exactly `n` copies of its placeholder token id, where `n` is the number of LLM tokens its
media item turns into; the model writes the item's features over those positions. Labels are
-100 everywhere except the assistant turns' text and their closing `<|im_end|>` (a media item inside an
assistant turn is input, as LLaVA treats it: its placeholder positions are -100 too).
"""
from __future__ import annotations

from dataclasses import dataclass

from vlm.errors import UserError
from vlm.modalities import MODALITY_OF_PLACEHOLDER as MODALITY_OF
from vlm.modalities import PLACEHOLDER_RE, PLACEHOLDERS

IGNORE = -100
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    media_order: list[str]  # the modality of each placeholder, in the order they appear


def normalise_conversation(conv, key: str = "sample") -> list[dict]:
    """LLaVA `from/value` or OpenAI `role/content` turns -> [{'role', 'text'}]; a one-line error if malformed."""
    if not isinstance(conv, list) or not conv:
        raise UserError(f"{key}: 'conversations' must be a non-empty list of turns, got "
                        f"{'an empty list' if conv == [] else type(conv).__name__}")
    out = []
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict):
            raise UserError(f"{key}: turn {i} is not an object")
        role = turn.get("from", turn.get("role"))
        text = turn.get("value", turn.get("content"))
        if role not in ROLES or not isinstance(text, str):
            raise UserError(f"{key}: turn {i} needs 'from' in {sorted(ROLES)} and a string 'value'")
        out.append({"role": ROLES[role], "text": text})
    return out


class ChatTemplate:
    """ChatML (`<|im_start|>role\\n ... <|im_end|>\\n`), tokenised piece by piece so labels align exactly."""

    def __init__(self, tokenizer, system: str | None = None):
        self.tok = tokenizer
        self.system = system
        vocab = tokenizer.get_vocab()
        self.start_id = vocab["<|im_start|>"]
        self.end_id = vocab["<|im_end|>"]
        self.placeholder_id = {m: vocab[p] for m, p in PLACEHOLDERS.items()}
        self._placeholders = frozenset(self.placeholder_id.values())
        self._nl = self._text("\n")
        self._memo: dict[tuple, Tokenized] = {}   # short conversations seen before (an embedder's fixed prompt)

    def _text(self, s: str) -> list[int]:
        return self.tok(s, add_special_tokens=False)["input_ids"] if s else []

    def _content(self, text: str, media_tokens: list[int], cursor: list[int], order: list[str]) -> list[int]:
        ids: list[int] = []
        for piece in PLACEHOLDER_RE.split(text):
            if piece in MODALITY_OF:
                m = MODALITY_OF[piece]
                if cursor[0] >= len(media_tokens):
                    raise UserError(f"the prompt has more placeholders than media items ({piece} #{cursor[0] + 1})")
                ids += [self.placeholder_id[m]] * media_tokens[cursor[0]]
                cursor[0] += 1
                order.append(m)
            else:
                ids += self._text(piece)
        return ids

    MEMO_CHARS, MEMO_ENTRIES = 256, 4096

    def tokenize(self, turns: list[dict], media_tokens: list[int], add_generation_prompt: bool = False) -> Tokenized:
        """turns: normalised [{'role','text'}]; media_tokens[i]: LLM tokens of the i-th placeholder in order.
        Short conversations are remembered (at most MEMO_ENTRIES of at most MEMO_CHARS characters): the
        same instruction over every image of an export is tokenised once."""
        if sum(len(t["text"]) for t in turns) > self.MEMO_CHARS:
            return self._tokenize(turns, media_tokens, add_generation_prompt)
        key = (tuple((t["role"], t["text"]) for t in turns), tuple(media_tokens), add_generation_prompt)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._tokenize(turns, media_tokens, add_generation_prompt)
            if len(self._memo) < self.MEMO_ENTRIES:
                self._memo[key] = hit
        return Tokenized(list(hit.input_ids), list(hit.labels), list(hit.media_order))

    def _tokenize(self, turns: list[dict], media_tokens: list[int], add_generation_prompt: bool) -> Tokenized:
        ids: list[int] = []
        labels: list[int] = []
        order: list[str] = []
        cursor = [0]
        if self.system and not any(t["role"] == "system" for t in turns):
            turns = [{"role": "system", "text": self.system}, *turns]
        for t in turns:
            head = [self.start_id] + self._text(t["role"] + "\n")
            body = self._content(t["text"], media_tokens, cursor, order) + [self.end_id]
            ids += head + body + self._nl
            labels += [IGNORE] * len(head)
            labels += ([IGNORE if i in self._placeholders else i for i in body] if t["role"] == "assistant"
                       else [IGNORE] * len(body))
            labels += [IGNORE] * len(self._nl)
        if add_generation_prompt:
            head = [self.start_id] + self._text("assistant\n")
            ids += head
            labels += [IGNORE] * len(head)
        if cursor[0] != len(media_tokens):
            raise UserError(f"{len(media_tokens)} media items but only {cursor[0]} placeholders in the prompt")
        return Tokenized(ids, labels, order)
