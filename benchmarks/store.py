"""The results an eval folder holds (`OUT/results/<model>-<fingerprint>/<benchmark>.json`): read, and the
latest record of each (display name, benchmark), which every view of the folder shows (the aggregate table,
results.jsonl, report.md, report.html, model cards).

A record's recency is when it was last asked for: `finished` (computed) or `used` (found done and reused by
a later call), so the weights a call has just evaluated win over a result of other weights under the same
name, computed or reused."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RESULTS = "results"


def read_records(out: str | os.PathLike) -> list[tuple[Path, dict[str, Any]]]:
    """Every readable record of the folder with its path (a torn or foreign json is passed over)."""
    recs = []
    for p in sorted((Path(out) / RESULTS).glob("*/*.json")):
        try:
            r = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            continue
        if isinstance(r, dict):
            recs.append((p, r))
    return recs


def recency(rec: dict[str, Any]) -> float:
    return max(float(rec.get("finished") or 0.0), float(rec.get("used") or 0.0))


def latest(records: list[tuple[Path, dict[str, Any]]]) -> list[tuple[Path, dict[str, Any]]]:
    """The most recent record per (model, benchmark), in the order the work was done."""
    best: dict[tuple[Any, Any], tuple[Path, dict[str, Any]]] = {}
    for p, r in sorted(records, key=lambda pr: recency(pr[1])):          # stable: ties keep the file order
        best[(r.get("model"), r.get("benchmark"))] = (p, r)
    return sorted(best.values(), key=lambda pr: recency(pr[1]))


def names_taken(out: str | os.PathLike) -> dict[str, set[str]]:
    """Display name -> the model specs stored under it (resolved paths where they are paths)."""
    taken: dict[str, set[str]] = {}
    for _, r in read_records(out):
        if isinstance(r.get("model"), str):
            taken.setdefault(r["model"], set()).add(same_model_key(str(r.get("model_spec"))))
    return taken


def same_model_key(spec: str) -> str:
    """A model spec as compared across calls: a path resolved (`runs/a/final` and `./runs/a/final/` are one)."""
    return os.path.realpath(spec) if os.path.exists(spec) else spec
