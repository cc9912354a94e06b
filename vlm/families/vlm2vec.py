"""VLM2Vec family: any multimodal LM of ours turned into an instruction-conditioned embedder (TIGER-Lab,
"VLM2Vec: Training Vision-Language Models for Massive Multimodal Embedding Tasks").

    vlm data build synthetic-world --out data/sw-mmeb --tasks mmeb --samples 16000 --eval-per-task 200
    vlm train vlm2vec-tiny                                            # from scratch (CPU, minutes)
    vlm train vlm2vec-tiny model.settings.init=runs/llava-tiny/final  # from a llava-tiny run
    vlm embed --model runs/vlm2vec-tiny/final --input data/sw-mmeb/test --out runs/emb

The model is the base model unchanged (`MultimodalLM`, its parts and route): instruction + input go
through the LLM and the embedding is the final layer's hidden state at the last prompt token,
L2-normalised (`MultimodalLM.embed`). Training is the `contrastive` objective (InfoNCE at temperature
0.02, in-batch negatives gathered across ranks, optional hard negatives, GradCache via `chunk_size`),
with the LLM `full` or `lora` per stage. The starting point is either a checkpoint folder (`init`: a
llava / iaa / dragonfly / omni run, tiny or 0.5b, any checkpoint format: its architecture and weights, read by
vlm.model_files as `vlm.load` reads them) or a fresh build of a `base` family (`base_size`, `base_settings`).
Either way the result is recorded as family `vlm2vec` and saves as a format-3 checkpoint.
"""
from __future__ import annotations

from pathlib import Path

from vlm.errors import require
from vlm.families.base import (
    FAMILIES,
    PROJECTORS,
    Family,
    checkpoint_model,
    register_family,
)
from vlm.model import FORMAT_VERSION, MultimodalLM
from vlm.model_files import format_version, read_config, upgrade


def _init_config(init: str) -> dict:
    """The checkpoint's config.json in the current format (formats 1 and 2 upgrade as `vlm.load` does)."""
    raw = read_config(Path(init))
    require("llm" in raw and "media" in raw,
            f"{init}: not a multimodal LM checkpoint (a vlm2vec model starts from one: llava, iaa, dragonfly, omni ...)")
    if format_version(Path(init), raw) < FORMAT_VERSION:
        raw, _ = upgrade(raw, {})
    return raw


def load_init(init: str) -> MultimodalLM:
    """A checkpoint folder's model (any format, any MultimodalLM family); the architecture only on the meta
    device (`checkpoint_model`)."""
    return checkpoint_model(init, "a vlm2vec model starts from one: llava, iaa, dragonfly, omni ...")


def build_vlm2vec(base: str = "llava", base_size: str | None = "tiny", base_settings: dict | None = None,
                  init: str | None = None, seed: int | None = 0) -> MultimodalLM:
    """init: a checkpoint folder to start from (then base / base_size / base_settings are not used);
    otherwise a fresh `base` family model of `base_size` with `base_settings`."""
    if init:
        model = load_init(init)
    else:
        fam = FAMILIES.get(base)
        require(base != "vlm2vec", "vlm2vec's base must be another family (llava, iaa, dragonfly ...)")
        settings = dict(base_settings or {})
        if seed is not None and "seed" in fam.settings(base_size):
            settings.setdefault("seed", seed)
        model = fam.build(base_size, **settings)
        require(isinstance(model, MultimodalLM), f"family '{base}' does not build a multimodal LM to embed with")
    model.config.family = "vlm2vec"
    return model


def vlm2vec_modalities(settings: dict) -> tuple[str, ...]:
    if settings.get("init"):
        return tuple(_init_config(settings["init"])["media"])
    return FAMILIES.get(settings["base"]).modalities(settings.get("base_size"), settings.get("base_settings") or {})


# The tiny embedder reads the image encoder's last layer (LLaVA's -2 is for generation; single val-split pilot
# runs preferred the last layer; not a reported, multi-seed result).
TINY_BASE = {"audio": None, "music": None, "video": None, "vision": {"name": "tiny-clip", "feature_layer": -1}}
SW_MMEB = {"pairs": {"shards": ["data/sw-mmeb/train"], "weight": 1.0}}

