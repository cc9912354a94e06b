"""SAIL-VL's curriculum against one mixed stage and the reverse order, at the same budget: the tiny LLaVA
model, data, trainable set and total steps; per-capability accuracy on the test split over seeds.

    python benchmarks/studies/curriculum_compare.py --out runs/curriculum --seeds 0 1 2

Variants of the built-in `llava-tiny` recipe (written to OUT/recipes/VARIANT.yaml; every one keeps its
20-step caption alignment and trains the projector and the LLM for 1,200 SFT steps on the same shards):
  curriculum   the recipe as shipped: easy (difficulty < 0.3, 700 steps, LR 3e-3) -> the whole range
               (difficulty >= 0.1, 500 steps, LR 1e-3)
  mixed        one SFT stage over every difficulty, 1,200 steps at LR 3e-3 (the curriculum's first LR)
  reverse      the curriculum's two SFT filters in the other order (the whole range first, then easy), each
               position keeping its steps and LR
The data set (synthetic-world with only the recipe's tasks, `--samples` training samples and
`--eval-per-task` questions per task in val and test, 200 by default so that a 5-point difference is
outside the binomial spread) is built if absent. Every trained model is scored by the benchmark runner
on the test split (greedy generation) on the capabilities the recipe trains (colour, shape, count).
Printed: per capability, mean ± sample sd over seeds per variant, and the difference of each variant from
the curriculum with whether it is outside the spread (|difference| > the larger sd of the two and > 2
binomial standard errors of the pooled questions). Written: OUT/table.md, OUT/summary.json,
OUT/results.jsonl (card rows, one per variant, benchmark and seed).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
from pathlib import Path

RECIPE = "llava-tiny"
BENCHES = ["sw-vqa-color", "sw-vqa-shape", "sw-vqa-count"]
TASKS = ["caption", "color", "shape", "count", "multi_turn"]          # the recipe's own tasks
VARIANTS = ("curriculum", "mixed", "reverse")


def variants(raw: dict) -> dict[str, list[dict]]:
    """The three stage lists (align, then SFT) from the recipe's own raw stages."""
    align, easy, hard = (copy.deepcopy(st) for st in raw["stages"])
    mixed = {**copy.deepcopy(easy), "name": "sft-mixed", "steps": easy["steps"] + hard["steps"],
             "filter": {**easy["filter"], "max_difficulty": None, "min_difficulty": None}}
    first, second = copy.deepcopy(hard), copy.deepcopy(easy)        # filters swapped; budget and LR by position
    for st, pos in ((first, easy), (second, hard)):
        st.update(steps=pos["steps"], lr=pos["lr"])
    return dict(zip(VARIANTS, ([align, easy, hard], [align, mixed], [align, first, second])))


def recipes(out: Path, data: Path, seed: int, overrides: list[str], every_stage: list[str] = ()) -> dict:
    """{variant: Recipe} for one seed; the YAML of each variant is written to OUT/recipes. `every_stage`:
    KEY=VALUE set on each stage of every variant (e.g. steps=1 for a quick run)."""
    from vlm.config import to_yaml
    from vlm.train.recipe import load_recipe, raw_recipe
    raw, _ = raw_recipe(RECIPE)
    found = {}
    for name, stages in variants(raw).items():
        path = out / "recipes" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(to_yaml({**copy.deepcopy(raw), "name": f"{RECIPE}-{name}",
                                 "description": f"{RECIPE}, SFT as '{name}' (curriculum_compare.py)",
                                 "stages": stages}))
        per_stage = [f"stages.{i}.{kv}" for i in range(len(stages)) for kv in every_stage]
        found[name] = load_recipe(str(path), [f"data.world.shards=[{data / 'train'}]", f"runtime.seed={seed}",
                                              *per_stage, *overrides])
    return found


