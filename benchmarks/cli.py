"""`vlm eval`: run benchmarks, or list them.

    vlm eval --model PATH|open_clip:ARCH[:CKPT] [--model ...] (--suite NAME | --bench NAME ... | --bench wds:DIR) --out DIR
             [--data SYNTHETIC_WORLD_DIR] [--bench-root DIR] [--cache-dir DIR | --no-cache] [--limit N] [--redo]
             [--model-card model_cards/llava.md]
    vlm eval list [PATTERN] [--suites]

Bad input (a missing split, shards without `cls`, an unknown benchmark, a model path that is not a
checkpoint) is a `UserError`: one line on stderr, exit code 2 (see `vlm.cli`).
"""
from __future__ import annotations

import argparse
import sys

from vlm.errors import UserError


def cmd_eval(args: argparse.Namespace) -> int:
    from benchmarks.registry import Roots, list_benchmarks, list_suites, resolve
    if args.action == "list":
        if args.suites:
            for s in list_suites():
                print(f"{s['name']:<28} {len(s['benchmarks']):>3} benchmarks  {s['description']}")
            return 0
        rows = list_benchmarks(args.pattern)
        w = max([len(r["name"]) for r in rows] + [4])
        for r in rows:
            print(f"{r['name']:<{w}}  {r['kind']:<9} {r['type']:<18} {r['capability']:<22} {r['metric']:<12} {r['data']}")
        return 0
    if args.pattern:
        raise UserError(f"unexpected argument '{args.pattern}' (did you mean `vlm eval list {args.pattern}`?)")
    if not args.model:
        raise UserError("--model is required: a checkpoint folder or open_clip:ARCH[:CKPT]")
    if not args.out:
        raise UserError("--out is required: the folder for results, report and chart")
    from benchmarks.report import capability_table
    from benchmarks.runner import RunConfig, evaluate
    benches = resolve(args.bench, args.suite)
    defaults = Roots()
    cfg = RunConfig(out=args.out, roots=Roots(args.data or defaults.synthetic_world, args.bench_root or defaults.bench_root),
                    batch_size=args.batch_size, limit=args.limit, redo=args.redo, progress=not args.quiet,
                    device=args.device, workers=args.workers)
    if args.no_cache:
        cfg.cache_dir = None
    elif args.cache_dir:
        cfg.cache_dir = args.cache_dir
    res = evaluate(args.model, benches, cfg)
    print(capability_table(res.table))
    if args.model_card:
        from benchmarks.model_card import update_model_card
        models = {m.name for m in res.models}
        update_model_card(args.model_card, res.table[res.table["model"].isin(models)])
        print(f"model card: {args.model_card}", file=sys.stderr)
    done = sum(1 for r in res.records if r.get("status") == "ok" and not r.get("reused"))
    print(f"\n{done} run, {res.reused} already done, "
          f"{sum(1 for r in res.records if r.get('status') == 'skipped')} not applicable; "
          f"feature cache: {res.cache_hits} hits, {res.cache_misses} misses", file=sys.stderr)
    print(f"report: {args.out}/report.md  chart: {args.out}/chart.png  rows: {args.out}/results/", file=sys.stderr)
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate models on benchmarks (or `vlm eval list`)",
                       description="Evaluate checkpoints or open_clip models on registered benchmarks, suites or "
                                   "any clip_benchmark wds folder (--bench wds:DIR).")
    p.add_argument("action", nargs="?", choices=["list"], help="`list`: the registered benchmarks")
    p.add_argument("pattern", nargs="?", default=None, help="with list: an fnmatch pattern, e.g. 'sw-*'")
    p.add_argument("--suites", action="store_true", help="with list: list the suites instead")
    p.add_argument("--model", action="append", help="checkpoint folder or open_clip:ARCH[:CKPT]; repeat for several")
    p.add_argument("--suite", help="a suite name (see `vlm eval list --suites`)")
    p.add_argument("--bench", action="append", help="a benchmark name or wds:DIR; repeat for several")
    p.add_argument("--out", help="output folder (results/, aggregate.parquet, report.md, chart.png)")
    p.add_argument("--data", help="synthetic-world folder (default $VLM_SYNTHETIC_WORLD or data/synthetic-world)")
    p.add_argument("--bench-root", help="folder of user-supplied benchmark shards (default $VLM_BENCH_ROOT or data/benchmarks)")
    p.add_argument("--cache-dir", help="feature cache folder (default $VLM_CACHE/features or ~/.cache/vlm/features)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="image decoding threads")
    p.add_argument("--limit", type=int, default=None, help="at most N samples per benchmark (quick runs)")
    p.add_argument("--redo", action="store_true", help="rerun benchmarks already done in --out")
    p.add_argument("--model-card", help="also write the results into this model card (model-index + a results section)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval)
