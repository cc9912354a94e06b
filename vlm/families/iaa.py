"""IAA family: a frozen LLM gains multimodal ability through inner adaptor layers.

Multimodal input runs the frozen layers with trainable adaptor layers after chosen depths and a
multimodal embedding / final norm / LM head (the `inner_adaptor` route, `vlm.connectors.inner_adaptor`);
text-only input takes the untouched LLM path, so its logits and generations are the base LLM's, bit
for bit. The batch decides (any media item -> multimodal); `model.route.mode = "text" | "multimodal"`
forces a path.

    model = vlm.build("iaa", "tiny")
    model = vlm.build("iaa", vision="hf:/models/clip", llm="/models/qwen2", adaptor_layers=[0, 1, 12, 13])
"""
from __future__ import annotations

from vlm.families.base import (
    PROJECTORS,
    QWEN2_05B,
    TINY_SIZE,
    Family,
    build_multimodal,
    media_parts,
    register_family,
    tiny_curriculum,
)
from vlm.model import MultimodalLM


def build_iaa(vision: str | dict | None = "tiny-clip", llm: str | dict = "tiny:llama", projector: str = "mlp2x_gelu",
              audio: str | dict | None = None, music: str | dict | None = None, video: str | dict | None = None,
              adaptor_layers: list[int] | None = None, audio_pool: int | None = None, music_pool: int | None = None,
              seed: int | None = 0) -> MultimodalLM:
    """adaptor_layers: depths after which an adaptor runs (None: a pair every 5 layers, the reference's
    `[0, 1, 5, 6, ...]`). The LLM stays frozen: the route refuses any other mode."""
    encoders, media = media_parts({"type": "projector", "projector": projector},
                                  {"audio": {"pool": audio_pool}, "music": {"pool": music_pool}},
                                  vision=vision, audio=audio, music=music, video=video)
    return build_multimodal("iaa", llm, encoders, media, {"type": "inner_adaptor", "adaptor_layers": adaptor_layers},
                            "frozen", None, seed=seed)


# The reference's two stages, LLM frozen throughout: alignment (projector, captions), then adaptors +
# projector + multimodal embedding / norm / head on instructions, easy -> hard by difficulty (SAIL-VL
# order). llava-tiny's curriculum, data, steps and learning rates; the encoder stays frozen as there.
IAA_TINY_RECIPE = tiny_curriculum(
    "iaa", "IAA on synthetic-world: projector, then adaptors + projector + mm embedding/head; LLM frozen",
    [PROJECTORS, "route.*"], "frozen")

register_family(Family(
    name="iaa",
    description="IAA: frozen LLM + inner adaptor layers; text-only input takes the untouched LLM path",
    builder=build_iaa,
    sizes={
        "tiny": TINY_SIZE,
        "0.5b": dict(vision="clip-vit-l-336", llm=QWEN2_05B, projector="linear"),
    },
    recipes={"tiny": IAA_TINY_RECIPE},
))
