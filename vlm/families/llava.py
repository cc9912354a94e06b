"""LLaVA family: encoder -> 2-layer MLP projector -> LLM (LLaVA-1.5).

Generic builder `build_llava(...)` for any encoders and any LLM `vlm.llm` can load; named sizes:
`tiny` (tests and the default run, CPU) and `0.5b` (CLIP ViT-L/14-336 + a Qwen2-0.5B-shaped LLM,
random init unless local weights are given, for GPUs).
"""
from __future__ import annotations

import copy

from vlm.families import Family, register_family
from vlm.model import ModelConfig, MultimodalLM


def resolve_llm(spec: str | dict, seed: int | None = 0):
    """'tiny:<arch>' | {'model_type': ..., sizes} (random, shipped tokenizer) | a local HF folder."""
    from vlm import llm as L
    if isinstance(spec, dict):
        spec = dict(spec)
        return L.build_tiny_llm(spec.pop("model_type"), seed=seed, **spec)
    if spec.startswith("tiny:"):
        return L.build_tiny_llm(spec.split(":", 1)[1], seed=seed)
    return L.load_llm(spec)


def build_multimodal(cls, family: str, llm: str | dict, encoders: dict[str, str | dict],
                     connectors: dict[str, dict] | None = None, llm_mode: str = "frozen", lora: dict | None = None,
                     system: str | None = None, extra: dict | None = None, seed: int | None = 0):
    """Shared by the families: build the encoders and the LLM from names, then the model."""
    import torch
    from encoders import build_encoder
    if seed is not None:
        torch.manual_seed(seed)
    model, tok = resolve_llm(llm, seed)
    encs = {}
    for modality, spec in encoders.items():
        if spec is None:
            continue
        kw = dict(spec) if isinstance(spec, dict) else {"name": spec}
        encs[modality] = build_encoder(kw.pop("name"), **kw)
    cfg = ModelConfig(family=family, llm={}, encoders={}, llm_mode=llm_mode, lora=lora, system=system,
                      connectors={m: dict((connectors or {}).get(m, {})) for m in encs}, extra=dict(extra or {}))
    return cls(cfg, model, tok, encs)


def build_llava(vision: str | dict | None = "tiny-clip", llm: str | dict = "tiny:llama", projector: str = "mlp2x_gelu",
                audio: str | dict | None = None, music: str | dict | None = None, video: str | dict | None = None,
                audio_pool: int = 1, music_pool: int = 1, llm_mode: str = "frozen", lora: dict | None = None,
                seed: int | None = 0) -> MultimodalLM:
    encs, conns = per_modality(vision, audio, music, video, projector, audio_pool, music_pool)
    return build_multimodal(MultimodalLM, "llava", llm, encs, conns, llm_mode, lora, seed=seed)


def per_modality(vision, audio, music, video, projector: str, audio_pool: int = 1, music_pool: int = 1):
    """Encoder names and projector settings per modality, as the builders' keyword arguments give them."""
    encs = {"image": vision, "audio": audio, "music": music, "video": video}
    conns = {m: {"type": projector} for m in encs}
    conns["audio"]["pool"] = audio_pool
    conns["music"]["pool"] = music_pool
    return encs, conns


# The tiny encoders of every family's `tiny` size: tests and the default run on a CPU.
TINY_SIZE = dict(vision="tiny-clip", llm="tiny:llama", audio="whisper:tiny", music="mert:tiny", video="video:tiny",
                 audio_pool=2, music_pool=4)


# A Qwen2-0.5B-shaped LLM (random init; give a local folder as `llm` for real weights).
QWEN2_05B = dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, max_position_embeddings=4096,
                 tie_word_embeddings=True, rope_theta=1000000.0)

# SAIL-VL curriculum: alignment (projector only, captions) -> SFT easy -> SFT hard by the samples' difficulty
# score (synthetic-world: 0.1 for one object, +0.15 per extra object, +0.03 per clutter stroke). As LLaVA-1.5,
# the vision encoder stays frozen. Sized for a 2-core CPU in minutes, on the image questions about colours,
# shapes and counts (widen `tasks` to train every modality). Every family's tiny recipe is this curriculum
# (same data, steps and learning rates); only what trains in the SFT stages differs.
SYNTHETIC_WORLD = {"world": {"shards": ["data/synthetic-world/train"], "weight": 1.0}}
TINY_COMMON = dict(batch_size=16, max_len=160, weight_decay=0.01, schedule="cosine", warmup=0.05, grad_clip=1.0)
TINY_TASKS = ["color", "shape", "caption", "count", "multi_turn"]


