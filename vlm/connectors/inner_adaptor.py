"""Inner adaptors (IAA): trainable decoder layers that ride on a frozen LLM for multimodal input only.

As the reference code (360CVGroup/Inner-Adaptor-Architecture) does it: at each chosen depth i,
multimodal input runs `h = frozen_layer_i(h); h = adaptor_i(h)` (the adaptor's output replaces the
stream); the multimodal path has its own token embedding, final norm and LM head, all trainable
copies. Text-only input never touches any of them, so it is the base LLM bit for bit.

How: this is the `inner_adaptor` route. The adaptors are attached to the frozen layers as forward
hooks that are live only inside `with route.path(multimodal=True):`. The LLM's own forward still
builds the masks, rotary embeddings and embedding scaling of whatever architecture it is (Llama,
Qwen2, Mistral, Gemma ...), so nothing architecture-specific is re-implemented here. Each adaptor
keeps its own KV-cache slot (layer_idx = n_layers + j), so generation with a cache works on both
paths. `route.mode = "text" | "multimodal"` forces a path ("auto": any media item -> multimodal).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch
from torch import nn

from vlm.connectors.base import ROUTES, Route
from vlm.errors import require

# The reference inserts pairs every 5 layers of a 32-layer LLM: [0, 1, 5, 6, ..., 30, 31].
REFERENCE_STRIDE = 5


def default_adaptor_layers(n_layers: int) -> list[int]:
    """A pair of depths every 5 layers, as the reference's (`[0, 1, 5, 6, ..., 30, 31]`, 14 of 32): the same
    share of adapted layers at any depth (6 of 12, 10 of 24). (Until 2026-12-05 the stride was scaled with the
    depth, which put an adaptor after every layer of a 16-layer LLM, and a lone one at the top of a 24-layer
    one; a checkpoint keeps the depths it was built with.)"""
    return [j for i in range(0, n_layers, REFERENCE_STRIDE) for j in (i, i + 1) if j < n_layers]


MODES = ("auto", "text", "multimodal")


class _AdaptorHook:
    """Forward hook of frozen layer `key`: its output through adaptor `key` while the route is on.
    A plain object (not a closure), so a deep copy of the model hooks the copy's route."""

    def __init__(self, route: "InnerAdaptorRoute", key: str):
        self.route, self.key = route, key

    def __call__(self, module, args, kwargs, output):
        if not self.route._on:
            return None
        h = output[0] if isinstance(output, tuple) else output              # [B, L, D] frozen layer output
        adaptor = self.route.adaptors[self.key]
        if "hidden_states" in kwargs:
            out = adaptor(**{**kwargs, "hidden_states": h})
        else:
            out = adaptor(h, *args[1:], **kwargs)
        new = out[0] if isinstance(out, tuple) else out
        return (new, *output[1:]) if isinstance(output, tuple) else new


@ROUTES.register("inner_adaptor")
class InnerAdaptorRoute(Route):
    """IAA: media batches through the frozen LLM + adaptor layers and their own embedding / norm / head."""

    llm_modes = ("frozen",)                          # the point of IAA: the LLM never trains
    path_per_batch = True                            # text-only rows are the base LLM only in a text-only batch
    recomputable = False                             # the hooks read the path set at forward time, not at backward

    def __init__(self, parts, adaptor_layers: list[int] | None = None, mode: str = "auto"):
        """parts: `vlm.llm.LLMParts` of the (frozen) LLM; adaptors start as copies of the layers they follow."""
        super().__init__()
        n = len(parts.layers)
        self.adaptor_layers = list(adaptor_layers) if adaptor_layers is not None else default_adaptor_layers(n)
        require(bool(self.adaptor_layers) and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n
                                                  for i in self.adaptor_layers),
                f"adaptor_layers: {self.adaptor_layers} must be depths in [0, {n}) (whole numbers)")
        # one adaptor per depth: a depth given twice hooked its layer twice (the adaptor ran twice, and generation
        # with a cache answered otherwise than without)
        require(len(set(self.adaptor_layers)) == len(self.adaptor_layers),
                f"adaptor_layers: {self.adaptor_layers} names a depth twice")
        self.adaptors = nn.ModuleDict()
        for j, i in enumerate(self.adaptor_layers):
            layer = copy.deepcopy(parts.layers[i])
            for m in layer.modules():                    # its own KV-cache slot past the LLM's layers
                if hasattr(m, "layer_idx"):
                    m.layer_idx = n + j
            self.adaptors[str(i)] = layer
        self.embed_tokens = copy.deepcopy(parts.embed_tokens)
        self.norm = copy.deepcopy(parts.norm)
        self.lm_head = copy.deepcopy(parts.lm_head)
        for p in self.parameters():
            p.requires_grad_(True)
        self.mode = mode
        self._on = False
        for i in self.adaptor_layers:
            parts.layers[i].register_forward_hook(_AdaptorHook(self, str(i)), with_kwargs=True)
        parts.norm.register_forward_hook(self._norm_hook)

    def settings(self) -> dict[str, Any]:
        return {"type": "inner_adaptor", "adaptor_layers": list(self.adaptor_layers)}

    @contextlib.contextmanager
    def path(self, multimodal: bool):
        require(self.mode in MODES, f"iaa path mode must be one of {MODES}, not '{self.mode}'")
        on = self.mode == "multimodal" or (self.mode == "auto" and multimodal)
        prev, self._on = self._on, on
        try:
            yield
        finally:
            self._on = prev

    def _norm_hook(self, module, args, output):
        return self.norm(args[0]) if self._on else None

    def embed(self, parts, input_ids: torch.Tensor) -> torch.Tensor:
        return (self.embed_tokens if self._on else parts.embed_tokens)(input_ids)     # [B, L, D_lm]

    def head(self, parts, hidden: torch.Tensor) -> torch.Tensor:
        return (self.lm_head if self._on else parts.lm_head)(hidden)
