"""The synthetic-world VQA split as a parquet file that lmms-eval's `parquet` loader reads, plus the
task hooks. The samples are exactly those of our `sw-vqa` benchmark (same split, task filter and
order), the prompt is the same first human turn, and the scoring is `benchmarks.tasks.generative`'s,
so `lmms-eval --tasks synthetic_world_vqa` and `vlm eval --bench sw-vqa` score the same way.

Where the data is: $VLM_SYNTHETIC_WORLD (default data/synthetic-world), split $VLM_LMMS_SPLIT (default
test). The parquet goes to the feature cache folder ($VLM_CACHE), keyed by the shards' hash.
"""
from __future__ import annotations

import functools
import io
import os
from pathlib import Path
from typing import Any

BENCHMARK = "sw-vqa"


@functools.lru_cache(maxsize=None)
def export_vqa(root: str, split: str) -> Path:
    """Write (once per data hash) and return the parquet of the VQA split."""
    from dataclasses import replace

    import pandas as pd

    from benchmarks.config import default_cache_dir
    from benchmarks.registry import Roots, get_benchmark
    from benchmarks.tasks import Context, load_samples
    from benchmarks.tasks.generative import prompt_for
    bench = get_benchmark(BENCHMARK)
    bench = replace(bench, data=replace(bench.data, split=split))
    samples, dhash = load_samples(bench, Context(roots=Roots(synthetic_world=root), progress=False))
    out = default_cache_dir().parent / "lmms" / f"{BENCHMARK}-{split}-{dhash}.parquet"
    if out.exists():
        return out
    rows = []
    for s in samples:
        m = s.meta()
        prompt, gold = prompt_for(m, where=f"{s.shard}: sample {s.key}")
        rows.append(dict(key=s.key, task=m.get("task", ""), prompt=prompt, answer=gold,
                         choices=[str(c) for c in m.get("choices") or []], image=s.first("image")))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    pd.DataFrame(rows).to_parquet(tmp, index=False)
    os.replace(tmp, out)
    return out


def data_files() -> dict[str, str]:
    """{'test': parquet path} for the task YAMLs' `dataset_kwargs.data_files`."""
    root = os.environ.get("VLM_SYNTHETIC_WORLD", "data/synthetic-world")
    split = os.environ.get("VLM_LMMS_SPLIT", "test")
    return {"test": str(export_vqa(str(Path(root).resolve()), split))}


def doc_to_visual(doc: dict[str, Any]) -> list:
    from PIL import Image
    return [Image.open(io.BytesIO(doc["image"])).convert("RGB")]


def doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict | None = None) -> str:
    return doc["prompt"]


def doc_to_choice(doc: dict[str, Any]) -> list[str]:
    return list(doc["choices"])


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    from benchmarks.tasks.generative import score_answer
    return score_answer(results[0], doc["answer"])
