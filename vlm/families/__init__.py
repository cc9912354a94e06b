"""Model families: one file each (its parts, named sizes, default recipes), registered by name.

    from vlm.families import build, list_families
    model = build("llava", "tiny")                                    # a named size
    model = build("llava", vision="tiny-clip", llm="tiny:qwen2")      # the generic builder

A family's default recipes (`Family.recipes[size]`, plain YAML-able mappings in the schema of
`vlm.train.recipe`) are the built-in recipes `FAMILY-SIZE`: `vlm recipe show llava-tiny`.
How to write one: `vlm/families/base.py`.
"""
from __future__ import annotations

from vlm.families import dragonfly, iaa, llava, mert, omni  # noqa: F401  (each registers itself)
from vlm.families.base import FAMILIES, Family, register_family  # noqa: F401


def get_family(name: str) -> Family:
    return FAMILIES.get(name)


def list_families(pattern: str | None = None) -> list[dict]:
    from vlm.modalities import MODALITIES
    rows = []
    for _, f in FAMILIES.items(pattern):
        have = {m for s in f.sizes for m in f.modalities(s)}
        rows.append(dict(name=f.name, modality="+".join(m for m in MODALITIES if m in have),
                         description=f.description, sizes=sorted(f.sizes)))
    return rows


def build(family: str, size: str | None = None, **settings):
    """A model of a family: a named size, optionally with settings overridden, or the generic builder."""
    return get_family(family).build(size, **settings)
