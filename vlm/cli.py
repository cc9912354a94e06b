"""The `vlm` command. Each part of the suite adds its own sub-commands through `add_cli(subparsers)`.

    vlm list encoders|families|recipes|objectives|connectors|benchmarks [PATTERN]
    vlm export CKPT --to hf-llava --out DIR
    vlm data build synthetic-world --out DIR        (vlm/data)
    vlm train | eval | demo                         (their own modules)
    vlm embed | index | search                      (vlm/embed)

Bad input (a `UserError`) prints one line and exits 2, never a traceback.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from vlm.errors import UserError

# Modules that add top-level commands: each has add_cli(subparsers) and imports nothing heavy at the top.
COMMAND_MODULES = ["vlm.commands", "vlm.data.cli", "vlm.train.cli", "benchmarks.cli", "vlm.demo", "vlm.embed.cli"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlm", description="Train and evaluate vision-, audio- and music-language models.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_cli(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops collecting a command's key=value overrides at its first option: gather the rest
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*(args.overrides or []), *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        rc = args.func(args)
    except UserError as e:
        _say(f"vlm {args.command}: error: {e}")
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:          # `vlm data inspect ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # so the exit flush does not fail again
        return 0
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRNOS:
            raise
        # the machine, not the input: a read-only or full disk, an output path under a file, no permission
        where = f"{e.filename}: " if e.filename else ""
        _say(f"vlm {args.command}: error: {where}{e.strerror or e}")
        return 2
    return int(rc or 0)


def _say(line: str) -> None:
    """One line on stderr in one write (the ranks of a torchrun write to one terminal: two prints each, message
    and newline, came out glued), prefixed with the rank when it is not rank 0 of several."""
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE", "1")
    prefix = f"[rank {rank}] " if rank not in (None, "", "0") and world not in ("", "1") else ""
    sys.stderr.write(f"{prefix}{line}\n")
    sys.stderr.flush()


# read-only file system, no space left, a path under a file, permission denied, disk quota exceeded
ENVIRONMENT_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EDQUOT}


if __name__ == "__main__":
    sys.exit(main())
