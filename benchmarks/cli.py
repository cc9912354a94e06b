"""`vlm eval`: run benchmarks, or list them. Every setting is one field of `EvalConfig`: a flag, a key of
`--config FILE.yaml`, or `key=value`; the resolved settings are saved as OUT/eval_config.yaml.

    vlm eval --model PATH|open_clip:ARCH[:CKPT] [--model ...] (--suite NAME ... | --bench NAME ... | --bench wds:DIR) --out DIR
             [--data SYNTHETIC_WORLD_DIR] [--bench-root DIR] [--cache-dir DIR | --no-cache] [--limit N] [--redo]
             [--model-card model_cards/llava.md] [--config eval.yaml] [key=value ...]
    vlm eval list [PATTERN] [--suites]

Bad input (a missing split, shards without `cls`, an unknown benchmark, a model path that is not a
checkpoint, a malformed setting) is a `UserError`: one line on stderr, exit code 2 (see `vlm.cli`).
"""
from __future__ import annotations

import argparse
import sys

from benchmarks.config import EvalConfig
from vlm.config import add_config_flags, config_from_args, save_config
from vlm.errors import UserError


def cmd_list(words: list[str], suites: bool) -> int:
    from benchmarks.registry import list_benchmarks, list_suites
    if len(words) > 1:
        raise UserError(f"`vlm eval list` takes one pattern, got {words}")
    if suites:                            # (the pattern was ignored: every suite printed, exit 0)
        import fnmatch
        found = [s for s in list_suites() if not words or fnmatch.fnmatchcase(s["name"], words[0])]
        if not found:
            print(f"no suite matches {words[0]!r} (a glob, e.g. 'music*'; `vlm eval list --suites` lists them all)",
                  file=sys.stderr)
            return 1
        for s in found:
            print(f"{s['name']:<28} {len(s['benchmarks']):>3} benchmarks  {s['description']}")
        return 0
    rows = list_benchmarks(words[0] if words else None)
    if not rows:
        print(f"no benchmark matches {words[0]!r} (a glob, e.g. 'sw-*'; `vlm eval list` lists them all)", file=sys.stderr)
        return 1
    w = max([len(r["name"]) for r in rows] + [4])
    for r in rows:
        print(f"{r['name']:<{w}}  {r['kind']:<9} {r['type']:<18} {r['capability']:<22} {r['metric']:<12} {r['data']}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if args.overrides and args.overrides[0] == "list":
        return cmd_list(args.overrides[1:], args.suites)
    if args.suites:
        raise UserError("--suites goes with `vlm eval list`")
    cfg = config_from_args(EvalConfig, args, what="eval config field")
    if not cfg.models:
        raise UserError("--model is required: a checkpoint folder or open_clip:ARCH[:CKPT]")
    from benchmarks.registry import resolve
    from benchmarks.report import capability_table
    from benchmarks.runner import evaluate
    benches = resolve(cfg.benches, cfg.suite)
    if cfg.model_card:
        from benchmarks.model_card import check_card
        check_card(cfg.model_card)                   # before the evaluation, not after it
    res = evaluate(cfg.models, benches, cfg)
    save_config(cfg, f"{cfg.out}/eval_config.yaml")
    print(capability_table(res.table))
    from benchmarks.tasks.probe import layer_table
    layers = layer_table(res.records)
    if layers:
        print(f"\nProbe accuracy per encoder layer ({cfg.split or 'test'} split):\n" + layers)
    if cfg.model_card:
        from benchmarks.model_card import update_model_card
        models, asked = {m.name for m in res.models}, {r["benchmark"] for r in res.records}
        card = update_model_card(cfg.model_card,             # this run's results: not the folder's other benchmarks
                                 res.table[res.table["model"].isin(models) & res.table["benchmark"].isin(asked)])
        print(f"model card: {card} (results: {card.parent}/results/{card.stem}.jsonl)", file=sys.stderr)
    say_records(res)
    done = sum(1 for r in res.records if r.get("status") == "ok" and not r.get("reused"))
    reused = sum(1 for r in res.records if r.get("status") == "ok" and r.get("reused"))   # (a reused
    print(f"\n{done} run, {reused} already done, "                                     # skip is a skip)
          f"{sum(1 for r in res.records if r.get('status') == 'skipped')} not applicable; "
          + (f"feature cache: {res.cache_hits} hits, {res.cache_misses} misses" if cfg.cache else "feature cache: off"),
          file=sys.stderr)
    if res.not_shown:
        print(f"{res.not_shown} earlier result file(s) in {cfg.out}/results/ not shown: other weights under a model's "
              f"name, or a benchmark on other data or another --limit than it was last asked on", file=sys.stderr)
    check_something_applied(res)
    print(f"report: {cfg.out}/report.html ({cfg.out}/report.md)  chart: {cfg.out}/chart.png  rows: {cfg.out}/results/",
          file=sys.stderr)
    return 0


def check_something_applied(res) -> None:
    if res.records and all(r.get("status") == "skipped" for r in res.records):
        raise UserError("nothing was evaluated: no benchmark asked for applies to the model(s) (reasons above)")


def say_records(res) -> None:
    """On stderr, per record of a run: not applicable (why), samples skipped or kept by reason, unseen labels."""
    from benchmarks.metrics import skipped_items
    for r in res.records:                   # samples a task could not use (counted by reason in its metrics)
        if r.get("status") == "skipped":     # not applicable: said here, not only in report.md
            print(f"{r['model']} / {r['benchmark']}: not applicable ({r.get('reason')})", file=sys.stderr)
        metrics = r.get("metrics") or {}
        bad = skipped_items(metrics)
        if bad:
            first = (r.get("tables") or {}).get("skipped_examples") or {}
            print(f"{r['model']} / {r['benchmark']}: skipped {sum(bad.values())} sample(s): "
                  + ", ".join(f"{k} {v}" + (f" (first: {first[k]})" if k in first else "") for k, v in sorted(bad.items())),
                  file=sys.stderr)
        kept = {k[len("kept_"):]: int(v) for k, v in metrics.items() if k.startswith("kept_") and v}
        if kept:                             # used, but worth knowing (silent or clipped audio ...)
            print(f"{r['model']} / {r['benchmark']}: kept " + ", ".join(f"{k} {v}" for k, v in sorted(kept.items())),
                  file=sys.stderr)
        if metrics.get("unseen_label"):
            print(f"{r['model']} / {r['benchmark']}: {int(metrics['unseen_label'])} scored sample(s) have a label no "
                  f"training sample has (always wrong)", file=sys.stderr)


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate models on benchmarks (or `vlm eval list`)",
                       description="Evaluate checkpoints or open_clip models on registered benchmarks, suites or "
                                   "any clip_benchmark wds folder (--bench wds:DIR). `vlm eval list [PATTERN] "
                                   "[--suites]` lists them.")
    add_config_flags(p, EvalConfig, overrides=False)
    p.add_argument("--suites", action="store_true", help="with list: list the suites instead")
    p.add_argument("overrides", nargs="*", metavar="list [PATTERN] | key=value",
                   help="`list` and an fnmatch pattern (e.g. 'sw-*'), or settings as key=value")
    p.set_defaults(func=cmd_eval)
    from benchmarks.model_card import add_cli as add_card_cli
    add_card_cli(sub)
