"""What is read, heard and seen: the per-modality recipes (text, sound, music, video) and omni-tiny, trained
vs untrained vs chance, and the omni soundtrack ablation.

    python benchmarks/studies/modality_recipes.py --out runs/av-study                  # data, trainings, eval, tables
    python benchmarks/studies/modality_recipes.py --out runs/av-study --seeds 0 --recipes omni-tiny

Builds a synthetic-world subset of the sound, music and video tasks (`--samples` training samples,
`--eval-per-task` per task in val and test) if absent, for omni-tiny its own subset of the trailer tasks
alone (`--trailer-samples` clips: in the shared subset each trailer task has under 300 training clips, too
few for the shape question), for llava-music-tiny its own subset of the music tasks (`--music-samples`, as
the recipe's own `data/synthetic-world-music`) and for llava-text-tiny the text-only tasks (`--text-samples`,
as `data/synthetic-world-text`), then per recipe and seed:
  trained     the built-in recipe (its stages, steps and learning rates), `runtime.seed` = the seed
  untrained   the same model as the recipe builds it before step 0 (same seed)
and for omni-tiny, from each trained model, two evaluation-time ablations (`mute`, nothing retrained):
  music muted       the clip's tokens leave out the music encoder's stream
  soundtrack muted  the music and the audio streams both left out: frames only
Every model is scored by the benchmark runner on the test split (each recipe's suite: synthetic-world-text
/ -audio / -music / -video / -trailer). Printed: one table per recipe, mean +- standard deviation over seeds, chance
(1 / number of choices, from the runner) and whether the target holds:
  VQA, trained        every seed >= chance + 0.20 ("well above chance", the issue's words for the modality
                      recipes); for omni-tiny, whose issue asks for "above chance", also every seed above chance
                      by a one-sided exact binomial test at p < 0.01 (both shown)
  omni, music muted / soundtrack muted: instrument within 2 binomial standard errors of chance (it drops to
                      chance), shape within 0.05 of the unmuted score (it stays)
Captions have no target; CIDEr and ROUGE-L are shown. Settings are the recipes' own (nothing is chosen here).
Written: OUT/table.md (the printed tables), OUT/summary.json, OUT/results.jsonl (for the model cards:
`vlm card model_cards/omni.md --results OUT/results.jsonl`).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

RECIPES = {                                   # recipe: the suite that scores it
    "llava-text-tiny": "synthetic-world-text",
    "llava-audio-tiny": "synthetic-world-audio",
    "llava-music-tiny": "synthetic-world-music",
    "llava-video-tiny": "synthetic-world-video",
    "omni-tiny": "synthetic-world-trailer",
}
TASKS = ["audio_caption", "audio_noise", "audio_tone", "music_caption", "music_chord", "music_instrument",
         "music_pitch", "music_tempo", "trailer_instrument", "trailer_merged", "trailer_music", "trailer_shape",
         "trailer_visual", "video", "video_caption", "video_music"]
# recipe: the subset it trains and is scored on (others: the shared one); subset: its tasks, default samples
OWN_DATA = {"omni-tiny": "trailer", "llava-music-tiny": "music", "llava-text-tiny": "text"}
SUBSETS = {"trailer": ([t for t in TASKS if t.startswith("trailer_")], 6000),
           "music": ([t for t in TASKS if t.startswith("music_")], 5000),
           "text": (["text"], 8000)}
MUTES = {"music muted": ["music"], "soundtrack muted": ["music", "audio"]}
ABOVE_CHANCE = 0.20                            # VQA target: every trained seed at least this far above chance
SIGNIFICANT = 0.01                             # omni's "above chance": one-sided binomial p-value per seed below this
STAYS = 0.05                                   # ablation: the visual score moves less than this


def checkpoints(recipe: str, seed: int, data: Path, out: Path, overrides: list[str]) -> dict[str, Path]:
    """{variant: checkpoint folder} of one recipe and seed: trained (train the recipe unless done), untrained,
    and for omni the muted variants of the trained model."""
    import vlm
    from vlm.train import load_recipe, train
    from vlm.train.recipe import build_model
    rec = load_recipe(recipe, [f"data.world.shards=[{data / 'train'}]", f"runtime.seed={seed}", *overrides])
    run = out / "train" / f"{recipe}-s{seed}"
    if not (run / "final" / "config.json").exists():
        t0 = time.time()
        train(rec, run, resume=(run / "checkpoints").exists())
        (run / "wall_seconds.txt").write_text(f"{time.time() - t0:.1f}\n")
    found = {"trained": run / "final"}
    untrained = out / "ckpt" / f"{recipe}-s{seed}-untrained"
    if not (untrained / "config.json").exists():
        build_model(rec.model, seed=rec.runtime.seed).save_pretrained(untrained)
    found["untrained"] = untrained
    if recipe.startswith("omni"):
        for variant, mute in MUTES.items():
            path = out / "ckpt" / f"{recipe}-s{seed}-{variant.replace(' ', '-')}"
            if not (path / "config.json").exists():
                model = vlm.load(run / "final")
                model.media["video"].set_mute(mute)
                model.save_pretrained(path)
            found[variant] = path
    return found


def _stat(xs: list[float]) -> str:
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.3f} ± {sd:.3f}"


def tables(rows: list[dict], seeds: list[int]) -> str:
    """The printed tables: per recipe, per benchmark, each variant's mean ± sd over seeds, and the targets."""
    by: dict[tuple, list[dict]] = {}
    for r in rows:
        by.setdefault((r["recipe"], r["benchmark"], r["variant"]), []).append(r)
    out = []
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        present = {r["variant"] for r in rows if r["recipe"] == recipe}
        variants = [v for v in ("untrained", "trained", *MUTES) if v in present]
        benches = list(dict.fromkeys(r["benchmark"] for r in rows if r["recipe"] == recipe))
        out += [f"{recipe} (test split, {len(seeds)} seeds: mean ± sd)", "",
                "| benchmark | metric | n | chance | " + " | ".join(variants) + " | target |",
                "|---" * (5 + len(variants)) + "|"]
        for b in benches:
            cell = {v: by.get((recipe, b, v), []) for v in variants}
            first = next(iter(cell["trained"]))
            chance = first.get("chance")
            n = int(first["n"])
            vals = {v: [c["score"] for c in cs] for v, cs in cell.items()}
            line = [b, first["metric"], str(n), f"{chance:.3f}" if chance is not None else "-"]
            line += [_stat(vals[v]) for v in variants]
            line.append(target(b, chance, n, vals, significance=recipe.startswith("omni")))
            if first["metric"] == "cider":
                line[1] = "CIDEr"
                rouge = {v: [c["rouge_l"] for c in cs] for v, cs in cell.items()}
                out.append("| " + " | ".join(line) + " |")
                line = [b, "ROUGE-L", str(n), "-"] + [_stat(rouge[v]) for v in variants] + ["-"]
            out.append("| " + " | ".join(line) + " |")
        out.append("")
    return "\n".join(out)


