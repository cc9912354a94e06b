"""`vlm.load(path)`: any checkpoint folder the suite writes, rebuilt from its config alone.

    model = vlm.load("runs/llava-tiny/final")              # a MultimodalLM (config.json + model.safetensors)
    model = vlm.load("runs/mert-tiny/final")               # a family's own kind of model (e.g. mert)

Weights load from safetensors only (never a pickle); the architecture comes from config.json, so no
recipe and no family code beyond the registered loaders is needed. A family whose models are not
MultimodalLMs says how to recognise and load its folders (`Family.loads` / `Family.load`).
"""
from __future__ import annotations

from pathlib import Path

import torch

from vlm.errors import UserError
from vlm.families import FAMILIES
from vlm.model_files import load_multimodal, read_config, upgrade  # noqa: F401  (the checkpoint format)


def load(path: str | Path, device: str | torch.device = "cpu"):
    """Restore a checkpoint folder saved by a model's `save_pretrained`, with no recipe; safetensors only."""
    p = Path(path)
    raw = read_config(p)
    for _, fam in FAMILIES.items():
        if fam.loads is not None and fam.loads(p, raw):
            return fam.load(p).to(device).eval()
    family = raw.get("family")       # (a family this process has not registered loads from its config alone)
    if isinstance(family, str) and family in FAMILIES and FAMILIES.get(family).loads is not None:
        raise UserError(f"{p / 'config.json'}: says family {family!r}, but the folder is not one of its checkpoints "
                        f"(its files are a vlm checkpoint's)")
    return load_multimodal(p, raw).to(device).eval()
