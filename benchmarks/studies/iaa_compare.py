"""IAA vs LLaVA from the same text-pretrained LLM, on the same data and budget: multimodal accuracy per
capability, and what each does to the LLM's text ability (text-QA accuracy and held-out text perplexity
through the text-only path, and whether its logits stay bit-identical to the base LLM's).

    python benchmarks/studies/iaa_compare.py --out runs/iaa-compare/seed0 --seed 0

First the base LLM: `llava-text-tiny` (the tiny LLM alone on synthetic-world's text-only questions: facts,
arithmetic, counting, word order; data `--text-data`, built if absent) at the study's seed, into OUT/base-llm
(`--base random` skips it: the random tiny LLM, as before issue 15). Then four models with the same stages,
steps, learning rates and data (synthetic-world `--data`, built if absent with `--eval-per-task` questions per
task in val and test; the tiny curriculum of the built-in recipes, encoders frozen in all), each starting
from that LLM (`model.settings.llm=vlm:OUT/base-llm/final`):
  iaa-tiny            LLM frozen; projector, then adaptors + projector + multimodal embedding / norm / head
  llava-tiny-frozen   LLM frozen in every stage: the projector alone trains
  llava-tiny-lora     LLM frozen, with LoRA (rank 36, every linear layer) and its embedding and head trained
                      in SFT: the same count of trainable parameters as iaa-tiny (238,080 vs 238,400)
  llava-tiny-full     the llava-tiny recipe (the whole LLM trains in the SFT stages)
Each is scored by the benchmark runner on the image questions (test split) and, like the base LLM, on the
text questions (suite synthetic-world-text, test split); the largest |logit difference| to the base LLM over
the held-out text questions shows whose text path is the base LLM bit for bit. Prints both tables;
OUT/results.jsonl holds every figure for the card; one run per `--seed` (base LLM, initialisation, data
order):

    for s in 0 1 2; do python benchmarks/studies/iaa_compare.py --seed $s --out runs/iaa-compare/seed$s; done
    vlm card model_cards/iaa.md --results runs/iaa-compare/seed*/results.jsonl
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

_SFT = (1, 2)                                  # llava-tiny's SFT stages
_LORA = [f"stages.{i}.{kv}" for i in _SFT for kv in (
    "llm=lora", "lora={r: 36, lora_alpha: 72}", "trainable=[media.*.projector.*, llm.*embed_tokens*, llm.*lm_head*]")]
RUNS = {
    "iaa-tiny": ("iaa-tiny", []),
    "llava-tiny-frozen": ("llava-tiny", [f"stages.{i}.llm=frozen" for i in _SFT]),
    "llava-tiny-lora": ("llava-tiny", _LORA),
    "llava-tiny-full": ("llava-tiny", []),
}
BASE = "base LLM"
BENCHES = [f"sw-vqa-{t}" for t in ("color", "shape", "count", "spatial", "digit", "ocr", "fine-detail")]
TEXT_SUITE = "synthetic-world-text"


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


def trainable_params(run: Path) -> int:
    """Trainable parameters of a run's last stage (its metrics.jsonl `stage_start` event)."""
    from vlm.train.logging import read_metrics
    starts = [e for e in read_metrics(run) if e.get("event") == "stage_start"]
    return int(starts[-1]["trainable_params"])


@torch.no_grad()
def logit_gap(model, base, convs: list[dict], batch: int = 32) -> float:
    """max |logit(model) - logit(base)| over text-only conversations (both through their text path)."""
    from vlm.data.collate import collate
    gap = 0.0
    for m in (model, base):
        m.eval()
    for i in range(0, len(convs), batch):
        b = collate([base.processor(c) for c in convs[i:i + batch]], base.processor.pad_id)
        gap = max(gap, (model.logits(b["input_ids"], b["attention_mask"]).float()
                        - base.logits(b["input_ids"], b["attention_mask"]).float()).abs().max().item())
    return gap