def p_above(score: float, chance: float, n: int) -> float:
    """One-sided exact binomial p-value: P(at least round(score * n) right of n | each right with p = chance)."""
    k = round(score * n)
    return sum(math.comb(n, i) * chance ** i * (1 - chance) ** (n - i) for i in range(k, n + 1))


def target(bench: str, chance: float | None, n: int, vals: dict[str, list[float]], significance: bool = False) -> str:
    if chance is None:
        return "-"
    parts = []
    if significance:
        ok = all(p_above(v, chance, n) < SIGNIFICANT for v in vals["trained"])
        parts.append(f"every seed above chance (binomial p < {SIGNIFICANT}): {'met' if ok else 'NOT met'}")
    ok = min(vals["trained"]) >= chance + ABOVE_CHANCE
    parts.append(f"trained ≥ chance + {ABOVE_CHANCE:.2f}: {'met' if ok else 'NOT met'}")
    for variant in MUTES:
        if variant not in vals:
            continue
        mean = statistics.mean(vals[variant])
        if "instrument" in bench:
            se = math.sqrt(chance * (1 - chance) / n)
            ok = abs(mean - chance) <= 2 * se
            parts.append(f"{variant} at chance (±{2 * se:.3f}): {'met' if ok else 'NOT met'}")
        else:
            ok = abs(mean - statistics.mean(vals["trained"])) < STAYS
            parts.append(f"{variant} stays (±{STAYS:.2f}): {'met' if ok else 'NOT met'}")
    return "; ".join(parts)


