"""VLM2Vec against its baselines on synthetic-world's MMEB-style pair tasks (model_cards/vlm2vec.md).

    vlm data build synthetic-world --out data/sw-mmeb --tasks mmeb --samples 16000 --eval-per-task 200 --no-classification
    vlm data build synthetic-world --out data/synthetic-world          # the llava-tiny starting point's data
    python benchmarks/studies/vlm2vec_compare.py --mmeb data/sw-mmeb --world data/synthetic-world \
        --out runs/vlm2vec-compare [--seeds 0 1 2] [--steps 600]

Models (every trained one: the same pairs, steps, batch of 64 pairs with one hard negative each):
  vlm2vec-tiny          the built-in recipe (tiny CLIP encoder + the tiny Llama, both from random weights; --llm:
                        another LLM, e.g. pretrained:llava-text-tiny, the text-pretrained one)
  (a) untrained         the same backbone without contrastive training (the random init of that seed)
  with --llava: vlm2vec-tiny/llava, the recipe started from a llava-tiny run of the same seed
  (model.settings.init), and (a) llava-tiny, that run itself as an embedder (last token, E5-V style prompts)
  (b) open_clip         an open_clip CLIP with the same widths and depths (ViT 32 px / patch 8 / width 64 /
                        2 layers; text width 64 / 2 layers) and the same trainable parameters: its text tower reads
                        the backbone's own 1,024-token tokenizer (open_clip's `hf_tokenizer_name`, pooled at the
                        last position as SigLIP's text tower), trained with the same loss on the same pairs
                        (image / text / image + text summed, as MMEB's CLIP baselines embed them)
  (b') open_clip, 49k   the same CLIP with open_clip's own 49,408-token vocabulary (EOT pooling): 11x the
                        trainable parameters (3.2M of its 3.3M in the token table); reported beside (b)
1. Selection on the val split (seed 0): learning rate x temperature for vlm2vec-tiny and for open_clip,
   each keeping its best val P@1 (mean over the 12 datasets).
2. Report on the test split: every model for every seed with the chosen settings; P@1 per dataset,
   per meta-task and overall, mean +- std over seeds; whether vlm2vec-tiny beats (a) and (b).
Trainings run `--parallel` at a time, each in its own process with one intra-op thread. Everything is
resumable (finished runs and evaluations are kept under --out; the seed-0 runs are the selection's).
The tables printed at the end are written to <out>/report.md, the numbers to <out>/results.json, the model
card's rows to <out>/results.jsonl (`vlm card model_cards/vlm2vec.md --results <out>/results.jsonl`).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]

META = ("classification", "vqa", "retrieval", "grounding")
GRID_LR = (5e-4, 1e-3, 2e-3)
GRID_T = (0.02, 0.05)
BIG_VOCAB = "(b') open_clip, 49k vocab"     # open_clip's own tokenizer: 11x the trainable parameters
TIE = 1e-9      # P@1 are fractions of the sets' sizes: values this close are equal (float sums differ in the last bit)
CLIP_CFG = {"embed_dim": 64,
            "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 16,
                           "mlp_ratio": 2.0},
            "text_cfg": {"context_length": 64, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2,
                         "mlp_ratio": 2.0}}


def clip_config(tokenizer: Path | None) -> dict:
    """CLIP_CFG; with `tokenizer` (a tokenizer folder) the text tower reads that tokenizer: its vocabulary size,
    padding id, and pooling at the last position (the tokenizer adds no end token to point at)."""
    cfg = json.loads(json.dumps(CLIP_CFG))
    if tokenizer is not None:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(str(tokenizer), trust_remote_code=False)
        cfg["text_cfg"] |= {"vocab_size": len(tok), "hf_tokenizer_name": str(tokenizer.resolve()),
                            "pad_id": tok.pad_token_id, "pool_type": "last"}
    return cfg


# ------------------------------------------------------------------------------------------------ training
def train_vlm2vec(out: Path, mmeb: Path, seed: int, steps: int, lr: float, temperature: float,
                  init: Path | None = None, llm: str = "") -> Path:
    from vlm.train import load_recipe, train
    if (out / "final" / "model.safetensors").exists():
        return out / "final"
    overrides = [f"data.pairs.shards=[{mmeb / 'train'}]", f"runtime.seed={seed}", f"stages.0.steps={steps}",
                 f"stages.0.lr={lr}", f"stages.0.objective_settings.temperature={temperature}",
                 "runtime.checkpoint_every=0", "runtime.log_every=50"]
    if init is not None:
        overrides.append(f"model.settings.init={init}")
    if llm:
        overrides.append(f"model.settings.base_settings.llm={llm}")
    return train(load_recipe("vlm2vec-tiny", overrides), out, resume=True)


def _env() -> dict:
    e = dict(os.environ)
    e.update(PYTHONPATH=str(REPO) + os.pathsep + e.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    return e


def job(out: Path, *args: str) -> None:
    """This script again in a process of its own (`--job KIND ...`), its output in <out>.log."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{out}.log", "w") as log:
        subprocess.run([sys.executable, __file__, "--job", *args], env=_env(), stdout=log, stderr=subprocess.STDOUT,
                       check=True)