def _sd(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def _stat(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3f} ± {_sd(xs):.3f}"


def table(rows: list[dict], names: list[str]) -> str:
    by: dict[tuple, list[float]] = {}
    n_of: dict[str, int] = {}
    for r in rows:
        by.setdefault((r["benchmark"], r["variant"]), []).append(r["score"])
        n_of[r["benchmark"]] = int(r["n"])
    seeds = len(by[(rows[0]["benchmark"], names[0])])
    out = [f"{RECIPE}: SFT curriculum vs one mixed stage vs the reverse order (test split, {seeds} seeds: mean ± sd)",
           "", "| benchmark | n | " + " | ".join(names) + " | "
           + " | ".join(f"{v} - curriculum" for v in names[1:]) + " |", "|---" * (2 + 2 * len(names) - 1) + "|"]
    for b in dict.fromkeys(r["benchmark"] for r in rows):
        base = by[(b, names[0])]
        line = [b, str(n_of[b]), *[_stat(by[(b, v)]) for v in names]]
        for v in names[1:]:
            xs = by[(b, v)]
            diff = statistics.mean(xs) - statistics.mean(base)
            spread = max(_sd(xs), _sd(base))
            p = (statistics.mean(xs) + statistics.mean(base)) / 2
            se = math.sqrt(max(p * (1 - p), 1e-12) * 2 / (n_of[b] * len(xs)))
            outside = abs(diff) > spread and abs(diff) > 2 * se
            line.append(f"{diff:+.3f} ({'outside' if outside else 'within'} the spread)")
        out.append("| " + " | ".join(line) + " |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="synthetic-world folder (default OUT/data; built if absent)")
    p.add_argument("--out", default="runs/curriculum")
    p.add_argument("--samples", type=int, default=4000, help="training samples if the data set is built")
    p.add_argument("--eval-per-task", type=int, default=200, help="val and test questions per task if built")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--limit", type=int, default=None, help="at most N test questions per benchmark (quick runs)")
    p.add_argument("--every-stage", nargs="+", default=[], metavar="KEY=VALUE",
                   help="set on every stage of every variant (e.g. steps=1 batch_size=2: a quick run)")
    p.add_argument("overrides", nargs="*", help="key=value applied to every variant (e.g. runtime.num_workers=0)")
    a = p.parse_args(argv)
    from benchmarks.model_card import write_results
    from benchmarks.registry import resolve
    from benchmarks.runner import RunConfig, evaluate
    from vlm.data.cli import BuildConfig, build_if_absent
    from vlm.train import train
    out = Path(a.out)
    data = Path(a.data) if a.data else out / "data"
    build_if_absent(BuildConfig(out=str(data), samples=a.samples, eval_per_task=a.eval_per_task, tasks=TASKS,
                                classification=False))
    finals, walls = {}, {}
    for seed in a.seeds:
        for name, rec in recipes(out, data, seed, a.overrides, a.every_stage).items():
            run = out / "train" / f"{name}-s{seed}"
            if not (run / "final" / "config.json").exists():
                t0 = time.time()
                train(rec, run, resume=(run / "checkpoints").exists())
                (run / "wall_seconds.txt").write_text(f"{time.time() - t0:.1f}\n")
            finals[(seed, name)] = run / "final"
            walls[run.name] = float((run / "wall_seconds.txt").read_text())
    res = evaluate([str(f) for f in finals.values()], resolve(BENCHES),
                   RunConfig(out=str(out / "eval"), data=str(data), progress=False, limit=a.limit))
    failed = [r for r in res.records if r.get("status") != "ok"]
    if failed:
        raise SystemExit(f"evaluation failed: {[(r['model'], r['benchmark'], r.get('reason')) for r in failed]}")
    key = {str(f): k for k, f in finals.items()}
    rows = [{"seed": key[r["model_spec"]][0], "variant": key[r["model_spec"]][1], "benchmark": r["benchmark"],
             "score": float(r["score"]), "n": float(r["metrics"]["n"]), "capability": r.get("capability"),
             "type": r.get("type"), "chance": r["metrics"].get("chance")} for r in res.records]
    text = table(rows, list(VARIANTS))
    print(text)
    print("training wall time per run (s): " + ", ".join(f"{k} {v:.0f}" for k, v in walls.items()))
    (out / "table.md").write_text(text)
    (out / "summary.json").write_text(json.dumps({"rows": rows, "train_wall_seconds": walls}, indent=2))
    write_results(out / "results.jsonl", [
        {"model": f"{RECIPE} {r['variant']}", "benchmark": r["benchmark"], "metric": "accuracy",
         "score": round(r["score"], 6), "n": int(r["n"]), "seed": r["seed"],
         **{k: r[k] for k in ("type", "capability") if r.get(k)},
         **({"chance": round(r["chance"], 6)} if r.get("chance") is not None else {})} for r in rows])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
