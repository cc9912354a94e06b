"""Evaluation: benchmark registry, task kinds, metrics, runner, reports, lmms-eval plugin, perf benches.

    from benchmarks import list_benchmarks, get_benchmark
    list_benchmarks("sw-*")
    vlm eval --model runs/llava-tiny/final --suite synthetic-world --out runs/eval
"""
from __future__ import annotations

from typing import Any


def list_benchmarks(pattern: str | None = None) -> list[dict[str, Any]]:
    """Registered benchmarks as rows (name, modality, description, kind, type, capability, metric, data)."""
    from benchmarks.registry import list_benchmarks as _list
    return _list(pattern)


def get_benchmark(name: str):
    """A registered benchmark by name, or `wds:DIR` for a folder in the clip_benchmark layout."""
    from benchmarks.registry import get_benchmark as _get
    return _get(name)