def run_vlm2vec(out: Path, mmeb: Path, seed: int, steps: int, lr: float, t: float, init: Path | None = None,
                llm: str = "") -> str:
    if not (out / "final" / "model.safetensors").exists():
        job(out, "vlm2vec", str(out), str(mmeb), str(seed), str(steps), str(lr), str(t), str(init or ""), llm)
    return str(out / "final")


def clip_file(out: Path, tokenizer: Path | None) -> Path:
    return out / ("tiny_clip_llm_vocab.json" if tokenizer else "tiny_clip_pairs.json")


def run_open_clip(out: Path, mmeb: Path, seed: int, steps: int, lr: float, t: float, tokenizer: Path | None = None) -> str:
    if not (out / "model.safetensors").exists():
        job(out, "open_clip", str(out), str(mmeb), str(seed), str(steps), str(lr), str(t), str(tokenizer or ""))
    return f"open_clip:{clip_file(out, tokenizer)}:{out / 'model.safetensors'}"


def llm_tokenizer(out: Path, backbone: Path) -> Path:
    """The backbone's tokenizer files, copied into a folder of their own (the open_clip baseline's text tower
    reads them)."""
    import shutil

    from vlm.embed.backends import TOKENIZER_FILES
    out.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(backbone / name, out / name)
    return out


def untrained(out: Path, seed: int, llm: str = "") -> Path:
    """The vlm2vec-tiny recipe's backbone as built for `seed` (its LLM: the recipe's, or `llm`), saved without
    any contrastive training."""
    if not (out / "model.safetensors").exists():
        from vlm.train.recipe import build_model, load_recipe
        spec = load_recipe("vlm2vec-tiny", [f"model.settings.base_settings.llm={llm}"] if llm else [],
                           check_files=False).model
        build_model(spec, seed=seed).save_pretrained(out)
    return out


def run_llava(out: Path, world: Path, seed: int, llm: str = "") -> Path:
    if not (out / "final" / "model.safetensors").exists():
        job(out, "llava", str(out), str(world), str(seed), llm)
    return out / "final"


def train_llava(out: Path, world: Path, seed: int, llm: str = "") -> Path:
    from vlm.train import load_recipe, train
    if (out / "final" / "model.safetensors").exists():
        return out / "final"
    overrides = [f"data.world.shards=[{world / 'train'}]", f"runtime.seed={seed}", "runtime.checkpoint_every=0",
                 "runtime.log_every=50", *([f"model.settings.llm={llm}"] if llm else [])]
    return train(load_recipe("llava-tiny", overrides), out, resume=True)


def pair_refs(mmeb: Path) -> list:
    from vlm.data.reader import expand_shards, scan_shard
    return [r for shard in expand_shards(str(mmeb / "train")) for r in scan_shard(shard) if not r.error]


