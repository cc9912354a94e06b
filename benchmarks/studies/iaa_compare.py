"""IAA vs LLaVA on the same data and budget: multimodal accuracy per capability, and what each does to
the LLM's text behaviour (held-out text perplexity through the text-only path).

    python benchmarks/studies/iaa_compare.py --data data/synthetic-world --out runs/iaa-compare

Trains three models with the same stages, steps and data (synthetic-world, built if absent; the tiny
curriculum of the built-in iaa-tiny / llava-tiny recipes, encoders frozen in all three):
  iaa-tiny            LLM frozen; projector, then adaptors + projector + multimodal embedding/norm/head
  llava-tiny-frozen   LLM frozen in every stage: the projector alone trains
  llava-tiny-full     the llava-tiny recipe (the LLM trains fully in the SFT stages)
then evaluates each with the benchmark runner (synthetic-world suite, image tasks) and measures the
perplexity of held-out text (the test split's questions and answers, text only) against the base LLM.
OUT/results.jsonl holds every figure for the card (`vlm card model_cards/iaa.md --results ...`); one
run per `--seed` (the models' initialisation and the data order):

    for s in 0 1 2; do python benchmarks/studies/iaa_compare.py --seed $s --out runs/iaa-compare/seed$s; done
    vlm card model_cards/iaa.md --results runs/iaa-compare/seed*/results.jsonl
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

RUNS = {
    "iaa-tiny": ("iaa-tiny", []),
    "llava-tiny-frozen": ("llava-tiny", ["stages.1.llm=frozen", "stages.2.llm=frozen"]),
    "llava-tiny-full": ("llava-tiny", []),
}
BENCHES = [f"sw-vqa-{t}" for t in ("color", "shape", "count", "spatial", "digit", "ocr", "fine-detail")]


def held_out_text(data: Path, limit: int = 400) -> list[dict]:
    """Text-only conversations from the test split: each sample's question and answer, no media."""
    from vlm.data.reader import expand_shards, read_fields, scan_shard
    convs = []
    for shard in expand_shards(str(data / "test")):
        for ref in scan_shard(shard):
            meta = json.loads(read_fields(ref).get("json", b"{}"))
            if "question" in meta and "answer" in meta:
                convs.append({"conversations": [{"from": "human", "value": meta["question"]},
                                                {"from": "gpt", "value": str(meta["answer"])}]})
            if len(convs) >= limit:
                return convs
    return convs


@torch.no_grad()
def perplexity(model, convs: list[dict], batch: int = 32) -> float:
    """exp(mean NLL per label token) of text-only conversations (the text path for iaa)."""
    from vlm.data.collate import collate
    from vlm.train.objectives import build_objective
    loss = build_objective("next_token", {})
    model.eval()
    nll, n = 0.0, 0
    for i in range(0, len(convs), batch):
        out = loss(model, collate([model.processor(c) for c in convs[i:i + batch]], model.processor.pad_id))
        nll += out.loss.item()
        n += int(out.count)
    return math.exp(nll / max(n, 1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/synthetic-world")
    p.add_argument("--out", default="runs/iaa-compare")
    p.add_argument("--samples", type=int, default=4000, help="synthetic-world size if it must be built")
    p.add_argument("--seed", type=int, default=0, help="runtime.seed of every run (and of the base LLM)")
    p.add_argument("overrides", nargs="*", help="key=value applied to every run (e.g. stages.2.steps=100)")
    a = p.parse_args(argv)
    import vlm
    from benchmarks.registry import resolve
    from benchmarks.runner import RunConfig, evaluate
    from vlm.data.cli import BuildConfig, build_if_absent
    from vlm.train import load_recipe, train
    data, out = Path(a.data), Path(a.out)
    build_if_absent(BuildConfig(out=str(data), samples=a.samples))
    finals = {}
    for name, (recipe, extra) in RUNS.items():
        run_dir = out / name
        if not (run_dir / "final" / "config.json").exists():
            rec = load_recipe(recipe, [f"data.world.shards=[{data / 'train'}]", f"runtime.seed={a.seed}", *extra,
                                       *a.overrides])
            train(rec, run_dir, resume=(run_dir / "checkpoints").exists())
        finals[name] = run_dir / "final"
    convs = held_out_text(data)
    base = vlm.build("llava", "tiny", seed=a.seed)       # the LLM every run started from
    rows = {"base LLM (untrained)": perplexity(base, convs)}
    for name, f in finals.items():
        rows[name] = perplexity(vlm.load(f), convs)
    res = evaluate([str(f) for f in finals.values()], resolve(BENCHES),
                   RunConfig(out=str(out / "eval"), data=str(data)))
    lines = ["| model | held-out text perplexity |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in rows.items()]
    print("\n".join(lines))
    print()
    from benchmarks.report import capability_table
    print(capability_table(res.table))
    (out / "summary.json").write_text(json.dumps({"perplexity": rows}, indent=2))
    from benchmarks.model_card import results_rows, write_results
    names = {f"{name}/final": name for name in finals}
    results = [{**r, "model": names.get(r["model"], r["model"])} for r in results_rows(res.table, seed=a.seed)]
    results += [{"model": k, "benchmark": "sw-held-out-text", "type": "language", "capability": "text perplexity",
                 "kind": "perplexity", "metric": "perplexity", "score": round(v, 4), "n": len(convs), "seed": a.seed}
                for k, v in rows.items()]
    write_results(out / "results.jsonl", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
