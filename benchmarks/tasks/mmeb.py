"""MMEB-style embedding evaluation (VLM2Vec): four meta-tasks (classification, VQA, retrieval, visual
grounding); every query is scored against its own candidate list with the gold candidate at index 0;
Precision@1 per dataset, then the mean over datasets per meta-task, in-distribution, out-of-distribution
and overall (MMEB averages datasets, not queries).

A benchmark's `options["datasets"]` lists its datasets: `{name, meta_task, ood, tasks, ...}` built from
synthetic-world samples (see `BUILDERS`), `{name, meta_task, ood, path}` for shards in MMEB form
(json `qry_text`, `tgt_text` list, optional `qry_inst`/`tgt_inst`; images `qry.jpg`, `tgt0.jpg` ...),
`{pairs: true, candidates: 1000}` for the synthetic-world MMEB-style pair tasks (`--tasks mmeb`: one
dataset per json `dataset`, its meta-task and OOD flag read from the samples), or `{name, meta_task, ood,
subset}` for a local copy of MMEB's own evaluation sets (TIGER-Lab/MMEB-eval: `<folder>/<subset>/*.parquet`
with qry_text / qry_img_path / tgt_text / tgt_img_path, images under `<folder>/eval_images/`; the
candidate lists, 1,000 per query outside classification, come with the data).
"""
from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.data import (
    Sample,
    SampleProblem,
    choices_of,
    data_hash,
    iter_samples,
    sample_media,
    shard_files,
)
from benchmarks.metrics import precision_at_1
from benchmarks.models import Query
from benchmarks.registry import Benchmark
from benchmarks.tasks import (
    Context,
    Skips,
    TaskResult,
    TooFewItems,
    bar,
    load_samples,
    skip_or_raise,
)
from benchmarks.tasks.captions import captions_of
from vlm.embed.items import UnreadableMedia
from vlm.errors import UserError
from vlm.modalities import MODALITIES, PLACEHOLDER_RE, short_error

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
    skipped: Counter = field(default_factory=Counter)      # queries left out, by reason (a missing image ...)
    examples: dict[str, str] = field(default_factory=dict)  # reason -> the first query left out for it


# ---------------------------------------------------------------------------------------------- scoring
def embed_readable(model, queries: list[Query], batch_size: int) -> tuple[torch.Tensor, set[int]]:
    """Embeddings of the queries and the indices of those whose media do not read (their rows are zeros).
    All at once first; after a failure, batch by batch and within a failing batch one by one."""
    try:
        return model.embed(queries, batch_size=batch_size), set()
    except UnreadableMedia:
        pass
    parts: list[torch.Tensor | None] = []
    bad: set[int] = set()
    for start in range(0, len(queries), batch_size):
        chunk = queries[start:start + batch_size]
        try:
            parts += list(model.embed(chunk, batch_size=batch_size))
            continue
        except UnreadableMedia:
            pass
        for k, q in enumerate(chunk):
            try:
                parts.append(model.embed([q], batch_size=1)[0])
            except UnreadableMedia:
                bad.add(start + k)
                parts.append(None)
    good = [p for p in parts if p is not None]
    if not good:
        raise UserError(f"none of the {len(queries)} items has media that read (e.g. {queries[0]})")
    zero = torch.zeros_like(good[0])
    return torch.stack([zero if p is None else p for p in parts]), bad


def dataset_scores(model, ds: Dataset, batch_size: int = 64, progress: bool = False) -> list[list[float]]:
    """Cosine scores of each query against its candidates (gold first), each unique item embedded once; []
    for a query whose own input or one of whose candidates does not read (skipped, counted `bad_media`)."""
    items: dict[str, Query] = {}
    for q in ds.queries:
        for it in [q.query, *q.candidates]:
            items.setdefault(it.id, it.query)
    ids = list(items)
    emb, bad = embed_readable(model, [items[i] for i in ids], batch_size)              # [U, D]
    pos = {i: n for n, i in enumerate(ids)}
    out = []
    for q in ds.queries:
        if any(pos[it.id] in bad for it in [q.query, *q.candidates]):
            out.append([])
            continue
        c = emb[[pos[it.id] for it in q.candidates]]                                    # [K, D]
        out.append((c @ emb[pos[q.query.id]]).tolist())
    return out


