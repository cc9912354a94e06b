"""IAA family: a frozen LLM gains multimodal ability through inner adaptor layers.

Multimodal input runs the frozen layers with trainable adaptor layers after chosen depths and a
multimodal embedding / final norm / LM head (`vlm.connectors.inner_adaptor`); text-only input takes
the untouched LLM path, so its logits and generations are the base LLM's, bit for bit. The batch
decides (any media item -> multimodal); `model.path = "text" | "multimodal"` forces a path.

    model = vlm.families.build("iaa", "tiny")
    model = vlm.families.build("iaa", vision="hf:/models/clip", llm="/models/qwen2", adaptor_layers=[0, 1, 12, 13])
"""
from __future__ import annotations

import torch

from vlm.connectors.inner_adaptor import InnerAdaptors
from vlm.errors import require
from vlm.families import Family, register_family
from vlm.families.llava import QWEN2_05B, TINY_SIZE, build_multimodal, per_modality, tiny_curriculum
from vlm.model import MultimodalLM

PATHS = ("auto", "text", "multimodal")


class IAAModel(MultimodalLM):
    def __init__(self, config, llm, tokenizer, encoders):
        config.llm_mode = "frozen"                       # the point of the family: the LLM never trains
        super().__init__(config, llm, tokenizer, encoders)
        require(config.lora is None, "the iaa family keeps the LLM frozen: no LoRA")
        self.iaa = InnerAdaptors(self.parts, config.extra.get("adaptor_layers"))
        config.extra["adaptor_layers"] = self.iaa.adaptor_layers
        self.path = "auto"

    def set_llm_mode(self, mode: str, lora: dict | None = None) -> None:
        require(mode == "frozen", f"the iaa family keeps the LLM frozen (asked: {mode})")
        super().set_llm_mode(mode, lora)

    def _multimodal(self, has_media: bool) -> bool:
        require(self.path in PATHS, f"iaa path must be one of {PATHS}, not '{self.path}'")
        return self.path == "multimodal" or (self.path == "auto" and has_media)

    def embed_tokens(self, input_ids: torch.Tensor, has_media: bool = True) -> torch.Tensor:
        emb = self.iaa.embed_tokens if self._multimodal(has_media) else self.parts.embed_tokens
        return emb(input_ids)                                                # [B, L, D_lm]

    def run_backbone(self, inputs_embeds, attention_mask=None, position_ids=None, past_key_values=None,
                     use_cache=False, has_media=True):
        with self.iaa.active(self._multimodal(has_media)):
            return super().run_backbone(inputs_embeds, attention_mask, position_ids, past_key_values, use_cache,
                                        has_media)

    def head(self, hidden: torch.Tensor, has_media: bool = True) -> torch.Tensor:
        return self.iaa.head(hidden) if self._multimodal(has_media) else super().head(hidden, has_media)


def build_iaa(vision: str | dict | None = "tiny-clip", llm: str | dict = "tiny:llama", projector: str = "mlp2x_gelu",
              audio: str | dict | None = None, music: str | dict | None = None, video: str | dict | None = None,
              adaptor_layers: list[int] | None = None, audio_pool: int = 1, music_pool: int = 1,
              seed: int | None = 0) -> IAAModel:
    encs, conns = per_modality(vision, audio, music, video, projector, audio_pool, music_pool)
    extra = {"adaptor_layers": adaptor_layers} if adaptor_layers is not None else {}
    return build_multimodal(IAAModel, "iaa", llm, encs, conns, "frozen", None, extra=extra, seed=seed)


# The reference's two stages, LLM frozen throughout: alignment (projector, captions), then adaptors +
# projector + multimodal embedding / norm / head on instructions, easy -> hard by difficulty (SAIL-VL
# order). llava-tiny's curriculum, data, steps and learning rates; the encoder stays frozen as there.
IAA_TINY_RECIPE = tiny_curriculum(
    "iaa", "IAA on synthetic-world: projector, then adaptors + projector + mm embedding/head; LLM frozen",
    ["connectors.*", "iaa.*"], "frozen")

register_family(Family(
    name="iaa",
    description="IAA: frozen LLM + inner adaptor layers; text-only input takes the untouched LLM path",
    model_cls=IAAModel,
    builder=build_iaa,
    sizes={
        "tiny": TINY_SIZE,
        "0.5b": dict(vision="clip-vit-l-336", llm=QWEN2_05B, projector="linear"),
    },
    modalities=("image", "audio", "music", "video"),
    recipes={"tiny": IAA_TINY_RECIPE},
))
