"""Embeddings: the Embedder API, export to files, FAISS indexes and search.

    from vlm.embed import Embedder
    emb = Embedder.load("runs/vlm2vec-tiny/final")            # or "open_clip:ViT-B-32:/ckpt/b32.safetensors"
    v = emb.embed(texts=["a red circle"], instruction="Find me an everyday image that matches the given caption:")
    v = emb.embed(images=["a.jpg", pil_image])                # [N, D] float32, L2-normalised (numpy)
    v = emb.embed(images=[img], texts=["What colour is it?"], instruction="Represent the given image with the following question:")

    export("runs/vlm2vec-tiny/final", "data/sw/test", "runs/emb")   # vlm embed: clip-retrieval layout
    build_index("runs/emb")                                          # vlm index: FAISS, choice printed
    hits = search("runs/emb", text="a red circle", k=10)             # vlm search: key, score, caption

One embedding code path: the benchmarks (`benchmarks.models`), `vlm embed` and `vlm search` all go
through the backends of `vlm.embed.backends` (our checkpoints: the final layer's hidden state at the
last prompt token, L2-normalised, VLM2Vec; open_clip models: the towers, a pair of image and text
summed). Names resolve on first use, so importing this package (the CLI does) costs nothing.
"""
from __future__ import annotations

_LAZY = {
    "Embedder": ("vlm.embed.api", "Embedder"),
    "Item": ("vlm.embed.items", "Item"),
    "export": ("vlm.embed.export", "export"),
    "build_index": ("vlm.embed.index", "build_index"),
    "open_index": ("vlm.embed.index", "open_index"),
    "search": ("vlm.embed.index", "search"),
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'vlm.embed' has no attribute {name!r}")
    import importlib
    module, attr = _LAZY[name]
    return getattr(importlib.import_module(module), attr)


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
