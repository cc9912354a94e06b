"""vlm: train and evaluate vision-, audio- and music-language models.

    import vlm
    model = vlm.load("runs/llava-tiny/final")       # a checkpoint folder, no recipe needed
    model = vlm.build("llava", "tiny")              # a family's named size (random weights)
    print(model.chat("<image>\\nWhat colour is the shape?", {"image": [pil_image]}))

Names resolve on first use, so `import vlm` stays cheap (the CLI answers `--help` without torch).
"""
from __future__ import annotations

from vlm.lazy import lazy_attributes

_LAZY = {
    "load": ("vlm.loading", "load"),
    "MultimodalLM": ("vlm.model", "MultimodalLM"),
    "build": ("vlm.families", "build"),
    "list_families": ("vlm.families", "list_families"),
}

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
