"""Dragonfly vs LLaVA on fine detail: the answer sits in a small region of a >= 1024 px image.

    python benchmarks/studies/fine_detail_compare.py --out runs/fine-detail      # data, 4 trainings, eval, table
    python benchmarks/studies/fine_detail_compare.py --out runs/fine-detail stages.1.steps=200   # a quicker run

Builds a synthetic-world subset (`--task`'s fine-detail questions + color + shape; `vlm data build
synthetic-world --tasks ...`) if absent: `fine_detail` (one small shape on a light, cluttered canvas) or
`fine_detail_hard` (the small object named among 2-3 distractors on a textured canvas). Then trains with the
recipes in benchmarks/studies/recipes (fine-detail-*.yaml), same data, stages, steps and learning rates:
  llava-tiny                 one low-resolution view (the tiny CLIP's 32 px): 16 visual tokens
  llava-tiny-hires           one 80 px view: 100 visual tokens, about dragonfly-tiny's 96 (a matched budget)
  dragonfly-tiny-visual      low + 2x2 mid + top-3 of 9 high crops per mid region, the reference's score
  dragonfly-tiny-text        the same with the question-conditioned score, learned through the LM loss only
  dragonfly-tiny-grounded    the same, also trained with the relevance loss (`grounded_next_token`): the
                             score of the high crop that holds the object the question is about (the box the
                             generator knows; colour / shape questions have none) against its region's others
  dragonfly-tiny-salient     the same keeping each region's odd crops out (ours)
  dragonfly-tiny-all         every high crop (top_k 9, no selection: 216 tokens)
(projector + zoom separators, then + the LLM in full; the encoder stays frozen as in llava-tiny), and
evaluates each with the benchmark runner on the subset's `--split` (val to choose settings, test to report:
the fine-detail benchmark; colour and shape of large objects beside it). Visual tokens per model (for a
1024 px image) are printed beside the scores. It also reports how often each dragonfly model's selection keeps
the high-resolution crop that holds the small object (chance: top_k / 9). OUT/results.jsonl holds every
figure for the card, one run per `--seed` (initialisation and data order; the data set stays the same):

    for s in 0 1 2; do python benchmarks/studies/fine_detail_compare.py --seed $s --data runs/fine-detail/data \
        --out runs/fine-detail/seed$s; done
    vlm card model_cards/dragonfly.md --results runs/fine-detail/seed*/results.jsonl
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

FINE = {"fine_detail": "sw-vqa-fine-detail", "fine_detail_hard": "sw-vqa-fine-detail-hard"}   # task: benchmark
TASKS = ["fine_detail", "color", "shape"]          # the subset (its first task as `--task` says)
BENCHES = ["sw-vqa-fine-detail", "sw-vqa-color", "sw-vqa-shape"]
RECIPES = Path(__file__).parent / "recipes"
RUNS = {                                            # name: (recipe file, overrides)
    "llava-tiny": ("fine-detail-llava.yaml", []),
    "llava-tiny-hires": ("fine-detail-llava.yaml", ["model.settings.vision={name: tiny-clip, image_size: 80}"]),
    "dragonfly-tiny-visual": ("fine-detail-dragonfly.yaml", ["model.settings.selection=visual"]),
    "dragonfly-tiny-text": ("fine-detail-dragonfly.yaml", ["model.settings.selection=text"]),
    "dragonfly-tiny-grounded": ("fine-detail-dragonfly.yaml", ["model.settings.selection=text",
                                                               *[f"stages.{i}.objective=grounded_next_token"
                                                                 for i in (0, 1)]]),
    "dragonfly-tiny-salient": ("fine-detail-dragonfly.yaml", ["model.settings.selection=salient"]),
    "dragonfly-tiny-all": ("fine-detail-dragonfly.yaml", ["model.settings.top_k=9"]),
}


def study_recipe(name: str, data: Path, overrides: list[str] = ()):
    """Run `name`'s recipe file on the subset at `data` (a typed, validated Recipe)."""
    from vlm.train import load_recipe
    file, extra = RUNS[name]
    return load_recipe(str(RECIPES / file), [f"data.world.shards=[{data / 'train'}]", *extra, *overrides])


def fine_detail_samples(data: Path, split: str = "test", task: str = "fine_detail") -> list[tuple]:
    """(PIL image, question, labels) of each `task` sample of a split."""
    import io

    from PIL import Image

    from vlm.data.reader import expand_shards, read_fields, scan_shard
    out = []
    for shard in expand_shards(str(data / split)):
        for ref in scan_shard(shard):
            f = read_fields(ref)
            meta = json.loads(f.get("json", b"{}"))
            if meta.get("task") == task:
                q = next(t["value"] for t in meta["conversations"] if t["from"] == "human")
                out.append((Image.open(io.BytesIO(f["jpg"])).convert("RGB"), q, meta["labels"]))
    return out


