"""Core commands: `vlm list ...`, `vlm chat ...` and `vlm export ...`."""
from __future__ import annotations

import argparse
import math

from vlm.modalities import MODALITIES, MediaError


def _listers() -> dict:
    def encoders(pattern):
        from encoders import list_encoders
        return list_encoders(pattern)

    def families(pattern):
        from vlm.families import list_families
        return list_families(pattern)

    def recipes(pattern):
        from vlm.train.recipe import list_recipes
        return list_recipes(pattern)

    def objectives(pattern):
        from vlm.train.objectives import OBJECTIVES
        return [dict(name=n, modality=f"{cls.data_format} batches", description=_first_line(cls))
                for n, cls in OBJECTIVES.items(pattern)]

    def connectors(pattern):
        from vlm.connectors import MEDIA, PROJECTORS, ROUTES
        rows = []
        for kind, reg in (("media", MEDIA), ("route", ROUTES), ("projector", PROJECTORS)):
            rows += [dict(name=n, modality=kind, description=_first_line(o)) for n, o in reg.items(pattern)]
        return rows

    def benchmarks(pattern):
        from benchmarks import list_benchmarks
        return list_benchmarks(pattern)

    return {"encoders": encoders, "families": families, "recipes": recipes, "benchmarks": benchmarks,
            "objectives": objectives, "connectors": connectors}


def _first_line(obj) -> str:
    return ((obj.__doc__ or "").strip().splitlines() or [""])[0]


def cmd_list(args) -> int:
    rows = _listers()[args.what](args.pattern)
    if not rows:
        import sys
        hint = f"; the pattern is a glob: '*{args.pattern}*'" if args.pattern and not set("*?[") & set(args.pattern) else ""
        print(f"no {args.what} match '{args.pattern}' (`vlm list {args.what}` lists them all{hint})", file=sys.stderr)
        return 1
    width = max([len(r["name"]) for r in rows] + [4])
    for r in rows:
        extra = f"  [{', '.join(r['sizes'])}]" if r.get("sizes") else ""
        print(f"{r['name']:<{width}}  {r.get('modality', ''):<24}  {r.get('description', '')}{extra}")
    return 0


def cmd_export(args) -> int:
    import json
    import sys
    from pathlib import Path

    from vlm.export import export
    out = export(args.ckpt, args.to, args.out)
    print(f"exported {args.ckpt} as {args.to} to {out}")
    media = json.loads((Path(args.ckpt) / "config.json").read_text()).get("media") or {}
    left = sorted(m for m in media if m != "image")
    if left:                                # hf-llava is transformers' image-text Llava
        print(f"note: only the image path is exported; the checkpoint's {', '.join(left)} part(s) are left out",
              file=sys.stderr)
    return 0


def _read_media(kind: str, path: str):
    """A media file from the command line, decoded as the data pipeline decodes it (the modality table)."""
    from vlm.errors import UserError
    from vlm.modalities import read_file
    try:
        return read_file(kind, path)
    except MediaError as e:
        raise UserError(f"--{kind} {path}: {e}") from None


def cmd_chat(args) -> int:
    from vlm.errors import UserError
    from vlm.loading import load
    from vlm.modalities import MODALITIES
    try:
        args.prompt.encode("utf-8")    # argv bytes that are not UTF-8 arrive as surrogates: a tokenizer TypeError
    except UnicodeEncodeError:
        raise UserError("the prompt is not UTF-8 text") from None
    if not args.prompt.strip():
        raise UserError("the prompt is empty")
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):     # nan decoded greedily, inf uniformly
        raise UserError(f"--temperature must be a finite number >= 0 (0 = greedy), got {args.temperature}")
    model = load(args.ckpt)
    if not hasattr(model, "chat"):
        raise UserError(f"{args.ckpt}: not a multimodal LM but a {type(model).__name__} (e.g. a music encoder): "
                        f"it has no LLM to chat with")
    media = {k: [_read_media(k, f) for f in getattr(args, k) or []] for k in MODALITIES}
    try:
        answer = model.chat(args.prompt, {k: v for k, v in media.items() if v}, max_new_tokens=args.max_new_tokens,
                            do_sample=args.temperature > 0, temperature=max(args.temperature, 1e-5))
    except (UserError, MediaError) as e:  # a file decoded, but its preprocessing refuses it (an audio clip too
        raise UserError(_culprit(model, args, media) or str(e)) from None     # short, omni's soundtrack ...)
    print(answer)
    return 0


def _culprit(model, args, media: dict[str, list]) -> str | None:
    """After `chat` failed: the first file given whose preprocessing fails on its own, named with its error
    (the error itself did not say which file); None when each preprocesses alone (the prompt was the problem)."""
    from vlm.errors import UserError
    from vlm.modalities import short_error
    for kind, items in media.items():
        for path, item in zip(getattr(args, kind) or [], items):
            try:
                model.processor.preprocess_media(kind, item)
            except (UserError, MediaError) as e:
                return f"--{kind} {path}: {short_error(e)}"
    return None


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="answer one prompt with a checkpoint",
                       description="One user turn through a checkpoint. Placeholders <image> <audio> <music> <video> "
                                   "in the prompt take the given files in order.")
    p.add_argument("ckpt", help="checkpoint folder")
    p.add_argument("prompt", help='e.g. "<image>\nWhat colour is the shape?"')
    for k in MODALITIES:
        p.add_argument(f"--{k}", action="append", metavar="FILE", help=f"{k} file (repeat for several)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("list", help="list registered encoders, families, recipes, benchmarks, objectives or connectors",
                       description="List registered things, each with its modality and a one-line description.")
    p.add_argument("what", choices=list(_listers()))
    p.add_argument("pattern", nargs="?", default=None, help="fnmatch pattern, e.g. 'timm:*'")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("export", help="export a checkpoint to another stack",
                       description="Export a checkpoint folder, e.g. to transformers' LlavaForConditionalGeneration.")
    p.add_argument("ckpt", help="checkpoint folder (config.json + model.safetensors)")
    p.add_argument("--to", required=True, choices=["hf-llava"])
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_export)
