"""The evaluation runner: models x benchmarks -> per-sample rows, an aggregate table, a report, a chart.

    vlm eval --model runs/llava-tiny/final --suite synthetic-world --out runs/eval
    vlm eval --model open_clip:ViT-B-32:/ckpt/vitb32.safetensors --bench wds:/data/wds_cifar10 --out runs/eval

    from benchmarks.runner import RunConfig, evaluate
    res = evaluate(["runs/llava-tiny/final"], resolve(suite="synthetic-world"), RunConfig(out="runs/eval"))
    res.table      # model x benchmark

Output folder:
    results/<model>/<benchmark>.parquet   one row per sample (prediction, gold, correctness, scores)
    results/<model>/<benchmark>.json      metrics, status, timing; written last, so it marks the work done
    aggregate.parquet, aggregate.csv      one row per model x benchmark (every model ever run into DIR)
    results.jsonl                         the same as a results file for model cards (benchmarks.model_card)
    report.md, chart.png                  grouped by benchmark type and capability
    report.html                           the same to look at: chart, tables with chance levels, and a
                                          per-sample gallery (media, question, gold, every model's answer)

A benchmark whose json says done for the same model weights and benchmark definition is not redone
(`redo=True` forces it); image/text features are cached on disk by model and data hash
(`benchmarks.cache`), so another output folder over the same data is near instant too.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.cache import FeatureCache
from benchmarks.config import RunConfig
from benchmarks.data import shard_files, split_task_counts
from benchmarks.metrics import skipped_items
from benchmarks.models import EvalModel, load_model
from benchmarks.registry import Benchmark, Roots
from benchmarks.store import (
    RESULTS,
    latest,
    names_taken,
    not_shown,
    read_records,
    same_model_key,
)
from benchmarks.tasks import Context, TooFewItems, applicable, run_task
from vlm.atomic import remove_torn, write_file, write_text
from vlm.errors import UserError


def slug(text: str) -> str:
    """A file name for `text`; one cut to 80 characters ends in a hash of the whole text (two long folder
    paths alike in their first 80 characters stay two files)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")
    if len(name) > 80:
        name = f"{name[:71]}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    return name or "model"


def model_dir_name(model: EvalModel) -> str:
    return f"{slug(model.name)}-{model.fingerprint[:8]}"


def bench_signature(bench: Benchmark, limit: int | None, data: str = "") -> str:
    """What a stored result answers: the benchmark's definition, the limit, and the identity of its data
    (`data_identity`: a rebuilt split or an edited labels.csv is a new question, not a reused answer)."""
    d = dataclasses.asdict(bench)
    key = [d, limit, data]
    if limit and len(bench.data.tasks) > 1:      # a limit drawn across the tasks (the first task's alone before)
        key.append("limit-across-tasks")
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_identity(bench: Benchmark, roots: Roots) -> str:
    """Names, sizes and mtimes of the files a benchmark reads (`benchmarks.data.data_hash`): the shards of
    its split (and of the train split for probes) and the folder's .txt files (class names, templates), or a
    labels.csv and the files it lists; an MMEB benchmark's parquet files and the images they name, or its
    datasets' shards; "" when they cannot be listed (check_data then names what is missing)."""
    from benchmarks.data import data_hash
    try:
        folder = bench.data.folder(roots)
        if bench.options.get("format") == "audio-folder":
            from benchmarks.audio_folder import LABELS_FILE, read_labels
            listed = sorted({c.path for c in read_labels(folder) if c.path.is_file()})
            return data_hash([folder / LABELS_FILE, *listed])
        if bench.kind == "mmeb" and bench.options.get("datasets"):
            from benchmarks.tasks.mmeb import mmeb_eval_files
            files = []
            for spec in bench.options["datasets"]:
                files += (mmeb_eval_files(folder, spec, bench.data.split) if "subset" in spec else
                          shard_files(folder / spec["path"], bench.data.split) if "path" in spec else
                          shard_files(folder, bench.data.split))
            return data_hash(sorted(set(files)))
        files = shard_files(folder, bench.data.split)
        if bench.kind == "probe":
            files += shard_files(folder, bench.data.train_split or "train")
        # a wds layout's classnames.txt / zeroshot_classification_templates.txt: an edited one is a new question
        files += sorted(p for p in Path(folder).glob("*.txt") if p.is_file())
        return data_hash(files)
    except (UserError, OSError):
        return ""


