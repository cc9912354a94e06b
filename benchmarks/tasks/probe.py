"""Audio and music probes in the MARBLE manner: the encoder stays frozen; per layer its features are
averaged over time; a probe learns a softmax weighting of the layers and a small MLP head on the
weighted sum, trained on the benchmark's train split, scored (accuracy) on its test split.

Labels are the samples' answers (synthetic-world: pitch, chord, instrument, tempo, tone count /
direction, noise type). Features of both splits are cached; the probe itself trains in a second.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from benchmarks.data import Sample
from benchmarks.registry import Benchmark
from benchmarks.tasks import Context, TaskResult, load_samples
from vlm.errors import UserError


def applicable(model, bench: Benchmark) -> str | None:
    if not model.can_probe or bench.modality not in model.modalities:
        return f"needs a model with a {bench.modality} encoder (a vlm checkpoint)"
    return None


class LayerWeightedProbe(nn.Module):
    """softmax(w) . layers -> MLP. Input [N, L, D] -> logits [N, C]."""

    def __init__(self, n_layers: int, dim: int, n_classes: int, hidden: int = 128, dropout: float = 0.1):
        super().__init__()
        self.layer_logits = nn.Parameter(torch.zeros(n_layers))
        self.head = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.layer_logits.softmax(0)                                 # [L]
        return self.head((x * w[None, :, None]).sum(1))                 # [N, D] -> [N, C]


def fit_probe(x: torch.Tensor, y: torch.Tensor, n_classes: int, steps: int = 300, lr: float = 1e-3,
              weight_decay: float = 1e-4, seed: int = 0) -> tuple[LayerWeightedProbe, torch.Tensor, torch.Tensor]:
    """Full-batch Adam on standardised features; returns the probe and the (mean, std) it expects."""
    g = torch.Generator().manual_seed(seed)
    mean, std = x.mean(0, keepdim=True), x.std(0, keepdim=True).clamp(min=1e-6)   # [1, L, D]
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
    probe = LayerWeightedProbe(x.shape[1], x.shape[2], n_classes)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    xs = (x - mean) / std
    probe.train()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(probe(xs), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return probe.eval(), mean, std


def _clips(samples: list[Sample]) -> list[tuple[torch.Tensor, int]]:
    out = []
    for s in samples:
        out.append(s.decode("audio", s.first("audio")))
    return out


def _features(model, samples: list[Sample], dhash: str, modality: str, ctx: Context) -> torch.Tensor:
    def compute():
        return {"features": model.layer_features(modality, _clips(samples))}, {"keys": [s.key for s in samples]}
    t, _ = ctx.cache.get_or_compute(model.fingerprint, f"probe-{modality}-{dhash}", compute)
    return t["features"]


def run(model, bench: Benchmark, ctx: Context) -> TaskResult:
    train_split = bench.data.train_split or "train"
    train, h_train = load_samples(bench, ctx, train_split)
    test, h_test = load_samples(bench, ctx)
    y_train_s = [str(s.meta().get("answer")) for s in train]
    y_test_s = [str(s.meta().get("answer")) for s in test]
    classes = sorted(set(y_train_s))
    if len(classes) < 2:
        raise UserError(f"benchmark {bench.name}: the '{train_split}' split has fewer than 2 classes")
    x_train = _features(model, train, h_train, bench.modality, ctx)                 # [N, L, D]
    x_test = _features(model, test, h_test, bench.modality, ctx)
    idx = {c: i for i, c in enumerate(classes)}
    probe, mean, std = fit_probe(x_train, torch.tensor([idx[c] for c in y_train_s]), len(classes),
                                 steps=int(bench.options.get("steps", 300)))
    with torch.no_grad():
        pred = probe((x_test - mean) / std).argmax(1).tolist()
    rows: list[dict[str, Any]] = [dict(key=s.key, label=y, pred=classes[p], correct=classes[p] == y)
                                  for s, y, p in zip(test, y_test_s, pred)]
    weights = probe.layer_logits.softmax(0).tolist()
    metrics = {"accuracy": sum(r["correct"] for r in rows) / len(rows), "n": float(len(rows)),
               "n_train": float(len(train)), "best_layer": float(max(range(len(weights)), key=weights.__getitem__))}
    return TaskResult(rows, metrics, {"layer_weights": [dict(layer=i, weight=w) for i, w in enumerate(weights)]})
