"""The three kinds of connector, each with one narrow interface and a registry.

- a **projector** (`PROJECTORS`: linear, mlp2x_gelu): encoder features -> LLM-width features;
- a **media tokenizer** (`MEDIA`: projector, zoom): one modality's items -> LLM tokens. It owns its
  encoder and decides the item's preprocessing, its token count and which features become tokens;
- a **route** (`ROUTES`: plain, inner_adaptor): how the LLM runs a batch - which token embedding,
  which extra layers inside the frozen stack, which head.

    tok = build_media({"type": "projector", "projector": "mlp2x_gelu", "pool": 2}, encoder, d_lm=896)
    route = build_route({"type": "inner_adaptor", "adaptor_layers": [0, 1]}, llm_parts)

A model is a set of these parts (`vlm.model.MultimodalLM`); a family names which ones (`vlm.families`).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from encoders.base import TokenCount
from vlm.data.template import IGNORE
from vlm.errors import UserError
from vlm.modalities import MODALITIES
from vlm.registry import Registry

PROJECTORS: Registry = Registry("projector")   # name -> (in_dim, out_dim) -> nn.Module
MEDIA: Registry = Registry("media connector")   # name -> MediaTokenizer class
ROUTES: Registry = Registry("LLM route")        # name -> Route class


@dataclass
class MediaContext:
    """What a media tokenizer may look at besides the media: the batch's tokens and each item's row."""
    input_ids: Tensor                           # [B, L]
    labels: Tensor | None                       # [B, L]; -100 off the answers (None when generating)
    attention_mask: Tensor | None               # [B, L]
    text_embeds: Tensor                         # [B, L, D_lm] token embeddings before media are written
    rows: list[int]                             # batch row of each item
    placeholder_ids: tuple[int, ...]            # every modality's placeholder token id

    def prompt_mean(self, row: int) -> Tensor:
        """Mean embedding of a row's prompt tokens (not media, not padding, not the answers). [D_lm]"""
        keep = ~torch.isin(self.input_ids[row], torch.tensor(self.placeholder_ids, device=self.input_ids.device))
        if self.attention_mask is not None:
            keep &= self.attention_mask[row].bool()
        if self.labels is not None:
            keep &= self.labels[row] == IGNORE
        return self.text_embeds[row][keep].mean(0)


@dataclass(frozen=True)
class TimePooled(TokenCount):
    """The tokens of `inner` averaged in runs of `pool` (ceil mode): the tokens-per-second knob."""
    inner: TokenCount
    pool: int = 1

    def count(self, shape: tuple[int, ...]) -> int:
        return math.ceil(self.inner.count(shape) / self.pool)


# ---------------------------------------------------------------------------------------------
# media tokenizers
# ---------------------------------------------------------------------------------------------
class MediaTokenizer(nn.Module):
    """One modality's items -> LLM tokens. [Contract] `token_count()(item)` == the rows `forward` returns
    for that item; `preprocess` and `token_count()` are picklable and need no weights (data workers)."""

    encoder: nn.Module

    def __init__(self, modality: str, encoder: nn.Module):
        super().__init__()
        self.modality = modality
        self.encoder = encoder

    @property
    def preprocess(self):
        """Raw item (PIL image, (waveform, sr), video bytes / path) -> one tensor."""
        return self.encoder.preprocess

    def token_count(self) -> TokenCount:  # pragma: no cover - interface
        raise NotImplementedError

    def forward(self, items: list[Tensor], context: MediaContext | None = None) -> list[Tensor]:
        """Preprocessed items -> one [T_i, D_lm] tensor each."""
        raise NotImplementedError  # pragma: no cover - interface

    def blank(self) -> Tensor:
        """A preprocessed blank item (the modality table's empty raw item)."""
        raw = MODALITIES[self.modality].empty()
        return self.preprocess(*raw) if isinstance(raw, tuple) else self.preprocess(raw)

    def settings(self) -> dict[str, Any]:
        """The connector config that rebuilds this tokenizer (`build_media`), with its `type`."""
        raise NotImplementedError  # pragma: no cover - interface


def build_media(cfg: dict[str, Any], modality: str, encoder: nn.Module, d_lm: int) -> MediaTokenizer:
    cfg = dict(cfg)
    kind = cfg.pop("type", "projector")
    try:
        return MEDIA.get(kind)(modality, encoder, d_lm, **cfg)
    except TypeError as e:
        raise UserError(f"media connector '{kind}' for {modality}: {e}") from None


def build_projector(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    return PROJECTORS.get(kind)(in_dim, out_dim)


# ---------------------------------------------------------------------------------------------
# routes
# ---------------------------------------------------------------------------------------------
class Route(nn.Module):
    """How the LLM runs: `with route.path(multimodal):` selects the path for a forward or a whole
    generation; inside it `embed` and `head` are that path's, and the route's hooks on the
    LLM's layers (if any) are live. The LLM's own forward runs the decoder stack either way."""

    llm_modes: ClassVar[tuple[str, ...]] = ("frozen", "full", "lora")    # what the LLM may be set to
    recomputable: ClassVar[bool] = True       # layers may be recomputed in backward (activation checkpointing)

    def path(self, multimodal: bool):
        return contextlib.nullcontext()

    def embed(self, parts, input_ids: Tensor) -> Tensor:
        return parts.embed_tokens(input_ids)                                  # [B, L, D_lm]

    def head(self, parts, hidden: Tensor) -> Tensor:
        return parts.lm_head(hidden)                                          # [..., V]

    def settings(self) -> dict[str, Any]:
        """The route config that rebuilds this route (`build_route`), with its `type`."""
        raise NotImplementedError  # pragma: no cover - interface


@ROUTES.register("plain")
class PlainRoute(Route):
    """Every input through the LLM as it is (LLaVA)."""

    def __init__(self, parts):
        super().__init__()

    def settings(self) -> dict[str, Any]:
        return {"type": "plain"}


def build_route(cfg: dict[str, Any], parts) -> Route:
    cfg = dict(cfg)
    kind = cfg.pop("type", "plain")
    try:
        return ROUTES.get(kind)(parts, **cfg)
    except TypeError as e:
        raise UserError(f"route '{kind}': {e}") from None

