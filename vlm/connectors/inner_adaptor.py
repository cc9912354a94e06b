"""Inner adaptors (IAA): trainable decoder layers that ride on a frozen LLM for multimodal input only.

As the reference code (360CVGroup/Inner-Adaptor-Architecture) does it: at each chosen depth i,
multimodal input runs `h = frozen_layer_i(h); h = adaptor_i(h)` (the adaptor's output replaces the
stream); the multimodal path has its own token embedding, final norm and LM head, all trainable
copies. Text-only input never touches any of them, so it is the base LLM bit for bit.

How: the adaptors are attached to the frozen layers as forward hooks that are live only inside
`with adaptors.active():`. The LLM's own forward still builds the masks, rotary embeddings and
embedding scaling of whatever architecture it is (Llama, Qwen2, Mistral, Gemma ...), so nothing
architecture-specific is re-implemented here. Each adaptor keeps its own KV-cache slot
(layer_idx = n_layers + j), so generation with a cache works on both paths.
"""
from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

from vlm.errors import require

# The reference inserts pairs every 5 layers of a 32-layer LLM: [0, 1, 5, 6, ..., 30, 31].
REFERENCE_DEPTH, REFERENCE_STRIDE = 32, 5


def default_adaptor_layers(n_layers: int) -> list[int]:
    """Pairs every k layers, k scaled from the reference's 5-in-32; the last pair ends at the top layer."""
    stride = max(2, round(REFERENCE_STRIDE * n_layers / REFERENCE_DEPTH))
    layers = sorted({j for i in range(0, n_layers, stride) for j in (i, i + 1) if j < n_layers} | {n_layers - 1})
    return layers


class InnerAdaptors(nn.Module):
    def __init__(self, parts, adaptor_layers: list[int] | None = None):
        """parts: `vlm.llm.LLMParts` of the (frozen) LLM; adaptors start as copies of the layers they follow."""
        super().__init__()
        n = len(parts.layers)
        self.adaptor_layers = list(adaptor_layers) if adaptor_layers is not None else default_adaptor_layers(n)
        require(all(0 <= i < n for i in self.adaptor_layers) and self.adaptor_layers,
                f"adaptor_layers {self.adaptor_layers} must be depths in [0, {n})")
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
        self._on = False
        self._handles = []
        self.attach(parts)

    def attach(self, parts) -> None:
        for h in self._handles:
            h.remove()
        self._handles = [parts.layers[i].register_forward_hook(self._layer_hook(str(i)), with_kwargs=True)
                         for i in self.adaptor_layers]
        self._handles.append(parts.norm.register_forward_hook(self._norm_hook))

    @contextlib.contextmanager
    def active(self, on: bool = True):
        prev, self._on = self._on, on
        try:
            yield
        finally:
            self._on = prev

    def _layer_hook(self, key: str):
        def hook(module, args, kwargs, output):
            if not self._on:
                return None
            h = output[0] if isinstance(output, tuple) else output           # [B, L, D] frozen layer output
            if "hidden_states" in kwargs:
                out = self.adaptors[key](**{**kwargs, "hidden_states": h})
            else:
                out = self.adaptors[key](h, *args[1:], **kwargs)
            new = out[0] if isinstance(out, tuple) else out
            return (new, *output[1:]) if isinstance(output, tuple) else new
        return hook

    def _norm_hook(self, module, args, output):
        return self.norm(args[0]) if self._on else None

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)
