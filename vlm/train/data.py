"""Glue between a stage's data settings and the shard pipeline (`vlm.data.pipeline.ShardPipeline`).

    loader = build_stage_loader(recipe, stage_index, processor, rank, world_size)
    for batch in loader: ...                       # micro-batches of this rank, endless
    state = loader.state_dict(); loader.load_state_dict(state)   # exact position (checkpoints)

A stage trains on a mixture of the recipe's named sources (`stage.data`, default: every source at
its own weight) and may filter samples by their json (`stage.filter`: difficulty, quality, task,
caption vs conversation), the SAIL-VL curriculum's easy -> hard ordering. The filter reads only
the json member of a sample (no media decoded); a filtered sample counts as consumed, so the data
position stays exact, and is reported under the reason `filtered`, which is not a data error.
"""
from __future__ import annotations

import json
from typing import Any

from vlm.data.decode import SampleError
from vlm.data.pipeline import PipelineConfig, SampleProcessor, ShardPipeline
from vlm.data.reader import DataStats, FileCache, SampleRef, read_fields
from vlm.errors import UserError
from vlm.train.recipe import Recipe, SampleFilter

FILTERED = "filtered"
MODEL_KEYS = ("input_ids", "labels", "attention_mask", "position_ids", "media")


def keep_sample(meta: dict, f: SampleFilter) -> bool:
    """Whether a sample's json passes a stage filter; a missing score fails a bound on it."""
    d, q = meta.get("difficulty"), meta.get("quality")
    if f.min_difficulty is not None and not (isinstance(d, (int, float)) and d >= f.min_difficulty):
        return False
    if f.max_difficulty is not None and not (isinstance(d, (int, float)) and
                                             (d < f.max_difficulty or d == f.max_difficulty == 1.0)):
        return False
    if f.min_quality is not None and not (isinstance(q, (int, float)) and q >= f.min_quality):
        return False
    if f.tasks is not None and meta.get("task") not in f.tasks:
        return False
    if f.kind is not None:
        is_caption = isinstance(meta.get("caption"), str) or "conversations" not in meta
        if is_caption != (f.kind == "caption"):
            return False
    return True


def is_noop(f: SampleFilter) -> bool:
    return f == SampleFilter()


class FilteringSampleProcessor(SampleProcessor):
    """A SampleProcessor that first reads a sample's json alone and drops it if the stage filter says so."""

    MAX_STREAK = 200_000            # samples in a row rejected: the filter keeps nothing (never loop forever)

    def __init__(self, base: SampleProcessor, sample_filter: SampleFilter, where: str = "filter"):
        self.__dict__.update(base.__dict__)
        self.sample_filter, self.where, self.streak = sample_filter, where, 0

    def __call__(self, ref: SampleRef, files: FileCache):
        if not ref.error:
            if not keep_sample(_json_of(ref, files), self.sample_filter):
                self.streak += 1
                if self.streak >= self.MAX_STREAK:
                    raise UserError(f"recipe field '{self.where}': {self.streak} samples in a row fail it")
                raise SampleError(FILTERED, f"{ref.key}: not in this stage's filter")
            self.streak = 0
        return super().__call__(ref, files)


def check_filter(shards: list[str], sample_filter: SampleFilter, where: str, limit: int = 5000) -> None:
    """UserError naming the stage's filter if none of the first `limit` samples of its sources passes it."""
    from vlm.data.reader import expand_shards, scan_shard
    files, seen = FileCache(), 0
    try:
        for shard in expand_shards(shards):
            for ref in scan_shard(shard):
                if not ref.error and keep_sample(_json_of(ref, files), sample_filter):
                    return
                seen += 1
                if seen >= limit:
                    break
            if seen >= limit:
                break
    finally:
        files.close()
    raise UserError(f"recipe field '{where}': none of the first {seen} samples of the stage's data passes it")


def _json_of(ref: SampleRef, files: FileCache) -> dict:
    member = [m for m in ref.members if m[0] == "json"]
    if not member:
        return {}                                     # `txt` alone: a caption without scores
    only_json = SampleRef(ref.shard, ref.key, tuple(member))
    try:
        meta = json.loads(read_fields(only_json, files)["json"])
    except (OSError, ValueError, UnicodeDecodeError):
        return {}                                     # the full decode reports the real error
    return meta if isinstance(meta, dict) else {}


class StageStats(DataStats):
    """DataStats where stage-filtered samples are not errors (they do not count toward the error rate)."""

    @property
    def errors(self) -> int:
        return super().errors - self.skipped.get(FILTERED, 0)

    def worst_shard(self) -> tuple[str, int]:
        counts = {s: sum(n for r, n in c.items() if r not in ("too_long", FILTERED)) for s, c in self.by_shard.items()}
        shard = max(counts, key=lambda s: (counts[s], s), default="")
        return shard, counts.get(shard, 0)


def stage_sources(recipe: Recipe, stage_index: int) -> list[dict[str, Any]]:
    """The stage's mixture as pipeline sources: [{name, shards, weight}]."""
    stage = recipe.stages[stage_index]
    weights = stage.data or {name: src.weight for name, src in recipe.data.items()}
    return [{"name": name, "shards": list(recipe.data[name].shards), "weight": float(w)} for name, w in weights.items()]


def stage_seed(recipe: Recipe, stage_index: int) -> int:
    """Each stage shuffles its own way; the same for every rank (the reader splits by slot)."""
    return recipe.runtime.seed * 1000 + stage_index


def build_stage_loader(recipe: Recipe, stage_index: int, processor, rank: int = 0, world_size: int = 1
                       ) -> ShardPipeline:
    """The stage's data for this rank: micro-batches of batch_size / (world_size x grad_accum) samples,
    an endless iterable with an exact position (`state_dict` / `load_state_dict`)."""
    stage, rt = recipe.stages[stage_index], recipe.runtime
    micro = stage.batch_size // (world_size * stage.grad_accum)
    cfg = PipelineConfig(batch_size=micro, max_len=stage.max_len, packing=stage.packing,
                         shuffle_buffer=rt.shuffle_buffer, seed=stage_seed(recipe, stage_index),
                         num_workers=rt.num_workers, rank=rank, world_size=world_size)
    where = f"stages.{stage_index}.filter"
    filtering = {} if is_noop(stage.filter) else dict(
        stats_cls=StageStats, wrap_sample_fn=lambda base: FilteringSampleProcessor(base, stage.filter, where))
    return ShardPipeline(stage_sources(recipe, stage_index), processor, cfg, **filtering)


def model_inputs(batch: dict, device) -> dict:
    """The keys MultimodalLM.forward takes, tensors on `device` (media items move inside the model)."""
    out = {}
    for k in MODEL_KEYS:
        v = batch.get(k)
        if v is None:
            continue
        out[k] = v.to(device, non_blocking=True) if hasattr(v, "to") else v
    return out


def batch_tokens(batch: dict) -> int:
    """Non-padding tokens of a batch (padded: the attention mask; packed: the samples' lengths)."""
    if batch.get("seq_lens") is not None:
        lens = batch["seq_lens"]
        return int(sum(sum(r) for r in lens) if isinstance(lens, list) else lens.sum())
    if batch.get("attention_mask") is not None:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())
