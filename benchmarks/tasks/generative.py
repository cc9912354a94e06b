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

from typing import Any

import torch

from benchmarks.data import BadMedia, Sample, data_hash, first_turn, sample_media
from benchmarks.metrics import bleu, cider, exact_match, rouge_l, vqa_match
from benchmarks.registry import Benchmark
from benchmarks.tasks import Context, TaskResult, bar, load_samples
from benchmarks.tasks.captions import captions_of
from vlm.errors import UserError

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


ROWS_VERSION = 2          # what a cached result holds (2: n_choices and chance); a new one recomputes


def _mean(rows: list[dict[str, Any]], k: str) -> float:
    return sum(float(r[k]) for r in rows) / len(rows) if rows else float("nan")


def _decodable(s: Sample, prompt: str, bad: list[str]) -> dict | None:
    """The sample's media for `prompt`, or None when a file does not decode (the sample is left out and
    counted as `skipped_bad_media`, as the zero-shot tasks skip a bad image; never the end of the benchmark)."""
    try:
        return sample_media(s, prompt)
    except BadMedia as e:
        bad.append(str(e))
        return None


def _bad_metrics(bench: Benchmark, bad: list[str], kept: int) -> dict[str, float]:
    """`skipped_bad_media` when a sample was left out; a one-line error when every one was."""
    if bad and not kept:
        raise UserError(f"benchmark {bench.name}: no sample's media decode ({bad[0]})")
    return {"skipped_bad_media": float(len(bad))} if bad else {}


def run_generate(model, samples: list[Sample], bench: Benchmark, ctx: Context) -> TaskResult:
    suffix, max_new = bench.options.get("prompt_suffix", ""), int(bench.options.get("max_new_tokens", 16))
    bs = int(bench.options.get("batch_size", min(ctx.batch_size, 8)))
    rows: list[dict[str, Any]] = []
    bad: list[str] = []
    with bar(ctx, bench.name, len(samples), "q") as pbar:
        for i in range(0, len(samples), bs):
            chunk = samples[i:i + bs]
            metas = [s.meta() for s in chunk]
            pg = [prompt_for(m, suffix, f"{s.shard}: sample {s.key}") for s, m in zip(chunk, metas)]
            todo = [(s, m, pgi, media) for s, m, pgi in zip(chunk, metas, pg)
                    if (media := _decodable(s, pgi[0], bad)) is not None]
            preds = model.generate([(p, media) for _, _, (p, _), media in todo], max_new, batch_size=bs) if todo else []
            for (s, m, (p, gold), _), pred in zip(todo, preds):
                rows.append(dict(key=s.key, task=m.get("task", ""), prompt=p, gold=gold, pred=pred,
                                 n_choices=len(m.get("choices") or []), **score_answer(pred, gold)))
            pbar.update(len(chunk))
    skipped = _bad_metrics(bench, bad, len(rows))
    metrics = {"accuracy": _mean(rows, "accuracy"), "exact_match": _mean(rows, "exact_match"), "n": float(len(rows)),
               **skipped}
    if rows and all(r["n_choices"] for r in rows):         # a closed answer set: guessing uniformly among it
        metrics["chance"] = _mean([{"c": 1 / r["n_choices"]} for r in rows], "c")
    return TaskResult(rows, metrics)


def run_loglik(model, samples: list[Sample], bench: Benchmark, ctx: Context) -> TaskResult:
    suffix = bench.options.get("prompt_suffix", "")
    rows: list[dict[str, Any]] = []
    bad: list[str] = []
    with bar(ctx, bench.name, len(samples), "q") as pbar:
        for s in samples:
            m = s.meta()
            choices = m.get("choices")
            if not choices:
                raise UserError(f"{s.shard}: sample {s.key} has no 'choices' (needed by mode loglik)")
            prompt, gold = prompt_for(m, suffix, f"{s.shard}: sample {s.key}")
            media = _decodable(s, prompt, bad)
            if media is None:
                pbar.update(1)
                continue
            ll = model.loglikelihood([(prompt, media, c) for c in choices])
            best = max(range(len(choices)), key=lambda j: ll[j][0])
            rows.append(dict(key=s.key, task=m.get("task", ""), gold=gold, pred=choices[best],
                             correct=float(choices[best] == gold), n_choices=len(choices),
                             logprob_gold=ll[choices.index(gold)][0] if gold in choices else float("nan")))
            pbar.update(1)
    skipped = _bad_metrics(bench, bad, len(rows))
    return TaskResult(rows, {"accuracy": _mean(rows, "correct"), "chance": _mean([{"c": 1 / r["n_choices"]} for r in rows], "c"),
                             "n": float(len(rows)), **skipped})


def _caption_prompt(bench: Benchmark, s: Sample) -> str:
    """The benchmark's prompt, or (option `prompt: sample`) the sample's own first human turn."""
    prompt = bench.options.get("prompt", CAPTION_PROMPT)
    return first_turn(s.meta(), f"{s.shard}: sample {s.key}")[0] if prompt == "sample" else prompt


def run_caption(model, samples: list[Sample], bench: Benchmark, ctx: Context) -> TaskResult:
    max_new = int(bench.options.get("max_new_tokens", 32))
    bs = int(bench.options.get("batch_size", min(ctx.batch_size, 8)))
    kept = [(s, refs) for s in samples if (refs := captions_of(s))]
    if not kept:
        raise UserError(f"benchmark {bench.name}: no sample has a reference caption")
    preds: list[str] = []
    bad: list[str] = []
    done: list[tuple[Sample, list[str]]] = []
    with bar(ctx, bench.name, len(kept), "clip") as pbar:
        for i in range(0, len(kept), bs):
            chunk = kept[i:i + bs]
            todo = [(s, r, p, media) for (s, r), p in zip(chunk, [_caption_prompt(bench, s) for s, _ in chunk])
                    if (media := _decodable(s, p, bad)) is not None]
            if todo:
                preds += model.generate([(p, media) for _, _, p, media in todo], max_new, batch_size=bs)
                done += [(s, r) for s, r, _, _ in todo]
            pbar.update(len(chunk))
    skipped = _bad_metrics(bench, bad, len(done))
    kept = done
    refs = [r for _, r in kept]
    corpus_cider, per = cider(preds, refs)
    rouge, _ = rouge_l(preds, refs)
    rows = [dict(key=s.key, pred=p, reference=r[0], cider=c) for (s, r), p, c in zip(kept, preds, per)]
    return TaskResult(rows, {"cider": corpus_cider, "bleu": bleu(preds, refs), "rouge_l": rouge, "n": float(len(rows)),
                             **skipped})


def run(model, bench: Benchmark, ctx: Context) -> TaskResult:
    """Runs the benchmark; its rows and metrics are cached like features (model x data x options), since
    generation is the expensive part here."""
    samples, dhash = load_samples(bench, ctx)
    fn = run_caption if bench.kind == "caption" else \
        run_loglik if bench.options.get("mode", "generate") == "loglik" else run_generate
    name = f"{bench.kind}-{data_hash([], dhash, ROWS_VERSION, bench.kind, bench.options, [s.key for s in samples])}"

    def compute():
        r = fn(model, samples, bench, ctx)
        return {"n": torch.tensor([len(r.rows)])}, {"rows": r.rows, "metrics": r.metrics}

    _, meta = ctx.cache.get_or_compute(model.fingerprint, name, compute)
    return TaskResult(meta["rows"], meta["metrics"])
