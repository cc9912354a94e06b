"""On-disk feature cache: tensors keyed by model fingerprint and data hash (UniBench itself has none).

    cache = FeatureCache("~/.cache/vlm/features")
    t = cache.get_or_compute(model.fingerprint, f"zs-images-{data_hash}", lambda: ({"x": feats}, {"keys": keys}))

One safetensors file per entry (`<root>/<model fingerprint>/<name>.safetensors`, json metadata in its
header), written to a temporary file and renamed, so a killed run never leaves a torn entry.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import torch

from vlm.atomic import remove_torn, write_file


class FeatureCache:
    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(root).expanduser() if root is not None else None
        if self.root is not None and self.root.is_dir():      # what runs killed mid-write left (of dead processes)
            remove_torn(self.root.glob("*/.*.tmp-*"))
        self.hits = 0
        self.misses = 0

    def _path(self, model_fp: str, name: str) -> Path:
        assert self.root is not None
        return self.root / model_fp / f"{name}.safetensors"

    def get(self, model_fp: str, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        if self.root is None:
            return None
        p = self._path(model_fp, name)
        if not p.exists():
            return None
        from safetensors import safe_open
        try:
            with safe_open(str(p), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("meta", "{}"))
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception:       # a corrupt entry is recomputed, never trusted
            return None
        return tensors, meta

    def put(self, model_fp: str, name: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        if self.root is None:
            return
        from safetensors.torch import save_file
        p = self._path(model_fp, name)
        p.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous() for k, v in tensors.items()}
        write_file(p, lambda tmp: save_file(tensors, str(tmp), metadata={"meta": json.dumps(meta)}))

    def get_or_compute(self, model_fp: str, name: str,
                       compute: Callable[[], tuple[dict[str, torch.Tensor], dict[str, Any]]]
                       ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        hit = self.get(model_fp, name)
        if hit is not None:
            self.hits += 1
            return hit
        self.misses += 1
        tensors, meta = compute()
        self.put(model_fp, name, tensors, meta)
        return tensors, meta
