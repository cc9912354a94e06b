"""Training: recipes (typed YAML), the stage loop, objectives, checkpoints, DDP / FSDP2, logs and plots.

    vlm train llava-tiny [--out DIR] [--resume] [key=value ...]
    torchrun --nproc_per_node 2 -m vlm.cli train llava-tiny runtime.strategy=ddp

    from vlm.train import load_recipe, train
    final = train(load_recipe("llava-tiny", ["stages.1.steps=100"]), "runs/try")    # -> runs/try/final

Parts: `recipe` (schema, overrides, validation, built-ins), `trainer` (the loop), `objectives` (what a
stage minimises), `strategies` (none / ddp / fsdp2), `schedules`, `checkpoint`, `logging`, `data`
(stage -> shard pipeline glue), `cli`. Names resolve on first use (the CLI imports this package).
"""
from __future__ import annotations

_LAZY = {"load_recipe": "vlm.train.recipe", "Recipe": "vlm.train.recipe", "train": "vlm.train.trainer",
         "Trainer": "vlm.train.trainer"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'vlm.train' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(_LAZY[name]), name)