def without_gold_copies(q: MMEBQuery, scores: list[float]) -> list[float]:
    """The scores with the gold's copies among the other candidates left out: a candidate that is the gold's
    very input (same id: a label listed twice, an image path twice) ties it bit for bit and is not a
    competitor (MMEB's own evaluation de-duplicates candidates by name and counts such a copy a hit)."""
    gold = q.candidates[0].id
    return [scores[0], *(x for it, x in zip(q.candidates[1:], scores[1:]) if it.id != gold)]


def best_other(q: MMEBQuery, scores: list[float]) -> int:
    """Index of the highest-scoring candidate that is not the gold or a copy of it (the first of equals)."""
    gold = q.candidates[0].id
    return max((i for i, it in enumerate(q.candidates) if i and it.id != gold), key=lambda i: scores[i])


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
               "ood": mean([r for r in table if r["ood"]]), "n": sum(r["n"] for r in table)}
    for m in META_TASKS:
        metrics[m] = mean([r for r in table if r["meta_task"] == m])
    for r in table:
        metrics[f"p@1/{r['dataset']}"] = r["precision_at_1"]
    return metrics, table


def evaluate(model, datasets: list[Dataset], ctx: Context, cache_key: Callable[[Dataset], str] | None = None,
             skips: Skips | None = None) -> TaskResult:
    """Precision@1 of every dataset; `skips`: the samples left out before any dataset was built (json that
    does not parse, not a pair sample ...), counted beside the datasets' own skips."""
    rows: list[dict[str, Any]] = []
    hits: dict[str, list[bool]] = {}
    sizes: dict[str, list[int]] = {}              # candidates per scored query (the gold's copies left out)
    skipped: Counter = Counter(skips.counts if skips else {})
    examples = dict(skips.first) if skips else {}  # reason -> first query left out (the CLI names it, a review)
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
            kept = [(q, s) for q, s in zip(ds.queries, scores) if s]           # [] : a query whose media do not read
            skipped.update(ds.skipped)
            skipped["bad_media"] += len(scores) - len(kept)
            unread = [q.key for q, s in zip(ds.queries, scores) if not s]
            for reason, where in (*ds.examples.items(), *([("bad_media", f"{ds.name} {unread[0]}")] if unread else [])):
                examples.setdefault(reason, where)
            if not kept:                       # a P@1 of nothing: NaN, stored as a score and left out of results
                raise UserError(f"benchmark dataset {ds.name}: every one of its {len(scores)} queries has an input "
                                f"or a candidate whose media do not read")
            # the gold alone (one candidate, or only its copies): a hit by construction, nothing measured
            all_ranked = [without_gold_copies(*k) for k in kept]
            pairs = [(k, r) for k, r in zip(kept, all_ranked) if len(r) >= 2]
            skipped["one_candidate"] += len(kept) - len(pairs)
            alone = [q.key for (q, _), r in zip(kept, all_ranked) if len(r) < 2]
            if alone:
                examples.setdefault("one_candidate", f"{ds.name} {alone[0]}")
            kept, ranked = [k for k, _ in pairs], [r for _, r in pairs]
            if not kept:              # (at a small --limit a set's candidates are few: not applicable there)
                raise TooFewItems(f"benchmark dataset {ds.name}: every query has one candidate (its gold) only: "
                                f"precision@1 would be 1 by construction (MMEB lists 1,000 outside classification)")
            h = precision_at_1(ranked)
            hits[ds.name] = h
            sizes[ds.name] = [len(r) for r in ranked]
            for (q, s), r, hit in zip(kept, ranked, h):     # n_candidates: the gold's copies left out
                rows.append(dict(dataset=ds.name, meta_task=ds.meta_task, ood=ds.ood, key=q.key, correct=hit,
                                 n_candidates=len(r), pred=0 if hit else best_other(q, s), score_gold=float(s[0])))
            pbar.update(1)
    metrics, table = aggregate(hits, {d.name: d for d in datasets})
    for r in table:                 # a random ranking's P@1 is 1 / candidates: said beside the score
        r["candidates"] = sum(sizes[r["dataset"]]) / len(sizes[r["dataset"]])
        r["chance"] = sum(1 / k for k in sizes[r["dataset"]]) / len(sizes[r["dataset"]])
    metrics["chance"] = sum(r["chance"] for r in table) / len(table)        # averaged as precision@1 is
    metrics["candidates_min"] = float(min(k for ks in sizes.values() for k in ks))
    metrics.update({f"skipped_{k}": v for k, v in sorted(skipped.items()) if v})
    return TaskResult(rows, metrics, {"datasets": table, **({"skipped_examples": examples} if examples else {})})