@torch.no_grad()
def selection_hits(model, samples: list[tuple]) -> float:
    """Fraction of images whose kept high crops include the one holding the small object's centre (the crop
    `ZoomPreprocess.focus` names, the one `grounded_next_token` trains towards)."""
    zoom = model.media["image"]
    per_region = zoom.zoom_settings.factor ** 2
    seen: list[torch.Tensor] = []
    hook = zoom.zoom.register_forward_hook(lambda mod, inp, out: seen.append(out[1][0]))
    model.eval()
    hits = 0
    try:
        for img, q, labels in samples:
            p = model.processor.prompt(q, {"image": [img]})
            model(torch.tensor([p.input_ids]), media=p.media)
            mid, slot = divmod(zoom.preprocess.focus(img.size, labels["bbox"]), per_region)
            hits += int(slot in seen[-1][mid].tolist())
    finally:
        hook.remove()
    return hits / max(len(samples), 1)


def visual_tokens(model, size: tuple[int, int] = (1024, 1024)) -> int:
    """LLM tokens one image of `size` becomes in `model` (as the model counts them)."""
    from PIL import Image
    return model.num_media_tokens("image", model.processor.preprocess_media("image", Image.new("RGB", size)))


def main(argv=None) -> int:
    from dataclasses import replace
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="the subset's folder (default OUT/data; built if absent)")
    p.add_argument("--out", default="runs/fine-detail")
    p.add_argument("--task", choices=list(FINE), default="fine_detail", help="the fine-detail questions")
    p.add_argument("--split", choices=["val", "test"], default="test", help="val: choose settings; test: report")
    p.add_argument("--samples", type=int, default=4000, help="training samples if the subset must be built")
    p.add_argument("--eval-per-task", type=int, default=100)
    p.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS), help="which runs (default all)")
    p.add_argument("--seed", type=int, default=0, help="runtime.seed of every run")
    p.add_argument("overrides", nargs="*", help="key=value applied to every run (e.g. stages.1.steps=200)")
    a = p.parse_args(argv)
    import vlm
    from benchmarks.registry import get_benchmark
    from benchmarks.report import capability_table
    from benchmarks.runner import RunConfig, evaluate
    from vlm.data.cli import BuildConfig, build_if_absent
    from vlm.train import train
    out = Path(a.out)
    data = Path(a.data) if a.data else out / "data"
    build_if_absent(BuildConfig(out=str(data), samples=a.samples, eval_per_task=a.eval_per_task,
                                tasks=[a.task, *TASKS[1:]], classification=False))
    finals = {}
    for name in a.runs:
        run_dir = out / name
        if not (run_dir / "final" / "config.json").exists():        # the resolved recipe lands in run_dir
            train(study_recipe(name, data, [f"runtime.seed={a.seed}", *a.overrides]), run_dir,
                  resume=(run_dir / "checkpoints").exists())
        finals[name] = run_dir / "final"
    benches = [get_benchmark(b) for b in [FINE[a.task], *BENCHES[1:]]]
    if a.split == "val":
        benches = [replace(b, name=f"{b.name}@val", data=replace(b.data, split="val")) for b in benches]
    res = evaluate([str(f) for f in finals.values()], benches, RunConfig(out=str(out / f"eval-{a.split}"), data=str(data)))
    print(capability_table(res.table))
    models = {name: vlm.load(f) for name, f in finals.items()}
    tokens = {name: visual_tokens(m) for name, m in models.items()}
    print("\nvisual tokens per 1024 px image: " + ", ".join(f"{k} {v}" for k, v in tokens.items()))
    samples = fine_detail_samples(data, a.split, a.task)
    dragonflies = {name: m for name, m in models.items() if name.startswith("dragonfly")}
    hits = {name: selection_hits(m, samples) for name, m in dragonflies.items()}
    chance = {name: m.media["image"].zoom_settings.top_k / m.media["image"].zoom_settings.factor ** 2
              for name, m in dragonflies.items()}
    print(f"\nselection keeps the small object's high crop ({len(samples)} {a.split} images; chance: top_k / 9):")
    for name, h in hits.items():
        print(f"  {name}: {h:.3f} (chance {chance[name]:.3f})")
    rows = res.table[["model", "benchmark", "score", "n"]].to_dict("records")
    (out / "summary.json").write_text(json.dumps({"scores": rows, "selection_hits": hits, "chance": chance,
                                                  "visual_tokens": tokens, "split": a.split, "task": a.task},
                                                 indent=2))
    from benchmarks.model_card import results_rows, write_results
    names = {f"{name}/final": name for name in finals}
    results = [{**r, "model": names.get(r["model"], r["model"])} for r in results_rows(res.table, seed=a.seed)]
    kept = FINE[a.task].removeprefix("sw-vqa-") + "-crop-kept"                  # fine-detail(-hard)-crop-kept
    results += [{"model": name, "benchmark": kept, "type": "reasoning",
                 "capability": "zoom-in selection", "kind": "selection", "metric": "hit_rate", "score": round(h, 4),
                 "n": len(samples), "chance": round(chance[name], 4), "seed": a.seed} for name, h in hits.items()]
    write_results(out / "results.jsonl", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
