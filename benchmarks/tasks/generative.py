"""Generative evaluation of our checkpoints: VQA and captioning.

vqa, mode `generate`: the first human turn (placeholders and all) is the prompt, the model answers
greedily (`model.generate` on batches), scored by exact match and by the VQA-normalised accuracy.
vqa, mode `loglik`: every choice of the sample's closed answer set is scored by the log-likelihood of
answering it; the argmax is the prediction (accuracy).
caption: the prompt asks for a short description (the benchmark's `prompt`, or the sample's own first
turn for caption samples); BLEU-4 (sacrebleu), ROUGE-L and CIDEr-D (pycocoevalcap) against the
references (`benchmarks.tasks.captions`).

`prompt_for` and `score_answer` are shared with the lmms-eval task (`benchmarks/lmms_tasks`), so both
harnesses score the same way.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from benchmarks.data import (
    BadMedia,
    Sample,
    SampleProblem,
    choices_of,
    data_hash,
    first_turn,
    sample_media,
)
from benchmarks.metrics import bleu, cider, exact_match, rouge_l, vqa_match
from benchmarks.models import generate_each
from benchmarks.registry import Benchmark
from benchmarks.tasks import Context, Skips, TaskResult, bar, load_samples
from benchmarks.tasks.captions import captions_of
from vlm.errors import UserError
from vlm.modalities import MediaError

CAPTION_PROMPT = "<image>\nDescribe the image briefly."


def applicable(model, bench: Benchmark) -> str | None:
    if not model.can_generate:
        return "needs a generative model (a vlm checkpoint)"
    if bench.modality != "text" and bench.modality not in model.modalities:     # text: every LLM reads it
        return f"the model has no {bench.modality} encoder"
    return None


def prompt_for(meta: dict[str, Any], suffix: str = "", where: str = "sample") -> tuple[str, str]:
    """(prompt, gold answer) of a VQA sample: its first human turn (+ suffix) and its answer."""
    prompt, gold = first_turn(meta, where)
    return (prompt + suffix if suffix else prompt), str(gold)


def score_answer(pred: str, gold: str) -> dict[str, float]:
    return {"exact_match": float(exact_match(pred, gold)), "accuracy": float(vqa_match(pred, gold))}


# what a cached result holds (2: n_choices and chance; 3: skips by reason; 4: prompts past the context skipped,
# IAA rows batched by media); a new one recomputes
ROWS_VERSION = 4


def _mean(rows: list[dict[str, Any]], k: str) -> float:
    return sum(float(r[k]) for r in rows) / len(rows) if rows else float("nan")


def _usable(s: Sample, skips: Skips, make: Callable[[], Any]) -> Any:
    """make() for one sample, or None when the sample cannot be used (a media file that does not decode:
    `bad_media`, as the zero-shot tasks skip a bad image; no question, no choices, json that does not parse ...
    by their reason): left out and counted, never the end of the benchmark."""
    try:
        return make()
    except BadMedia as e:
        skips.count("bad_media", s.key, str(e), shard=s.shard)
    except SampleProblem as e:
        skips.add(e, s)
    return None


def _answers(model, todo: list[tuple], skips: Skips, max_new: int, bs: int) -> list[tuple[tuple, str]]:
    """(item, answer) for the chunk's usable items, each (sample, ..., prompt, media); an item whose media
    the model's preprocessing refuses (`generate_each`) is left out and counted as `bad_media`, named, as a
    file that does not decode is; one past the model's context as `too_long`."""
    out = []
    for t, answer in zip(todo, generate_each(model, [(t[-2], t[-1]) for t in todo], max_new, bs)):
        if isinstance(answer, Exception):
            _skip_refused(skips, t[0], answer)
        else:
            out.append((t, answer))
    return out


def _skip_refused(skips: Skips, s: Sample, e: Exception) -> None:
    """A sample the model refused: under the error's reason (`too_long` ...), else `bad_media`, named."""
    skips.skip(getattr(e, "reason", None) or "bad_media", s, str(e).splitlines()[0])


def _task(meta: dict[str, Any]) -> str:
    """A row's task: the sample's json `task` when it is a text (a list there would break the rows' table)."""
    task = meta.get("task")
    return task if isinstance(task, str) else ""


def _scored(bench: Benchmark, rows: list, skips: Skips) -> dict[str, float]:
    """The skips' metrics; a one-line error when every sample was skipped."""
    if not rows:
        raise skips.nothing_usable(f"benchmark {bench.name}")
    return skips.metrics()


def _vqa_item(s: Sample, suffix: str, loglik: bool = False) -> tuple[dict[str, Any], str, str, dict]:
    """(json, prompt, gold, media) of a VQA sample; mode loglik needs its `choices` too."""
    m = s.meta()
    if loglik and not choices_of(m):
        raise SampleProblem("no_choices", s, "has no 'choices' list (needed by mode loglik)")
    prompt, gold = prompt_for(m, suffix, f"{s.shard}: sample {s.key}")
    return m, prompt, gold, sample_media(s, prompt)


