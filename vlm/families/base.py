"""What every family file uses: the Family record and its registry, the builder toolkit (LLM and
encoders from names, parts per modality), the shared size presets and the tiny curriculum.

A family is one file that declares its parts and registers itself:

    def build_mine(vision="tiny-clip", llm="tiny:llama", audio=None, seed=0):
        encoders, media = media_parts({"type": "projector", "projector": "linear"}, vision=vision, audio=audio)
        return build_multimodal("mine", llm, encoders, media, route={"type": "plain"}, seed=seed)

    register_family(Family("mine", "my connector", build_mine, sizes={"tiny": {...}, "7b": {...}},
                           recipes={"tiny": {...}, "7b": {...}}, test_widths={"7b": {...}}))

Test widths: `smoke_recipe` (`vlm.train.recipe`; the every-recipe test `tests/test_recipes_run.py`)
trains each built-in recipe two steps per stage with every part shrunk to CPU-test width, of the same
kind: `test_width_settings` maps the encoder presets (`TEST_ENCODERS`: an HF tower keeps its feature
layer and CLS handling at 32 px / 2 layers of 64; Whisper and MERT presets go to their tiny sizes) and
any LLM config (`tiny_llm`: same model type, 2 layers of 64). A family whose builder takes other width
settings gives `test_widths[size]` on top (the mert family: its HuBERT sizes).

The model is always `vlm.model.MultimodalLM` built from parts (`vlm.connectors`); a family that needs
a new kind of part registers it there (a media connector or a route), never a model subclass.
"""
from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlm.errors import UserError
from vlm.model import FORMAT_VERSION, ModelConfig, MultimodalLM
from vlm.registry import LLM_SOURCES, Registry

# The builders' keyword for each modality's encoder (`vision="tiny-clip"`, `audio="whisper:tiny"` ...).
ENCODER_ARGS = {"image": "vision", "audio": "audio", "music": "music", "video": "video"}


@dataclass
class Family:
    name: str
    description: str
    builder: Callable[..., Any]                        # generic: builder(**settings) -> model
    sizes: dict[str, dict] = field(default_factory=dict)    # named presets: settings for the builder
    recipes: dict[str, dict] = field(default_factory=dict)  # size -> default recipe (vlm.train.recipe schema)
    # which modalities a model built with `settings` takes; default: the non-None ENCODER_ARGS
    modalities_of: Callable[[dict], tuple[str, ...]] | None = None
    # checkpoints of a family whose models are not MultimodalLMs: loads(folder, config.json) says whether
    # a folder is one, load(folder) rebuilds it (vlm.load)
    loads: Callable[[Path, dict], bool] | None = None
    load: Callable[[Path], Any] | None = None
    # per size: builder settings at test widths beyond what `test_width_settings` shrinks (see above)
    test_widths: dict[str, dict] = field(default_factory=dict)

    def test_settings(self, size: str | None = None, overrides: dict | None = None) -> dict:
        """Builder settings that run `size` (+ `overrides`) at test widths with the same kinds of parts."""
        resolved = self.settings(size, overrides)
        shrunk = test_width_settings(resolved, f"family '{self.name}' size '{size}'")
        if resolved.get("base") and resolved.get("base") in FAMILIES.names():   # a family over another's model
            base_settings = resolved.get("base_settings") or {}
            shrunk["base_settings"] = {**base_settings, **FAMILIES.get(resolved["base"]).test_settings(
                resolved.get("base_size"), base_settings)}
        return {**shrunk, **copy.deepcopy(self.test_widths.get(size, {}))}

    def settings(self, size: str | None = None, overrides: dict | None = None) -> dict:
        """The builder's arguments: its defaults, then the size preset, then `overrides`."""
        if size is not None and size not in self.sizes:
            raise UserError(f"family '{self.name}' has no size '{size}'; known: {sorted(self.sizes)}")
        params = inspect.signature(self.builder).parameters
        unknown = sorted(set(overrides or {}) - set(params))
        if unknown:
            raise UserError(f"family '{self.name}' builder has no setting {unknown[0]!r}; known: {sorted(params)}")
        defaults = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
        return {**defaults, **(self.sizes[size] if size else {}), **(overrides or {})}

    def modalities(self, size: str | None = None, overrides: dict | None = None) -> tuple[str, ...]:
        s = self.settings(size, overrides)
        if self.modalities_of is not None:
            return tuple(self.modalities_of(s))
        return tuple(m for m, arg in ENCODER_ARGS.items() if s.get(arg))

    def build(self, size: str | None = None, **settings):
        """The family's model at a named size with `settings` over it; a setting the builder does not take, or
        values it cannot build (heads that do not divide the width, a negative size, a seed that is not a number
        ...), is one line naming the family (Python's TypeError / transformers' validation errors before)."""
        from huggingface_hub.errors import StrictDataclassError
        if size is not None and size not in self.sizes:
            raise UserError(f"family '{self.name}' has no size '{size}'; known: {sorted(self.sizes)}")
        params = inspect.signature(self.builder).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            unknown = sorted(set(settings) - set(params))
            if unknown:
                raise UserError(f"family '{self.name}': no setting {unknown[0]!r} (its settings: "
                                f"{', '.join(sorted(params))})")
        try:
            return self.builder(**{**(self.sizes[size] if size else {}), **settings})
        except (TypeError, ValueError, RuntimeError, ZeroDivisionError, StrictDataclassError) as e:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]     # (transformers': a heading first)
            raise SettingsDoNotBuild(f"family '{self.name}'{f' size {size!r}' if size else ''}: the settings do not "
                                     f"build a model ({type(e).__name__}: {' '.join(lines[:2])[:240]})") from e