def train_open_clip(out: Path, mmeb: Path, seed: int, steps: int, lr: float, temperature: float,
                    tokenizer: Path | None = None, batch_size: int = 64, negatives: int = 1, weight_decay: float = 0.01,
                    warmup: float = 0.05) -> str:
    """open_clip on the pairs, the recipe's loop in small: InfoNCE (the `contrastive` objective's scores),
    AdamW (no decay on 1-D tensors and embeddings), warmup + cosine, clip 1.0. Returns the model spec."""
    from safetensors.torch import save_file

    from benchmarks.data import Sample
    from benchmarks.tasks.mmeb import pair_items
    from vlm.data.reader import read_fields
    from vlm.embed.backends import OpenClipBackend
    from vlm.train.objectives.contrastive import Contrastive, ContrastiveSettings
    out.mkdir(parents=True, exist_ok=True)
    cfg, weights = clip_file(out, tokenizer), out / "model.safetensors"
    spec = f"open_clip:{cfg}:{weights}"
    if weights.exists():
        return spec
    cfg.write_text(json.dumps(clip_config(tokenizer), indent=1))
    backend = OpenClipBackend(f"open_clip:{cfg}", seed=seed)
    model = backend.model.train()
    prepare = backend.preparer()
    embeds = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    decay = [p for p in model.parameters() if p.ndim >= 2 and id(p) not in embeds]
    rest = [p for p in model.parameters() if p.ndim < 2 or id(p) in embeds]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}], lr=lr)
    loss_fn = Contrastive(ContrastiveSettings(temperature=temperature, negatives=negatives, gather=False))
    refs, rng, epoch, pos = pair_refs(mmeb), random.Random(seed), 0, 0
    order = list(range(len(refs)))
    rng.shuffle(order)
    log = open(out / "train.jsonl", "w")
    t0 = time.time()
    for step in range(steps):
        frac = step / steps
        scale = frac / warmup if frac < warmup else 0.5 * (1 + math.cos(math.pi * (frac - warmup) / (1 - warmup)))
        for g in opt.param_groups:
            g["lr"] = lr * scale
        queries, positives, negs = [], [], []
        while len(queries) < batch_size:
            if pos == len(order):
                epoch, pos = epoch + 1, 0
                rng.shuffle(order)
            ref = refs[order[pos]]
            pos += 1
            q, targets, _ = pair_items(Sample(ref.key, ref.shard, read_fields(ref)))
            queries.append(q.query)
            positives.append(targets[0].query)
            negs += [t.query for t in targets[1:1 + negatives]]
        q = backend.embed_batch(prepare(queries))                          # [b, D]
        t = backend.embed_batch(prepare(positives + negs))                 # [b * (1 + n), D]
        loss, hits = loss_fn.scores(q, t)
        opt.zero_grad(set_to_none=True)
        (loss / batch_size).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % 50 == 0 or step == steps - 1:
            log.write(json.dumps({"step": step + 1, "loss": loss.item() / batch_size, "accuracy": hits.item() / batch_size,
                                  "seconds": round(time.time() - t0, 1)}) + "\n")
            log.flush()
    log.close()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return spec


def params(spec: str) -> tuple[int, int]:
    """(all parameters, parameters outside token embedding tables) of a model spec."""
    from vlm.embed.backends import load_backend
    b = load_backend(spec)
    model = b.model
    emb = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters())
    total = sum(p.numel() for p in model.parameters())
    head = getattr(getattr(model, "llm", None), "lm_head", None)
    if head is None and hasattr(model, "llm"):
        from vlm.llm import base_model
        head = base_model(model.llm).get_output_embeddings()
    lm_head = sum(p.numel() for p in head.parameters()) if head is not None else 0
    return total, total - emb - lm_head


# ------------------------------------------------------------------------------------------------ evaluation
def evaluate(specs: list[str], bench: str, mmeb: Path, out: Path) -> dict[str, dict]:
    """spec -> the benchmark's metrics (runner: resumable, feature-cached)."""
    from benchmarks.config import RunConfig
    from benchmarks.registry import get_benchmark
    from benchmarks.runner import evaluate as run
    res = run(specs, [get_benchmark(bench)], RunConfig(out=str(out), data=str(mmeb), progress=False,
                                                       cache_dir=str(out / "cache"), report=False))
    return {m.spec: r["metrics"] for m, r in zip(res.models, res.records)}


CARD_METRICS = ("precision@1", *META, "ind", "ood")


def card_rows(r: dict) -> list[dict]:
    """The results file for the model card (`vlm card model_cards/vlm2vec.md --results OUT/results.jsonl`):
    one row per model x metric x seed, on the test split."""
    base = {"benchmark": "sw-mmeb-pairs", "type": "embedding", "capability": "mmeb-style", "kind": "mmeb"}
    return [{"model": name, **base, "metric": k, "score": round(x[k], 6), "seed": seed}
            for name, per_seed in r["test"].items() for seed, x in zip(r["seeds"], per_seed) for k in CARD_METRICS]