# ---------------------------------------------------------------------------------------------- builders
def _image(s: Sample):
    return s.decode("image", s.first("image"))


def _gold_first(answer: str, choices: list[str]) -> list[str]:
    return [answer] + [c for c in choices if c != answer]


def _single_object(meta: dict) -> bool:
    objs = (meta.get("labels") or {}).get("objects")
    return objs is None or len(objs) <= 1


def _per_sample(samples: list[Sample], skips: Skips | None, make: Callable[[Sample], MMEBQuery | None]) -> list[MMEBQuery]:
    """make(s) of every sample, None left out; a sample it cannot use (no image, one that does not decode,
    json that does not parse, fields not as synthetic-world writes them) is counted in `skips` (raised without
    one)."""
    out = []
    for s in samples:
        try:
            try:
                q = make(s)
            except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:   # a field of another type
                raise SampleProblem("bad_labels", s, f"its json fields are not as this suite's builder reads them "
                                                     f"({type(e).__name__}: {str(e)[:100]})") from None
        except SampleProblem as e:
            skip_or_raise(skips, e)
            continue
        if q is not None:
            out.append(q)
    return out


def _classification_query(s: Sample) -> MMEBQuery | None:
    m = s.meta()
    if not m.get("choices") or not _single_object(m):
        return None
    q = Item(f"q:{s.key}", Query(image=_image(s), instruction=INSTRUCTIONS["classification"]))
    return MMEBQuery(s.key, q, [Item(f"t:{c}", Query(text=c)) for c in _gold_first(m["answer"], m["choices"])])


def build_classification(samples: list[Sample], spec: dict, skips: Skips | None = None) -> list[MMEBQuery]:
    return _per_sample(samples, skips, _classification_query)


def _vqa_query(s: Sample) -> MMEBQuery | None:
    m = s.meta()
    if not m.get("choices"):
        return None
    q = Item(f"q:{s.key}", Query(text=m["question"], image=_image(s), instruction=INSTRUCTIONS["vqa"]))
    return MMEBQuery(s.key, q, [Item(f"t:{c}", Query(text=c)) for c in _gold_first(m["answer"], m["choices"])])


def build_vqa(samples: list[Sample], spec: dict, skips: Skips | None = None) -> list[MMEBQuery]:
    return _per_sample(samples, skips, _vqa_query)


def build_retrieval(samples: list[Sample], spec: dict, skips: Skips | None = None) -> list[MMEBQuery]:
    """Text -> image: each caption against its image and up to `candidates - 1` images described differently."""
    scenes, images = [], {}

    def scene(s: Sample) -> None:
        if caps := captions_of(s):
            images[s.key] = Item(f"i:{s.key}", Query(image=_image(s), instruction=INSTRUCTIONS["image"]))
            scenes.append((s, caps[0]))

    _per_sample(samples, skips, scene)
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


def _grounding_query(s: Sample) -> MMEBQuery | None:
    labels = s.meta().get("labels") or {}
    objs = labels.get("objects") or []
    if len(objs) < 2 or any("bbox" not in o for o in objs):
        return None
    t = int(labels.get("target", labels.get("a", 0)))
    img = _image(s)
    order = [t] + [i for i in range(len(objs)) if i != t]
    name = f"{objs[t]['color']} {objs[t]['shape']}"
    q = Item(f"g:{s.key}:{t}", Query(text=name, image=img, instruction=INSTRUCTIONS["grounding"]))
    cands = [Item(f"crop:{s.key}:{i}", Query(image=_crop(img, objs[i]["bbox"]), instruction=INSTRUCTIONS["crop"]))
             for i in order]
    return MMEBQuery(s.key, q, cands)


def build_grounding(samples: list[Sample], spec: dict, skips: Skips | None = None) -> list[MMEBQuery]:
    """Image + object name -> the crop of that object among the crops of every object in the scene."""
    return _per_sample(samples, skips, _grounding_query)


