"""The synthetic-world test splits as parquet files that lmms-eval's `parquet` loader reads, plus the task
hooks. The samples are exactly those of our benchmarks (same split, task filter and order), the prompt
is the same first human turn, and the scoring is `benchmarks.tasks.generative`'s (VQA) or the same
corpus metrics (captions), so `lmms-eval --tasks synthetic_world_vqa` and `vlm eval --bench sw-vqa`
score the same way; `synthetic_world_av_vqa` / `synthetic_world_av_captions` are the sound, music and
video benchmarks (sw-vqa-audio-*, music-*, video, trailer-*; sw-caption-audio / music / video / trailer) pooled,
and `synthetic_world_av_vqa_<m>` / `synthetic_world_av_captions_<m>` the same per modality m (audio, music, video,
trailer: a model without some encoders runs its own; a caption task is one benchmark, its CIDEr `vlm eval`'s),
`synthetic_world_text` the text-only questions (sw-text-*; no media).

Where the data is: $VLM_SYNTHETIC_WORLD (default data/synthetic-world), split $VLM_LMMS_SPLIT (default
test). The parquet goes to the feature cache folder ($VLM_CACHE), keyed by the shards' hash.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any

from vlm.atomic import write_file

BENCHMARK = "sw-vqa"
SCHEMA = 2                       # the parquet's columns; a new layout gets a new file name
AV_VQA = ["sw-vqa-audio-tone", "sw-vqa-audio-noise", "sw-vqa-music-pitch", "sw-vqa-music-chord",
          "sw-vqa-music-instrument", "sw-vqa-music-tempo", "sw-vqa-video", "sw-vqa-trailer-shape",
          "sw-vqa-trailer-instrument"]
AV_CAPTIONS = ["sw-caption-audio", "sw-caption-music", "sw-caption-video", "sw-caption-trailer"]
# the same per modality (`synthetic_world_av_vqa_<m>` / `synthetic_world_av_captions_<m>`): what a model with
# only some of the encoders can be scored on (a request of a modality it lacks stops lmms-eval's whole run)
AV_BY_MODALITY = {m: ([b for b in AV_VQA if b.startswith(f"sw-vqa-{m}")], [f"sw-caption-{m}"])
                  for m in ("audio", "music", "video", "trailer")}
TEXT_QA = ["sw-text-fact", "sw-text-arith", "sw-text-count", "sw-text-order"]   # data: a `--tasks text` build


@functools.lru_cache(maxsize=None)
def export_split(benchmarks: tuple[str, ...], root: str, split: str) -> Path:
    """Write (once per data hash) and return the parquet of the benchmarks' samples, in our runner's order:
    the prompt (the first human turn), the gold answer (or reference caption) and the media in placeholder
    order (`media_kinds` / `media`: raw bytes)."""
    from dataclasses import replace

    import pandas as pd

    from benchmarks.config import default_cache_dir
    from benchmarks.data import SampleProblem, choices_of, first_turn
    from benchmarks.registry import Roots, get_benchmark
    from benchmarks.tasks import Context, Skips, load_samples
    from benchmarks.tasks.captions import captions_of
    from benchmarks.tasks.generative import caption_prompt
    from vlm.modalities import MODALITIES, placeholder_modalities
    rows, hashes = [], []
    for name in benchmarks:
        bench = get_benchmark(name)
        bench = replace(bench, data=replace(bench.data, split=split))
        skips = Skips()          # samples our runner skips too (json that does not parse, no question, media missing)
        samples, dhash = load_samples(bench, Context(roots=Roots(synthetic_world=root), progress=False), skips=skips)
        hashes.append(dhash)
        before = len(rows)
        for s in samples:
            try:
                m = s.meta()
                if bench.kind == "caption":                     # prompt and references as the runner's
                    refs = captions_of(s)
                    if not refs:
                        raise SampleProblem("no_caption", s, "no reference caption (txt, json caption or a scene)")
                    prompt, gold = caption_prompt(bench, s), refs[0]
                else:
                    prompt, gold = first_turn(m, f"{s.shard}: sample {s.key}")
                    refs = [str(gold)]
                kinds = placeholder_modalities(prompt)
                pools = {k: iter(s.files(k)) for k in ("image", "audio", "video")}
                media = [next(pools[MODALITIES[k].files], None) for k in kinds]
                if None in media:
                    raise SampleProblem("missing_media", s, f"its prompt has {len(kinds)} placeholder(s) and the "
                                                            f"sample fewer files")
            except SampleProblem as e:
                skips.add(e, s)
                continue
            rows.append(dict(key=s.key, benchmark=name, task=m.get("task", ""), prompt=prompt, answer=str(gold),
                             choices=choices_of(m), references=[str(r) for r in refs],
                             media_kinds=kinds, media=media))
        if skips and len(rows) == before:
            raise skips.nothing_usable(f"benchmark {name}")
        if skips:                    # said once per export, as the runner says its skips
            print(f"{name}: skipped " + ", ".join(f"{k} {v} (first: {skips.first[k]})"
                                                  for k, v in sorted(skips.counts.items())), file=sys.stderr)
    tag = "-".join(benchmarks) if len(benchmarks) == 1 else f"{len(benchmarks)}-benchmarks"
    out = default_cache_dir().parent / "lmms" / f"{tag}-{split}-v{SCHEMA}-{'-'.join(hashes)[:40]}.parquet"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame(rows)
        write_file(out, lambda tmp: frame.to_parquet(tmp, index=False))
    return out


def data_files(benchmarks: tuple[str, ...] = (BENCHMARK,)) -> dict[str, str]:
    """{'test': parquet path} for the task YAMLs' `dataset_kwargs.data_files`."""
    root = os.environ.get("VLM_SYNTHETIC_WORLD", "data/synthetic-world")
    split = os.environ.get("VLM_LMMS_SPLIT", "test")
    return {"test": str(export_split(tuple(benchmarks), str(Path(root).resolve()), split))}