def tiny_curriculum(family: str, description: str, sft_trainable: list[str], sft_llm: str) -> dict:
    """The tiny recipe of `family`: align (projector, captions), then SFT easy -> hard training
    `sft_trainable` with the LLM in mode `sft_llm`."""
    sft = dict(trainable=list(sft_trainable), llm=sft_llm, **TINY_COMMON)
    return {
        "description": description,
        "model": {"family": family, "size": "tiny", "settings": {}},
        "data": copy.deepcopy(SYNTHETIC_WORLD),
        "stages": [
            {"name": "align", "trainable": ["connectors.*"], "llm": "frozen", "lr": 3e-3, "steps": 20,
             "filter": {"kind": "caption", "tasks": ["caption"]}, **TINY_COMMON},
            {"name": "sft-easy", "filter": {"tasks": list(TINY_TASKS), "max_difficulty": 0.3}, "steps": 700,
             "lr": 3e-3, **sft},
            # the whole difficulty range: multi-object questions join the easy ones (no forgetting)
            {"name": "sft-hard", "filter": {"tasks": list(TINY_TASKS), "min_difficulty": 0.1}, "steps": 500,
             "lr": 1e-3, **sft},
        ],
        "runtime": {"checkpoint_every": 100, "keep_last": 2, "output_dir": "runs/{name}", "seed": 0,
                    "num_workers": 1, "log_every": 10},
    }


# The tiny LLM starts random, so SFT trains it fully.
LLAVA_TINY_RECIPE = tiny_curriculum(
    "llava", "SAIL-VL curriculum on synthetic-world image questions, CPU (vlm data build synthetic-world "
             "--out data/synthetic-world)", ["connectors.*"], "full")
# LLaVA-1.5 on a GPU: projector pretraining on captions (lr 1e-3, batch 256), then SFT of projector + LLM
# (lr 2e-5, batch 128), here split easy -> hard; bf16 autocast, FSDP2 under torchrun.
_05B_COMMON = dict(max_len=2048, packing=True, schedule="cosine", warmup=0.03, grad_clip=1.0)
LLAVA_05B_RECIPE = {
    "description": "LLaVA-1.5 recipe, SAIL-VL stages (GPU; point data.* at your shards)",
    "model": {"family": "llava", "size": "0.5b", "settings": {}},
    "data": SYNTHETIC_WORLD,
    "stages": [
        {"name": "align", "trainable": ["connectors.*"], "llm": "frozen", "filter": {"kind": "caption"},
         "steps": 2000, "lr": 1e-3, "batch_size": 256, **_05B_COMMON},
        {"name": "sft-easy", "trainable": ["connectors.*"], "llm": "full", "filter": {"max_difficulty": 0.5},
         "steps": 4000, "lr": 2e-5, "batch_size": 128, **_05B_COMMON},
        {"name": "sft-hard", "trainable": ["connectors.*"], "llm": "full", "filter": {"min_difficulty": 0.5},
         "steps": 2000, "lr": 2e-5, "batch_size": 128, **_05B_COMMON},
    ],
    "runtime": {"checkpoint_every": 500, "keep_last": 3, "output_dir": "runs/{name}", "num_workers": 4,
                "strategy": "fsdp2", "activation_checkpointing": True, "log_every": 10},
}

register_family(Family(
    name="llava",
    description="LLaVA-1.5: encoder -> 2-layer MLP projector -> LLM (projector, then projector + LLM)",
    model_cls=MultimodalLM,
    builder=build_llava,
    sizes={
        "tiny": TINY_SIZE,
        "0.5b": dict(vision="clip-vit-l-336", llm=QWEN2_05B),
    },
    modalities=("image", "audio", "music", "video"),
    recipes={"tiny": LLAVA_TINY_RECIPE, "0.5b": LLAVA_05B_RECIPE},
))