def main(argv=None) -> int:
    from vlm.families.llava import TEXT_DATA
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/synthetic-world-eval200", help="synthetic-world (built if absent)")
    p.add_argument("--samples", type=int, default=4000, help="synthetic-world size if it must be built")
    p.add_argument("--eval-per-task", type=int, default=200, help="val / test questions per task if built")
    p.add_argument("--text-data", default=TEXT_DATA, help="the text-only questions (built if absent)")
    p.add_argument("--text-samples", type=int, default=8000, help="text questions to train on if built")
    p.add_argument("--base", choices=["text", "random"], default="text",
                   help="the LLM every run starts from: llava-text-tiny's (trained here) or the random tiny one")
    p.add_argument("--base-override", action="append", default=[], metavar="KEY=VALUE",
                   help="an override of the base LLM's llava-text-tiny run (repeatable; e.g. stages.0.steps=100)")
    p.add_argument("--out", default="runs/iaa-compare")
    p.add_argument("--seed", type=int, default=0, help="runtime.seed of every run (and of the base LLM)")
    p.add_argument("overrides", nargs="*", help="key=value applied to every multimodal run (e.g. stages.2.steps=100)")
    a = p.parse_args(argv)
    import vlm
    from benchmarks.model_card import results_rows, write_results
    from benchmarks.registry import resolve
    from benchmarks.report import capability_table
    from benchmarks.runner import RunConfig, evaluate
    from vlm.data.cli import BuildConfig, build_if_absent
    from vlm.train import load_recipe, train
    data, text_data, out = Path(a.data), Path(a.text_data), Path(a.out)
    build_if_absent(BuildConfig(out=str(data), samples=a.samples, eval_per_task=a.eval_per_task))

    def run(recipe: str, run_dir: Path, shards: Path, overrides: list[str]) -> Path:
        if not (run_dir / "final" / "config.json").exists():
            rec = load_recipe(recipe, [f"data.world.shards=[{shards / 'train'}]", f"runtime.seed={a.seed}",
                                       *overrides])
            train(rec, run_dir, resume=(run_dir / "checkpoints").exists())
        return run_dir / "final"

    if a.base == "text":
        build_if_absent(BuildConfig(out=str(text_data), samples=a.text_samples, eval_per_task=a.eval_per_task,
                                    tasks=["text"], classification=False))
        base_ckpt = run("llava-text-tiny", out / "base-llm", text_data, a.base_override)
        base, llm = vlm.load(base_ckpt), [f"model.settings.llm=vlm:{base_ckpt.resolve()}"]
    else:
        base_ckpt = out / "base-llm-random"
        if not (base_ckpt / "config.json").exists():
            vlm.build("llava", "tiny", seed=a.seed).save_pretrained(base_ckpt)
        base, llm = vlm.load(base_ckpt), ["model.settings.llm=tiny:llama"]     # not the recipes' text-pretrained one
    finals = {name: run(recipe, out / name, data, [*llm, *extra, *a.overrides])
              for name, (recipe, extra) in RUNS.items()}
    convs = held_out_text(data)
    text_convs = held_out_text(text_data) if a.base == "text" else convs
    models = {name: vlm.load(f) for name, f in finals.items()}
    ppl = {BASE: perplexity(base, convs), **{k: perplexity(m, convs) for k, m in models.items()}}
    gap = {k: logit_gap(m, base, text_convs) for k, m in models.items()}
    params = {k: trainable_params(out / k) for k in finals}
    res = evaluate([str(f) for f in finals.values()], resolve(BENCHES), RunConfig(out=str(out / "eval"), data=str(data)))
    names = {f"{name}/final": name for name in finals} | {f"{base_ckpt.parent.name}/{base_ckpt.name}": BASE}
    text_rows = []
    if a.base == "text":
        tres = evaluate([str(base_ckpt), *map(str, finals.values())], resolve(suite=TEXT_SUITE),
                        RunConfig(out=str(out / "eval-text"), data=str(text_data)))
        text_rows = [{**r, "model": names.get(r["model"], r["model"])} for r in results_rows(tres.table, seed=a.seed)]
    acc = {(r["model"], r["benchmark"]): r["score"] for r in text_rows}
    text_benches = list(dict.fromkeys(r["benchmark"] for r in text_rows))
    lines = ["| model | trainable params (SFT) | " + " | ".join(text_benches)
             + " | held-out text perplexity | max abs logit diff to the base LLM (text) |",
             "|---" * (4 + len(text_benches)) + "|"]
    for k in [BASE, *finals]:
        cells = [f"{params[k]:,}" if k in params else "-", *(f"{acc[(k, b)]:.3f}" for b in text_benches),
                 f"{ppl[k]:.4f}", f"{gap[k]:.3g}" if k in gap else "-"]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    print()
    print(capability_table(res.table))
    (out / "summary.json").write_text(json.dumps({"perplexity": ppl, "logit_gap": gap, "trainable_params": params,
                                                  "base": a.base}, indent=2))
    results = [{**r, "model": names.get(r["model"], r["model"])} for r in results_rows(res.table, seed=a.seed)]
    results += text_rows
    results += [{"model": k, "benchmark": "sw-held-out-text", "type": "language", "capability": "text perplexity",
                 "kind": "perplexity", "metric": "perplexity", "score": round(v, 4), "n": len(convs), "seed": a.seed}
                for k, v in ppl.items()]
    write_results(out / "results.jsonl", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