class SettingsDoNotBuild(UserError):
    """A family's builder refused its settings as a whole (a value transformers or torch cannot build): the
    recipe names `model` for it, not the setting whose value the message happens to quote."""


FAMILIES: Registry[Family] = Registry("model family")


def register_family(family: Family) -> Family:
    return FAMILIES.register(family.name, family)


# ---------------------------------------------------------------------------------------------
# the builder toolkit
# ---------------------------------------------------------------------------------------------
def resolve_llm(spec: str | dict, seed: int | None = 0):
    """'tiny:<arch>' | {'model_type': ..., sizes} (random, shipped tokenizer) | 'vlm:<checkpoint>' (the LLM a
    vlm checkpoint holds, e.g. `llava-text-tiny`'s text-pretrained one) | 'pretrained:RECIPE' (vlm.registry's
    LLM_SOURCES: registered by vlm.train) | a local HF folder."""
    from vlm import llm as L
    if isinstance(spec, str):
        for prefix, source in LLM_SOURCES.items():
            if spec.startswith(prefix):
                return resolve_llm(source(spec, seed), seed)
        if spec.startswith("pretrained:"):
            raise UserError(f"LLM {spec!r}: import vlm.train first (it trains and caches such base LLMs), "
                            f"or give 'vlm:CHECKPOINT'")
    if isinstance(spec, dict):
        spec = dict(spec)
        if not isinstance(spec.get("model_type"), str):
            raise UserError(f"LLM settings {spec}: no 'model_type' (e.g. llama, qwen2) beside the sizes")
        return L.build_tiny_llm(spec.pop("model_type"), seed=seed, **spec)
    if spec.startswith("tiny:"):
        return L.build_tiny_llm(spec.split(":", 1)[1], seed=seed)
    if spec.startswith("vlm:"):
        return checkpoint_llm(spec.split(":", 1)[1])
    return L.load_llm(spec)


def checkpoint_model(path: str, what: str = "") -> MultimodalLM:
    """A multimodal checkpoint folder's model (any format: its architecture from config.json, its weights); on
    the meta device (a recipe's weightless skeleton, `vlm.train.recipe.model_skeleton`) the architecture only:
    loading weights there failed, so `vlm train ... llm=vlm:CKPT` was refused with a bogus weights error."""
    import torch

    from vlm.model_files import (  # not vlm.loading: it imports the families
        format_version,
        load_multimodal,
        load_tokenizer,
        read_config,
        upgrade,
    )
    p = Path(path)
    raw = read_config(p)
    if not ("llm" in raw and "media" in raw):
        raise UserError(f"{path}: not a multimodal LM checkpoint{f' ({what})' if what else ''}")
    if torch.empty(0).is_meta:                          # under `with torch.device("meta")`
        if format_version(p, raw) < FORMAT_VERSION:
            raw, _ = upgrade(raw, {})
        return MultimodalLM.from_config(ModelConfig.from_dict(raw), load_tokenizer(p))
    return load_multimodal(p, raw)


def checkpoint_llm(path: str):
    """(LLM, tokenizer) of a vlm checkpoint: its LLM alone (LoRA adapters merged in; encoders, connectors and
    an IAA route left behind), trainable as the new model's stages say."""
    from vlm import llm as L
    model = checkpoint_model(path, "an LLM given as vlm:CKPT is a checkpoint's")
    llm = L.merged_copy(model.llm)
    for p in llm.parameters():
        p.requires_grad_(True)
    return llm, model.tokenizer


