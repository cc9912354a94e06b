"""Dragonfly vs LLaVA on fine detail: the answer sits in a small region of a >= 1024 px image.

    python benchmarks/fine_detail_compare.py --out runs/fine-detail            # data, 4 trainings, eval, table
    python benchmarks/fine_detail_compare.py --out runs/fine-detail stages.1.steps=200   # a quicker run

Builds a synthetic-world subset (fine_detail + color + shape questions; `vlm data build synthetic-world
--tasks ...`) if absent, then trains with one recipe, same data, stages, steps and learning rates:
  llava-tiny                 one low-resolution view (the tiny CLIP's 32 px): 16 visual tokens
  dragonfly-tiny (visual)    low + 2x2 mid + top-3 of 9 high crops per mid region, the reference's score
  dragonfly-tiny (text)      the same with the question-conditioned score
  dragonfly-tiny (salient)   the same keeping each region's odd crops out (ours)
(projector + zoom separators, then + the LLM in full; the encoder stays frozen as in llava-tiny), and
evaluates each with the benchmark runner on the subset's test split (sw-vqa-fine-detail; colour and
shape of large objects beside it). It also reports how often each dragonfly model's selection keeps
the high-resolution crop that holds the small object (chance: top_k / 9).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

TASKS = ["fine_detail", "color", "shape"]
BENCHES = ["sw-vqa-fine-detail", "sw-vqa-color", "sw-vqa-shape"]
RUNS = {                                            # name: (family, model settings)
    "llava-tiny": ("llava", {}),
    "dragonfly-tiny-visual": ("dragonfly", {"selection": "visual"}),
    "dragonfly-tiny-text": ("dragonfly", {"selection": "text"}),
    "dragonfly-tiny-salient": ("dragonfly", {"selection": "salient"}),
}


def study_recipe(family: str, settings: dict, data: Path) -> dict:
    """The tiny curriculum on the subset: align (projector, single-object colour / shape questions),
    then SFT on every question of the subset with the LLM in full."""
    from vlm.families.llava import TINY_COMMON, tiny_curriculum
    extra = ["zoom.*"] if family == "dragonfly" else []
    r = tiny_curriculum(family, f"fine-detail study: {family} {settings}", ["connectors.*", *extra], "full")
    r["model"]["settings"] = dict(settings)
    r["data"]["world"]["shards"] = [str(data / "train")]
    common = {**TINY_COMMON, "max_len": 256}   # room for dragonfly-tiny's 96 visual tokens
    r["stages"] = [
        {"name": "align", "trainable": ["connectors.*", *extra], "llm": "frozen", "lr": 3e-3, "steps": 30,
         "filter": {"tasks": ["color", "shape"], "max_difficulty": 0.2}, **common},
        {"name": "sft", "trainable": ["connectors.*", *extra], "llm": "full", "lr": 2e-3, "steps": 800, **common},
    ]
    return r


def fine_detail_samples(data: Path, split: str = "test") -> list[tuple]:
    """(PIL image, question, labels) of each fine_detail sample of a split."""
    import io

    from PIL import Image

    from vlm.data.reader import expand_shards, read_fields, scan_shard
    out = []
    for shard in expand_shards(str(data / split)):
        for ref in scan_shard(shard):
            f = read_fields(ref)
            meta = json.loads(f.get("json", b"{}"))
            if meta.get("task") == "fine_detail":
                q = next(t["value"] for t in meta["conversations"] if t["from"] == "human")
                out.append((Image.open(io.BytesIO(f["jpg"])).convert("RGB"), q, meta["labels"]))
    return out


@torch.no_grad()
def selection_hits(model, samples: list[tuple]) -> float:
    """Fraction of images whose kept high crops include the one holding the small object's centre."""
    from vlm.connectors.zoom import choose_grid, locate
    s, tile = model.zoom_settings, tuple(model.encoders["image"].preprocess.size)
    seen: list[torch.Tensor] = []
    hook = model.zoom.register_forward_hook(lambda mod, inp, out: seen.append(out[1][0]))
    model.eval()
    hits = 0
    try:
        for img, q, labels in samples:
            l, t, r, b = labels["bbox"]
            p = model.processor.prompt(q, {"image": [img]})
            model(torch.tensor([p.input_ids]), media=p.media)
            mid, slot = locate(((l + r) / 2, (t + b) / 2), img.size, choose_grid(img.size, s.mid_grids, tile),
                               s.factor)
            hits += int(slot in seen[-1][mid].tolist())
    finally:
        hook.remove()
    return hits / max(len(samples), 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="the subset's folder (default OUT/data; built if absent)")
    p.add_argument("--out", default="runs/fine-detail")
    p.add_argument("--samples", type=int, default=4000, help="training samples if the subset must be built")
    p.add_argument("--eval-per-task", type=int, default=100)
    p.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS), help="which runs (default all)")
    p.add_argument("overrides", nargs="*", help="key=value applied to every run (e.g. stages.1.steps=200)")
    a = p.parse_args(argv)
    import yaml

    from benchmarks.registry import Roots, resolve
    from benchmarks.report import capability_table
    from benchmarks.runner import RunConfig, evaluate
    from vlm.model import load
    from vlm.train.recipe import load_recipe
    from vlm.train.trainer import Trainer
    out = Path(a.out)
    data = Path(a.data) if a.data else out / "data"
    if not (data / "index.json").exists():
        from vlm.data.synthetic import build_synthetic_world
        build_synthetic_world(data, samples=a.samples, seed=0, tasks=TASKS, eval_per_task=a.eval_per_task,
                              classification=False)
    finals = {}
    for name in a.runs:
        family, settings = RUNS[name]
        run_dir = out / name
        if not (run_dir / "final" / "config.json").exists():
            spec = out / "recipes" / f"{name}.yaml"          # kept: `vlm train` reruns it as is
            spec.parent.mkdir(parents=True, exist_ok=True)
            spec.write_text(yaml.safe_dump({"name": name, **study_recipe(family, settings, data)}, sort_keys=False))
            rec = load_recipe(str(spec), a.overrides)
            Trainer(rec, run_dir, resume=(run_dir / "checkpoints").exists()).run()
        finals[name] = run_dir / "final"
    res = evaluate([str(f) for f in finals.values()], resolve(BENCHES),
                   RunConfig(out=str(out / "eval"), roots=Roots(synthetic_world=str(data))))
    print(capability_table(res.table))
    samples = fine_detail_samples(data)
    dragonflies = {name: load(f) for name, f in finals.items() if RUNS[name][0] == "dragonfly"}
    hits = {name: selection_hits(m, samples) for name, m in dragonflies.items()}
    zs = next(iter(dragonflies.values())).zoom_settings if dragonflies else None
    k, f2 = (zs.top_k, zs.factor ** 2) if zs else (0, 1)
    print(f"\nselection keeps the small object's high crop (chance {k}/{f2} = {k / f2:.3f}), {len(samples)} test images:")
    for name, h in hits.items():
        print(f"  {name}: {h:.3f}")
    rows = res.table[["model", "benchmark", "score", "n"]].to_dict("records")
    (out / "summary.json").write_text(json.dumps({"scores": rows, "selection_hits": hits, "top_k": k}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