def check_data(bench: Benchmark, roots: Roots) -> None:
    """Fail before any model runs when a benchmark's folder or split is missing (one line, naming it)."""
    folder = bench.data.folder(roots)
    if bench.kind == "probe" and bench.data.split == (bench.data.train_split or "train"):
        raise UserError(f"benchmark {bench.name}: the probe is fitted on the '{bench.data.split}' split, so scoring "
                        f"it there measures memorisation; evaluate --split val or test")
    if bench.kind == "mmeb" and any("subset" in d for d in bench.options.get("datasets", [])):
        from benchmarks.tasks.mmeb import check_mmeb_eval
        check_mmeb_eval(bench, roots)
        return
    if bench.options.get("format") == "audio-folder":
        from benchmarks.audio_folder import read_labels
        read_labels(folder, need=(bench.data.train_split or "train", bench.data.split))
        return
    hint = ""
    if bench.data.root == "synthetic-world":
        hint = (" (build it with `vlm data build synthetic-world --out DIR` and pass --data DIR, or set "
                "$VLM_SYNTHETIC_WORLD)")
    elif bench.data.root == "bench-root":
        hint = " (put the shards there or pass --bench-root DIR)"
    if not folder.is_dir():
        what = "a file, not a data folder" if folder.exists() else "data folder not found"
        raise UserError(f"benchmark {bench.name}: {what}: {folder}{hint}")
    if bench.kind == "mmeb" and any("path" in d for d in bench.options.get("datasets", [])):
        for d in bench.options["datasets"]:
            shard_files(folder / d["path"], bench.data.split)
        return
    shard_files(folder, bench.data.split)
    if bench.kind == "probe":
        shard_files(folder, bench.data.train_split or "train")
    check_tasks_listed(bench, folder)


def check_tasks_listed(bench: Benchmark, folder: Path) -> None:
    """A benchmark none of whose tasks the split's `index.json` lists: one line before any model runs (found
    when the benchmark was reached, after other models' work). A split without an index that describes its
    shards is read as it is (the samples loader names what it lacks)."""
    counts = split_task_counts(folder, bench.data.split) if bench.data.tasks else None
    if counts is not None and not any(counts.get(t, 0) > 0 for t in bench.data.tasks):
        raise UserError(f"{folder}/{bench.data.split}: no samples for benchmark {bench.name} (task in "
                        f"{sorted(bench.data.tasks)}; {folder / bench.data.split / 'index.json'} lists "
                        f"{', '.join(sorted(counts)[:8]) or 'no task'}{' ...' if len(counts) > 8 else ''})")


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    import pandas as pd
    frame = pd.DataFrame(rows)
    write_file(path, lambda tmp: frame.to_parquet(tmp, index=False))


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    write_text(path, json.dumps(obj, indent=2, default=float))


def run_one(model: EvalModel, bench: Benchmark, cfg: RunConfig, ctx: Context) -> dict[str, Any]:
    """Evaluate one benchmark (or find it done); returns its json record."""
    folder = Path(cfg.out) / RESULTS / model_dir_name(model)
    folder.mkdir(parents=True, exist_ok=True)
    rec_path, rows_path = folder / f"{slug(bench.name)}.json", folder / f"{slug(bench.name)}.parquet"
    sig = bench_signature(bench, cfg.limit, data_identity(bench, cfg.roots))
    if rec_path.exists() and not cfg.redo:
        try:
            rec = json.loads(rec_path.read_text())
        except json.JSONDecodeError:
            rec = {}
        if rec.get("fingerprint") == model.fingerprint and rec.get("signature") == sig:
            rec["used"] = time.time()            # asked for now: it, not another model's of this name, is shown
            _write_json(rec_path, rec)
            return rec | {"reused": True}
    rec: dict[str, Any] = dict(model=model.name, model_spec=model.spec, fingerprint=model.fingerprint,
                               benchmark=bench.name, data_root=str(bench.data.root), kind=bench.kind, type=bench.type, capability=bench.capability,
                               modality=bench.modality, metric=bench.metric, signature=sig, limit=cfg.limit)
    reason = applicable(model, bench)
    if reason is not None:
        rec |= dict(status="skipped", reason=reason, score=None, metrics={}, seconds=0.0, finished=time.time())
        _write_json(rec_path, rec)
        return rec
    hits0, t0 = ctx.cache.hits, time.perf_counter()
    try:
        result = run_task(model, bench, ctx)
    except TooFewItems as e:
        if cfg.limit is None:
            raise
        # a quick look under a small --limit: a benchmark the limit leaves too little to score (an MMEB set with
        # no query, one retrieval pair) is not applicable at that limit, not the end of the whole run; any other
        # error (a wrong --data, a broken shard) ends the run as it does without a limit
        rec |= {"status": "skipped", "reason": f"under --limit {cfg.limit}: {e}", "score": None,
                "metrics": {}, "seconds": 0.0, "finished": time.time()}
        _write_json(rec_path, rec)
        return rec
    seconds = time.perf_counter() - t0
    rows = [dict(model=model.name, benchmark=bench.name, **r) for r in result.rows]
    _write_rows(rows_path, rows)
    rec |= dict(status="ok", score=result.metrics.get(bench.metric), metrics=result.metrics, tables=result.tables,
                seconds=round(seconds, 3), cache_hits=ctx.cache.hits - hits0, rows=str(rows_path.name),
                finished=time.time())
    _write_json(rec_path, rec)
    return rec