def mean_sd(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mmeb", type=Path, default=Path("data/sw-mmeb"))
    ap.add_argument("--world", type=Path, default=Path("data/synthetic-world"))
    ap.add_argument("--out", type=Path, default=Path("runs/vlm2vec-compare"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--parallel", type=int, default=2, help="trainings at a time")
    ap.add_argument("--grid-lr", type=float, nargs="+", default=list(GRID_LR), help="learning rates tried on val")
    ap.add_argument("--grid-t", type=float, nargs="+", default=list(GRID_T), help="temperatures tried on val")
    ap.add_argument("--llava", action="store_true", help="add the llava-tiny-initialised variant and its baseline")
    ap.add_argument("--llm", default="", help="the backbone's LLM (default: the recipe's, the random tiny Llama; "
                    "pretrained:llava-text-tiny: the text-pretrained one, the recipe's until 2026-12-03)")
    ap.add_argument("--job", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.job:
        return run_job(args.job)
    out, t_start = args.out, time.time()
    out.mkdir(parents=True, exist_ok=True)
    pool = ThreadPoolExecutor(args.parallel)

    # 1. selection on val (seed 0)
    grid = list(itertools.product(args.grid_lr, args.grid_t))
    s0 = args.seeds[0]
    tok = llm_tokenizer(out / "llm-tokenizer", untrained(out / f"untrained-s{s0}", s0, args.llm))
    runs = {"vlm2vec": lambda lr, t: run_vlm2vec(out / "select" / f"vlm2vec-lr{lr:g}-t{t:g}", args.mmeb, s0, args.steps, lr, t,
                                                 llm=args.llm),
            "open_clip": lambda lr, t: run_open_clip(out / "select" / f"open_clip-llmtok-lr{lr:g}-t{t:g}", args.mmeb,
                                                     s0, args.steps, lr, t, tok),
            "open_clip-49k": lambda lr, t: run_open_clip(out / "select" / f"open_clip-lr{lr:g}-t{t:g}", args.mmeb, s0,
                                                         args.steps, lr, t)}
    futures = {(kind, lr, t): pool.submit(runs[kind], lr, t) for kind in runs for lr, t in grid}
    val: dict[str, dict] = {}
    for kind in runs:
        specs = {(lr, t): futures[(kind, lr, t)].result() for lr, t in grid}
        scores = evaluate(list(specs.values()), "sw-mmeb-pairs-val", args.mmeb, out / "eval")
        val[kind] = {f"lr={lr:g} t={t:g}": scores[sp]["precision@1"] for (lr, t), sp in specs.items()}
        best = max(specs, key=lambda k: scores[specs[k]]["precision@1"])
        val[kind]["chosen"] = {"lr": best[0], "temperature": best[1], "spec": specs[best]}
    chosen = {k: {x: y for x, y in val[k]["chosen"].items() if x != "spec"} for k in val}

    # 2. every model for every seed (seed 0: the selection's runs), test split
    v, c, c49 = chosen["vlm2vec"], chosen["open_clip"], chosen["open_clip-49k"]
    jobs: dict[str, list] = {"vlm2vec-tiny": [], "(a) untrained": [], "(b) open_clip": [], BIG_VOCAB: []}
    if args.llava:
        jobs |= {"vlm2vec-tiny/llava": [], "(a) llava-tiny": []}
    for s in args.seeds:
        jobs["vlm2vec-tiny"].append(pool.submit(lambda s=s: val["vlm2vec"]["chosen"]["spec"] if s == s0 else run_vlm2vec(
            out / f"vlm2vec-s{s}", args.mmeb, s, args.steps, v["lr"], v["temperature"], llm=args.llm)))
        jobs["(a) untrained"].append(str(untrained(out / f"untrained-s{s}", s, args.llm)))      # here: it seeds torch
        jobs["(b) open_clip"].append(pool.submit(lambda s=s: val["open_clip"]["chosen"]["spec"] if s == s0 else run_open_clip(
            out / f"open_clip-llmtok-s{s}", args.mmeb, s, args.steps, c["lr"], c["temperature"], tok)))
        jobs[BIG_VOCAB].append(pool.submit(lambda s=s: val["open_clip-49k"]["chosen"]["spec"] if s == s0 else run_open_clip(
            out / f"open_clip-s{s}", args.mmeb, s, args.steps, c49["lr"], c49["temperature"])))
        if args.llava:
            def llava_pair(s=s):
                llava = run_llava(out / f"llava-tiny-s{s}", args.world, s, args.llm)
                return str(llava), run_vlm2vec(out / f"vlm2vec-llava-s{s}", args.mmeb, s, args.steps, v["lr"],
                                               v["temperature"], init=llava)
            pair = pool.submit(llava_pair)
            jobs["(a) llava-tiny"].append((pair, 0))
            jobs["vlm2vec-tiny/llava"].append((pair, 1))

    def result(x):
        return x if isinstance(x, str) else x[0].result()[x[1]] if isinstance(x, tuple) else x.result()
    models = {name: [result(x) for x in xs] for name, xs in jobs.items()}
    scores = evaluate([s for specs in models.values() for s in specs], "sw-mmeb-pairs", args.mmeb, out / "eval")
    table = {name: [scores[s] for s in specs] for name, specs in models.items()}
    sizes = {name: params(specs[0]) for name, specs in models.items()}
    results = {"chosen": chosen, "val": {k: {x: y for x, y in row.items() if x != "chosen"} for k, row in val.items()},
               "seeds": args.seeds, "steps": args.steps, "params": sizes, "test": table, "models": models,
               "minutes": round((time.time() - t_start) / 60, 1)}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    from benchmarks.model_card import write_results
    write_results(out / "results.jsonl", card_rows(results))
    text = report(results)
    (out / "report.md").write_text(text)
    print(text)
    return 0


def run_job(argv: list[str]) -> int:
    kind, out, *rest = argv
    if kind == "vlm2vec":
        data, seed, steps, lr, t, init, llm = rest
        train_vlm2vec(Path(out), Path(data), int(seed), int(steps), float(lr), float(t), Path(init) if init else None,
                      llm)
    elif kind == "open_clip":
        data, seed, steps, lr, t, tok = rest
        train_open_clip(Path(out), Path(data), int(seed), int(steps), float(lr), float(t), Path(tok) if tok else None)
    else:
        world, seed, llm = rest
        train_llava(Path(out), Path(world), int(seed), llm)
    return 0


def report(r: dict) -> str:
    seeds, table = r["seeds"], r["test"]
    names = list(table)
    lines = [f"Selection (val split, seed {seeds[0]}, P@1 mean over the 12 datasets):", ""]
    for kind, row in r["val"].items():
        ch = r["chosen"][kind]
        lines.append(f"- {kind}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items())
                     + f" -> chosen lr={ch['lr']:g}, temperature={ch['temperature']:g}")
    lines += ["", f"Test split, P@1, mean ± std over {len(seeds)} seeds ({', '.join(map(str, seeds))}), "
              f"{r['steps']} steps of 64 pairs:", "",
              "| dataset | meta-task | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    datasets = [k[4:] for k in table[names[0]][0] if k.startswith("p@1/")]
    for d in datasets:
        meta = next(m for m in META if d.startswith({"classification": "cls", "vqa": "vqa", "retrieval": "ret",
                                                     "grounding": "ground"}[m]))
        lines.append(f"| {d} | {meta} | " + " | ".join(mean_sd([x[f'p@1/{d}'] for x in table[n]]) for n in names) + " |")
    for key, label in [*((m, f"**{m}** (mean)") for m in META), ("ind", "**IND**"), ("ood", "**OOD**"),
                       ("precision@1", "**average**")]:
        lines.append(f"| {label} | | " + " | ".join(mean_sd([x[key] for x in table[n]]) for n in names) + " |")
    lines += ["", "Claim: vlm2vec-tiny beats (a) and (b) per meta-task and on average (on the mean over seeds; "
              f"'every seed' when its worst seed beats the baseline's best); {BIG_VOCAB}, beside (b):", ""]
    ours = table["vlm2vec-tiny"]
    for key in (*META, "precision@1"):
        for base in (b for b in ("(a) untrained", "(b) open_clip", BIG_VOCAB) if b in table):
            a, b = [x[key] for x in ours], [x[key] for x in table[base]]
            gap = statistics.mean(a) - statistics.mean(b)
            verdict = "met" if gap > TIE else "NOT met (a tie)" if gap >= -TIE else "NOT met"
            every = " (every seed)" if min(a) > max(b) + TIE else ""
            lines.append(f"- {key}: vs {base}: {statistics.mean(a):.3f} vs {statistics.mean(b):.3f}: {verdict}{every}")
    lines += ["", "Parameters (all / without token-embedding tables and LM head): "
              + "; ".join(f"{n} {p[0]:,} / {p[1]:,}" for n, p in r["params"].items()),
              f"Wall time: {r['minutes']} min (2-core CPU shared with other jobs)."]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
