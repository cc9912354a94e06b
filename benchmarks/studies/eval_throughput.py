"""Zero-shot classification wall time: our runner against clip_benchmark 1.6.2, same model, same shards.

    python benchmarks/studies/eval_throughput.py [--arch ViT-B-32] [--images 512] [--classes 10] [--templates 18]

One process; each round runs, in this order: clip_benchmark (`zero_shot_classifier` +
`run_classification` on its own `wds` dataset and a DataLoader, fp32: autocast off, as our runner),
our runner cold (empty feature cache), our runner warm (a new output folder, the same cache). Each
timing covers building the model (random init, seeded: no network) and everything after; imports
are done before. With --rounds R the figures are the minimum over the rounds (timeit's rule: on a
shared machine the minimum is the least disturbed run) and the ratios are taken of those minima.
The two harnesses' outputs are compared too: the largest difference between their class weights,
and their (label, prediction) counts (clip_benchmark's DataLoader workers interleave shards, so its
rows come in another order; tests/test_bench_zeroshot.py checks per-sample identity).
Targets: cold <= 0.8x clip_benchmark's time, warm <= 0.1x.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch


def make_data(folder: Path, images: int, classes: int, templates: int, size: int) -> Path:
    from benchmarks.fixtures import COLORS, write_wds_classification
    names = list(COLORS) + [f"class {i}" for i in range(max(0, classes - len(COLORS)))]
    folder = write_wds_classification(folder, n_per_class=-(-images // classes), shards=4, classes=names[:classes],
                                      image_size=size)
    base = ["a photo of a {c}.", "a blurry photo of a {c}.", "a black and white photo of a {c}.",
            "a low contrast photo of a {c}.", "a high contrast photo of a {c}.", "a bad photo of a {c}.",
            "a good photo of a {c}.", "a photo of a small {c}.", "a photo of a big {c}.", "a photo of the {c}.",
            "a blurry photo of the {c}.", "a black and white photo of the {c}.", "a low contrast photo of the {c}.",
            "a high contrast photo of the {c}.", "a bad photo of the {c}.", "a good photo of the {c}.",
            "a photo of the small {c}.", "a photo of the big {c}."]          # clip_benchmark's CIFAR-10 templates
    (folder / "zeroshot_classification_templates.txt").write_text("\n".join((base * 8)[:templates]) + "\n")
    return folder


def run_reference(arch: str, folder: Path, batch_size: int, workers: int) -> tuple[float, tuple, dict]:
    import open_clip
    from clip_benchmark.datasets.builder import build_dataset
    from clip_benchmark.metrics.zeroshot_classification import (
        run_classification,
        zero_shot_classifier,
    )
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model, _, pre = open_clip.create_model_and_transforms(arch, pretrained=None)
    model.eval()
    tok = open_clip.get_tokenizer(arch)
    ds = build_dataset(f"wds/{folder.name}", root=str(folder), transform=pre, split="test", download=False)
    dl = torch.utils.data.DataLoader(ds.batched(batch_size), batch_size=None, num_workers=workers)
    t1 = time.perf_counter()
    clf = zero_shot_classifier(model, tok, ds.classes, ds.templates, "cpu", amp=False)
    t2 = time.perf_counter()
    logits, target = run_classification(model, clf, dl, "cpu", amp=False)
    t3 = time.perf_counter()
    return t3 - t0, (logits.argmax(1), target, clf.T), {"class weights": round(t2 - t1, 2), "images": round(t3 - t2, 2)}


def run_ours(arch: str, folder: Path, out: Path, cache: Path, batch_size: int, workers: int) -> tuple[float, tuple, dict]:
    import pandas as pd

    from benchmarks.registry import wds_benchmark
    from benchmarks.runner import RunConfig, evaluate
    t0 = time.perf_counter()
    res = evaluate([f"open_clip:{arch}"], [wds_benchmark(folder)],
                   RunConfig(out=out, cache_dir=cache, batch_size=batch_size, workers=workers, progress=False, report=False))
    dt = time.perf_counter() - t0
    rows = pd.read_parquet(next((out / "results").glob("*/*.parquet")))
    rec = json.loads(next((out / "results").glob("*/*.json")).read_text())
    phases = {t["phase"]: t["seconds"] for t in rec["tables"]["timing"]}
    from safetensors.torch import load_file
    weights = load_file(str(next(cache.glob("*/zs-classifier-*.safetensors"))))["weights"]
    out_ = (torch.tensor(rows["pred"].tolist()), torch.tensor(rows["label"].tolist()), weights)
    return dt, out_, dict(hits=res.cache_hits, misses=res.cache_misses, **phases)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="ViT-B-32")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--templates", type=int, default=18)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (reference) / decode threads (ours)")
    p.add_argument("--rounds", type=int, default=1, help="repeat the three runs; report the minimum of each")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    import clip_benchmark  # noqa: F401  (imports outside the timings)
    import open_clip  # noqa: F401

    import benchmarks.runner  # noqa: F401
    tmp = Path(tempfile.mkdtemp(prefix="eval-throughput-"))
    times: dict[str, list[float]] = {"ref": [], "cold": [], "warm": []}
    try:
        folder = make_data(tmp / "wds_bench", args.images, args.classes, args.templates, args.image_size)
        for r in range(args.rounds):
            ref_s, ref_out, ref_phases = run_reference(args.arch, folder, args.batch_size, args.workers)
            cache = tmp / f"cache{r}"
            cold_s, ours_out, cold = run_ours(args.arch, folder, tmp / f"out-cold{r}", cache, args.batch_size, args.workers)
            warm_s, _, warm = run_ours(args.arch, folder, tmp / f"out-warm{r}", cache, args.batch_size, args.workers)
            for k, v in (("ref", ref_s), ("cold", cold_s), ("warm", warm_s)):
                times[k].append(round(v, 2))
        ref_s, cold_s, warm_s = (min(times[k]) for k in ("ref", "cold", "warm"))
        confusion = [collections.Counter(zip(o[1].tolist(), o[0].tolist())) for o in (ref_out, ours_out)]
        fig = dict(arch=args.arch, images=len(ours_out[0]), classes=args.classes, templates=args.templates,
                   torch_threads=torch.get_num_threads(), cpus=os.cpu_count(), rounds=args.rounds, times=times,
                   clip_benchmark_s=ref_s, ours_cold_s=cold_s, ours_warm_s=warm_s,
                   cold_ratio=round(cold_s / ref_s, 3), warm_ratio=round(warm_s / ref_s, 4),
                   class_weights_max_abs_diff=float((ref_out[2] - ours_out[2]).abs().max()),
                   confusion_equal=confusion[0] == confusion[1],
                   phases_clip_benchmark=ref_phases, cold=cold, warm=warm)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"zero-shot, open_clip {fig['arch']} (random init, fp32), {fig['images']} images x {fig['classes']} classes "
          f"x {fig['templates']} templates, {fig['torch_threads']} torch threads / {fig['cpus']} CPUs")
    print(f"  clip_benchmark 1.6.2 : {fig['clip_benchmark_s']:8.2f} s")
    print(f"  ours, cold cache     : {fig['ours_cold_s']:8.2f} s  ({fig['cold_ratio']:.2f}x, target <= 0.8x)")
    print(f"  ours, warm cache     : {fig['ours_warm_s']:8.2f} s  ({fig['warm_ratio']:.3f}x, target <= 0.1x)")
    print(f"  phases (last round, s): clip_benchmark {fig['phases_clip_benchmark']}; ours cold "
          f"{{'class weights': {fig['cold']['class weights']}, 'images': {fig['cold']['images']}}}")
    print(f"  class weights max |diff| {fig['class_weights_max_abs_diff']:.2e}; (label, prediction) counts equal: "
          f"{fig['confusion_equal']}; all rounds (s): {fig['times']}")
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=2))
    return 0 if fig["cold_ratio"] <= 0.8 and fig["warm_ratio"] <= 0.1 else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main())
