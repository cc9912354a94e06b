"""MMEB-style embedding evaluation (VLM2Vec): four meta-tasks (classification, VQA, retrieval, visual
grounding); every query is scored against its own candidate list with the gold candidate at index 0;
Precision@1 per dataset, then the mean over datasets per meta-task, in-distribution, out-of-distribution
and overall (MMEB averages datasets, not queries).

A benchmark's `options["datasets"]` lists its datasets: `{name, meta_task, ood, tasks, ...}` built from
synthetic-world samples (see `BUILDERS`), or `{name, meta_task, ood, path}` for shards in MMEB form
(json `qry_text`, `tgt_text` list, optional `qry_inst`/`tgt_inst`; images `qry.jpg`, `tgt0.jpg` ...).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch

from benchmarks.data import Sample, data_hash, iter_samples, shard_files
from benchmarks.metrics import precision_at_1
from benchmarks.models import Query
from benchmarks.registry import Benchmark
from benchmarks.tasks import Context, TaskResult, bar, load_samples
from benchmarks.tasks.captions import captions_of
from vlm.errors import UserError

META_TASKS = ("classification", "vqa", "retrieval", "grounding")
INSTRUCTIONS = {
    "classification": "Represent the given image for classification.",
    "vqa": "Represent the given image with the following question:",
    "retrieval": "Find me an everyday image that matches the given caption:",
    "grounding": "Select the portion of the image that isolates the object labeled as:",
    "image": "Represent the given image.",
    "crop": "Represent the given cropped image of the object.",
}


@dataclass
class Item:
    """A query or candidate: an id (equal ids are embedded once) and what to embed."""

    id: str
    query: Query


@dataclass
class MMEBQuery:
    key: str
    query: Item
    candidates: list[Item]                      # gold first


@dataclass
class Dataset:
    name: str
    meta_task: str
    ood: bool
    queries: list[MMEBQuery] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- scoring
def dataset_scores(model, ds: Dataset, batch_size: int = 64, progress: bool = False) -> list[list[float]]:
    """Cosine scores of each query against its candidates (gold first), each unique item embedded once."""
    items: dict[str, Query] = {}
    for q in ds.queries:
        for it in [q.query, *q.candidates]:
            items.setdefault(it.id, it.query)
    ids = list(items)
    emb = model.embed([items[i] for i in ids], batch_size=batch_size)                  # [U, D]
    pos = {i: n for n, i in enumerate(ids)}
    out = []
    for q in ds.queries:
        c = emb[[pos[it.id] for it in q.candidates]]                                    # [K, D]
        out.append((c @ emb[pos[q.query.id]]).tolist())
    return out


def aggregate(hits: dict[str, list[bool]], datasets: dict[str, Dataset]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Precision@1 per dataset, mean over datasets per meta-task / IND / OOD / overall."""
    table = []
    for name, h in hits.items():
        d = datasets[name]
        table.append(dict(dataset=name, meta_task=d.meta_task, ood=d.ood, n=len(h),
                          precision_at_1=sum(h) / len(h) if h else float("nan")))

    def mean(rows):
        return sum(r["precision_at_1"] for r in rows) / len(rows) if rows else float("nan")

    metrics = {"precision@1": mean(table), "ind": mean([r for r in table if not r["ood"]]),
               "ood": mean([r for r in table if r["ood"]])}
    for m in META_TASKS:
        metrics[m] = mean([r for r in table if r["meta_task"] == m])
    for r in table:
        metrics[f"p@1/{r['dataset']}"] = r["precision_at_1"]
    return metrics, table


def evaluate(model, datasets: list[Dataset], ctx: Context, cache_key: Callable[[Dataset], str] | None = None) -> TaskResult:
    rows: list[dict[str, Any]] = []
    hits: dict[str, list[bool]] = {}
    with bar(ctx, "mmeb datasets", len(datasets)) as pbar:
        for ds in datasets:
            if cache_key is None:
                scores = dataset_scores(model, ds, ctx.batch_size)
            else:
                def compute(ds=ds):
                    sc = dataset_scores(model, ds, ctx.batch_size)
                    return {"scores": torch.tensor([x for s in sc for x in s]),
                            "lengths": torch.tensor([len(s) for s in sc])}, {}
                t, _ = ctx.cache.get_or_compute(model.fingerprint, cache_key(ds), compute)
                scores = [s.tolist() for s in torch.split(t["scores"], t["lengths"].tolist())]
            h = precision_at_1(scores)
            hits[ds.name] = h
            for q, s, hit in zip(ds.queries, scores, h):
                rows.append(dict(dataset=ds.name, meta_task=ds.meta_task, ood=ds.ood, key=q.key, correct=hit,
                                 n_candidates=len(s), pred=int(torch.tensor(s).argmax()), score_gold=float(s[0])))
            pbar.update(1)
    metrics, table = aggregate(hits, {d.name: d for d in datasets})
    return TaskResult(rows, metrics, {"datasets": table})


# ---------------------------------------------------------------------------------------------- builders
def _image(s: Sample):
    return s.decode("image", s.first("image"))


def _gold_first(answer: str, choices: list[str]) -> list[str]:
    return [answer] + [c for c in choices if c != answer]


def _single_object(meta: dict) -> bool:
    objs = (meta.get("labels") or {}).get("objects")
    return objs is None or len(objs) <= 1


