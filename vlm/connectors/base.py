"""The three kinds of connector, each with one narrow interface and a registry.

- a **projector** (`PROJECTORS`: linear, mlp2x_gelu): encoder features -> LLM-width features;
- a **media tokenizer** (`MEDIA`: projector, zoom, av): one modality's items -> LLM tokens. It uses
  encoders the model owns (named, so several tokenizers may share one: images and video frames share
  the vision tower) and decides the item's preprocessing, its token count and which features become tokens;
- a **route** (`ROUTES`: plain, inner_adaptor): how the LLM runs a batch - which token embedding,
  which extra layers inside the frozen stack, which head.

    tok = build_media({"type": "projector", "encoder": "audio", "pool": 2}, "audio", model_encoders, d_lm=896)
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
from vlm.data.packing import sequence_index
from vlm.data.template import IGNORE
from vlm.errors import UserError
from vlm.modalities import MODALITIES
from vlm.registry import Registry

PROJECTORS: Registry = Registry("projector")   # name -> (in_dim, out_dim) -> nn.Module
MEDIA: Registry = Registry("media connector")   # name -> MediaTokenizer class
ROUTES: Registry = Registry("LLM route")        # name -> Route class


@dataclass
class MediaContext:
    """What a media tokenizer may look at besides the media: the batch's tokens and each item's place."""
    input_ids: Tensor                           # [B, L]
    labels: Tensor | None                       # [B, L]; -100 off the answers (None when generating)
    attention_mask: Tensor | None               # [B, L] (a packed batch: None, or its 4D block mask)
    text_embeds: Tensor                         # [B, L, D_lm] token embeddings before media are written
    rows: list[int]                             # batch row of each item
    placeholder_ids: tuple[int, ...]            # every modality's placeholder token id
    columns: list[int] | None = None            # position in its row of each item's first placeholder token
    position_ids: Tensor | None = None          # [B, L]; packed rows restart at 0 for each sample

    def prompt_mean(self, item: int) -> Tensor:
        """Mean embedding of the prompt tokens of the sample holding `item` (not media, not padding, not the
        answers; in a packed row only that sample's tokens). [D_lm]"""
        row = self.rows[item]
        keep = ~torch.isin(self.input_ids[row], torch.tensor(self.placeholder_ids, device=self.input_ids.device))
        if self.attention_mask is not None and self.attention_mask.dim() == 2:
            keep &= self.attention_mask[row].bool()
        if self.labels is not None:
            keep &= self.labels[row] == IGNORE
        if self.position_ids is not None and self.columns is not None:
            sample = sequence_index(self.position_ids[row])                  # packed sample of each position
            keep &= sample == sample[self.columns[item]]
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
    for that item; `preprocess` and `token_count()` are picklable and need no weights (data workers).

    Encoders are the model's (`model.encoders`, by name): a tokenizer holds them without registering them,
    so a shared encoder has one set of weights. `SLOTS` names the encoder arguments a kind takes; the
    config stores which encoder fills each slot."""

    SLOTS: ClassVar[tuple[str, ...]] = ("encoder",)

    def __init__(self, modality: str, encoder: nn.Module):
        super().__init__()
        self.modality = modality
        self.__dict__["encoder"] = encoder                    # the model's; not a submodule of this one
        self.slot_names: dict[str, str] = {}                  # slot -> encoder name (set by build_media)

    def slot_settings(self) -> dict[str, str]:
        return dict(self.slot_names)

    def fsdp_units(self) -> list[tuple[nn.Module, tuple[str, ...]]]:
        """The encoders FSDP2 shards, each with the methods this tokenizer calls on it."""
        return [(self.encoder, ("encode",))]

    def bind(self, slot: str, encoder: nn.Module) -> None:
        """Use `encoder` in `slot` from now on (the model's `replace_encoder`); cached preprocessing goes."""
        if slot != "encoder":
            raise UserError(f"media connector for {self.modality} has no encoder slot '{slot}'")
        self.__dict__["encoder"] = encoder
        if "_preprocess" in self.__dict__:              # a tokenizer's own preprocessing, built from the encoder's
            self._preprocess = None

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


def build_media(cfg: dict[str, Any], modality: str, encoders: Any, d_lm: int) -> MediaTokenizer:
    """A media tokenizer from its config: `type`, the encoder name of each of its SLOTS (default: the
    modality's own name for `encoder`), its settings. `encoders`: the model's encoders by name."""
    cfg = dict(cfg)
    kind = cfg.pop("type", "projector")
    cls = MEDIA.get(kind)
    names = {slot: cfg.pop(slot, modality if slot == "encoder" else None) for slot in cls.SLOTS}
    for slot, name in names.items():
        if name is not None and name not in encoders:
            raise UserError(f"media connector '{kind}' for {modality}: no encoder '{name}' for its {slot} "
                            f"(the model has {sorted(encoders)})")
    parts = {slot: encoders[name] if name is not None else None for slot, name in names.items()}
    try:
        tok = cls(modality, parts.pop("encoder"), d_lm, **parts, **cfg)
    except TypeError as e:
        raise UserError(f"media connector '{kind}' for {modality}: {e}") from None
    tok.slot_names = {slot: name for slot, name in names.items() if name is not None}
    return tok


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
    # the path is chosen per batch (any media item: multimodal), so a row's result depends on whether its batch
    # holds media: evaluation and embedding batch rows with media apart from rows without (`media_groups`)
    path_per_batch: ClassVar[bool] = False

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

