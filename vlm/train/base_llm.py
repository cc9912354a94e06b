"""Base LLMs trained by a recipe, built once and cached: `llm: pretrained:RECIPE` in a model's settings.

    model: {family: llava, size: tiny, settings: {llm: "pretrained:llava-text-tiny"}}   # the tiny recipes
    vlm train llava-tiny runtime.seed=1          # trains llava-text-tiny with seed 1 first (once), then llava-tiny
    vlm train llava-tiny model.settings.llm=tiny:llama      # the random tiny LLM instead

When a recipe's model asks for `pretrained:RECIPE` (a built-in name or a YAML file), the LLM it starts from
is RECIPE's trained LLM: RECIPE is trained with the asking recipe's `runtime.seed`, in a separate process
(so the asking run's random state is the same whether the base was cached or built just now), into
`$VLM_CACHE/base-llm/<recipe>-s<seed>-<key>/` (default `~/.cache/vlm`), and the model is built with
`vlm:<that folder>/run/final`. The key hashes RECIPE as resolved (stages, settings, seed, its data's
`build` settings, and the name / size / mtime of every shard it reads from a user's files): change any of
these and a new base is trained; the same recipe and seed gives the same base, bit for bit. Sources with
`build` settings (synthetic-world) are built inside the cache folder. A lock file makes concurrent runs (and
the ranks of one torchrun job) wait for one build. Weightless skeletons (recipe validation) use RECIPE's
own LLM setting (same architecture, nothing trained). `VLM_BASE_LLM_OVERRIDES="stages.0.steps=500 ..."` overrides
every base recipe (part of the key; the test suite shrinks the base to a few steps this way).
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from vlm.atomic import write_text
from vlm.errors import UserError
from vlm.train.recipe import PRETRAINED, base_llm_architecture, load_recipe

DONE = "base_llm.json"                  # written last: the folder holds a finished base
OVERRIDES_ENV = "VLM_BASE_LLM_OVERRIDES"   # key=value overrides of every base recipe (the tests: a few steps)
# the launcher's variables: the base trains in a process of its own, one rank
_DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "ROLE_WORLD_SIZE",
             "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT",
             "TORCHELASTIC_MAX_RESTARTS", "TORCH_NCCL_ASYNC_ERROR_HANDLING")


def cache_root() -> Path:
    return Path(os.environ.get("VLM_CACHE") or Path.home() / ".cache" / "vlm") / "base-llm"


# Stage fields added after the key's format 1: left out of the key while at their default, so that a cache built
# before they existed stays valid (the recipe it trained is the same).
_LATER_STAGE_FIELDS = {"lr_scale": {}}


def _fingerprint(patterns: list[str]) -> list[list]:
    from vlm.data.reader import expand_shards
    rows = []
    for pattern in patterns:
        for f in expand_shards(pattern):
            p = Path(f)
            st = p.stat() if p.exists() else None
            rows.append([str(f), st.st_size if st else None, st.st_mtime_ns if st else None])
    return rows


def _plan(spec: str, seed: int) -> tuple[Path, list[str], dict]:
    """(cache folder, the overrides that train RECIPE there, the key's contents)."""
    base_llm_architecture(spec)                                     # no pretrained: chains
    name = spec[len(PRETRAINED):]
    extra = shlex.split(os.environ.get(OVERRIDES_ENV, ""))
    recipe = load_recipe(name, [*extra, f"runtime.seed={seed}"], check_files=False)
    data = {n: {"build": src.build} if src.build is not None else {"files": _fingerprint(src.shards)}
            for n, src in recipe.data.items()}
    raw = recipe.to_dict()
    raw["stages"] = [{k: v for k, v in st.items() if k not in _LATER_STAGE_FIELDS or v != _LATER_STAGE_FIELDS[k]}
                     for st in raw["stages"]]
    key_doc = {"recipe": {**raw, "data": data, "runtime": {**raw["runtime"], "output_dir": None}}, "format": 1}
    key = hashlib.sha256(json.dumps(key_doc, sort_keys=True, default=str).encode()).hexdigest()[:12]
    folder = cache_root() / f"{Path(recipe.name).stem}-s{seed}-{key}"
    built = [f"data.{n}.shards=[{folder / ('data-' + n) / Path(src.shards[0]).name}]"   # the data lives with its base
             for n, src in recipe.data.items() if src.build is not None]
    return folder, [*extra, f"runtime.seed={seed}", "runtime.strategy=none", *built], key_doc


def checkpoint(spec: str, seed: int) -> Path:
    """The `final` folder of RECIPE trained with `seed`: from the cache, or trained now (once)."""
    from filelock import FileLock
    try:
        folder, overrides, key_doc = _plan(spec, seed)
    except UserError as e:
        raise UserError(f"base LLM '{spec}': {e}") from None
    final = folder / "run" / "final"
    if (folder / DONE).exists():
        if os.environ.get("RANK", "0") == "0":
            print(f"[base-llm] {spec} (seed {seed}): {final} (cached)", flush=True)
        return final
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / DONE).exists():                                # another process built it meanwhile
            return final
        name = spec[len(PRETRAINED):]
        log = folder / "build.log"
        print(f"[base-llm] training {name} (seed {seed}) into {folder} (once; log: {log})", flush=True)
        env = {k: v for k, v in os.environ.items() if k not in _DIST_ENV}
        here = str(Path(__file__).resolve().parents[2])                # this checkout, installed or not
        env["PYTHONPATH"] = os.pathsep.join([here, *filter(None, [env.get("PYTHONPATH")])])
        cmd = [sys.executable, "-m", "vlm.cli", "train", name, "--out", str(folder / "run"), "--resume", *overrides]
        with open(log, "a") as f:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL,
                                check=False).returncode
        if rc != 0 or not (final / "config.json").exists():
            tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
            raise UserError(f"training the base LLM '{spec}' (seed {seed}) failed (exit {rc}): {tail[0]} "
                            f"(log: {log})")
        write_text(folder / DONE, json.dumps({"spec": spec, "seed": seed, "command": cmd, "key": key_doc},
                                             indent=1, default=str))
        print(f"[base-llm] {name} (seed {seed}) ready: {final}", flush=True)
    return final


def llm_source(spec: str, seed: int | None) -> str | dict:
    """What the families' `resolve_llm` builds for `pretrained:RECIPE`: `vlm:<its cached checkpoint>`
    (trained now if absent), or on the meta device (a recipe's weightless skeleton) RECIPE's own LLM setting."""
    import torch
    if torch.empty(0).is_meta:
        return base_llm_architecture(spec)
    return f"vlm:{checkpoint(spec, 0 if seed is None else seed)}"


