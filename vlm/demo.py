"""`vlm demo`: the main job on the built-in default, end to end on a laptop CPU.

    vlm demo                                  # data/synthetic-world, runs/demo
    vlm demo --out runs/demo2 --samples 2000 stages.1.steps=100

1. builds the `synthetic-world` data set if absent (`vlm data build synthetic-world`),
2. trains the `llava-tiny` recipe through its curriculum stages (`vlm train llava-tiny`),
3. evaluates the trained and the untrained model on the synthetic-world capability suite
   (`vlm eval --suite synthetic-world-quick`) and prints the capability table and where the plots are.
Each step is skipped when its output exists (a finished training run, finished benchmarks).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path


def run(out: Path, data: Path, samples: int, seed: int, overrides: list[str], suite: str) -> int:
    from benchmarks.registry import Roots, resolve
    from benchmarks.report import capability_table
    from benchmarks.runner import RunConfig, evaluate
    from vlm.families import build
    from vlm.train.recipe import load_recipe
    from vlm.train.trainer import Trainer

    t0 = time.time()
    if not (data / "index.json").exists():
        from vlm.data.synthetic import build_synthetic_world
        print(f"[demo] building synthetic-world ({samples} training samples) in {data}", flush=True)
        build_synthetic_world(data, samples=samples, seed=seed)
    run_dir = out / "llava-tiny"
    final = run_dir / "final"
    if not (final / "config.json").exists():
        recipe = load_recipe("llava-tiny", [f"data.world.shards=[{data / 'train'}]", f"runtime.seed={seed}", *overrides])
        print(f"[demo] training llava-tiny into {run_dir}", flush=True)
        Trainer(recipe, run_dir, resume=(run_dir / "checkpoints").exists()).run()
    untrained = out / "llava-tiny-untrained"
    if not (untrained / "config.json").exists():
        build("llava", "tiny", seed=seed).save_pretrained(untrained)
    print(f"[demo] evaluating trained vs untrained on '{suite}'", flush=True)
    res = evaluate([str(final), str(untrained)], resolve(suite=suite),
                   RunConfig(out=str(out / "eval"), roots=Roots(synthetic_world=str(data))))
    print()
    print(capability_table(res.table))
    print()
    print(f"training curves : {run_dir / 'loss_lr.png'}  (metrics: {run_dir / 'metrics.jsonl'})")
    print(f"eval report     : {out / 'eval' / 'report.md'}  chart: {out / 'eval' / 'chart.png'}")
    print(f"checkpoint      : {final}  (vlm chat {final} \"<image>\\nWhat color is the circle?\" --image IMG)")
    print(f"[demo] done in {time.time() - t0:.0f} s")
    return 0


def cmd_demo(args) -> int:
    return run(Path(args.out), Path(args.data), args.samples, args.seed, args.overrides, args.suite)


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="build synthetic-world, train llava-tiny, evaluate it (the main job)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--data", default="data/synthetic-world", help="synthetic-world folder (built if absent)")
    p.add_argument("--samples", type=int, default=4000, help="training samples if the data set is built")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--suite", default="synthetic-world-quick")
    p.add_argument("overrides", nargs="*", help="recipe overrides key=value, e.g. stages.1.steps=100")
    p.set_defaults(func=cmd_demo)