@dataclass
class RunResult:
    table: Any                          # the aggregate DataFrame (every model x benchmark in the folder)
    records: list[dict[str, Any]]       # this run's records, in order
    models: list[EvalModel]
    cache_hits: int
    cache_misses: int
    not_shown: int = 0                  # results in the folder the views leave out (`benchmarks.store.latest`)

    @property
    def reused(self) -> int:
        return sum(1 for r in self.records if r.get("reused"))


def on_split(bench: Benchmark, split: str) -> Benchmark:
    """The benchmark on another split of its data, named BENCH@SPLIT (its results stay apart from the
    default split's)."""
    if split == bench.data.split:
        return bench
    return dataclasses.replace(bench, name=f"{bench.name}@{split}", data=dataclasses.replace(bench.data, split=split))


def distinct(names: list[str], longer: list[str]) -> list[str]:
    """Display names of one run made distinct: two models (or benchmarks) that share a name (two checkpoints
    named `model`, two `wds:colors` folders) would share a column and one result would be dropped; those take
    their longer name (the spec, the folder), and `#k` if that is shared too."""
    from collections import Counter
    shared = Counter(names)
    out = [long if shared[n] > 1 else n for n, long in zip(names, longer)]
    seen: Counter = Counter()
    for i, n in enumerate(out):
        seen[n] += 1
        if seen[n] > 1:
            out[i] = f"{n}#{seen[n]}"
    return out


def folder_name(bench: Benchmark) -> str:
    """A user folder's benchmark named by its whole path (`wds:/data/a/colors@val`), not its last part."""
    prefix, sep, rest = bench.name.partition(":")
    if not sep or not os.path.isabs(bench.data.root):
        return bench.name
    return f"{prefix}:{bench.data.root}{rest[len(rest.split('@')[0]):]}"


def kept_apart(name: str, key: str, longer: str, taken: dict[str, set[str]], used: Collection[str]) -> str:
    """The display name of a model (or a user's data folder) whose identity is `key` (its resolved path), given
    the names an earlier call stored in the folder (`taken`: name -> the identities under it): a name an earlier
    call gave another identity goes to its longer name (`longer`, then `longer#2` ...); one this identity has
    there under another name keeps that name (unless this call uses it already)."""
    if taken.get(name) and key not in taken[name]:
        return next(n for n in (longer, *(f"{longer}#{k}" for k in range(2, 10**6)))
                    if not taken.get(n) or key in taken[n])
    if name not in taken:
        own = sorted(n for n, keys in taken.items() if key in keys)
        if own and own[0] not in used:
            return own[0]
    return name


