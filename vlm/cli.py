"""The `vlm` command. Each part of the suite adds its own sub-commands through `add_cli(subparsers)`.

    vlm list encoders|families|recipes
    vlm export CKPT --to hf-llava --out DIR
    vlm data build synthetic-world --out DIR        (vlm/data)
    vlm train | eval | embed | demo                 (their own modules)

Bad input (a `UserError`) prints one line and exits 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from vlm.errors import UserError

# Modules that add top-level commands: each has add_cli(subparsers). Missing ones are skipped, so a
# partial install still runs what it has.
COMMAND_MODULES = ["vlm.commands", "vlm.data.cli", "vlm.train.cli", "benchmarks.cli", "vlm.embed_cli", "vlm.demo"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlm", description="Train and evaluate vision-, audio- and music-language models.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and (e.name == name or name.startswith(e.name + ".")):
                continue
            raise
        mod.add_cli(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except UserError as e:
        print(f"vlm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
