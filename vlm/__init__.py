"""vlm: train and evaluate vision-, audio- and music-language models.

    import vlm
    model = vlm.load("runs/llava-tiny/final")       # a checkpoint folder, no recipe needed
    print(model.chat("<image>\\nWhat colour is the shape?", {"image": [pil_image]}))
"""
from vlm.model import MultimodalLM, load  # noqa: F401


def build(family: str, size: str | None = None, **settings):
    from vlm.families import build as _build
    return _build(family, size, **settings)


def list_families():
    from vlm.families import list_families as _lf
    return _lf()
