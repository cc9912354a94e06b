"""Dragonfly family: low / mid / high resolution crops of one image, pooled per crop, with zoom-in
selection of the top-k high-resolution crops per mid region, at a fixed visual-token budget.

    model = vlm.families.build("dragonfly", "tiny")                              # 96 tokens per image
    model = vlm.families.build("dragonfly", "tiny", selection="text", top_k=2)   # question-conditioned zoom
    model = vlm.families.build("dragonfly", "tiny", selection="salient")         # the odd crop out
    model = vlm.families.build("dragonfly", vision="hf:/models/siglip", llm="/models/qwen2", pool=3)
    vlm train dragonfly-tiny                                                     # projector, then full

The geometry, scores and token assembly are `vlm/connectors/zoom.py`; here the model hooks: the
image preprocess (one [1 + M + M*f*f, 3, S, S] stack per image), the token count and the encoding.
Works with any image encoder of `encoders/` that reports its patch grid (or with pool=1).
"""
from __future__ import annotations

import copy

import torch
from PIL import Image

from vlm import llm as llm_lib
from vlm.connectors.zoom import (
    ZoomPreprocess,
    ZoomSelect,
    ZoomSettings,
    check_zoom_item,
    pooled_tokens,
)
from vlm.errors import require
from vlm.families import Family, register_family
from vlm.families.llava import (
    LLAVA_05B_RECIPE,
    LLAVA_TINY_RECIPE,
    QWEN2_05B,
    build_multimodal,
)
from vlm.model import MediaContext, MultimodalLM