def card_rows(rows: list[dict]) -> list[dict]:
    """The study's results file for model cards (`vlm card CARD --results OUT/results.jsonl`): one row per
    recipe variant x benchmark x metric x seed, the model named '<recipe> <variant>'."""
    out = []
    for r in rows:
        base = {"model": f"{r['recipe']} {r['variant']}", "benchmark": r["benchmark"],
                **{k: r[k] for k in ("type", "capability", "kind") if r.get(k)}}
        metrics = [(r["metric"], r["score"])] + ([("rouge_l", r["rouge_l"])] if r.get("rouge_l") is not None else [])
        for metric, score in metrics:
            out.append({**base, "metric": metric, "score": round(score, 6), "n": int(r["n"]), "seed": r["seed"],
                        **({"chance": round(r["chance"], 6)} if r.get("chance") is not None else {})})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="the shared subset's folder (default OUT/data; built if absent)")
    for name, (_, samples) in SUBSETS.items():
        user = next(r for r, s in OWN_DATA.items() if s == name)
        p.add_argument(f"--{name}-data", default=None,
                       help=f"{user}'s {name} subset (default OUT/{name}-data; built if absent)")
        p.add_argument(f"--{name}-samples", type=int, default=samples,
                       help=f"training samples of the {name} subset if it must be built")
    p.add_argument("--out", default="runs/av-study")
    p.add_argument("--samples", type=int, default=6000, help="training samples if the subset must be built")
    p.add_argument("--eval-per-task", type=int, default=100)
    p.add_argument("--world-version", type=int, default=None,
                   help="synthetic-world's generators for data built here (default the newest; 1: as builds whose "
                        "index.json has no world_version, every music clip of a note alike)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (1: on a busy 2-core machine more threads than free cores are "
                        "many times slower)")
    p.add_argument("--limit", type=int, default=None, help="at most N test samples per benchmark (quick runs)")
    p.add_argument("overrides", nargs="*", help="key=value applied to every training (e.g. stages.1.steps=100)")
    a = p.parse_args(argv)
    import torch
    torch.set_num_threads(a.threads)
    from benchmarks.model_card import write_results
    from benchmarks.registry import resolve
    from benchmarks.runner import RunConfig, evaluate
    from vlm.data.cli import BuildConfig, build_if_absent
    out = Path(a.out)
    subsets = {"shared": (Path(a.data) if a.data else out / "data", a.samples, TASKS),
               **{name: (Path(getattr(a, f"{name}_data") or out / f"{name}-data"), getattr(a, f"{name}_samples"),
                         tasks) for name, (tasks, _) in SUBSETS.items()}}
    rows = []
    for recipe in a.recipes:
        data, samples, tasks = subsets[OWN_DATA.get(recipe, "shared")]
        build_if_absent(BuildConfig(out=str(data), samples=samples, eval_per_task=a.eval_per_task, tasks=tasks,
                                    classification=False, world_version=a.world_version))
        ckpts = {(seed, v): path for seed in a.seeds
                 for v, path in checkpoints(recipe, seed, data, out, a.overrides).items()}
        res = evaluate([str(c) for c in ckpts.values()], resolve(suite=RECIPES[recipe]),
                       RunConfig(out=str(out / "eval" / recipe), data=str(data), progress=False,
                                 limit=a.limit))
        failed = res.table[res.table["status"] != "ok"] if "status" in res.table else res.table.iloc[:0]
        if len(failed):
            raise SystemExit(f"evaluation failed: {failed[['model', 'benchmark', 'reason']].to_dict('records')}")
        spec_of = {str(c): key for key, c in ckpts.items()}
        for r in res.table.to_dict("records"):
            if r["model_spec"] not in spec_of:          # another run's model in the same evaluation folder
                continue
            seed, variant = spec_of[r["model_spec"]]
            m = json.loads(r["metrics"])
            rows.append(dict(recipe=recipe, seed=seed, variant=variant, benchmark=r["benchmark"],
                             metric=r.get("metric") or ("cider" if "cider" in m else "accuracy"),
                             score=float(r["score"]), n=float(r["n"]), chance=m.get("chance"),
                             rouge_l=m.get("rouge_l"), type=r.get("type"), capability=r.get("capability"),
                             kind=r.get("kind")))
    text = tables(rows, a.seeds)
    walls = {p.parent.name: float(p.read_text()) for p in sorted((out / "train").glob("*/wall_seconds.txt"))}
    print(text)
    print("training wall time per run (s): " + ", ".join(f"{k} {v:.0f}" for k, v in walls.items()))
    (out / "table.md").write_text(text)
    write_results(out / "results.jsonl", card_rows(rows))
    (out / "summary.json").write_text(json.dumps({"rows": rows, "train_wall_seconds": walls}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
