"""Evaluation: benchmark registry, task kinds, metrics, runner, reports, lmms-eval plugin, perf benches.

    from benchmarks import list_benchmarks, get_benchmark
    list_benchmarks("sw-*")
    vlm eval --model runs/llava-tiny/final --suite synthetic-world --out runs/eval
"""
from __future__ import annotations

from benchmarks import suites  # noqa: F401  (registers the built-in benchmarks and suites)
from benchmarks.registry import get_benchmark, list_benchmarks, list_suites  # noqa: F401