def _named_image(s: Sample, name: str):
    """The image stored as `<key>.<name>.<ext>`, or None."""
    raw = s.named(name, "image")
    return s.decode("image", raw) if raw is not None else None


def build_shards(samples: list[Sample], spec: dict, skips: Skips | None = None) -> list[MMEBQuery]:
    """MMEB-form shards: json qry_text / tgt_text (+ qry_inst / tgt_inst), images qry.<ext> / tgt<i>.<ext>. A
    sample without a `tgt_text` list, or whose json or image does not read, is counted in `skips` (raised
    without one)."""
    return _per_sample(samples, skips, _shard_query)


def _shard_query(s: Sample) -> MMEBQuery:
    m = s.meta()
    tgt = m.get("tgt_text")
    if not isinstance(tgt, list) or not tgt or not all(t is None or isinstance(t, str) for t in tgt):
        raise SampleProblem("no_targets", s, "MMEB shards need a non-empty 'tgt_text' list of texts")
    for name in ("qry_text", "qry_inst", "tgt_inst"):
        if not isinstance(m.get(name) or "", str):
            raise SampleProblem("no_targets", s, f"'{name}' is not a text")
    q = Item(f"q:{s.key}", Query(text=m.get("qry_text") or None, image=_named_image(s, "qry"),
                                 instruction=m.get("qry_inst")))
    cands = [Item(f"t:{s.key}:{i}", Query(text=t or None, image=_named_image(s, f"tgt{i}"), instruction=m.get("tgt_inst")))
             for i, t in enumerate(tgt)]
    return MMEBQuery(s.key, q, cands)


# ---------------------------------------------------------------------------------------------- pair tasks
def pair_items(s: Sample) -> tuple[Item, list[Item], dict[str, Any]]:
    """A pair sample's query and targets (positive first, then the negatives) as embedding items: media in
    placeholder order (the pairs format's [Contract]), placeholders out of the text (the Item puts them
    back first, so our models read the prompt they trained on), each side's instruction kept."""
    m = s.meta()
    sides = _pair_sides(s, m)
    media = sample_media(s, "\n".join(x["text"] for x in sides))
    cursor = {k: 0 for k in media}
    items = []
    for j, side in enumerate(sides):
        own = {}
        for mod in (MODALITY_OF.get(p) for p in PLACEHOLDER_RE.findall(side["text"])):
            own[mod] = media[mod][cursor[mod]]
            cursor[mod] += 1
        text = PLACEHOLDER_RE.sub("", side["text"]).strip() or None
        items.append(Item(f"{s.key}:{j}" if own else f"t:{text}", Query(text=text, instruction=side.get("instruction"), **own)))
    return items[0], items[1:], m


MODALITY_OF = {mod.placeholder: name for name, mod in MODALITIES.items()}


def _pair_sides(s: Sample, m: dict) -> list[dict]:
    """The query, positive and negatives of a pair sample's json, each `{text, instruction?}`; anything else (a
    side or field of another type, an unknown meta_task, a classification pair without its label set) is a
    `SampleProblem` naming the field."""
    def bad(what: str, reason: str = "not_a_pair") -> SampleProblem:
        return SampleProblem(reason, s, what)
    negatives = m.get("negatives") or []
    if not isinstance(negatives, list):
        raise bad("not a pair sample: json 'negatives' is not a list")
    sides = [m.get("query"), m.get("positive"), *negatives]
    for j, x in enumerate(sides):
        name = ("query", "positive")[j] if j < 2 else f"negatives[{j - 2}]"
        if not (isinstance(x, dict) and isinstance(x.get("text"), str)):
            raise bad(f"not a pair sample: json '{name}' has no 'text'")
        if not isinstance(x.get("instruction") or "", str):
            raise bad(f"not a pair sample: json '{name}.instruction' is not a text")
    for name in ("dataset", "task", "meta_task"):
        if m.get(name) is not None and not isinstance(m[name], str):
            raise bad(f"not a pair sample: json '{name}' is not a text")
    if m.get("meta_task") not in META_TASKS:
        raise bad(f"meta_task {m.get('meta_task')!r} is not one of {META_TASKS}")
    labels = m.get("labels")
    if labels is not None and not isinstance(labels, dict):
        raise bad("not a pair sample: json 'labels' is not an object")
    names = (labels or {}).get("target_labels")
    if names is not None and not (isinstance(names, list) and len(names) == len(sides) - 1):
        raise bad(f"not a pair sample: json 'labels.target_labels' is not a list of one label per target "
                  f"({len(sides) - 1})")
    if m["meta_task"] == "classification" and not choices_of(m):
        raise bad("a classification pair needs 'choices' (its label set)", "no_choices")
    return sides


