"""Dragonfly family: low / mid / high resolution crops of one image, pooled per crop, with zoom-in
selection of the top-k high-resolution crops per mid region, at a fixed visual-token budget.

    model = vlm.build("dragonfly", "tiny")                              # 96 tokens per image
    model = vlm.build("dragonfly", "tiny", selection="text", top_k=2)   # question-conditioned zoom (learned;
                                                    # objective grounded_next_token trains it on bboxes)
    model = vlm.build("dragonfly", "tiny", selection="salient")         # the odd crop out
    model = vlm.build("dragonfly", vision="hf:/models/siglip", llm="/models/qwen2", pool=3)
    vlm train dragonfly-tiny                                            # projector, then full

Parts: the `zoom` media connector for images (`vlm/connectors/zoom.py`: geometry, pooling, scores,
token assembly), the `plain` route. Works with any image encoder of `encoders/` that reports its
patch grid (or with pool=1).
"""
from __future__ import annotations

import copy

from vlm.connectors.zoom import ZoomSettings
from vlm.families.base import Family, build_multimodal, register_family
from vlm.families.llava import LLAVA_05B_RECIPE, LLAVA_TINY_RECIPE, QWEN2_05B
from vlm.model import MultimodalLM


def build_dragonfly(vision: str | dict = "tiny-clip", llm: str | dict = "tiny:llama", projector: str = "mlp2x_gelu",
                    pool: int = 4, top_k: int = 3, selection: str = "visual",
                    mid_grids: list[list[int]] | None = None, factor: int = 3, separator: bool = True,
                    llm_mode: str = "frozen", lora: dict | None = None, seed: int | None = 0) -> MultimodalLM:
    """Any image encoder + any LLM; the zoom settings are `vlm.connectors.zoom.ZoomSettings`."""
    zoom = ZoomSettings(**{k: v for k, v in dict(pool=pool, top_k=top_k, selection=selection, factor=factor,
                                                   separator=separator, mid_grids=mid_grids).items() if v is not None})
    media = {"image": {"type": "zoom", "projector": projector, **zoom.to_dict()}}
    return build_multimodal("dragonfly", llm, {"image": vision}, media, {"type": "plain"}, llm_mode, lora, seed=seed)


def _recipe_like_llava(llava: dict, size: str, extra_tokens: int, description: str) -> dict:
    """llava's recipe for the same size (same data, stages, steps, learning rates, base LLM) on every image task
    (the family has no audio encoder): the zoom's separators train with the projector, and max_len
    grows by the extra visual tokens of up to two images (multi_image)."""
    r = copy.deepcopy(llava)
    r["description"] = description
    r["model"] = {"family": "dragonfly", "size": size,                 # llava's LLM (tiny: the text-pretrained)
                  "settings": {k: v for k, v in llava["model"]["settings"].items() if k == "llm"}}
    for st in r["stages"]:
        st["trainable"] = [*st["trainable"], "media.image.zoom.*"]
        st["max_len"] = st["max_len"] + 2 * extra_tokens
        st["filter"] = {k: v for k, v in st.get("filter", {}).items() if k != "tasks"}
        st["filter"]["modalities"] = ["image"]
    return r


# 32 px, patch 8: 4x4 grid -> 2x2 per crop. Salient selection: on synthetic-world fine detail the
# reference's visual score keeps the crops most like their region (background; 0.21 of test images
# keep the object's crop, chance 0.33) and dragonfly-tiny then does no better than llava-tiny; salient
# keeps it in 0.99 (benchmarks/studies/fine_detail_compare.py, model_cards/dragonfly.md).
TINY = dict(vision="tiny-clip", llm="tiny:llama", pool=2, selection="salient")
# CLIP ViT-L/14-336 with its CLS token, as the reference feeds it (577 tokens low, 37 per pooled crop).
SIZE_05B = dict(vision={"name": "clip-vit-l-336", "feature_select": "full"}, llm=QWEN2_05B, pool=4)

register_family(Family(
    name="dragonfly",
    description="Dragonfly: low/mid/high-res crops, pooled, top-k zoom-in selection (visual or text), fixed budget",
    builder=build_dragonfly,
    sizes={"tiny": TINY, "0.5b": SIZE_05B},
    recipes={
        # tiny: 16 + 4 * 5 + 12 * 5 = 96 tokens per image vs llava-tiny's 16; 0.5b: 1,185 vs 576
        "tiny": _recipe_like_llava(LLAVA_TINY_RECIPE, "tiny", 96 - 16, "llava-tiny's stages, steps and data, image "
                                   "tasks (projector, then full): the fine-detail comparison"),
        "0.5b": _recipe_like_llava(LLAVA_05B_RECIPE, "0.5b", 1185 - 576, "LLaVA-1.5 stages for dragonfly-0.5b (GPU)"),
    },
))
