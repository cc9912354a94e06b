"""MERT study: does pretraining `mert-tiny` on synthetic-world's music teach the encoder what MARBLE-style
probes can read (pitch, chord quality, instrument, tempo: slow / fast and bpm in six ranges), beyond the
same architecture with random weights?

    python benchmarks/studies/mert_probes.py --data data/synthetic-world --out runs/mert-study --split val
    python benchmarks/studies/mert_probes.py --data data/synthetic-world --out runs/mert-study --split test

Per seed (runtime.seed, default 0 1 2) it trains the built-in recipe `mert-tiny` (`vlm train`, the same
command a user runs) and its two ablations, without the CQT teacher (`regression=false`) and without the
in-batch noise mixture (`noise_prob=0`), and saves the recipe's model with that seed's random initial weights
(the pretrained run's own starting point). The `music-probes` suite then runs on every folder through the
benchmark runner (`benchmarks.runner.evaluate`, on `--split`: choose settings on val, report test), and the
script prints, per probe, mean +/- sample std over seeds (min-max in brackets), the margin of the pretrained
encoder over the random one, and whether the margin is larger than the seed spread (the larger of the two
stds) with no overlap of the ranges. Pretraining wall times are printed too. Finished runs are reused.
OUT/results-SPLIT.json keeps every figure of every folder probed so far on SPLIT (calls with other seeds or
variants add to it); OUT/results-SPLIT.jsonl the card rows from it (one per folder, probe and seed):
`vlm card model_cards/mert.md --results OUT/results-test.jsonl --name mert`.

`--runs DIR` keeps the runs in another folder than OUT (default: OUT): to probe encoders pretrained by an
earlier call on another build's labelled splits (a run missing there is trained on `--data`'s train split):

    python benchmarks/studies/mert_probes.py --data data/sw-music-big --runs runs/mert-study --out runs/mert-big \
        --split val --variants pretrained

Runs train with OMP_NUM_THREADS=1 (on a shared 2-core machine more threads stall each other); extra
`key=value` arguments go to every `vlm train` call (e.g. stages.0.steps=1000 to try a setting on val).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROBES = ("pitch", "chord", "instrument", "tempo", "bpm")   # bpm: tempo in six ranges (suites.BPM_BINS)
VARIANTS = {                      # name -> overrides of the mert-tiny recipe
    "pretrained": [],
    "no-cqt": ["stages.0.objective_settings.regression=false"],
    "no-noise": ["stages.0.objective_settings.noise_prob=0"],
}


def train(out: Path, seed: int, data: Path, overrides: list[str], recipe: str = "mert-tiny") -> float:
    """`vlm train RECIPE` into out (skipped when out/final exists, resumed when out exists) at 1 thread;
    returns its wall time in seconds."""
    record = out / "wall.json"
    if (out / "final").is_dir() and record.is_file():
        return json.loads(record.read_text())["seconds"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "vlm.cli", "train", recipe, "--out", str(out), f"runtime.seed={seed}",
           f"data.world.shards=[{data / 'train'}]", *overrides]
    if out.exists():
        cmd.append("--resume")
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    record.write_text(json.dumps({"seconds": seconds, "cmd": cmd[1:]}))
    return seconds


def save_random(out: Path, seed: int, overrides: list[str]) -> Path:
    """The recipe's model as `vlm train` builds it for this seed, before any step."""
    import vlm
    from vlm.train import load_recipe
    folder = out / "final"
    if not folder.is_dir():
        recipe = load_recipe("mert-tiny", overrides, check_files=False)
        model = vlm.build(recipe.model.family, recipe.model.size, **{**recipe.model.settings, "seed": seed})
        model.save_pretrained(folder)
    return folder