# CPU, minutes: everything trains from scratch (the tiny encoder and the tiny Llama start random: the text-pretrained
# llava-text-tiny start scored 0.330 on val against 0.400 from random weights, both at lr 5e-4 / temperature 0.05),
# 64 pairs per step with one hard negative each, GradCache in chunks of 32 prompts. lr 1e-3 / temperature 0.02:
# what the val split chose at these 600 steps (lr 5e-4 / 1e-3 / 2e-3 x temperature 0.02 / 0.05, seed 0: 0.422, 5e-4
# at 0.02 0.420; benchmarks/studies/vlm2vec_compare.py, model_cards/vlm2vec.md).
VLM2VEC_TINY_RECIPE = {
    "description": "VLM2Vec on synthetic-world MMEB-style pairs, CPU (vlm data build synthetic-world --out "
                   "data/sw-mmeb --tasks mmeb); from scratch or model.settings.init=runs/llava-tiny/final",
    "model": {"family": "vlm2vec", "size": "tiny", "settings": {"base_settings": dict(TINY_BASE)}},
    "data": SW_MMEB,
    "stages": [
        {"name": "contrastive", "trainable": ["encoders.*", "media.*"], "llm": "full", "objective": "contrastive",
         "objective_settings": {"temperature": 0.02, "negatives": 1, "chunk_size": 32},
         "steps": 600, "lr": 1e-3, "batch_size": 64, "max_len": 96, "weight_decay": 0.01,
         "schedule": "cosine", "warmup": 0.05, "grad_clip": 1.0},
    ],
    "runtime": {"checkpoint_every": 200, "keep_last": 2, "output_dir": "runs/{name}", "seed": 0,
                "num_workers": 1, "log_every": 10},
}
# VLM2Vec's setting on GPUs: LoRA rank 8 on the LLM (the paper's best; its code trains DoRA: lora.use_dora),
# global batch 1,024 with GradCache sub-batches (here 32 prompts per pass on each rank), lr 2e-5, 2,000 steps,
# 10 % warmup, temperature 0.02, bf16, DDP. Start from a trained llava-0.5b (model.settings.init=...) and
# point data.* at MMEB-train shards (vlm data convert mmeb ...) or synthetic-world pairs.
VLM2VEC_05B_RECIPE = {
    "description": "VLM2Vec recipe (LoRA r8, batch 1024, GradCache), GPU; model.settings.init=<a llava-0.5b run>",
    "model": {"family": "vlm2vec", "size": "0.5b", "settings": {}},
    "data": {"mmeb": {"shards": ["data/mmeb-train"], "weight": 1.0}},
    "stages": [
        {"name": "contrastive", "trainable": [PROJECTORS], "llm": "lora",
         "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.1,
                  "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
         "objective": "contrastive", "objective_settings": {"temperature": 0.02, "negatives": 0, "chunk_size": 32},
         "steps": 2000, "lr": 2e-5, "batch_size": 1024, "max_len": 256, "schedule": "cosine", "warmup": 0.1,
         "grad_clip": 1.0},
    ],
    "runtime": {"checkpoint_every": 250, "keep_last": 3, "output_dir": "runs/{name}", "num_workers": 4,
                "strategy": "ddp", "precision": "bf16", "log_every": 10},
}

register_family(Family(
    name="vlm2vec",
    description="VLM2Vec: any multimodal LM checkpoint (or a fresh base model) trained contrastively as an "
                "instruction-conditioned embedder",
    builder=build_vlm2vec,
    sizes={
        "tiny": {"base": "llava", "base_size": "tiny", "base_settings": TINY_BASE},
        "0.5b": {"base": "llava", "base_size": "0.5b", "base_settings": {}},
    },
    recipes={"tiny": VLM2VEC_TINY_RECIPE, "0.5b": VLM2VEC_05B_RECIPE},
    modalities_of=vlm2vec_modalities,
))
