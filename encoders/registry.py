"""Encoder registry: named presets and prefix builders, listing, and rebuilding from a spec.

    @register_encoder("tiny-vit", "image", "timm ViT, 32 px, 2 layers (tests)")
    def tiny_vit(*, weights=None, feature_layer=None, **kw) -> Encoder: ...

    @register_encoder("timm:", "image", "any timm model: timm:<model_name>[.<tag>]")
    def timm_builder(target: str, *, weights=None, feature_layer=None, **kw) -> Encoder: ...

A name ending in ':' is a prefix builder: it gets the rest of the name as ``target``.
Exact names win over prefixes (``video:tiny`` is a preset, ``video:tiny-vit`` a prefix build).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from encoders.base import Encoder, spec_class
from vlm.errors import UserError
from vlm.registry import Registry


@dataclass(frozen=True)
class EncoderEntry:
    name: str
    modality: str
    description: str
    builder: Callable[..., Encoder]

    @property
    def is_prefix(self) -> bool:
        return self.name.endswith(":")


ENCODERS: Registry[EncoderEntry] = Registry("encoder")


def register_encoder(
    name: str, modality: str, description: str
) -> Callable[[Callable[..., Encoder]], Callable[..., Encoder]]:
    """Decorator registering a builder under ``name``; a duplicate name is an error."""

    def wrap(fn: Callable[..., Encoder]) -> Callable[..., Encoder]:
        ENCODERS.register(name, EncoderEntry(name, modality, description, fn))
        return fn

    return wrap


def list_encoders(pattern: str | None = None) -> list[dict[str, str]]:
    """Registered presets and prefix builders, sorted; ``pattern`` is an fnmatch pattern."""
    rows = []
    for name, entry in ENCODERS.items(pattern):
        kind = "builder" if entry.is_prefix else "preset"
        rows.append({"name": name, "modality": entry.modality, "description": entry.description, "kind": kind})
    return rows


def check_config_options(encoder: str, config_cls: type, options: dict[str, Any]) -> None:
    """Options that override a transformers config: one that looks misspelt (``feature_selct``) is one line
    naming it (HF configs take any keyword as an attribute, so it would be kept and ignored)."""
    from vlm.config import misspelt_options
    unknown = misspelt_options(config_cls, options, ("weights", "feature_layer", "feature_select", "sample_rate"))
    if unknown:
        raise UserError(f"unknown option(s) {unknown} for encoder {encoder!r}: not fields of transformers' "
                        f"{config_cls.__name__} (nor weights / feature_layer), though close to one")


def build_encoder(name: str, weights: str | None = None, feature_layer: int | None = None, **kw: Any) -> Encoder:
    """Build an encoder by preset name or ``prefix:target``; ``weights`` is a local .safetensors
    file, ``feature_layer`` which hidden layer forward returns (None: the preset's default)."""
    if name in ENCODERS and not name.endswith(":"):
        return ENCODERS.get(name).builder(weights=weights, feature_layer=feature_layer, **kw)
    prefix, sep, target = name.partition(":")
    if not (sep and target and prefix + ":" in ENCODERS):
        raise UserError(f"unknown encoder {name!r}; known: {', '.join(ENCODERS.names())}")
    entry = ENCODERS.get(prefix + ":")
    return entry.builder(target, weights=weights, feature_layer=feature_layer, **kw)


def build_encoder_from_spec(spec: dict[str, Any]) -> Encoder:
    """Rebuild the architecture that ``Encoder.spec()`` described: random weights, no file
    access; load a checkpoint's state_dict into it afterwards."""
    if not isinstance(spec, dict) or "kind" not in spec:
        raise UserError(f"not an encoder spec (no 'kind'): {str(spec)[:80]}")
    return spec_class(spec["kind"]).from_spec(spec)
