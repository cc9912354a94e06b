"""Hugging Face hub names inside a model config (an open_clip architecture's text tower and tokenizer):
each must be a local folder or already in the Hugging Face cache, checked before anything is built, and the
build runs with the hub offline. Nothing in this suite downloads: without this, open_clip's SigLIP or
roberta architectures spent a minute retrying huggingface.co, then ended in a traceback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vlm.errors import UserError

# The files that say a role's files are cached: a model's config; a tokenizer's config or its single-file form.
_MARKERS = {"text tower": ("config.json",), "tokenizer": ("tokenizer_config.json", "tokenizer.json")}


def open_clip_hub_names(config: dict[str, Any]) -> dict[str, str]:
    """{role: name} of the Hugging Face models an open_clip config names (text_cfg's hf_model_name and
    hf_tokenizer_name)."""
    text_cfg = config.get("text_cfg")
    if not isinstance(text_cfg, dict):
        return {}
    names = {"text tower": text_cfg.get("hf_model_name"), "tokenizer": text_cfg.get("hf_tokenizer_name")}
    return {role: name for role, name in names.items() if isinstance(name, str) and name}


def in_cache(name: str, role: str = "text tower") -> bool:
    """Whether the Hugging Face cache holds the model `name`'s files for `role` (its config.json for a text
    tower, a tokenizer file for a tokenizer)."""
    from huggingface_hub import try_to_load_from_cache
    for file in _MARKERS[role]:
        try:
            if isinstance(try_to_load_from_cache(name, file), str):
                return True
        except Exception:  # noqa: BLE001  not a valid repo id (a path that is not there): not cached
            return False
    return False


def require_local(what: str, names: dict[str, str]) -> None:
    """Refuse, naming `what` and the model, any name of `names` that is neither a folder nor cached."""
    for role, name in names.items():
        if Path(name).is_dir() or in_cache(name, role):
            continue
        if name.startswith(("/", "./", "../", "~")):      # a path, not a hub name
            raise UserError(f"{what}: its {role} folder {name} is not there")
        raise UserError(f"{what}: its {role} is the Hugging Face model '{name}', which is not on this machine "
                        "(nothing is downloaded): put it in the Hugging Face cache beforehand, or give a config "
                        "file whose text_cfg names a local folder")


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """The Hugging Face hub offline inside the block (files come from the cache or not at all)."""
    from huggingface_hub import constants
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before