def probe(folders: dict[str, Path], data: Path, split: str, out: Path) -> dict[str, dict[str, dict]]:
    """folder name -> probe -> {'accuracy', 'layers'} on `split`, through the benchmark runner."""
    from benchmarks.registry import get_benchmark
    from benchmarks.runner import RunConfig, evaluate
    benches = []
    for p in PROBES:
        b = get_benchmark(f"sw-probe-music-{p}")
        benches.append(b if split == "test" else replace(b, name=f"{b.name}@{split}", data=replace(b.data, split=split)))
    res = evaluate([str(f) for f in folders.values()], benches, RunConfig(out=str(out), data=str(data), progress=False))
    results: dict[str, dict[str, dict]] = {}
    names = list(folders)
    for i, rec in enumerate(res.records):
        name, p = names[i // len(benches)], PROBES[i % len(benches)]
        results.setdefault(name, {})[p] = {"accuracy": rec["score"], "n": int(rec["metrics"]["n"]),
                                           "layers": [r["accuracy"] for r in rec["tables"]["layers"]]}
    return results


def stats(xs: list[float]) -> tuple[float, float, float, float]:
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0, min(xs), max(xs)


def fmt(xs: list[float]) -> str:
    m, s, lo, hi = stats(xs)
    return f"{m:.3f} +/- {s:.3f} [{lo:.3f}-{hi:.3f}]"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("data/synthetic-world"))
    ap.add_argument("--out", type=Path, default=Path("runs/mert-study"))
    ap.add_argument("--runs", type=Path, default=None, help="folder of the runs (default: --out)")
    ap.add_argument("--split", choices=["val", "test"], default="val")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("overrides", nargs="*", help="key=value for every `vlm train mert-tiny` run (anywhere on "
                                                 "the line: after --variants / --seeds too)")
    argv = sys.argv[1:] if argv is None else list(argv)
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]      # not swallowed by --variants' nargs
    args = ap.parse_args([a for a in argv if a not in overrides])
    if args.overrides:                         # what argparse left there is not key=value
        ap.error(f"not a key=value override: {' '.join(args.overrides)}")
    args.overrides = overrides
    from benchmarks.model_card import write_results
    args.out.mkdir(parents=True, exist_ok=True)
    folders: dict[str, Path] = {}
    walls: dict[str, float] = {}                    # run folder name -> pretraining seconds
    runs = args.runs or args.out
    for seed in args.seeds:
        folders[f"seed{seed}-random"] = save_random(runs / f"seed{seed}-random", seed, args.overrides)
        for v in args.variants:
            run = runs / f"seed{seed}-{v}"
            walls[run.name] = train(run, seed, args.data.resolve(), VARIANTS[v] + args.overrides)
            folders[f"seed{seed}-{v}"] = run / "final"
    res = probe(folders, args.data, args.split, args.out / f"eval-{args.split}")
    record = args.out / f"results-{args.split}.json"          # merged with earlier calls' folders (other seeds, variants)
    old = json.loads(record.read_text()) if record.is_file() else {}
    merged = {**old.get("results", {}), **res}
    record.write_text(json.dumps({"results": merged, "walls": {**old.get("walls", {}), **walls}}, indent=1))
    write_results(args.out / f"results-{args.split}.jsonl", [       # card rows: `vlm card model_cards/mert.md --results`
        {"model": f"mert-tiny {name.split('-', 1)[1]}", "benchmark": f"sw-probe-music-{p}", "type": "probe",
         "capability": p, "kind": "probe", "metric": "accuracy", "score": r["accuracy"],
         "seed": int(name.split("-", 1)[0][4:]), "n": r["n"]}
        for name, by_probe in sorted(merged.items()) for p, r in by_probe.items()])
    variants = ["random", *args.variants]
    print(f"\nMARBLE-style probes of mert-tiny on synthetic-world `{args.split}` (accuracy, learned layer weights; "
          f"mean +/- std [min-max] over seeds {args.seeds})\n")
    print("| probe | " + " | ".join(variants) + " | margin pretrained - random | met |")
    print("|---|" + "---|" * len(variants) + "---|---|")
    for p in PROBES:
        acc = {v: [res[f"seed{s}-{v}"][p]["accuracy"] for s in args.seeds] for v in variants}
        cells = [fmt(acc[v]) for v in variants]
        met = ""
        if "pretrained" in acc:
            (mp, sp, lop, _), (mr, sr, _, hir) = stats(acc["pretrained"]), stats(acc["random"])
            margin = mp - mr
            met = "yes" if margin > max(sp, sr) and lop > hir else "no"
            cells.append(f"{margin:+.3f}")
        else:                              # ablations only: no margin to show
            cells.append("")
        print(f"| {p} | " + " | ".join(cells) + f" | {met} |")
    print("\nBest single layer (mean over seeds of each layer's probe accuracy):\n")
    print("| probe | " + " | ".join(variants) + " |")
    print("|---|" + "---|" * len(variants))
    for p in PROBES:
        cells = []
        for v in variants:
            layers = [res[f"seed{s}-{v}"][p]["layers"] for s in args.seeds]
            means = [statistics.mean(col) for col in zip(*layers)]
            k = max(range(len(means)), key=means.__getitem__)
            cells.append(f"layer {k}: {means[k]:.3f}")
        print(f"| {p} | " + " | ".join(cells) + " |")
    print("\nPretraining wall time per run (s; shared 2-core CPU, OMP_NUM_THREADS=1):")
    for v in args.variants:
        ws = [walls[f"seed{s}-{v}"] for s in args.seeds]
        print(f"  {v}: " + ", ".join(f"{w:.0f}" for w in ws) + f"  (max {max(ws) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
