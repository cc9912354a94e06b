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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.cache import FeatureCache
from benchmarks.data import (
    BadMedia,
    Sample,
    SampleProblem,
    data_hash,
    iter_samples,
    shard_files,
    split_task_counts,
)
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


class Skips:
    """The samples a task leaves out, by reason (`skipped_<reason>` in its metrics), with the first one's key
    per reason (`skipped_examples`, named by the CLI) and message (the error when no sample is usable). A
    sample (shard, key) is counted once, however many of a benchmark's datasets read it."""

    def __init__(self) -> None:
        self.samples: dict[tuple[str, str], str] = {}      # (shard, key) -> reason
        self.extra: Counter = Counter()                     # counted without the samples (n at once, a cache)
        self.first: dict[str, str] = {}
        self.messages: dict[str, str] = {}

    @property
    def counts(self) -> Counter:
        return Counter(self.samples.values()) + self.extra

    def add(self, problem: SampleProblem, sample: Sample | None = None) -> None:
        """A sample's problem (`sample`: the one it is about, when the problem was raised without it)."""
        key, shard = (problem.key, problem.shard) if problem.key or sample is None else (sample.key, sample.shard)
        self.count(problem.reason, key, str(problem), shard=shard)

    def skip(self, reason: str, sample: Sample, message: str) -> None:
        """One sample left out for `reason`; `message` says why (the sample is named before it)."""
        self.count(reason, sample.key, f"{sample.shard}: sample {sample.key}: {message}", shard=sample.shard)

    def count(self, reason: str, key: str, message: str = "", n: int = 1, shard: str = "") -> None:
        if n == 1:
            if (shard, key) in self.samples:        # counted already (under its first reason): once
                return
            self.samples[(shard, key)] = reason
        elif n:
            self.extra[reason] += n
        if n:
            self.first.setdefault(reason, key)
            self.messages.setdefault(reason, message or f"sample {key}: {reason}")

    def add_examples(self, other: Skips) -> None:
        """`other`'s first example (key and message) of each reason this one has none of; no counts."""
        for reason in other.first:
            self.first.setdefault(reason, other.first[reason])
            self.messages.setdefault(reason, other.messages[reason])

    def __bool__(self) -> bool:
        return bool(self.samples or self.extra)

    def metrics(self) -> dict[str, float]:
        return {f"skipped_{k}": float(v) for k, v in sorted(self.counts.items())}

    def tables(self) -> dict[str, Any]:
        return {"skipped_examples": dict(self.first)} if self.first else {}

    def nothing_usable(self, what: str) -> UserError:
        """The error of a benchmark none of whose samples is usable: the counts and the first message."""
        counts = self.counts
        first = self.messages[max(counts, key=counts.__getitem__)]
        return UserError(f"{what}: no usable sample (skipped {', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}; "
                         f"e.g. {first})")

    def state(self) -> dict[str, Any]:
        """What a cache entry keeps of it (`from_state` reads it back)."""
        return {"counts": dict(self.counts), "first": self.first, "messages": self.messages}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> Skips:
        out = cls()
        if state:
            out.extra.update(state.get("counts") or {})
            out.first, out.messages = dict(state.get("first") or {}), dict(state.get("messages") or {})
        return out


def skip_or_raise(skips: Skips | None, problem: SampleProblem) -> None:
    """Count `problem` in `skips`; a caller without one (that skips nothing) gets it raised."""
    if skips is None:
        raise problem
    skips.add(problem)


def load_samples(bench: Benchmark, ctx: Context, split: str | None = None,
                 skips: Skips | None = None) -> tuple[list[Sample], str]:
    """The benchmark's samples of `split` (default its own) kept by its task filter, and their data hash. Under a
    task filter, a sample whose json does not parse or whose `task` is not a text is counted in `skips` (raised
    without one): it cannot be told apart, so it is counted whatever its task. `ctx.limit` N keeps the first N
    samples; with several tasks, N drawn in turn from each task's first ones (a split stored task by task gave
    its first task alone)."""
    folder: Path = bench.data.folder(ctx.roots)
    split = split or bench.data.split
    files = shard_files(folder, split)
    tasks = set(bench.data.tasks)
    if ctx.limit and len(tasks) > 1:
        return _limited_across_tasks(files, tasks, ctx.limit, folder, split, bench, skips)
    out: list[Sample] = []
    for s in iter_samples(files):
        # (without a filter the json is read where a task needs it: a wds sample's txt caption scores whatever
        # its json, as clip_benchmark reads it)
        if tasks and _task_of(s, skips) not in tasks:
            continue
        out.append(s)
        if ctx.limit and len(out) >= ctx.limit:
            break
    if not out:
        if skips and not tasks:
            raise skips.nothing_usable(f"{folder}/{split}: benchmark {bench.name}")
        raise _no_samples(folder, split, bench, tasks, skips)
    return out, data_hash(files, sorted(tasks), ctx.limit)


