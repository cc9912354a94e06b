"""`vlm train` and `vlm recipe`: run a recipe, show or list the built-in ones.

    vlm train llava-tiny                                   # a built-in recipe (FAMILY-SIZE)
    vlm train my.yaml --out runs/try1 stages.0.steps=20 runtime.seed=3
    vlm train llava-tiny --resume                          # continue from the newest complete checkpoint
    torchrun --nproc_per_node 2 -m vlm.cli train llava-tiny runtime.strategy=ddp
    vlm recipe show llava-tiny > my.yaml                   # copy, edit, train
    vlm recipe list

The recipe is validated (schema, shard paths, stage trainable sets on a weightless skeleton of the
model) before anything is built or written: a bad one is a one-line error naming the field, exit 2.
A run that diverges (runtime.max_nan_steps non-finite steps in a row) stops with exit 1.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlm.errors import UserError


def _split_rest(args) -> tuple[list[str], str | None, bool]:
    """Options may also come after the recipe, among the overrides (argparse stops at the first positional)."""
    late = argparse.ArgumentParser(prog="vlm train", add_help=False)
    late.add_argument("--out", action="append", default=[])
    late.add_argument("--resume", action="store_true")
    ns, rest = late.parse_known_args(args.overrides)
    for item in rest:
        if "=" not in item or item.startswith("-"):
            raise UserError(f"unrecognised argument '{item}'; overrides are key=value (e.g. stages.0.steps=20)")
    outs = list(dict.fromkeys([*(args.out or []), *ns.out]))
    if len(outs) > 1:          # argparse keeps the last in silence: the run went to the other folder (a review)
        raise UserError(f"--out given {len(outs)} times ({', '.join(outs)}): give one run folder")
    return rest, (outs or [None])[0], ns.resume or args.resume


def cmd_train(args) -> int:
    from vlm.train.strategies import world_size_from_env
    from vlm.train.recipe import check_model, load_recipe
    overrides, out, resume = _split_rest(args)
    recipe = load_recipe(args.recipe, overrides, world_size=world_size_from_env())
    if out:
        recipe.runtime.output_dir = out.replace("{", "{{").replace("}", "}}")
    source = Path(args.recipe)
    saved = recipe.output_dir() / "recipe.yaml"
    if source.suffix in (".yaml", ".yml") and source.is_file() and saved.is_file() and saved.samefile(source):
        # the run writes its resolved recipe there: the user's file (its comments, its layout) would be lost
        advice = (f"to resume with it, copy it out of the run folder and pass the copy (cp {source} my.yaml; vlm train "
                  f"my.yaml --out {recipe.output_dir()} --resume)" if resume else "train into another --out")
        raise UserError(f"{source}: the run folder {recipe.output_dir()} would write its resolved recipe over this "
                        f"file; {advice}")
    check_model(recipe)
    from vlm.train.trainer import TrainingDiverged, train
    try:
        final = train(recipe, recipe.output_dir(), resume=resume)
    except TrainingDiverged as e:
        print(f"vlm train: {e}", file=sys.stderr)
        return 1
    print(f"final model: {final}")
    return 0


def cmd_recipe_show(args) -> int:
    from vlm.train.recipe import load_recipe
    print(load_recipe(args.name, args.overrides, check_files=False).to_yaml(), end="")
    return 0


def cmd_recipe_list(args) -> int:
    """`vlm recipe list [PATTERN]` is `vlm list recipes [PATTERN]`."""
    from vlm.commands import cmd_list
    args.what = "recipes"
    return cmd_list(args)


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model from a recipe (built-in name or YAML file)",
                       description="Run a recipe's stages in order. Overrides are dotted key=value pairs, "
                                   "e.g. stages.0.steps=20 runtime.seed=3 runtime.strategy=ddp.")
    p.add_argument("--out", action="append", default=None, help="run folder (default: runtime.output_dir)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument("recipe", help="built-in recipe name (vlm recipe list) or a .yaml file")
    p.add_argument("overrides", nargs=argparse.REMAINDER, metavar="key=value", help="recipe overrides (YAML values)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("recipe", help="show or list training recipes",
                       description="Print a built-in recipe (or a YAML file, resolved) as YAML, or list them.")
    rsub = p.add_subparsers(dest="recipe_command", metavar="ACTION")
    rsub.required = True
    s = rsub.add_parser("show", help="print a recipe as YAML")
    s.add_argument("name", help="built-in recipe name or .yaml file")
    s.add_argument("overrides", nargs="*", metavar="key=value")
    s.set_defaults(func=cmd_recipe_show)
    s = rsub.add_parser("list", help="list the built-in recipes")
    s.add_argument("pattern", nargs="?", default=None, help="fnmatch pattern, e.g. 'llava-*'")
    s.set_defaults(func=cmd_recipe_list)


def main(argv: list[str] | None = None) -> int:
    """`python -m vlm.train.cli ...` is `vlm train ...`."""
    from vlm.cli import main as vlm_main
    return vlm_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:  # pragma: no cover - vlm.cli already reports these
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
