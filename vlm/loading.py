"""`vlm.load(path)`: any checkpoint folder the suite writes, rebuilt from its config alone.

    model = vlm.load("runs/llava-tiny/final")              # a MultimodalLM (config.json + model.safetensors)
    model = vlm.load("runs/mert-tiny/final")               # a family's own kind of model (e.g. mert)

Weights load from safetensors only (never a pickle); the architecture comes from config.json, so no
recipe and no family code beyond the registered loaders is needed. A family whose models are not
MultimodalLMs says how to recognise and load its folders (`Family.loads` / `Family.load`).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from vlm.errors import UserError, require
from vlm.families import FAMILIES
from vlm.model import CONFIG_FILE, FORMAT_VERSION, WEIGHTS_FILE, ModelConfig, MultimodalLM


def read_config(p: Path) -> dict:
    require(p.is_dir(), f"checkpoint not found: {p}")
    require((p / CONFIG_FILE).exists(), f"{p}: no {CONFIG_FILE} (not a vlm checkpoint folder)")
    try:
        raw = json.loads((p / CONFIG_FILE).read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{p / CONFIG_FILE}: invalid JSON ({e})") from None
    require(isinstance(raw, dict), f"{p / CONFIG_FILE}: not a JSON object")
    return raw


def load(path: str | Path, device: str | torch.device = "cpu"):
    """Restore a checkpoint folder saved by a model's `save_pretrained`, with no recipe; safetensors only."""
    p = Path(path)
    raw = read_config(p)
    for _, fam in FAMILIES.items():
        if fam.loads is not None and fam.loads(p, raw):
            return fam.load(p).to(device).eval()
    return load_multimodal(p, raw).to(device).eval()


def load_multimodal(p: Path, raw: dict) -> MultimodalLM:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoTokenizer
    require("family" in raw and "llm" in raw, f"{p / CONFIG_FILE}: not a vlm checkpoint config (needs 'family' and 'llm')")
    require((p / WEIGHTS_FILE).exists(), f"{p}: no {WEIGHTS_FILE}")
    try:
        state = load_file(str(p / WEIGHTS_FILE))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{p / WEIGHTS_FILE}: corrupt weights ({str(e).splitlines()[0]})") from None
    if raw.get("format_version", 1) < FORMAT_VERSION:
        raw, state = upgrade(raw, state)
    config = ModelConfig.from_dict(raw)
    tok = AutoTokenizer.from_pretrained(p, local_files_only=True)
    model = MultimodalLM.from_config(config, tok)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise UserError(f"{p / WEIGHTS_FILE}: weights do not fit config.json ({str(e).splitlines()[0][:200]})") from None
    require(not missing and not unexpected,
            f"{p / WEIGHTS_FILE}: weights do not match config.json (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})")
    return model


def upgrade(raw: dict, state: dict) -> tuple[dict, dict]:
    """An older checkpoint as format 3. Format 1: one model class per family (encoders / connectors /
    extra); format 2: each modality's encoder inside its media tokenizer (`media.{m}.encoder.*`)."""
    version = raw.get("format_version", 1)
    if version == 1:
        extra = raw.get("extra") or {}
        media = {}
        for m in raw.get("encoders") or {}:
            old = (raw.get("connectors") or {}).get(m, {})
            projector = old.get("type", "mlp2x_gelu")
            if raw["family"] == "dragonfly" and m == "image":
                media[m] = {"type": "zoom", "encoder": m, "projector": projector, **extra}
            else:
                media[m] = {"type": "projector", "encoder": m, "projector": projector, "pool": old.get("pool", 1)}
        route = {"type": "inner_adaptor", "adaptor_layers": extra.get("adaptor_layers")} if raw["family"] == "iaa" \
            else {"type": "plain"}
        renames = [(r"^connectors\.([^.]+)\.", r"media.\1.projector."), (r"^zoom\.", "media.image.zoom."),
                   (r"^iaa\.", "route.")]
        keep = {k: v for k, v in raw.items() if k not in ("connectors", "extra")}
        raw = {**keep, "media": media, "route": route}
    else:                                   # format 2
        encoders = {m: part["encoder"] for m, part in raw["media"].items()}
        media = {m: {**part["connector"], "encoder": m} for m, part in raw["media"].items()}
        renames = [(r"^media\.([^.]+)\.encoder\.", r"encoders.\1.")]
        raw = {**raw, "encoders": encoders, "media": media}
    new_state = {}
    for k, v in state.items():
        for pattern, repl in renames:
            k, n = re.subn(pattern, repl, k)
            if n:
                break
        new_state[k] = v
    return {**raw, "format_version": FORMAT_VERSION}, new_state
