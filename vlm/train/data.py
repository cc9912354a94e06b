"""Glue between a stage's data settings and the shard pipeline (`vlm.data.pipeline.ShardPipeline`).

    loader = build_stage_loader(recipe, stage_index, processor, rank, world_size, "chat")
    for batch in loader: ...                       # micro-batches of this rank, endless
    state = loader.state_dict(); loader.load_state_dict(state)   # exact position (checkpoints)

A stage trains on a mixture of the recipe's named sources (`stage.data`, default: every source at
its own weight), in the batch format its objective reads, and may filter samples by their json
(`stage.filter`, `vlm.data.filters`: difficulty, quality, task, caption vs conversation, modality),
the SAIL-VL curriculum's easy -> hard ordering. Samples with media the model has no encoder for are
dropped as `not_for_model` whatever the filter says (not data errors).
"""
from __future__ import annotations

from typing import Any

import torch

from vlm.data.filters import FilterStats, Filtering, needs_filtering
from vlm.data.pipeline import PipelineConfig, ShardPipeline
from vlm.train.recipe import Recipe


def stage_sources(recipe: Recipe, stage_index: int) -> list[dict[str, Any]]:
    """The stage's mixture as pipeline sources: [{name, shards, weight}]."""
    stage = recipe.stages[stage_index]
    weights = stage.data or {name: src.weight for name, src in recipe.data.items()}
    return [{"name": name, "shards": list(recipe.data[name].shards), "weight": float(w)} for name, w in weights.items()]


def stage_seed(recipe: Recipe, stage_index: int) -> int:
    """Each stage shuffles its own way; the same for every rank (the reader splits by slot)."""
    return recipe.runtime.seed * 1000 + stage_index


def build_stage_loader(recipe: Recipe, stage_index: int, processor, rank: int = 0, world_size: int = 1,
                       format: str = "chat", format_settings: dict | None = None, **overrides) -> ShardPipeline:
    """The stage's data for this rank: micro-batches of batch_size / (world_size x grad_accum) samples,
    an endless iterable with an exact position (`state_dict` / `load_state_dict`)."""
    stage, rt = recipe.stages[stage_index], recipe.runtime
    micro = stage.batch_size // (world_size * stage.grad_accum)
    cfg = PipelineConfig(batch_size=micro, max_len=stage.max_len, packing=stage.packing,
                         shuffle_buffer=rt.shuffle_buffer, seed=stage_seed(recipe, stage_index),
                         num_workers=rt.num_workers, rank=rank, world_size=world_size, format=format,
                         format_settings=dict(format_settings or {}), remote_timeout=rt.remote_timeout,
                         remote_retries=rt.remote_retries, remote_backoff=rt.remote_backoff,
                         max_error_rate=rt.max_error_rate)
    where = f"stages.{stage_index}.filter"

    def wrap(base):
        return Filtering(base, stage.filter, where) if needs_filtering(base, stage.filter) else base
    return ShardPipeline(stage_sources(recipe, stage_index), processor, cfg, stats_cls=FilterStats,
                         wrap_sample_fn=wrap, **overrides)


def to_device(batch: Any, device: torch.device) -> Any:
    """The batch's tensors on `device` (through nested dicts); private keys (`_...`) dropped. Media item
    lists stay where they are (the model moves each item as it encodes it)."""
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items() if not k.startswith("_")}
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    return batch
