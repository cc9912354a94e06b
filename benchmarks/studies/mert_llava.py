"""MERT study, part 2: does the pretrained music encoder help a VLM? The built-in `llava-music-tiny`
recipe (frozen music encoder, projector on music captions, then projector + LLM on a music-only
synthetic-world build's questions, easy -> hard) is trained with the pretrained `mert-tiny`
encoder of each seed and with the same architecture at that seed's random initial weights, and both
answer held-out music questions (instrument, tempo, chord quality, pitch) by greedy generation.

    python benchmarks/studies/mert_probes.py --out runs/mert-study --split val      # the encoders first
    python benchmarks/studies/mert_llava.py --study runs/mert-study --split val     # choose settings
    python benchmarks/studies/mert_llava.py --study runs/mert-study --split test    # report

Encoders come from the probe study's folders (`<study>/seed<S>-pretrained/final`, `<study>/seed<S>-random/
final`); the VLM runs go to `<study>/llava-seed<S>-<encoder>`, the evaluation (benchmark runner, every question
of the split) to `<study>/llava-eval-<split>`. Prints accuracy mean +/- std [min-max] over seeds per task.
Extra `key=value` arguments go to every `vlm train` call (e.g. model.settings.music_pool=2).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

from mert_probes import train as train_recipe  # noqa: E402  (a sibling script: this folder is sys.path[0])

from vlm.families.llava import MUSIC_DATA

REPO = Path(__file__).resolve().parents[2]
RECIPE = "llava-music-tiny"                 # `music: mert:FOLDER` replaces its mert:tiny
TASKS = ("instrument", "tempo", "chord", "pitch")
ENCODERS = ("pretrained", "random")


def train(out: Path, encoder: Path, seed: int, data: Path, overrides: list[str]) -> float:
    """RECIPE with `encoder` as its music encoder into out (the probe study's runner); wall seconds."""
    return train_recipe(out, seed, data.resolve(), [f"model.settings.music=mert:{encoder.resolve()}", *overrides],
                        recipe=RECIPE)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", type=Path, default=Path("runs/mert-study"), help="the probe study's --out")
    ap.add_argument("--data", type=Path, default=Path(MUSIC_DATA),
                    help="synthetic-world music build (default: the recipe's own, see `vlm list recipes`)")
    ap.add_argument("--split", choices=["val", "test"], default="val")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("overrides", nargs="*", help="key=value for every `vlm train` run")
    args = ap.parse_args(argv)
    from benchmarks.registry import get_benchmark
    from benchmarks.runner import RunConfig, evaluate
    runs: dict[tuple[int, str], Path] = {}
    walls: dict[str, list[float]] = {}
    for seed in args.seeds:
        for enc in ENCODERS:
            folder = args.study / f"seed{seed}-{enc}" / "final"
            if not folder.is_dir():
                raise SystemExit(f"{folder}: missing; run benchmarks/studies/mert_probes.py --out {args.study} first")
            out = args.study / f"llava-seed{seed}-{enc}"
            walls.setdefault(enc, []).append(train(out, folder, seed, args.data, args.overrides))
            runs[(seed, enc)] = out / "final"
    benches = []
    for t in TASKS:
        b = get_benchmark(f"sw-vqa-music-{t}")
        benches.append(b if args.split == "test" else replace(b, name=f"{b.name}@val", data=replace(b.data, split="val")))
    res = evaluate([str(p) for p in runs.values()], benches,
                   RunConfig(out=str(args.study / f"llava-eval-{args.split}"), data=str(args.data), progress=False))
    acc: dict[str, dict[str, list[float]]] = {e: {t: [] for t in TASKS} for e in ENCODERS}
    keys = list(runs)
    for i, rec in enumerate(res.records):
        (_, enc), t = keys[i // len(benches)], TASKS[i % len(benches)]
        acc[enc][t].append(rec["score"])
    (args.study / f"llava-results-{args.split}.json").write_text(json.dumps({"accuracy": acc, "walls": walls}, indent=1))

    def fmt(xs: list[float]) -> str:
        return (f"{statistics.mean(xs):.3f} +/- {statistics.stdev(xs) if len(xs) > 1 else 0.0:.3f} "
                f"[{min(xs):.3f}-{max(xs):.3f}]")
    n = "/".join(str(k) for k in sorted({int(rec["metrics"]["n"]) for rec in res.records}))
    print(f"\nllava-music-tiny answering held-out music questions, synthetic-world `{args.split}` "
          f"(accuracy, {n} questions per task; mean +/- std [min-max] over seeds {args.seeds})\n")
    print("| task | pretrained mert-tiny encoder | random encoder (same architecture) | margin |")
    print("|---|---|---|---|")
    for t in TASKS:
        margin = statistics.mean(acc["pretrained"][t]) - statistics.mean(acc["random"][t])
        print(f"| {t} | {fmt(acc['pretrained'][t])} | {fmt(acc['random'][t])} | {margin:+.3f} |")
    print("\nTraining wall time per run (s; shared 2-core CPU, OMP_NUM_THREADS=1): "
          + "; ".join(f"{e}: " + ", ".join(f"{w:.0f}" for w in ws) for e, ws in walls.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
