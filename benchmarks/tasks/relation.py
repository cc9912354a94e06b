"""Relation / caption-order tasks (ARO, SugarCrepe, Winoground text side): each image comes with
captions of which the first is correct; a sample is right when caption 0 scores strictly highest.

Captions come from the shards (`json.captions`, mode `given`) or are built from synthetic-world's
ground truth (modes `spatial` and `attribute`, see `benchmarks.tasks.captions`).
"""
from __future__ import annotations

import torch

from benchmarks.data import SampleProblem
from benchmarks.registry import Benchmark
from benchmarks.tasks import (
    Context,
    Skips,
    TaskResult,
    image_features_of,
    load_samples,
    text_features_of,
)
from benchmarks.tasks.captions import relation_captions
from vlm.errors import UserError


def applicable(model, bench: Benchmark) -> str | None:
    return None if "image" in model.modalities else "the model has no image encoder"


def run(model, bench: Benchmark, ctx: Context) -> TaskResult:
    mode = bench.options.get("mode", "given")
    skips = Skips()
    samples, dhash = load_samples(bench, ctx, skips=skips)
    kept, caps = [], []
    for s in samples:            # first whether the mode uses the sample, then whether it has an image
        try:
            c = relation_captions(s, mode)
            if c is not None:
                s.first("image")
        except SampleProblem as e:
            skips.add(e)
            continue
        if c is not None:
            kept.append(s)
            caps.append(c)
        elif mode == "given":    # shipped captions missing, fewer than two or not texts: counted (dropped silently)
            skips.skip("no_captions", s, "no json 'captions' (two texts or more)")
    if not kept:
        if skips:
            raise skips.nothing_usable(f"benchmark {bench.name} (mode '{mode}')")
        raise UserError(f"benchmark {bench.name}: no sample has captions for mode '{mode}'")
    img, ok = image_features_of(model, kept, dhash, ctx, skips)           # [N, D]
    kept, caps = [s for s, good in zip(kept, ok) if good], [c for c, good in zip(caps, ok) if good]
    if not kept:
        raise skips.nothing_usable(f"benchmark {bench.name}")
    flat = [c for cs in caps for c in cs]
    txt = text_features_of(model, flat, ctx)                                            # [sum K, D]
    rows, start = [], 0
    for s, cs, v in zip(kept, caps, img):
        scores = txt[start:start + len(cs)] @ v                                         # [K]
        start += len(cs)
        hit = bool(scores[0] > scores[1:].max())
        rows.append(dict(key=s.key, correct=hit, n_captions=len(cs), pred=int(scores.argmax()),
                         score_true=float(scores[0]), score_best_false=float(scores[1:].max()), caption=cs[0]))
    acc = float(torch.tensor([r["correct"] for r in rows], dtype=torch.float).mean())
    metrics = {"accuracy": acc, "chance": float(sum(1 / r["n_captions"] for r in rows) / len(rows)),
               "n": float(len(rows)), "skipped_bad_image": 0.0,
               **({"skipped_no_captions": 0.0} if mode == "given" else {}), **skips.metrics()}
    return TaskResult(rows, metrics, skips.tables())
