"""Zero-shot classification, the UniBench / clip_benchmark protocol, over shards in the `wds` layout.

Per class, every template is filled with the class name and embedded; the L2-normalised template
embeddings are averaged and the mean L2-normalised again (the class weight). Logits are
100 x image . W for the L2-normalised image embedding. Metrics: top-1, top-5 (NaN under 5 classes,
as clip_benchmark reports it) and balanced accuracy (clip_benchmark's `mean_per_class_recall`).
Per-sample predictions equal clip_benchmark's `zero_shot_classifier` + `run_classification` in fp32.

Image features (with keys and labels) and class weights are cached separately, keyed by the model
and by the shard files / class names + templates, so a rerun or another benchmark over the same
shards does not run the model at all.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from benchmarks.data import (
    SampleProblem,
    WdsMeta,
    data_hash,
    iter_samples,
    read_cls,
    read_wds_meta,
    shard_files,
)
from benchmarks.metrics import balanced_accuracy, topk_correct
from benchmarks.registry import Benchmark
from benchmarks.tasks import Context, Skips, TaskResult, decoded_image, encode_images
from vlm.errors import UserError


def applicable(model, bench: Benchmark) -> str | None:
    return None if "image" in model.modalities else "the model has no image encoder"


def class_weights(model, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """[C, D]: per class, the normalised mean of the normalised template embeddings."""
    texts = [t.format(c=c) for c in classnames for t in templates]
    emb = model.encode_texts(texts).reshape(len(classnames), len(templates), -1)     # [C, T, D]
    w = emb.mean(dim=1)
    return w / w.norm(dim=-1, keepdim=True)


def encode_wds_images(model, files, n_classes: int, ctx: Context) -> tuple[torch.Tensor, torch.Tensor, list[str], Skips]:
    """Every image of the shards through the model: [N, D] normalised features, [N] labels, keys, and the
    samples left out by reason (no image, no or a bad `cls`, an image that does not decode: `Skips`)."""
    keys: list[str] = []
    shards: list[str] = []
    labels: list[int] = []
    skips = Skips()

    def items():
        for s in iter_samples(files):
            try:
                raw = s.first("image")
                label = read_cls(s, n_classes)
            except SampleProblem as e:
                skips.add(e)
                continue
            labels.append(label)
            keys.append(s.key)
            shards.append(s.shard)
            yield s, raw
            if ctx.limit and len(keys) >= ctx.limit:
                return

    feats, ok = encode_images(model, items(), lambda item: decoded_image(model, *item), ctx)
    for k, shard, good in zip(keys, shards, ok):
        if not good:
            skips.count("bad_image", k, f"{shard}: sample {k}: the image does not decode", shard=shard)
    if not any(ok):
        if skips:
            raise skips.nothing_usable(str(files[0].parent))
        raise UserError(f"{files[0].parent}: no samples")
    return (feats, torch.tensor([y for y, good in zip(labels, ok) if good]),
            [k for k, good in zip(keys, ok) if good], skips)


def image_features(model, meta: WdsMeta, split: str, ctx: Context) -> tuple[torch.Tensor, torch.Tensor, list[str], Skips]:
    files = shard_files(meta.folder, split)
    # the class count is part of the key: a sample whose cls is outside a shorter classnames.txt is an error,
    # not a label cached under a longer one
    name = f"wds-images-{data_hash(files, ctx.limit, len(meta.classnames))}"

    def compute():
        x, y, keys, skips = encode_wds_images(model, files, len(meta.classnames), ctx)
        return {"features": x, "labels": y}, {"keys": keys, "skips": skips.state()}

    t, m = ctx.cache.get_or_compute(model.fingerprint, name, compute)
    return t["features"], t["labels"], m["keys"], Skips.from_state(m.get("skips"))


def text_weights(model, meta: WdsMeta, ctx: Context) -> torch.Tensor:
    name = f"zs-classifier-{data_hash([], meta.classnames, meta.templates)}"
    t, _ = ctx.cache.get_or_compute(model.fingerprint, name,
                                    lambda: ({"weights": class_weights(model, meta.classnames, meta.templates)}, {}))
    return t["weights"]


def evaluate(logits: torch.Tensor, labels: torch.Tensor, keys: list[str], classnames: list[str]) -> TaskResult:
    pred = logits.argmax(dim=1)
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
    rows: list[dict[str, Any]] = [
        dict(key=k, label=int(y), pred=int(p), correct=bool(p == y), top5=[int(i) for i in t5],
             label_name=classnames[int(y)], pred_name=classnames[int(p)])
        for k, y, p, t5 in zip(keys, labels.tolist(), pred.tolist(), top5.tolist())]
    metrics = {
        "top1": float((pred == labels).float().mean()),
        "top5": float(topk_correct(logits, labels, 5).float().mean()) if logits.shape[1] >= 5 else float("nan"),
        "balanced_accuracy": balanced_accuracy(labels.tolist(), pred.tolist()),
        "n": float(len(keys)),
    }
    return TaskResult(rows, metrics)


def same_as_earlier(w: torch.Tensor, meta: WdsMeta) -> None:
    """Two classes whose weights are equal (`red` and `RED` under a lower-casing tokenizer): the later one could
    never be predicted, or only by rounding, which was scored (a review). One line naming both."""
    _, inverse = torch.unique(w, dim=0, return_inverse=True)
    first: dict[int, int] = {}
    for c, g in enumerate(inverse.tolist()):
        if g in first:
            raise UserError(f"{meta.folder}: classes {meta.classnames[first[g]]!r} and {meta.classnames[c]!r} embed "
                            "identically with this model (its tokenizer reads them alike, e.g. lower-cased): the later "
                            "could never be predicted; rename one in classnames.txt")
        first[g] = c


def run(model, bench: Benchmark, ctx: Context) -> TaskResult:
    meta = read_wds_meta(bench.data.folder(ctx.roots))
    t0 = time.perf_counter()
    feats, labels, keys, skips = image_features(model, meta, bench.data.split, ctx)   # [N, D]
    t1 = time.perf_counter()
    w = text_weights(model, meta, ctx)                                                 # [C, D]
    same_as_earlier(w, meta)
    t2 = time.perf_counter()
    logits = 100.0 * feats @ w.T                                                       # [N, C]
    res = evaluate(logits, labels, keys, meta.classnames)
    res.metrics |= {"skipped_bad_image": 0.0, **skips.metrics()}
    res.tables |= skips.tables()
    res.tables["timing"] = [dict(phase="images", seconds=round(t1 - t0, 3), n=len(keys)),
                            dict(phase="class weights", seconds=round(t2 - t1, 3), n=len(meta.classnames) * len(meta.templates))]
    return res
