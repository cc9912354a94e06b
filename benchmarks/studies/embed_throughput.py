"""`vlm embed` at scale: throughput against a bare forward loop, flat memory from 10k to 100k items,
export under faults, and the approximate index's recall against exact search.

    python benchmarks/studies/embed_throughput.py --out runs/embed-bench [--items 10000 100000] [--model CKPT]

1. Data: 100k samples (64 px JPEGs of coloured shapes with a caption), in shards of 10k (the smaller
   size); 1 in 10,000 has a broken JPEG. The 10k input is the first shard.
2. Throughput: a bare loop of `backend.forward` over the 10k input's batches prepared beforehand (the
   same preparer, the same batch size; nothing else in the loop) against `vlm embed` on the 10k input
   (its own reading, decoding, preparing in 1 worker process, writing): items/s of each and the ratio
   (target >= 0.9), --rounds times. This machine's speed moves by 10-20 % within seconds, so each round
   runs bare loop, export, bare loop, each in a fresh process, and divides by the mean of the two bare
   loops around the export; the median round is the headline. Also the share of the export's time in
   the model's forward (the export's own timing: the same process at the same moment, so no drift).
3. Memory: `vlm embed` on 10k and on 100k items, each in a fresh process; peak RSS of the main process and
   of the worker (getrusage), and the ratio 100k / 10k (target <= 1.1).
4. Faults: the 100k export killed (SIGKILL) once its second part is written, then rerun -> every file equal
   to the uninterrupted 100k export's; 2 ranks (torchrun) on the 10k input -> the files of 1 rank; the
   broken samples skipped and listed (stats/).
5. Index: `vlm index` on the 100k export (the choice printed), and on 100k random unit vectors (d 64):
   the approximate index's recall@10 against exact search on 1,000 queries (target >= 0.95).
The model is a tiny one (default: a fresh vlm2vec-tiny build: tiny CLIP 32 px + tiny Llama, the compute of
the trained one). Prints a markdown table; writes <out>/results.json. On a shared machine the items/s of
both loops move together; rerun on a quiet machine for absolute figures.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["circle", "square"]
INSTR = "Represent the given image."


def env() -> dict:
    e = dict(os.environ)
    e.update(PYTHONPATH=str(REPO) + os.pathsep + e.get("PYTHONPATH", ""), OMP_NUM_THREADS="1",
             TOKENIZERS_PARALLELISM="false")
    return e


def write_data(out: Path, n: int, per_shard: int = 10_000, seed: int = 0) -> Path:
    from PIL import Image, ImageDraw

    from vlm.data.writer import ShardWriter
    if (out / "index.json").exists():
        return out
    rng = np.random.default_rng(seed)
    with ShardWriter(out, max_count=per_shard, validate=False) as w:
        for i in range(n):
            c, s = COLORS[int(rng.integers(6))], SHAPES[int(rng.integers(2))]
            img = Image.new("RGB", (64, 64), tuple(int(v) for v in rng.integers(200, 256, 3)))
            x, y, r = (int(v) for v in rng.integers(8, 40, 3))
            box = (x, y, min(63, x + r), min(63, y + r))
            (ImageDraw.Draw(img).ellipse if s == "circle" else ImageDraw.Draw(img).rectangle)(box, fill=c)
            sample = {"__key__": f"s{i:07d}", "json": {"caption": f"a {c} {s} at {x},{y}"}}
            sample["jpg"] = b"\xff\xd8 broken" if i % 10_000 == 4321 else img
            w.write(sample)
    return out


def model(out: Path, spec: str | None) -> str:
    if spec:
        return spec
    path = out / "model"
    if not (path / "model.safetensors").exists():
        from vlm.train.recipe import ModelSpec, build_model
        build_model(ModelSpec("vlm2vec", "tiny"), seed=0).save_pretrained(path)
    return str(path)


EXPORT = """
import json, resource, sys
from vlm.embed.cli import EmbedConfig
from vlm.embed.export import export
cfg = EmbedConfig(**json.loads(sys.argv[1]))
r = export(cfg)
print(json.dumps({"rows": r.rows, "skipped": r.skipped, "seconds": r.seconds, "items_per_s": r.items_per_s,
                  "model_seconds": r.model_seconds,
                  "rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_workers_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def run_export(ckpt: str, data: str, out: Path, **kw) -> dict:
    cfg = {"model": ckpt, "input": data, "out": str(out), "instruction": INSTR, "modality": ["image", "text"],
           "batch_size": 64, "part_size": 2500, "num_workers": 1, "progress": False, **kw}
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", EXPORT, json.dumps(cfg)], env=env(), capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"export failed:\n{p.stderr[-3000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["wall_s"] = time.perf_counter() - t0
    return res


BARE = """
import sys
sys.path.insert(0, {studies!r})
from embed_throughput import bare_forward
print(bare_forward(*sys.argv[1:3], int(sys.argv[3])))
"""


def run_bare(ckpt: str, data: str, items: int) -> float:
    """`bare_forward` in a fresh process, as the export runs (a long-lived process runs the same forward
    10-15 % faster here than a new one)."""
    p = subprocess.run([sys.executable, "-c", BARE.format(studies=str(Path(__file__).parent)), ckpt, data, str(items)],
                       env=env(), capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise SystemExit(f"bare loop failed:\n{p.stderr[-3000:]}")
    return float(p.stdout.strip().splitlines()[-1])


def bare_forward(ckpt: str, data: str, items: int, batch_size: int = 64) -> float:
    """items/s of backend.forward alone over batches prepared before timing (the export's preparer), its
    first batch run once before (an untimed warm-up)."""
    import torch

    from benchmarks.data import iter_samples
    from vlm.data.reader import expand_shards
    from vlm.embed.backends import load_backend
    from vlm.embed.export import caption_of
    from vlm.embed.items import Item
    from vlm.modalities import MODALITIES
    torch.set_num_threads(1)
    backend = load_backend(ckpt)
    prepare = backend.preparer()
    imgs, caps = [], []
    for s in iter_samples(expand_shards(data)):
        try:
            imgs.append(Item(image=MODALITIES["image"].decode(s.fields["jpg"], prepare.draft_size), instruction=INSTR))
        except Exception:  # the broken ones: the export skips them too
            continue
        caps.append(Item(text=caption_of(s.meta(), s.fields), instruction=INSTR))
        if len(imgs) == items:
            break
    items = len(imgs)
    batches = [prepare(x[i:i + batch_size]) for x in (imgs, caps) for i in range(0, len(x), batch_size)]
    del imgs, caps
    backend.forward(batches[0])
    gc.freeze()                     # no collector walks over the prepared batches (the export freezes its heap too)
    t0 = time.perf_counter()
    for b in batches:
        backend.forward(b)
    seconds = time.perf_counter() - t0
    gc.unfreeze()
    return items / seconds          # one item = its image and its caption, as the export


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix in (".npy", ".parquet")}


def killed_then_rerun(ckpt: str, data: str, out: Path) -> dict:
    """SIGKILL once the second part's metadata exists, then rerun to completion."""
    cfg = {"model": ckpt, "input": data, "out": str(out), "instruction": INSTR, "modality": ["image", "text"],
           "batch_size": 64, "part_size": 2500, "num_workers": 1, "progress": False}
    p = subprocess.Popen([sys.executable, "-c", EXPORT, json.dumps(cfg)], env=env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    from vlm.embed.export import part_name, plan_input
    marker = out / "metadata" / f"metadata_{part_name(1, len(plan_input(data, 2500).parts))}.parquet"
    while not marker.exists() and p.poll() is None:
        time.sleep(0.02)
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    done_before = len(list((out / "metadata").glob("metadata_*.parquet")))
    run_export(ckpt, data, out)
    return {"killed": p.returncode == -signal.SIGKILL, "parts_done_at_kill": done_before}


def two_ranks(ckpt: str, data: str, out: Path) -> None:
    args = ["embed", "--model", ckpt, "--input", data, "--out", str(out), "--instruction", INSTR, "--modality", "image",
            "--modality", "text", "--batch-size", "64", "--part-size", "2500", "--num-workers", "0", "--quiet"]
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    "-m", "vlm.cli", *args], env=env(), check=True, capture_output=True)


def index_recall(folder: Path, queries: int = 1000) -> dict:
    """The auto index of an export folder against exact search on random unit queries."""
    import faiss

    from vlm.embed.index import (
        build_index,
        export_parts,
        load_vectors,
        open_index,
        recall_at,
    )
    info = build_index(folder, quiet=False)["image"]
    x, _ = load_vectors(export_parts(folder, "image"))
    rng = np.random.default_rng(1)
    q = rng.standard_normal((queries, x.shape[1])).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    _, exact = flat.search(q, 10)
    t0 = time.perf_counter()
    _, ids = open_index(folder).search(q, 10, "image")
    ms = (time.perf_counter() - t0) / queries * 1000
    return {"index": info["factory"], "search": info["search"], "recall@10_tuned": info["recall@10"],
            "recall@10": recall_at(ids, exact), "ms_per_query": round(ms, 3), "n": info["n"]}


def random_export(folder: Path, n: int, d: int) -> Path:
    import pandas as pd
    (folder / "img_emb").mkdir(parents=True, exist_ok=True)
    (folder / "metadata").mkdir(exist_ok=True)
    x = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.save(folder / "img_emb" / "img_emb_0.npy", x)
    pd.DataFrame({"key": [f"r{i}" for i in range(n)], "caption": "", "source": ""}).to_parquet(
        folder / "metadata" / "metadata_0.parquet")
    (folder / "run.json").write_text(json.dumps({"model": "random"}))
    return folder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/embed-bench"))
    ap.add_argument("--items", type=int, nargs=2, default=[10_000, 100_000])
    ap.add_argument("--model", default=None, help="a checkpoint folder (default: a fresh vlm2vec-tiny build)")
    ap.add_argument("--rounds", type=int, default=3, help="throughput rounds (bare loop, export, bare loop)")
    args = ap.parse_args(argv)
    out = args.out
    small, big = args.items
    write_data(out / "data", big, per_shard=small)
    first = sorted(str(p) for p in (out / "data").glob("*.tar"))[0]         # the small input: the first shard
    ckpt = model(out, args.model)
    for old in ("emb-small", "emb-big", "emb-killed", "emb-two", "random"):      # every export measured afresh
        shutil.rmtree(out / old, ignore_errors=True)
    r: dict = {"items": [small, big], "rounds": []}
    for k in range(args.rounds):                    # bare loop, export, bare loop; each round afresh
        shutil.rmtree(out / "emb-small", ignore_errors=True)
        before = run_bare(ckpt, first, small)
        exp = run_export(ckpt, first, out / "emb-small")
        after = run_bare(ckpt, first, small)
        bare = (before + after) / 2
        r["rounds"].append({"bare_items_per_s": [before, after], "export": exp, "ratio": exp["items_per_s"] / bare})
    r["median_ratio"] = statistics.median(rd["ratio"] for rd in r["rounds"])
    r["export_small"] = r["rounds"][-1]["export"]
    r["export_big"] = run_export(ckpt, str(out / "data"), out / "emb-big")
    r["rss_ratio_main"] = r["export_big"]["rss_main_mb"] / r["export_small"]["rss_main_mb"]
    r["rss_ratio_workers"] = r["export_big"]["rss_workers_mb"] / r["export_small"]["rss_workers_mb"]
    r["fault"] = killed_then_rerun(ckpt, str(out / "data"), out / "emb-killed")
    r["fault"]["identical"] = files(out / "emb-big") == files(out / "emb-killed")
    two_ranks(ckpt, first, out / "emb-two")
    r["two_ranks_identical"] = files(out / "emb-small") == files(out / "emb-two")
    summary = json.loads((out / "emb-big" / "stats" / "summary.json").read_text())
    r["skipped"] = summary["skipped_by_reason"]
    r["index_export"] = index_recall(out / "emb-big")
    r["index_random"] = index_recall(random_export(out / "random", 100_000, 64))
    (out / "results.json").write_text(json.dumps(r, indent=1))
    print(report(r))
    return 0


def report(r: dict) -> str:
    s, b = r["export_small"], r["export_big"]
    small, big = r["items"]
    lines = ["| what | result | target |", "|---|---|---|"]
    for k, rd in enumerate(r["rounds"], 1):
        e, (b0, b1) = rd["export"], rd["bare_items_per_s"]
        lines.append(f"| round {k}: `vlm embed` {small:,} items (read, decode, prepare in 1 worker, write) vs a bare "
                     f"forward loop over the same batches of 64, prepared, run before and after it | {e['items_per_s']:,.0f} "
                     f"vs {b0:,.0f} / {b1:,.0f} items/s: **{rd['ratio']:.2f}x** ({e['model_seconds'] / e['seconds']:.0%} of "
                     f"the export's time in the model; {e['wall_s']:.0f} s wall with start-up) | >= 0.9x |")
    lines += [
        f"| median of the {len(r['rounds'])} rounds | **{r['median_ratio']:.2f}x** | >= 0.9x |",
        f"| `vlm embed` {big:,} items | {b['items_per_s']:,.0f} items/s ({b['wall_s']:.0f} s wall) | |",
        f"| peak RSS main process, {small:,} -> {big:,} | {s['rss_main_mb']:.0f} -> {b['rss_main_mb']:.0f} MB "
        f"({r['rss_ratio_main']:.2f}x) | <= 1.1x |",
        f"| peak RSS worker, {small:,} -> {big:,} | {s['rss_workers_mb']:.0f} -> {b['rss_workers_mb']:.0f} MB "
        f"({r['rss_ratio_workers']:.2f}x) | <= 1.1x |",
        f"| kill -9 after {r['fault']['parts_done_at_kill']} parts, rerun | files identical to the uninterrupted export: "
        f"{r['fault']['identical']} | identical |",
        f"| 2 ranks (torchrun) vs 1, {small:,} items | files identical: {r['two_ranks_identical']} | identical |",
        f"| broken samples | skipped and listed: {r['skipped']} | listed |",
    ]
    for key in ("index_export", "index_random"):
        i = r[key]
        name = f"the {i['n']:,}-row export" if key == "index_export" else f"{i['n']:,} random unit vectors, d 64"
        lines.append(f"| `vlm index` on {name} | {i['index']} {i['search']}: recall@10 vs exact {i['recall@10']:.3f} "
                     f"(1,000 random queries), {i['ms_per_query']} ms/query | >= 0.95 |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