def build_classification(samples: list[Sample], spec: dict) -> list[MMEBQuery]:
    out = []
    for s in samples:
        m = s.meta()
        if not m.get("choices") or not _single_object(m):
            continue
        img = _image(s)
        q = Item(f"q:{s.key}", Query(image=img, instruction=INSTRUCTIONS["classification"]))
        out.append(MMEBQuery(s.key, q, [Item(f"t:{c}", Query(text=c)) for c in _gold_first(m["answer"], m["choices"])]))
    return out


def build_vqa(samples: list[Sample], spec: dict) -> list[MMEBQuery]:
    out = []
    for s in samples:
        m = s.meta()
        if not m.get("choices"):
            continue
        q = Item(f"q:{s.key}", Query(text=m["question"], image=_image(s), instruction=INSTRUCTIONS["vqa"]))
        out.append(MMEBQuery(s.key, q, [Item(f"t:{c}", Query(text=c)) for c in _gold_first(m["answer"], m["choices"])]))
    return out


def build_retrieval(samples: list[Sample], spec: dict) -> list[MMEBQuery]:
    """Text -> image: each caption against its image and up to `candidates - 1` images described differently."""
    scenes = [(s, caps[0]) for s in samples if (caps := captions_of(s))]
    images = {s.key: Item(f"i:{s.key}", Query(image=_image(s), instruction=INSTRUCTIONS["image"])) for s, _ in scenes}
    rng = random.Random(spec.get("seed", 0))
    k = int(spec.get("candidates", 100))
    out = []
    for s, cap in scenes:
        others = [o.key for o, c in scenes if c != cap]
        negs = rng.sample(others, min(k - 1, len(others)))
        q = Item(f"c:{cap}", Query(text=cap, instruction=INSTRUCTIONS["retrieval"]))
        out.append(MMEBQuery(s.key, q, [images[s.key]] + [images[n] for n in negs]))
    return out


def _crop(img, bbox: list[int], margin: float = 0.15):
    x0, y0, x1, y1 = bbox
    mx, my = (x1 - x0) * margin, (y1 - y0) * margin
    return img.crop((max(0, int(x0 - mx)), max(0, int(y0 - my)), min(img.width, int(x1 + mx)), min(img.height, int(y1 + my))))


def build_grounding(samples: list[Sample], spec: dict) -> list[MMEBQuery]:
    """Image + object name -> the crop of that object among the crops of every object in the scene."""
    out = []
    for s in samples:
        labels = s.meta().get("labels") or {}
        objs = labels.get("objects") or []
        if len(objs) < 2 or any("bbox" not in o for o in objs):
            continue
        t = int(labels.get("target", labels.get("a", 0)))
        img = _image(s)
        order = [t] + [i for i in range(len(objs)) if i != t]
        name = f"{objs[t]['color']} {objs[t]['shape']}"
        q = Item(f"g:{s.key}:{t}", Query(text=name, image=img, instruction=INSTRUCTIONS["grounding"]))
        cands = [Item(f"crop:{s.key}:{i}", Query(image=_crop(img, objs[i]["bbox"]), instruction=INSTRUCTIONS["crop"]))
                 for i in order]
        out.append(MMEBQuery(s.key, q, cands))
    return out


def _named_image(s: Sample, name: str):
    """The image stored as `<key>.<name>.<ext>`, or None."""
    raw = s.named(name, "image")
    return s.decode("image", raw) if raw is not None else None


def build_shards(samples: list[Sample], spec: dict) -> list[MMEBQuery]:
    """MMEB-form shards: json qry_text / tgt_text (+ qry_inst / tgt_inst), images qry.<ext> / tgt<i>.<ext>."""
    out = []
    for s in samples:
        m = s.meta()
        tgt = m.get("tgt_text")
        if not isinstance(tgt, list) or not tgt:
            raise UserError(f"{s.shard}: sample {s.key}: MMEB shards need a non-empty 'tgt_text' list")

        q = Item(f"q:{s.key}", Query(text=m.get("qry_text") or None, image=_named_image(s, "qry"),
                                     instruction=m.get("qry_inst")))
        cands = [Item(f"t:{s.key}:{i}", Query(text=t or None, image=_named_image(s, f"tgt{i}"), instruction=m.get("tgt_inst")))
                 for i, t in enumerate(tgt)]
        out.append(MMEBQuery(s.key, q, cands))
    return out


BUILDERS: dict[str, Callable[[list[Sample], dict], list[MMEBQuery]]] = {
    "classification": build_classification, "vqa": build_vqa, "retrieval": build_retrieval,
    "grounding": build_grounding, "shards": build_shards}


def applicable(model, bench: Benchmark) -> str | None:
    return None if "image" in model.modalities else "the model has no image encoder"


def run(model, bench: Benchmark, ctx: Context) -> TaskResult:
    datasets, keys = [], {}
    for spec in bench.options.get("datasets", []):
        if "path" in spec:
            folder = bench.data.folder(ctx.roots) / spec["path"]
            files = shard_files(folder, bench.data.split)
            samples = list(iter_samples(files))[:ctx.limit or None]
            dhash, build = data_hash(files, ctx.limit), BUILDERS["shards"]
        else:
            sub = replace(bench, data=replace(bench.data, tasks=tuple(spec.get("tasks", ()))))
            samples, dhash = load_samples(sub, ctx)
            build = BUILDERS[spec["meta_task"]]
        ds = Dataset(spec["name"], spec["meta_task"], bool(spec.get("ood", False)), build(samples, spec))
        if not ds.queries:
            raise UserError(f"benchmark {bench.name}: dataset {ds.name} has no queries")
        datasets.append(ds)
        keys[ds.name] = f"mmeb-{data_hash([], dhash, spec)}"
    return evaluate(model, datasets, ctx, cache_key=lambda d: keys[d.name])