def _task_of(s: Sample, skips: Skips | None) -> Any:
    """A sample's `task` (None without one), or `_UNREAD` when its json does not read or its task is not a
    text (counted in `skips`, raised without)."""
    try:
        task = s.meta().get("task")
        if task is not None and not isinstance(task, str):
            raise SampleProblem("bad_json", s, f"its 'task' is a {type(task).__name__}, not a text")
        return task
    except SampleProblem as e:
        skip_or_raise(skips, e)
        return _UNREAD


_UNREAD = object()


def _no_samples(folder: Path, split: str, bench: Benchmark, tasks: set[str], skips: Skips | None) -> UserError:
    unread = (f"; {sum(skips.counts.values())} sample(s) whose json does not read could not be told apart "
              f"(e.g. {next(iter(skips.messages.values()))})" if skips else "")
    return UserError(f"{folder}/{split}: no samples for benchmark {bench.name}"
                     + (f" (task in {sorted(tasks)}){unread}" if tasks else ""))


def _limited_across_tasks(files: list[Path], tasks: set[str], limit: int, folder: Path, split: str,
                          bench: Benchmark, skips: Skips | None) -> tuple[list[Sample], str]:
    """`load_samples` under a limit with several tasks: each task's first `limit` samples in data order, then one
    from each task in turn (in the order the tasks first appear) until `limit` are taken. The read stops once
    every task has what it can give: `limit`, or fewer where the split's index lists fewer (a task it lists
    none of gives none); without such an index, once every task has `limit` (else at the split's end)."""
    counts = split_task_counts(folder, split)
    want = {t: limit if counts is None else min(limit, counts.get(t, 0)) for t in tasks}
    by_task: dict[str, list[Sample]] = {}
    for s in iter_samples(files):
        task = _task_of(s, skips)
        if task in tasks and len(by_task.setdefault(task, [])) < limit:
            by_task[task].append(s)
            if all(len(by_task.get(t, ())) >= n for t, n in want.items()):
                break
    out: list[Sample] = []
    for i in range(limit):
        out += [v[i] for v in by_task.values() if i < len(v)]
    out = out[:limit]
    if not out:
        raise _no_samples(folder, split, bench, tasks, skips)
    return out, data_hash(files, sorted(tasks), limit, "across-tasks")


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


def image_features_of(model, samples: list[Sample], dhash: str, ctx: Context,
                      skips: Skips) -> tuple[torch.Tensor, list[bool]]:
    """[N_ok, D] normalised embeddings of each sample's first image and, per sample, whether its image decoded
    (the others are left out and counted in `skips` as `bad_image`), cached by model and data hash."""
    def compute():
        feats, ok = encode_images(model, samples, lambda s: decoded_image(model, s), ctx, len(samples))
        return {"features": feats}, {"keys": [s.key for s in samples], "ok": ok}

    name = f"images-{data_hash([], dhash, [s.key for s in samples])}"      # the subset matters, not just the files
    t, m = ctx.cache.get_or_compute(model.fingerprint, name, compute)
    ok = m.get("ok") or [True] * len(samples)
    for s, good in zip(samples, ok):
        if not good:
            skips.skip("bad_image", s, "the image does not decode")
    return t["features"], ok


def text_features_of(model, texts: list[str], ctx: Context) -> "torch.Tensor":
    """[N, D] normalised embeddings of `texts` (each unique text embedded once), cached by model and texts."""
    uniq = sorted(set(texts))

    def compute():
        return {"features": model.encode_texts(uniq, batch_size=ctx.batch_size)}, {}

    t, _ = ctx.cache.get_or_compute(model.fingerprint, f"texts-{data_hash([], uniq)}", compute)
    pos = {u: i for i, u in enumerate(uniq)}
    return t["features"][[pos[x] for x in texts]]
