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

from vlm.lazy import lazy_attributes
from vlm.registry import LLM_SOURCES

_LAZY = {
    "load_recipe": ("vlm.train.recipe", "load_recipe"),
    "Recipe": ("vlm.train.recipe", "Recipe"),
    "train": ("vlm.train.trainer", "train"),
    "Trainer": ("vlm.train.trainer", "Trainer"),
}

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())


def _pretrained_llm(spec: str, seed: int | None):
    """`llm: pretrained:RECIPE`: RECIPE's trained LLM (vlm.train.base_llm: trained once per seed, cached)."""
    from vlm.train.base_llm import llm_source
    return llm_source(spec, seed)


LLM_SOURCES["pretrained:"] = _pretrained_llm
