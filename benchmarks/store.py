"""The results an eval folder holds (`OUT/results/<model>-<fingerprint>/<benchmark>.json`): read, and the
latest record of each (display name, benchmark), which every view of the folder shows (the aggregate table,
results.jsonl, report.md, report.html, model cards).

A record's recency is when it was last asked for: `finished` (computed) or `used` (found done and reused by
a later call). The views compare like with like: a display name's column holds the results of one set of
weights, the fingerprint it was last asked for (a result an earlier call computed from other weights under
that name is not shown beside them), and a benchmark's row the results of one question, the signature it was
last asked as (its data, limit and definition: results on another build of the data or under another
--limit are not shown beside the latest). `not_shown` counts the files left out; a model evaluated again on
a benchmark replaces its own earlier file (one file per model folder and benchmark)."""
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
    """The most recent record per (model, benchmark) among those of the weights each model name was last asked
    for and of the question each benchmark was last asked as, in the order the work was done."""
    ordered = sorted(records, key=lambda pr: recency(pr[1]))             # stable: ties keep the file order
    weights = {r.get("model"): r.get("fingerprint") for _, r in ordered}   # the last asked for wins
    current = [(p, r) for p, r in ordered if r.get("fingerprint") == weights[r.get("model")]]
    question = {r.get("benchmark"): r.get("signature") for _, r in current}   # (a hidden record sets none)
    best: dict[tuple[Any, Any], tuple[Path, dict[str, Any]]] = {}
    for p, r in current:
        if r.get("signature") == question[r.get("benchmark")]:
            best[(r.get("model"), r.get("benchmark"))] = (p, r)
    return sorted(best.values(), key=lambda pr: recency(pr[1]))


def not_shown(records: list[tuple[Path, dict[str, Any]]]) -> int:
    """How many result files of the folder `latest` leaves out (other weights under a name, or another question
    under a benchmark's name)."""
    return len(records) - len(latest(records))


def names_taken(records: list[tuple[Path, dict[str, Any]]], field: str = "model",
                spec: str = "model_spec") -> dict[str, set[str]]:
    """Display name -> the model specs its records (`read_records`) hold (resolved paths where they are paths);
    with field="benchmark", spec="data_root": a benchmark name -> the data folders stored under it (records
    written before data_root was kept name none)."""
    taken: dict[str, set[str]] = {}
    for _, r in records:
        if isinstance(r.get(field), str):
            names = taken.setdefault(r[field], set())
            if r.get(spec) is not None:
                names.add(same_model_key(str(r[spec])))
    return taken


def same_model_key(spec: str) -> str:
    """A model spec as compared across calls: a path resolved (`runs/a/final` and `./runs/a/final/` are one)."""
    return os.path.realpath(spec) if os.path.exists(spec) else spec
