"""Core commands: `vlm list ...` and `vlm export ...`."""
from __future__ import annotations

import argparse
import importlib


def _listers() -> dict:
    def encoders(pattern):
        from encoders import list_encoders
        return list_encoders(pattern)

    def families(pattern):
        from vlm.families import list_families
        return list_families()

    def recipes(pattern):
        from vlm.train.recipe import list_recipes
        return list_recipes()

    def benchmarks(pattern):
        from benchmarks import list_benchmarks
        return list_benchmarks(pattern)

    return {"encoders": encoders, "families": families, "recipes": recipes, "benchmarks": benchmarks}


def cmd_list(args) -> int:
    rows = _listers()[args.what](args.pattern)
    width = max([len(r["name"]) for r in rows] + [4])
    for r in rows:
        extra = f"  [{', '.join(r['sizes'])}]" if r.get("sizes") else ""
        print(f"{r['name']:<{width}}  {r.get('modality', ''):<22}  {r.get('description', '')}{extra}")
    return 0


def cmd_export(args) -> int:
    from vlm.export import export
    out = export(args.ckpt, args.to, args.out)
    print(f"exported {args.ckpt} as {args.to} to {out}")
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list registered encoders, families, recipes or benchmarks",
                       description="List registered things, each with its modality and a one-line description.")
    choices = [k for k in _listers() if k != "recipes" or importlib.util.find_spec("vlm.train.recipe")]
    choices = [k for k in choices if k != "benchmarks" or importlib.util.find_spec("benchmarks.registry")]
    p.add_argument("what", choices=choices)
    p.add_argument("pattern", nargs="?", default=None, help="fnmatch pattern, e.g. 'timm:*'")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("export", help="export a checkpoint to another stack",
                       description="Export a checkpoint folder, e.g. to transformers' LlavaForConditionalGeneration.")
    p.add_argument("ckpt", help="checkpoint folder (config.json + model.safetensors)")
    p.add_argument("--to", required=True, choices=["hf-llava"])
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_export)