def pair_dataset(meta: dict) -> str:
    """The dataset a pair sample belongs to: json `dataset`, else its `task` (a text; 'pairs' without one)."""
    name = meta.get("dataset") or meta.get("task")
    return name if isinstance(name, str) and name else "pairs"


def first_per_dataset(samples: list[Sample], limit: int) -> list[Sample]:
    seen: dict[str, int] = {}
    out = []
    for s in samples:
        try:
            name = pair_dataset(s.meta())
        except SampleProblem:        # kept: skipped and counted where its pair is read
            name = "pairs"
        seen[name] = seen.get(name, 0) + 1
        if seen[name] <= limit:
            out.append(s)
    return out


def build_pair_datasets(samples: list[Sample], spec: dict, skips: Skips | None = None) -> list[Dataset]:
    """One dataset per json `dataset`. Candidates, gold first: classification - the label set (`choices`);
    VQA - every distinct answer of the split's VQA samples; retrieval and grounding - the dataset's targets
    (positives and hard negatives) up to `candidates` (default 1,000), never one that shows what the gold
    shows (`labels.target_labels`: the same caption, the same object) nor the query's other answers."""
    parsed = []
    for s in samples:              # a sample that is not a pair or whose media do not read: counted in `skips`
        try:
            parsed.append((s, *pair_items(s)))
        except SampleProblem as e:
            skip_or_raise(skips, e)
    vqa_answers = list(dict.fromkeys(t[0].query.text for _, _, t, m in parsed if m.get("meta_task") == "vqa"))
    groups: dict[str, list] = {}
    for row in parsed:
        groups.setdefault(pair_dataset(row[3]), []).append(row)
    k = int(spec.get("candidates", 1000))
    out = []
    for name, rows in groups.items():
        meta_task = rows[0][3]["meta_task"]             # (one of META_TASKS: `_pair_sides`)
        pool: dict[str, tuple[Item, str]] = {}
        for s, _, targets, m in rows:
            names = [str(x) for x in (m.get("labels") or {}).get("target_labels") or [t.query.text for t in targets]]
            for t, label in zip(targets, names):
                pool.setdefault(t.id, (t, label))
        rng = random.Random(f"{spec.get('seed', 0)}:{name}")
        ds = Dataset(name, meta_task, bool(rows[0][3].get("ood", False)))
        for s, q, targets, m in rows:
            gold = targets[0]
            if meta_task in ("classification", "vqa"):
                labels = choices_of(m) if meta_task == "classification" else vqa_answers
                cands = [gold] + [Item(f"t:{c}", Query(text=c)) for c in labels if c != gold.query.text]
            else:
                gold_label = pool[gold.id][1]
                others = [t for tid, (t, label) in pool.items() if tid != gold.id and label != gold_label]
                if len(others) > k - 1:
                    others = rng.sample(others, k - 1)
                cands = [gold] + others
            ds.queries.append(MMEBQuery(s.key, Item(f"q:{s.key}", q.query), cands))
        out.append(ds)
    return out


# ---------------------------------------------------------------------------------------------- MMEB-eval
PHI3_IMAGE = "<|image_1|>"              # MMEB's strings carry Phi-3-V's image token


def mmeb_files(folder: Path, subset: str, split: str = "test") -> list[Path]:
    """One subset's parquet files of `split`, as the Hub names them (`test-00000-of-00001.parquet`, or
    `test.parquet`): another split's file beside them was scored as test, and `--split val` scored the test
    files under a @val name (a review)."""
    d = folder / subset
    files = sorted({*d.glob(f"{split}-*.parquet"), *d.glob(f"{split}.parquet")}) if d.is_dir() else []
    if not files:
        others = sorted(p.name for p in d.glob("*.parquet")) if d.is_dir() else []
        raise UserError(f"MMEB-eval subset {subset}: no {d}/{split}-*.parquet (a local copy of TIGER-Lab/MMEB-eval: "
                        f"<bench-root>/MMEB-eval/<subset>/test-*.parquet, images under eval_images/; MMEB-eval has a "
                        f"test split only)" + (f"; the folder has {', '.join(others[:3])}" if others else ""))
    return files