def media_parts(connector: dict, connectors: dict[str, dict] | None = None, **encoders: str | dict | None
                ) -> tuple[dict[str, str | dict], dict[str, dict]]:
    """(encoders by modality name, connector settings by modality) for builder keywords `vision`, `audio`,
    `music`, `video`: each modality's own encoder through `connector` (+ `connectors[m]`); None encoders
    are left out."""
    by_arg = {arg: m for m, arg in ENCODER_ARGS.items()}
    unknown = sorted(set(encoders) - set(by_arg))
    if unknown:
        raise UserError(f"unknown encoder keyword {unknown[0]!r}; use {sorted(by_arg)}")
    present = {by_arg[a]: enc for a, enc in encoders.items() if enc is not None}
    for m, settings in (connectors or {}).items():
        check_count(f"{m}_pool", settings.get("pool"))
    return present, {m: {**connector, **(connectors or {}).get(m, {})} for m in present}


def check_count(name: str, value: int | None, none: bool = True) -> None:
    """A builder's count setting (a pool, frames ...): an integer >= 1, or None where `none` allows it
    (a pool of 0 divided by zero when media were encoded; a negative one made no placeholder tokens)."""
    if (value is None and none) or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return
    raise UserError(f"{name}: an integer >= 1{' or null' if none else ''}, got {value!r}")


# what a modality's encoder slot takes (a waveform encoder serves audio and music alike)
SLOT_TAKES = {"image": ("image",), "video": ("video",), "audio": ("audio", "music"), "music": ("music", "audio")}


def build_multimodal(family: str, llm: str | dict, encoders: dict[str, str | dict], media: dict[str, dict],
                     route: dict | None = None, llm_mode: str = "frozen", lora: dict | None = None,
                     system: str | None = None, seed: int | None = 0) -> MultimodalLM:
    """Build the LLM and the named encoders from names or specs (in order, seeded), then the model's parts:
    `media[m]` is modality m's connector settings, naming the encoders it uses (default: the one named m)."""
    import torch
    from encoders import build_encoder
    if seed is not None:
        torch.manual_seed(seed)
    model, tok = resolve_llm(llm, seed)
    encs = {}
    for name, spec in encoders.items():
        kw = dict(spec) if isinstance(spec, dict) else {"name": spec}
        if not isinstance(kw.get("name"), str) or not kw["name"]:     # `hf: DIR` reads as YAML {hf: DIR}
            raise UserError(f"encoder '{name}': {spec!r} names no encoder (a string like hf:DIR, or a mapping with "
                            f"'name'; in YAML, no space after the colon of hf:DIR)")
        encs[name] = build_encoder(kw.pop("name"), **kw)
        takes = SLOT_TAKES.get(name)
        if takes is not None and encs[name].modality not in takes:    # a CLIP folder as the audio encoder: every
            raise UserError(f"encoder '{name}': {encs[name].name} is an {encs[name].modality} encoder, not one "
                            f"for {name} ({' or '.join(takes)})")    # sample failed, or a traceback at chat
    cfg = ModelConfig(family=family, llm={}, encoders={}, media={m: dict(c) for m, c in media.items()},
                      route=dict(route or {"type": "plain"}), llm_mode=llm_mode, lora=lora, system=system)
    return MultimodalLM(cfg, model, tok, encs)


# ---------------------------------------------------------------------------------------------
# shared presets
# ---------------------------------------------------------------------------------------------
# The tiny encoders of every family's `tiny` size: tests and the default run on a CPU. Pools: Whisper's
# 50 Hz / 2 = 25 tokens/s, MERT's 75 Hz / 4 = 18.75 tokens/s (the modality table's defaults).
TINY_SIZE = dict(vision="tiny-clip", llm="tiny:llama", audio="whisper:tiny", music="mert:tiny", video="video:tiny",
                 audio_pool=2, music_pool=4)

# A Qwen2-0.5B-shaped LLM (random init; give a local folder as `llm` for real weights).
QWEN2_05B = dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, max_position_embeddings=4096,
                 tie_word_embeddings=True, rope_theta=1000000.0)

# Test widths (module docstring): a ViT of an HF preset at 32 px, patch 8, 2 layers of 64 (its kind, feature layer
# and CLS handling stay the preset's), any LLM config at 2 layers of 64 (same model type), and per encoder preset
# its test-width spec (names with "tiny" in them are test width already).
TINY_VIT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                patch_size=8)
_TINY_LLM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2)
TEST_ENCODERS: dict[str, str | dict] = {
    "clip-vit-l-336": dict(name="clip-vit-l-336", **TINY_VIT),
    "whisper:base": "whisper:tiny",
    "mert:base": "mert:tiny",
}


def tiny_llm(spec: dict) -> dict:
    """An LLM config spec ({'model_type': ..., sizes}) at test widths: same architecture and settings, the
    vocabulary of the shipped tokenizer."""
    return {**{k: v for k, v in spec.items() if k not in ("vocab_size", "head_dim")}, **_TINY_LLM}