def run_generate(model, samples: list[Sample], bench: Benchmark, ctx: Context, skips: Skips) -> TaskResult:
    suffix, max_new = bench.options.get("prompt_suffix", ""), int(bench.options.get("max_new_tokens", 16))
    bs = int(bench.options.get("batch_size", min(ctx.batch_size, 8)))
    rows: list[dict[str, Any]] = []
    with bar(ctx, bench.name, len(samples), "q") as pbar:
        for i in range(0, len(samples), bs):
            chunk = samples[i:i + bs]
            todo = [(s, *item) for s in chunk if (item := _usable(s, skips, lambda s=s: _vqa_item(s, suffix)))]
            todo = [(s, m, gold, p, media) for s, m, p, gold, media in todo]      # prompt and media last
            for (s, m, gold, p, _), pred in _answers(model, todo, skips, max_new, bs) if todo else []:
                rows.append(dict(key=s.key, task=_task(m), prompt=p, gold=gold, pred=pred,
                                 n_choices=len(choices_of(m)), **score_answer(pred, gold)))
            pbar.update(len(chunk))
    skipped = _scored(bench, rows, skips)
    metrics = {"accuracy": _mean(rows, "accuracy"), "exact_match": _mean(rows, "exact_match"), "n": float(len(rows)),
               **skipped}
    if rows and all(r["n_choices"] for r in rows):         # a closed answer set: guessing uniformly among it
        metrics["chance"] = _mean([{"c": 1 / r["n_choices"]} for r in rows], "c")
    return TaskResult(rows, metrics)


def run_loglik(model, samples: list[Sample], bench: Benchmark, ctx: Context, skips: Skips) -> TaskResult:
    suffix = bench.options.get("prompt_suffix", "")
    rows: list[dict[str, Any]] = []
    model.load()                  # a model that does not load is the run's error, not each sample's (below)
    with bar(ctx, bench.name, len(samples), "q") as pbar:
        for s in samples:
            item = _usable(s, skips, lambda s=s: _vqa_item(s, suffix, loglik=True))
            pbar.update(1)
            if item is None:
                continue
            m, prompt, gold, media = item
            choices = choices_of(m)
            try:
                ll = model.loglikelihood([(prompt, media, c) for c in choices])
            except (UserError, MediaError) as e:      # media the model's preprocessing refuses (as `_answers`)
                _skip_refused(skips, s, e)
                continue
            best = max(range(len(choices)), key=lambda j: ll[j][0])
            rows.append(dict(key=s.key, task=_task(m), gold=gold, pred=choices[best],
                             correct=float(choices[best] == gold), n_choices=len(choices),
                             logprob_gold=ll[choices.index(gold)][0] if gold in choices else float("nan")))
    skipped = _scored(bench, rows, skips)
    return TaskResult(rows, {"accuracy": _mean(rows, "correct"), "chance": _mean([{"c": 1 / r["n_choices"]} for r in rows], "c"),
                             "n": float(len(rows)), **skipped})


def caption_prompt(bench: Benchmark, s: Sample) -> str:
    """The benchmark's prompt, or (option `prompt: sample`) the sample's own first human turn."""
    prompt = bench.options.get("prompt", CAPTION_PROMPT)
    return first_turn(s.meta(), f"{s.shard}: sample {s.key}")[0] if prompt == "sample" else prompt


def _caption_item(bench: Benchmark, s: Sample) -> tuple[list[str], str, dict] | None:
    """(references, prompt, media) of a caption sample; None (counted `no_caption`) when it has no reference."""
    refs = captions_of(s)
    if not refs:
        raise SampleProblem("no_caption", s, "no reference caption (txt, json caption or a scene)")
    prompt = caption_prompt(bench, s)
    return refs, prompt, sample_media(s, prompt)


def run_caption(model, samples: list[Sample], bench: Benchmark, ctx: Context, skips: Skips) -> TaskResult:
    max_new = int(bench.options.get("max_new_tokens", 32))
    bs = int(bench.options.get("batch_size", min(ctx.batch_size, 8)))
    preds: list[str] = []
    done: list[tuple[Sample, list[str]]] = []
    with bar(ctx, bench.name, len(samples), "clip") as pbar:
        for i in range(0, len(samples), bs):
            chunk = samples[i:i + bs]
            todo = [(s, *item) for s in chunk if (item := _usable(s, skips, lambda s=s: _caption_item(bench, s)))]
            for (s, r, _, _), pred in _answers(model, todo, skips, max_new, bs) if todo else []:
                preds.append(pred)
                done.append((s, r))
            pbar.update(len(chunk))
    skipped = _scored(bench, done, skips)
    refs = [r for _, r in done]
    corpus_cider, per = cider(preds, refs)
    rouge, _ = rouge_l(preds, refs)
    rows = [dict(key=s.key, pred=p, reference=r[0], cider=c) for (s, r), p, c in zip(done, preds, per)]
    return TaskResult(rows, {"cider": corpus_cider, "bleu": bleu(preds, refs), "rouge_l": rouge, "n": float(len(rows)),
                             **skipped})


def run(model, bench: Benchmark, ctx: Context) -> TaskResult:
    """Runs the benchmark; its rows and metrics are cached like features (model x data x options), since
    generation is the expensive part here."""
    skips = Skips()
    samples, dhash = load_samples(bench, ctx, skips=skips)
    fn = run_caption if bench.kind == "caption" else \
        run_loglik if bench.options.get("mode", "generate") == "loglik" else run_generate
    name = f"{bench.kind}-{data_hash([], dhash, ROWS_VERSION, bench.kind, bench.options, [s.key for s in samples])}"

    def compute():
        r = fn(model, samples, bench, ctx, skips)
        return {"n": torch.tensor([len(r.rows)])}, {"rows": r.rows, "metrics": r.metrics, "tables": skips.tables()}

    _, meta = ctx.cache.get_or_compute(model.fingerprint, name, compute)
    return TaskResult(meta["rows"], meta["metrics"], meta.get("tables") or {})