def mmeb_eval_files(folder: Path, spec: dict, split: str = "test") -> list[Path]:
    """Every file one MMEB-eval subset reads: its parquet files and the images their rows name (what a stored
    score or cached embedding depends on: an image replaced in place is another question)."""
    import pyarrow.parquet as pq
    files = mmeb_files(folder, spec["subset"], split)
    images = folder / spec.get("images", "eval_images")
    named: set[str] = set()
    for f in files:
        try:
            table = pq.read_table(f, columns=["qry_img_path", "tgt_img_path"])
        except (OSError, ValueError, KeyError):
            continue                            # the build names the file and what is wrong with it
        for col in table.columns:
            for v in col.to_pylist():
                named.update(x for x in (v if isinstance(v, list) else [v]) if isinstance(x, str) and x)
    return files + sorted(p for p in (images / n for n in named) if p.is_file())


def confined(root: Path, rel: str, where: str) -> str:
    """root / rel, refusing paths that leave root (absolute paths, '..', symlinks out)."""
    real_root = os.path.realpath(root)
    p = os.path.realpath(os.path.join(real_root, rel))
    if os.path.commonpath([real_root, p]) != real_root:
        raise UserError(f"{where}: image path {rel!r} leaves the image folder {root}")
    return p


class MissingImage(Exception):
    """A row naming an image that is not there: the row is skipped and counted."""


def mmeb_item(text: str, img: str, images: Path, where: str) -> Query:
    """An MMEB string (image token removed: the Item puts our placeholder first) and its image path."""
    body = text.replace(PHI3_IMAGE, "").strip() or None
    if not img:
        if body is None:
            raise UserError(f"{where}: an item with neither text nor an image")
        return Query(text=body)
    path = confined(images, img, where)
    if not os.path.isfile(path):
        raise MissingImage(path)
    return Query(text=body, image=path)


