"""Task kinds: one module each, with `run(model, bench, ctx) -> TaskResult` and `applicable(model, bench)`.

    zeroshot   clip_benchmark / UniBench zero-shot classification over `wds` shards
    relation   caption-order tasks (ARO / SugarCrepe style): caption 0 is the correct one
    retrieval  image-text retrieval, Recall@1/5/10 both ways
    mmeb       MMEB: each query against its candidate list (gold at 0), Precision@1
    vqa        generative VQA (exact match, normalised accuracy) or log-likelihood over the choices
    caption    captioning (BLEU, CIDEr)
    probe      MARBLE probes of frozen audio/music encoder layers
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.cache import FeatureCache
from benchmarks.data import BadMedia, Sample, data_hash, iter_samples, shard_files
from benchmarks.registry import Benchmark, Roots
from vlm.errors import UserError

if TYPE_CHECKING:
    import torch

MODULES = {"zeroshot": "zeroshot", "relation": "relation", "retrieval": "retrieval", "mmeb": "mmeb",
           "vqa": "generative", "caption": "generative", "probe": "probe"}


class TooFewItems(UserError):
    """What is left of a benchmark's items under --limit is too few to score: one retrieval pair, an MMEB set
    whose first N samples hold no query, no test clip of a train label among the first N. Under --limit
    the benchmark is not applicable at that limit (the other benchmarks run); without a limit it ends the run
    like any other bad input. Data that scores nothing at any limit (no samples, none that decode, no
    captions) is a UserError: it ends the run either way."""


@dataclass
class Context:
    roots: Roots = field(default_factory=Roots)
    cache: FeatureCache = field(default_factory=lambda: FeatureCache(None))
    batch_size: int = 64
    workers: int = 2
    progress: bool = True
    limit: int | None = None          # at most this many samples per benchmark (quick runs)


@dataclass
class TaskResult:
    rows: list[dict[str, Any]]        # one per sample (or query)
    metrics: dict[str, float]         # the aggregate numbers; the benchmark's `metric` among them
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)   # extra breakdowns (MMEB per dataset)


def module(kind: str):
    return importlib.import_module(f"benchmarks.tasks.{MODULES[kind]}")


def applicable(model, bench: Benchmark) -> str | None:
    """None if the model can run the benchmark, else the reason it cannot."""
    return module(bench.kind).applicable(model, bench)


def run_task(model, bench: Benchmark, ctx: Context) -> TaskResult:
    return module(bench.kind).run(model, bench, ctx)


def bar(ctx: Context, desc: str, total: int | None = None, unit: str = "it"):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit=unit, disable=not ctx.progress, leave=False, dynamic_ncols=True)


def load_samples(bench: Benchmark, ctx: Context, split: str | None = None) -> tuple[list[Sample], str]:
    """The benchmark's samples of `split` (default its own) kept by its task filter, and their data hash."""
    folder: Path = bench.data.folder(ctx.roots)
    split = split or bench.data.split
    files = shard_files(folder, split)
    tasks = set(bench.data.tasks)
    out: list[Sample] = []
    for s in iter_samples(files):
        if tasks and s.meta().get("task") not in tasks:
            continue
        out.append(s)
        if ctx.limit and len(out) >= ctx.limit:
            break
    if not out:
        raise UserError(f"{folder}/{split}: no samples for benchmark {bench.name}"
                        + (f" (task in {sorted(tasks)})" if tasks else ""))
    return out, data_hash(files, sorted(tasks), ctx.limit)


def decoded_image(model, s: Sample, raw: bytes | None = None):
    """The preprocessed image of a sample, or None when its file does not decode (skipped and counted as
    `skipped_bad_image` by the task, never the end of the benchmark)."""
    try:
        return model.preprocess_image(s.decode("image", s.first("image") if raw is None else raw))
    except BadMedia:
        return None


def encode_images(model, items, prep, ctx: Context, total: int | None = None) -> tuple[torch.Tensor, list[bool]]:
    """[N_ok, D] image embeddings of `prep(item)` over items (None: an undecodable image, left out) and, per
    item, whether it has a row."""
    import torch

    from benchmarks.data import prefetch
    feats, ok = [], []
    with bar(ctx, "images", total, "img") as pbar:
        for batch in prefetch(items, prep, ctx.batch_size, ctx.workers):
            ok += [x is not None for x in batch]
            good = [x for x in batch if x is not None]
            if good:
                feats.append(model.encode_image_batch(torch.stack(good)))
            pbar.update(len(batch))
    return (torch.cat(feats) if feats else torch.zeros(0)), ok


def image_features_of(model, samples: list[Sample], dhash: str, ctx: Context) -> tuple[torch.Tensor, list[bool]]:
    """[N_ok, D] normalised embeddings of each sample's first image and, per sample, whether its image decoded
    (the others are left out: the task skips and counts them), cached by model and data hash."""
    def compute():
        feats, ok = encode_images(model, samples, lambda s: decoded_image(model, s), ctx, len(samples))
        return {"features": feats}, {"keys": [s.key for s in samples], "ok": ok}

    name = f"images-{data_hash([], dhash, [s.key for s in samples])}"      # the subset matters, not just the files
    t, m = ctx.cache.get_or_compute(model.fingerprint, name, compute)
    return t["features"], m.get("ok") or [True] * len(samples)


def text_features_of(model, texts: list[str], ctx: Context) -> "torch.Tensor":
    """[N, D] normalised embeddings of `texts` (each unique text embedded once), cached by model and texts."""
    uniq = sorted(set(texts))

    def compute():
        return {"features": model.encode_texts(uniq, batch_size=ctx.batch_size)}, {}

    t, _ = ctx.cache.get_or_compute(model.fingerprint, f"texts-{data_hash([], uniq)}", compute)
    pos = {u: i for i, u in enumerate(uniq)}
    return t["features"][[pos[x] for x in texts]]
