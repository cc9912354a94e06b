"""Image-text retrieval (clip_benchmark's zeroshot_retrieval): Recall@1/5/10 image->text and text->image.

Each image has one or more captions (clip_benchmark retrieval shards: `txt`, one caption per line;
json `caption(s)`; synthetic-world scenes: their canonical description). A text->image query is a hit
when an image the caption belongs to is in the top k; image->text when any of its captions is.
Identical caption strings count as the same caption, so two scenes that read the same are both right.
"""
from __future__ import annotations

import torch

from benchmarks.data import SampleProblem
from benchmarks.metrics import recall_at_k
from benchmarks.registry import Benchmark
from benchmarks.tasks import (
    Context,
    Skips,
    TaskResult,
    TooFewItems,
    image_features_of,
    load_samples,
    text_features_of,
)
from benchmarks.tasks.captions import captions_of

KS = (1, 5, 10)


def applicable(model, bench: Benchmark) -> str | None:
    return None if "image" in model.modalities else "the model has no image encoder"


def positives(captions: list[list[str]]) -> tuple[list[str], torch.Tensor]:
    """Unique caption texts and the [N_images, N_texts] bool matrix of which text describes which image."""
    texts = sorted({c for cs in captions for c in cs})
    pos = {t: i for i, t in enumerate(texts)}
    m = torch.zeros(len(captions), len(texts), dtype=torch.bool)
    for i, cs in enumerate(captions):
        m[i, [pos[c] for c in cs]] = True
    return texts, m


def score(img: torch.Tensor, txt: torch.Tensor, pos: torch.Tensor) -> tuple[dict[str, float], dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Recall@k both ways from normalised features img [N, D], txt [T, D] and positives [N, T]."""
    sim = img @ txt.T                                                                   # [N, T]
    i2t = recall_at_k(sim, pos, KS)
    t2i = recall_at_k(sim.T, pos.T, KS)
    metrics = {f"image_recall@{k}": float(i2t[k].float().mean()) for k in KS}
    metrics |= {f"text_recall@{k}": float(t2i[k].float().mean()) for k in KS}
    metrics["mean_recall"] = sum(metrics.values()) / len(metrics)
    return metrics, i2t, t2i


def run(model, bench: Benchmark, ctx: Context) -> TaskResult:
    skips = Skips()
    samples, dhash = load_samples(bench, ctx, skips=skips)
    kept = []
    for s in samples:            # first whether it has a caption, then whether it has an image
        try:
            c = captions_of(s)
            if c:
                s.first("image")
        except SampleProblem as e:
            skips.add(e)
            continue
        if c:
            kept.append((s, c))
        else:
            skips.skip("no_caption", s, "no caption (txt, json caption or a scene)")
    if not kept:
        raise skips.nothing_usable(f"benchmark {bench.name}")
    img, ok = image_features_of(model, [s for s, _ in kept], dhash, ctx, skips)       # [N, D]
    kept = [k for k, good in zip(kept, ok) if good]
    if not kept:
        raise skips.nothing_usable(f"benchmark {bench.name}")
    texts, pos = positives([c for _, c in kept])
    if len(kept) < 2 or len(texts) < 2:  # one image, or every image with the same caption: recall 1.0 by construction
        raise TooFewItems(f"benchmark {bench.name}: {len(kept)} image(s) and {len(texts)} distinct caption(s); "
                        f"retrieval needs at least 2 of each")
    txt = text_features_of(model, texts, ctx)                                           # [T, D]
    metrics, i2t, _ = score(img, txt, pos)
    rows = [dict(key=s.key, caption=c[0], n_captions=len(c), **{f"image_hit@{k}": bool(i2t[k][i]) for k in KS})
            for i, (s, c) in enumerate(kept)]
    metrics |= {"n": float(len(kept)), "n_images": float(len(kept)), "n_texts": float(len(texts)),
                "skipped_bad_image": 0.0, "skipped_no_caption": 0.0, **skips.metrics()}
    return TaskResult(rows, metrics, skips.tables())