def build_mmeb_eval(folder: Path, spec: dict, limit: int | None = None, skipped: Counter | None = None,
                    split: str = "test", examples: dict[str, str] | None = None) -> list[MMEBQuery]:
    """Rows of one MMEB-eval subset: the query, then its candidates (gold at index 0) as the data lists them.
    A row naming an image that is not there is skipped and counted in `skipped` (`missing_file`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    subset = spec["subset"]
    images = folder / spec.get("images", "eval_images")
    skipped = Counter() if skipped is None else skipped
    out, first_missing = [], None
    for f in mmeb_files(folder, subset, split):
        try:
            table = pq.read_table(f)
        except (pa.ArrowException, OSError) as e:
            raise UserError(f"{f}: not a readable parquet file ({short_error(e)[:200]})") from None
        missing = [c for c in ("qry_text", "qry_img_path", "tgt_text", "tgt_img_path") if c not in table.column_names]
        if missing:
            raise UserError(f"{f}: not an MMEB-eval file (no column {missing[0]!r})")
        for i, row in enumerate(table.to_pylist()):
            where = f"{f} row {i}"
            tt, ti = row["tgt_text"], row["tgt_img_path"]
            tt = tt if isinstance(tt, list) else [tt] * (len(ti) if isinstance(ti, list) else 1)
            ti = ti if isinstance(ti, list) else [ti] * len(tt)
            if not tt:
                raise UserError(f"{where}: an empty candidate list (tgt_text / tgt_img_path)")
            if len(tt) != len(ti):
                raise UserError(f"{where}: tgt_text and tgt_img_path differ in length ({len(tt)} vs {len(ti)})")
            try:
                q = Item(f"q:{row['qry_text']}|{row['qry_img_path']}",
                         mmeb_item(row["qry_text"] or "", row["qry_img_path"] or "", images, where))
                cands = [Item(f"t:{t}|{p}", mmeb_item(t or "", p or "", images, where)) for t, p in zip(tt, ti)]
            except MissingImage as e:
                skipped["missing_file"] += 1
                first_missing = first_missing or f"{where}: {e}"
                if examples is not None:
                    examples.setdefault("missing_file", first_missing)
                continue
            out.append(MMEBQuery(f"{subset}-{len(out)}", q, cands))
            if limit and len(out) >= limit:
                return out
    if not out:
        raise UserError(f"MMEB-eval subset {subset}: " + (f"every row names an image that is not there (e.g. "
                        f"{first_missing})" if first_missing else f"its parquet files under {folder / subset} have no rows"))
    return out


def check_mmeb_eval(bench: Benchmark, roots) -> None:
    """Before any model runs: every subset of the benchmark has its parquet files."""
    folder = bench.data.folder(roots)
    for spec in bench.options.get("datasets", []):
        if "subset" in spec:
            mmeb_files(folder, spec["subset"], bench.data.split)


BUILDERS: dict[str, Callable[[list[Sample], dict, Skips | None], list[MMEBQuery]]] = {
    "classification": build_classification, "vqa": build_vqa, "retrieval": build_retrieval,
    "grounding": build_grounding, "shards": build_shards}


def applicable(model, bench: Benchmark) -> str | None:
    return None if "image" in model.modalities else "the model has no image encoder"


def run(model, bench: Benchmark, ctx: Context) -> TaskResult:
    datasets, keys = [], {}
    skips = Skips()                  # samples left out before the datasets are built (user shards: pairs, MMEB form)
    for spec in bench.options.get("datasets", []):
        if spec.get("pairs"):
            samples, dhash = load_samples(bench, replace(ctx, limit=None), skips=skips)
            if ctx.limit:            # --limit N: the first N queries of every dataset, not N of the first one
                samples = first_per_dataset(samples, ctx.limit)
            for ds in build_pair_datasets(samples, spec, skips):
                datasets.append(ds)
                keys[ds.name] = f"mmeb-{data_hash([], dhash, spec, ds.name, ctx.limit)}"
            continue
        if "subset" in spec:
            folder = bench.data.folder(ctx.roots)
            ds = Dataset(spec["name"], spec["meta_task"], bool(spec.get("ood", False)))
            ds.queries = build_mmeb_eval(folder, spec, ctx.limit, ds.skipped, bench.data.split, ds.examples)
            datasets.append(ds)
            # the embeddings depend on the parquet files and the images the built rows read (an image replaced in
            # place is another input): those paths are in the queries, the parquet need not be read again
            images = sorted({it.query.image for q in ds.queries for it in (q.query, *q.candidates) if it.query.image})
            files = mmeb_files(folder, spec["subset"], bench.data.split)
            keys[ds.name] = f"mmeb-{data_hash([*files, *images], ctx.limit, spec)}"
            continue
        own = Skips()                # the samples this dataset's builder left out: counted per dataset, as queries
        if "path" in spec:
            folder = bench.data.folder(ctx.roots) / spec["path"]
            files = shard_files(folder, bench.data.split)
            samples = list(iter_samples(files))[:ctx.limit or None]
            dhash, build = data_hash(files, ctx.limit), BUILDERS["shards"]
        else:                        # (json that does not read: no dataset's, counted once for the benchmark)
            sub = replace(bench, data=replace(bench.data, tasks=tuple(spec.get("tasks", ()))))
            samples, dhash = load_samples(sub, ctx, skips=skips)
            build = BUILDERS[spec["meta_task"]]
        ds = Dataset(spec["name"], spec["meta_task"], bool(spec.get("ood", False)), build(samples, spec, own))
        if not ds.queries:           # (under --limit: what the limit left, not the data set)
            if own:
                error = own.nothing_usable(f"benchmark {bench.name}: dataset {ds.name}")
                raise TooFewItems(str(error)) if ctx.limit else error
            raise TooFewItems(f"benchmark {bench.name}: dataset {ds.name} has no queries")
        ds.skipped.update(own.counts)
        skips.add_examples(own)              # its first example per reason, for the CLI's line
        datasets.append(ds)
        keys[ds.name] = f"mmeb-{data_hash([], dhash, spec)}"
    if not datasets and skips:
        raise skips.nothing_usable(f"benchmark {bench.name}")
    return evaluate(model, datasets, ctx, cache_key=lambda d: keys[d.name], skips=skips)
