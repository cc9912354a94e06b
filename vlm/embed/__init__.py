"""Embeddings: the Embedder API, export to files, FAISS indexes and search.

    from vlm.embed import Embedder
    emb = Embedder.load("runs/vlm2vec-tiny/final")            # or "open_clip:ViT-B-32:/ckpt/b32.safetensors"
    v = emb.embed(texts=["a red circle"], instruction="Find me an everyday image that matches the given caption:")
    v = emb.embed(images=["a.jpg", pil_image])                # [N, D] float32, L2-normalised (numpy)
    v = emb.embed(images=[img], texts=["What colour is it?"], instruction="Represent the given image with the following question:")

    export_embeddings("runs/vlm2vec-tiny/final", "data/sw/test", "runs/emb",      # vlm embed: clip-retrieval
                      modality=["image", "text"])                                 # layout; any EmbedConfig field
    build_index("runs/emb")                                          # vlm index: FAISS, choice printed
    hits = search("runs/emb", text="a red circle", k=10)             # vlm search: key, score, caption

One embedding code path: the benchmarks (`benchmarks.models`), `vlm embed` and `vlm search` all go
through the backends of `vlm.embed.backends` (our checkpoints: the final layer's hidden state at the
last prompt token, L2-normalised, VLM2Vec; open_clip models: the towers, a pair of image and text
summed). Names resolve on first use, so importing this package (the CLI does) costs nothing.
"""
from __future__ import annotations

from vlm.lazy import lazy_attributes

_LAZY = {
    "Embedder": ("vlm.embed.api", "Embedder"),
    "Item": ("vlm.embed.items", "Item"),
    "export_embeddings": ("vlm.embed.cli", "export_embeddings"),     # not "export": the submodule's name
    "build_index": ("vlm.embed.index", "build_index"),
    "open_index": ("vlm.embed.index", "open_index"),
    "search": ("vlm.embed.index", "search"),
}

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