def doc_to_visual(doc: dict[str, Any]) -> list:
    """The doc's media in placeholder order, as lmms-eval passes them to models: PIL images, audio as
    {"array", "sampling_rate", "modality"}, video as a file path."""
    from vlm.modalities import MODALITIES
    out = []
    for kind, raw in zip(doc["media_kinds"], doc["media"]):
        item = MODALITIES[kind].decode(raw)
        if kind == "image":
            out.append(item)
        elif MODALITIES[kind].files == "audio":
            wave, sr = item
            out.append({"array": wave.mean(0).numpy(), "sampling_rate": sr, "modality": kind})
        else:
            out.append(_video_file(raw))
    return out


def _video_file(raw: bytes) -> str:
    import hashlib

    from benchmarks.config import default_cache_dir
    path = default_cache_dir().parent / "lmms" / "clips" / f"{hashlib.sha256(raw).hexdigest()[:24]}.mp4"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file(path, lambda tmp: tmp.write_bytes(raw))
    return str(path)


def doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict | None = None) -> str:
    return doc["prompt"]


def doc_to_choice(doc: dict[str, Any]) -> list[str]:
    return list(doc["choices"])


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    from benchmarks.tasks.generative import score_answer
    return score_answer(results[0], doc["answer"])


def process_captions(doc: dict[str, Any], results: list[str]) -> dict[str, Any]:
    """Each corpus metric gets (prediction, references); the aggregations below score the corpus."""
    pair = (results[0], list(doc["references"]))
    return {"cider": pair, "bleu": pair, "rouge_l": pair}


def _corpus(items: list[tuple[str, list[str]]], fn) -> float:
    preds, refs = [p for p, _ in items], [list(r) for _, r in items]
    out = fn(preds, refs)
    return float(out[0] if isinstance(out, tuple) else out)


def cider_agg(items: list[tuple[str, list[str]]]) -> float:
    from benchmarks.metrics import cider
    return _corpus(items, cider)


def bleu_agg(items: list[tuple[str, list[str]]]) -> float:
    from benchmarks.metrics import bleu
    return _corpus(items, bleu)


def rouge_agg(items: list[tuple[str, list[str]]]) -> float:
    from benchmarks.metrics import rouge_l
    return _corpus(items, rouge_l)