class DragonflyModel(MultimodalLM):
    def __init__(self, config, llm, tokenizer, encoders):
        require(set(encoders) == {"image"}, f"the dragonfly family takes one image encoder, got {sorted(encoders)}")
        super().__init__(config, llm, tokenizer, encoders)
        self.zoom_settings = ZoomSettings.from_dict(config.extra)
        config.extra.update(self.zoom_settings.to_dict())
        d_lm = llm_lib.base_model(self.llm).config.get_text_config().hidden_size
        self.zoom = ZoomSelect(self.zoom_settings, d_lm)
        self._zoom_preprocess: ZoomPreprocess | None = None

    # ------------------------------------------------------------ hooks
    def media_preprocess(self, modality: str):
        if modality != "image":
            return super().media_preprocess(modality)
        if self._zoom_preprocess is None:
            self._zoom_preprocess = ZoomPreprocess(self.encoders["image"].preprocess, self.zoom_settings)
        return self._zoom_preprocess

    def _blank_item(self, modality: str) -> torch.Tensor:
        return self.media_preprocess("image")(Image.new("RGB", (64, 64)))

    def _crop_layout(self, item: torch.Tensor) -> tuple[tuple[int, int] | None, int, int]:
        """(patch grid, prefix tokens, tokens after pooling) of one crop of `item` [V, 3, S, S]."""
        enc, pool = self.encoders["image"], self.zoom_settings.pool
        grid = enc.patch_grid(item[0])
        if grid is None:
            require(pool == 1, f"image encoder '{enc.name}' reports no patch grid: dragonfly needs pool=1 with it")
            return None, enc.num_prefix_tokens, enc.num_tokens(item[0])
        return grid, enc.num_prefix_tokens, pooled_tokens(grid, enc.num_prefix_tokens, pool)

    def num_media_tokens(self, modality: str, item: torch.Tensor) -> int:
        """The fixed budget: the same for every image, whatever its size (the crops are)."""
        check_zoom_item(item, self.zoom_settings)
        return self.zoom_settings.budget(self.encoders["image"].num_tokens(item[0]), self._crop_layout(item)[2])

    def encode_modality(self, modality: str, items: list[torch.Tensor], context: MediaContext | None = None
                        ) -> list[torch.Tensor]:
        return list(self.zoom_tokens(items, context)[0].unbind(0))               # N x [budget, D_lm]

    def zoom_tokens(self, items: list[torch.Tensor], context: MediaContext | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocessed items -> (tokens [N, budget, D_lm], picked high crops per mid region [N, M, k])."""
        from encoders.base import pool_grid
        s, enc, conn = self.zoom_settings, self.encoders["image"], self.connectors["image"]
        for it in items:
            check_zoom_item(it, s)
        x = torch.stack(items)                                                    # [N, V, 3, S, S]
        N, V, M = x.shape[0], x.shape[1], s.n_mid
        feats = torch.stack(enc.encode(list(x.flatten(0, 1))))                    # [N*V, T, D_enc]
        feats = feats.unflatten(0, (N, V))                                        # [N, V, T, D_enc]
        low = conn(feats[:, 0])                                                   # [N, T, D_lm]
        grid, prefix, _ = self._crop_layout(items[0])
        crops = feats[:, 1:].flatten(0, 1)                                        # [N*(V-1), T, D_enc]
        if grid is not None:
            crops = pool_grid(crops, grid, prefix, s.pool)                        # [N*(V-1), t, D_enc]
        crops = conn(crops).unflatten(0, (N, V - 1))                              # [N, V-1, t, D_lm]
        mid, high = crops[:, :M], crops[:, M:].unflatten(1, (M, s.factor ** 2))   # [N, M, t, D], [N, M, F, t, D]
        return self.zoom(low, mid, high, self._text_query(mid, context))

    def _text_query(self, mid: torch.Tensor, context: MediaContext | None) -> torch.Tensor | None:
        """Text selection: each row's prompt mean embedding, per mid region [N, M, D]; None (visual) otherwise.
        A row with no prompt tokens (or no context: a blank item) falls back to the visual query."""
        if self.zoom_settings.selection != "text" or context is None:
            return None
        visual = mid.mean(2)                                                      # [N, M, D]
        ids = self.placeholder_id.values()
        q = torch.stack([context.prompt_mean(r, ids) for r in context.rows]).to(visual.dtype)  # [N, D]
        q = q[:, None].expand_as(visual)
        return torch.where(q.isfinite().all(-1, keepdim=True), q, visual)


def build_dragonfly(vision: str | dict = "tiny-clip", llm: str | dict = "tiny:llama", projector: str = "mlp2x_gelu",
                    pool: int = 4, top_k: int = 3, selection: str = "visual",
                    mid_grids: list[list[int]] | None = None, factor: int = 3, separator: bool = True,
                    llm_mode: str = "frozen", lora: dict | None = None, seed: int | None = 0) -> DragonflyModel:
    """Any image encoder + any LLM; the zoom settings are `vlm.connectors.zoom.ZoomSettings`."""
    zoom = ZoomSettings(**{k: v for k, v in dict(pool=pool, top_k=top_k, selection=selection, factor=factor,
                                                   separator=separator, mid_grids=mid_grids).items() if v is not None})
    return build_multimodal(DragonflyModel, "dragonfly", llm, {"image": vision}, {"image": {"type": projector}},
                            llm_mode, lora, extra=zoom.to_dict(), seed=seed)


def _recipe_like_llava(llava: dict, size: str, extra_tokens: int, description: str) -> dict:
    """llava's recipe for the same size (same data, stages, steps, learning rates) on the image tasks only
    (the family has no audio encoder): the zoom's separators train with the projector, and max_len
    grows by the extra visual tokens of up to two images (multi_image)."""
    from vlm.data.synthetic import MODALITY
    r = copy.deepcopy(llava)
    r["description"] = description
    r["model"] = {"family": "dragonfly", "size": size, "settings": {}}
    for st in r["stages"]:
        st["trainable"] = [*st["trainable"], "zoom.*"]
        st["max_len"] = st["max_len"] + 2 * extra_tokens
        st["filter"] = {**st.get("filter", {}), "tasks": sorted(t for t, m in MODALITY.items() if m == "image")}
    return r


# 32 px, patch 8: 4x4 grid -> 2x2 per crop. Salient selection: on synthetic-world fine detail the
# reference's visual score keeps the crops most like their region (background; 0.21 of test images
# keep the object's crop, chance 0.33) and dragonfly-tiny then does no better than llava-tiny; salient
# keeps it in 0.99 (benchmarks/fine_detail_compare.py, model_cards/dragonfly.md).
TINY = dict(vision="tiny-clip", llm="tiny:llama", pool=2, selection="salient")
# CLIP ViT-L/14-336 with its CLS token, as the reference feeds it (577 tokens low, 37 per pooled crop).
SIZE_05B = dict(vision={"name": "clip-vit-l-336", "feature_select": "full"}, llm=QWEN2_05B, pool=4)

register_family(Family(
    name="dragonfly",
    description="Dragonfly: low/mid/high-res crops, pooled, top-k zoom-in selection (visual or text), fixed budget",
    model_cls=DragonflyModel,
    builder=build_dragonfly,
    sizes={"tiny": TINY, "0.5b": SIZE_05B},
    modalities=("image",),
    recipes={
        # tiny: 16 + 4 * 5 + 12 * 5 = 96 tokens per image vs llava-tiny's 16; 0.5b: 1,185 vs 576
        "tiny": _recipe_like_llava(LLAVA_TINY_RECIPE, "tiny", 96 - 16, "llava-tiny's stages, steps and data, image "
                                   "tasks (projector, then full): the fine-detail comparison"),
        "0.5b": _recipe_like_llava(LLAVA_05B_RECIPE, "0.5b", 1185 - 576, "LLaVA-1.5 stages for dragonfly-0.5b (GPU)"),
    },
))