def test_width_encoder(spec: str | dict, where: str) -> str | dict:
    """An encoder name or spec at test width, of the same kind (UserError if none is known)."""
    name = spec["name"] if isinstance(spec, dict) else spec
    if "tiny" in name:
        return spec
    if name.startswith("video:"):
        return "video:tiny"                            # frames through an image encoder + a temporal embedding
    if name not in TEST_ENCODERS:
        raise UserError(f"{where}: no test width for encoder {name!r}; add one to vlm.families.base.TEST_ENCODERS")
    t = TEST_ENCODERS[name]
    return {**(spec if isinstance(spec, dict) else {}), **({"name": t} if isinstance(t, str) else t)}


def test_width_settings(settings: dict, where: str = "model") -> dict:
    """The encoder and LLM settings of resolved builder settings, at test widths (the rest untouched)."""
    out: dict[str, Any] = {}
    for arg in ENCODER_ARGS.values():
        if settings.get(arg) is not None:
            out[arg] = test_width_encoder(settings[arg], f"{where}: setting '{arg}'")
    llm = settings.get("llm")
    if isinstance(llm, dict):
        out["llm"] = tiny_llm(llm)
    elif isinstance(llm, str) and not llm.startswith("tiny:"):
        raise UserError(f"{where}: the LLM {llm!r} is a local folder; it has no test width")
    return out


# SAIL-VL curriculum: alignment (projector only, captions) -> SFT easy -> SFT hard by the samples' difficulty
# score (synthetic-world: 0.1 for one object, +0.15 per extra object, +0.03 per clutter stroke). As LLaVA-1.5,
# the vision encoder stays frozen. Sized for a 2-core CPU in minutes, on the image questions about colours,
# shapes and counts (widen `tasks` and `modalities` to train every modality). Every family's tiny recipe is
# this curriculum (same data, steps and learning rates); only what trains in the SFT stages differs.
SYNTHETIC_WORLD = {"world": {"shards": ["data/synthetic-world/train"], "weight": 1.0}}
# The tiny recipes' LLM (all but vlm2vec-tiny's, which trains from random weights): `llava-text-tiny`'s, trained on
# text-only questions with the recipe's seed, once, cached (vlm.train.base_llm); `model.settings.llm=tiny:llama`
# starts from the random tiny LLM instead.
TINY_BASE_LLM = "pretrained:llava-text-tiny"
TINY_COMMON = dict(batch_size=16, max_len=160, weight_decay=0.01, schedule="cosine", warmup=0.05, grad_clip=1.0)
TINY_TASKS = ["color", "shape", "caption", "count", "multi_turn"]
PROJECTORS = "media.*.projector.*"                     # the trainable pattern of every projector


def tiny_curriculum(family: str, description: str, sft_trainable: list[str], sft_llm: str,
                    modalities: tuple[str, ...] = ("image",), tasks: list[str] | None = TINY_TASKS,
                    align_tasks: list[str] = ("caption",), settings: dict | None = None,
                    easy_below: float = 0.3, sft_steps: tuple[int, int] = (700, 500),
                    shards: str = SYNTHETIC_WORLD["world"]["shards"][0]) -> dict:
    """The tiny recipe of `family`: align (projectors, the `align_tasks` captions), then SFT easy
    (difficulty < `easy_below`) -> hard training `sft_trainable` with the LLM in mode `sft_llm`, on
    samples of `modalities` (and `tasks`; None: all) of the synthetic-world split at `shards`,
    `sft_steps` steps each; `settings`: the model's builder settings over its tiny size."""
    sft = dict(trainable=list(sft_trainable), llm=sft_llm, **TINY_COMMON)
    only = {"modalities": list(modalities)}
    with_tasks = {"tasks": list(tasks)} if tasks is not None else {}
    return {
        "description": description,
        "model": {"family": family, "size": "tiny", "settings": {"llm": TINY_BASE_LLM, **(settings or {})}},
        "data": {"world": {**SYNTHETIC_WORLD["world"], "shards": [shards]}},
        "stages": [
            {"name": "align", "trainable": [PROJECTORS], "llm": "frozen", "lr": 3e-3, "steps": 20,
             "filter": {"kind": "caption", **({"tasks": list(align_tasks)} if tasks is not None else {}), **only},
             **TINY_COMMON},
            {"name": "sft-easy", "filter": {**with_tasks, "max_difficulty": easy_below, **only}, "steps": sft_steps[0],
             "lr": 3e-3, **sft},
            # the whole difficulty range: multi-object questions join the easy ones (no forgetting)
            {"name": "sft-hard", "filter": {**with_tasks, "min_difficulty": 0.1, **only}, "steps": sft_steps[1],
             "lr": 1e-3, **sft},
        ],
        "runtime": {"checkpoint_every": 100, "keep_last": 2, "output_dir": "runs/{name}", "seed": 0,
                    "num_workers": 1, "log_every": 10},
    }
