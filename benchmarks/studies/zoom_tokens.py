"""Visual tokens per image: Dragonfly settings vs LLaVA-NeXT AnyRes on the same encoder (CLIP ViT-L/14-336).

    python benchmarks/studies/zoom_tokens.py            # the table; ours is asked of a dragonfly-0.5b skeleton
    python benchmarks/studies/zoom_tokens.py --no-model # geometry only (no model build)

Every number is computed. AnyRes as LLaVA-NeXT counts it (transformers' LlavaNextProcessor): pick the
grid pinpoint by best fit (most effective pixels, then least waste), 576 base tokens (CLS dropped),
the grid's 24x24 feature maps stitched, padding rows / columns removed (unpad), one newline token per
row. Pinpoint sets: LLaVA-NeXT-1.6's five (up to 2x2 / 1x3 crops) and the square grids up to 3x3
and 4x4 (the `(1x1),...,(NxN)` pinpoints of later LLaVA-NeXT / OneVision models), which give the
5,832 - 9,888 tokens at 1344 px quoted in DESIGN.md. Dragonfly keeps CLS as the reference does
(577 / 37 tokens per crop). Its count does not depend on the image: every image is resized to the grids.
"""
from __future__ import annotations

import argparse
import sys

from vlm.connectors.zoom import ZoomSettings, choose_grid, pooled_tokens

SIZE, PATCH = 336, 14                      # CLIP ViT-L/14-336
GRID = SIZE // PATCH                       # 24 x 24 patch tokens per crop
IMAGES = {"672x672": (672, 672), "1344x1344": (1344, 1344), "1344x672": (1344, 672)}
PINPOINTS = {                              # (rows, cols) in 336-px crops
    "LLaVA-NeXT AnyRes, 1.6 pinpoints": ((2, 1), (1, 2), (2, 2), (1, 3), (3, 1)),
    "LLaVA-NeXT AnyRes, grids <= 3x3": tuple((r, c) for r in range(1, 4) for c in range(1, 4)),
    "LLaVA-NeXT AnyRes, grids <= 4x4": tuple((r, c) for r in range(1, 5) for c in range(1, 5)),
}


def anyres_tokens(size: tuple[int, int], pinpoints: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """(LLM tokens, encoder crops) of one (w, h) image under LLaVA-NeXT AnyRes."""
    w, h = size
    rows, cols = choose_grid(size, pinpoints, (SIZE, SIZE))
    cur_h, cur_w = rows * GRID, cols * GRID
    if w / h > cur_w / cur_h:                                  # wider than the grid: padding rows go
        cur_h -= 2 * ((cur_h - int(round(h * cur_w / w, 7))) // 2)
    else:
        cur_w -= 2 * ((cur_w - int(round(w * cur_h / h, 7))) // 2)
    return GRID * GRID + cur_h * cur_w + cur_h, 1 + rows * cols


def dragonfly_tokens(s: ZoomSettings, prefix: int = 1) -> tuple[int, int]:
    """(LLM tokens, encoder crops) of one image under zoom settings `s`, CLS kept per crop."""
    return s.budget(prefix + GRID * GRID, pooled_tokens((GRID, GRID), prefix, s.pool)), s.n_views


def model_tokens(size: tuple[int, int]) -> int:
    """Ours as the dragonfly-0.5b model counts it (a meta-device skeleton: no weights, no memory)."""
    import torch
    from PIL import Image

    from vlm.families import build
    global _MODEL
    if _MODEL is None:
        with torch.device("meta"):
            _MODEL = build("dragonfly", "0.5b")
    item = _MODEL.processor.preprocess_media("image", Image.new("RGB", size, (90, 120, 150)))
    return _MODEL.num_media_tokens("image", item)


_MODEL = None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--no-model", action="store_true", help="skip asking the dragonfly-0.5b skeleton")
    args = ap.parse_args(argv)
    rows: list[tuple[str, list[tuple[int, int]]]] = []
    for name, pins in PINPOINTS.items():
        rows.append((name, [anyres_tokens(sz, pins) for sz in IMAGES.values()]))
    dragonfly = {
        "Dragonfly v2: all 40 crops pooled 4x4": ZoomSettings(pool=4, top_k=9, separator=False),
        "Dragonfly v1: top-3 high per mid region, unpooled": ZoomSettings(pool=1, top_k=3, separator=False),
        "ours: pooled 4x4, top-3 per region, + separators": ZoomSettings(pool=4, top_k=3, separator=True),
    }
    for name, s in dragonfly.items():
        rows.append((name, [dragonfly_tokens(s)] * len(IMAGES)))
    ours = rows[-1][1][0][0]
    if not args.no_model:
        counted = [model_tokens(sz) for sz in IMAGES.values()]
        assert counted == [ours] * len(IMAGES), f"dragonfly-0.5b counts {counted}, the geometry says {ours}"
    ref = {k: dict(zip(IMAGES, (t for t, _ in v))) for k, v in rows[:3]}
    hi = "1344x1344"
    head = ["setting (CLIP ViT-L/14-336)", *[f"tok@{k}" for k in IMAGES], f"crops@{hi}", "vs <=3x3", "vs <=4x4"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
    for name, cells in rows:
        toks = [f"{t:,}" for t, _ in cells]
        crops = cells[list(IMAGES).index(hi)][1]
        t_hi = cells[list(IMAGES).index(hi)][0]
        ratios = [f"{t_hi / ref[k][hi]:.2f}" for k in list(PINPOINTS)[1:]]
        print(f"| {name} | " + " | ".join([*toks, str(crops), *ratios]) + " |")
    print(f"\nours at {hi}: {ours:,} tokens = {ours / ref[list(PINPOINTS)[1]][hi]:.2f} (grids <= 3x3) to "
          f"{ours / ref[list(PINPOINTS)[2]][hi]:.2f} (<= 4x4) of AnyRes (target <= 0.33)"
          + ("" if args.no_model else "; dragonfly-0.5b's num_media_tokens agrees at every size"))
    print("v1 row: our geometry (high = 3x mid, 36 crops); the v1 code encodes 29 crops, the same 9,809 tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
