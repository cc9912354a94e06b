"""Model families: one module each (builder + named sizes + default recipe), registered by name.

    from vlm.families import build, list_families
    model = build("llava", "tiny")            # a named size
    model = build("llava", vision="tiny-clip", llm="tiny:qwen2")   # the generic builder

A family's default recipes (`Family.recipes[size]`, plain YAML-able mappings in the schema of
`vlm.train.recipe`) are the built-in recipes `FAMILY-SIZE`: `vlm recipe show llava-tiny`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from vlm.errors import UserError


@dataclass
class Family:
    name: str
    description: str
    model_cls: type
    builder: Callable                                  # generic: builder(**settings) -> model
    sizes: dict[str, dict] = field(default_factory=dict)  # named presets: settings for the builder
    modalities: tuple[str, ...] = ("image",)
    recipes: dict[str, dict] = field(default_factory=dict)  # size -> default training recipe (vlm.train.recipe)


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    if family.name in _FAMILIES:
        raise ValueError(f"family '{family.name}' registered twice")
    _FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    _load_all()
    if name not in _FAMILIES:
        raise UserError(f"unknown model family '{name}'; known: {sorted(_FAMILIES)}")
    return _FAMILIES[name]


def family_class(name: str) -> type:
    return get_family(name).model_cls


def list_families() -> list[dict]:
    _load_all()
    return [dict(name=f.name, modality="+".join(f.modalities), description=f.description,
                 sizes=sorted(f.sizes)) for f in sorted(_FAMILIES.values(), key=lambda f: f.name)]


def build(family: str, size: str | None = None, **settings):
    """A model of a family: a named size, optionally with settings overridden, or the generic builder."""
    fam = get_family(family)
    if size is not None:
        if size not in fam.sizes:
            raise UserError(f"family '{family}' has no size '{size}'; known: {sorted(fam.sizes)}")
        settings = {**fam.sizes[size], **settings}
    return fam.builder(**settings)


def _load_all() -> None:
    from vlm.families import dragonfly, iaa, llava  # noqa: F401  (each module registers itself)