def evaluate(model_specs: list[str], benches: list[Benchmark], cfg: RunConfig) -> RunResult:
    """Run every benchmark for every model into cfg.out, then rebuild the aggregate, report and chart."""
    from tqdm.auto import tqdm
    if not model_specs:
        raise UserError("no model given: --model PATH|open_clip:ARCH[:CKPT]")
    cfg.check()
    # one model asked for twice (the same path, spelt alike or not) is one column, evaluated once
    firsts: dict[str, str] = {}
    for spec in model_specs:
        firsts.setdefault(same_model_key(spec), spec)
    model_specs = list(firsts.values())
    models = [load_model(s, cfg.device) for s in model_specs]       # bad paths fail here, before any work
    for m, name in zip(models, distinct([m.name for m in models], [str(m.spec) for m in models])):
        m.name = name
    earlier = read_records(cfg.out)
    taken = names_taken(earlier)          # names other models have in this folder (an earlier call's): kept apart
    for m in models:
        m.name = kept_apart(m.name, same_model_key(str(m.spec)), str(m.spec), taken, {o.name for o in models})
    if cfg.split:
        benches = [on_split(b, cfg.split) for b in benches]
    names = distinct([b.name for b in benches], [folder_name(b) for b in benches])
    held = names_taken(earlier, "benchmark", "data_root")       # a user folder's name an earlier call gave another
    for i, b in enumerate(benches):                            # folder of that name (`wds:colors`): kept apart
        if folder_name(b) != b.name:                           # (a registered benchmark: its data is its own)
            names[i] = kept_apart(names[i], same_model_key(str(b.data.root)), folder_name(b), held, names)
    benches = [b if b.name == n else dataclasses.replace(b, name=n) for b, n in zip(benches, names)]
    for b in benches:
        check_data(b, cfg.roots)
    if cfg.split == "train":               # (a probe refuses it: check_data)
        print("note: --split train scores the samples a model may have trained on: it measures fit, not what the "
              "model does on unseen data", file=sys.stderr)
    try:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
    except OSError as e:                     # (a read-only place, /proc ...: a FileNotFoundError traceback)
        raise UserError(f"eval config field 'out': cannot create the folder {cfg.out} ({e.strerror or e})") from None
    remove_torn([*Path(cfg.out).glob(".*.tmp-*"), *(Path(cfg.out) / RESULTS).glob("*/.*.tmp-*")])   # a killed run's
    ctx = Context(roots=cfg.roots, cache=FeatureCache(cfg.feature_cache), batch_size=cfg.batch_size,
                  workers=cfg.workers, progress=cfg.progress, limit=cfg.limit)
    records = []
    with tqdm(total=len(models) * len(benches), desc="benchmarks", disable=not cfg.progress, dynamic_ncols=True) as pbar:
        for m in models:
            for b in benches:
                pbar.set_postfix_str(f"{m.name} / {b.name}")
                records.append(run_one(m, b, cfg, ctx))
                pbar.update(1)
    stored = read_records(cfg.out)
    table = aggregate(cfg.out, stored)
    from benchmarks.model_card import results_rows, write_results
    write_results(Path(cfg.out) / "results.jsonl", results_rows(table))
    if cfg.report:
        from benchmarks.report import write_chart, write_report
        from benchmarks.report_html import write_html
        write_report(cfg.out, table)
        write_chart(cfg.out, table)
        write_html(cfg.out, table, benches, cfg.roots)
    return RunResult(table, records, models, ctx.cache.hits, ctx.cache.misses, not_shown(stored))


def aggregate(out: str | os.PathLike, stored: list | None = None) -> "Any":
    """One row per model x benchmark from the results/*/*.json in `out` (`stored`: those records, read already)
    that compare like with like (a model name's latest weights, a benchmark's latest data and limit:
    `benchmarks.store.latest`); written as parquet and csv."""
    import pandas as pd
    rows = []
    for _, r in latest(read_records(out) if stored is None else stored):
        rows.append(dict(model=r.get("model"), model_spec=r.get("model_spec"), benchmark=r.get("benchmark"),
                         kind=r.get("kind"), type=r.get("type"), capability=r.get("capability"),
                         modality=r.get("modality"), metric=r.get("metric"), score=r.get("score"),
                         status=r.get("status"), reason=r.get("reason", ""), seconds=r.get("seconds"),
                         n=(r.get("metrics") or {}).get("n"), limit=r.get("limit"),
                         skipped=", ".join(f"{k} {v}" for k, v in skipped_items(r.get("metrics") or {}).items()),
                         metrics=json.dumps(r.get("metrics") or {})))
    cols = ["model", "model_spec", "benchmark", "kind", "type", "capability", "modality", "metric", "score", "status",
            "reason", "seconds", "n", "limit", "skipped", "metrics"]
    table = pd.DataFrame(rows, columns=cols)                          # in the order the work was done
    table["score"] = pd.to_numeric(table["score"], errors="coerce")
    write_file(Path(out) / "aggregate.parquet", lambda tmp: table.to_parquet(tmp, index=False))
    write_file(Path(out) / "aggregate.csv", lambda tmp: table.drop(columns=["metrics"]).to_csv(tmp, index=False))
    return table
