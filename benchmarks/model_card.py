"""Write evaluation results into a Hugging Face model card (`model_cards/<family>.md`).

    vlm eval --model runs/llava-tiny/final --suite synthetic-world-quick --out runs/eval --model-card model_cards/llava.md

The card's YAML front matter gets a `model-index` (the Hub's results format: one entry per model,
one result per benchmark with its task kind, data set and headline metric), and the body a results
section between two markers, rewritten on every run; the rest of the card is left as it is.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import yaml

from vlm.errors import UserError

START, END = "<!-- vlm-eval results: start -->", "<!-- vlm-eval results: end -->"


def _split(text: str) -> tuple[dict, str]:
    if text.startswith("---\n"):
        head, sep, body = text[4:].partition("\n---\n")
        if sep:
            try:
                return yaml.safe_load(head) or {}, body
            except yaml.YAMLError as e:
                raise UserError(f"model card front matter is not valid YAML ({str(e).splitlines()[0]})") from None
    return {}, text


def model_index(table) -> list[dict]:
    """HF `model-index` entries for every model in the aggregate table (ok results only)."""
    out = []
    for model, grp in table[table["status"] == "ok"].groupby("model", sort=False):
        results = []
        for _, r in grp.iterrows():
            if r["score"] is None or (isinstance(r["score"], float) and math.isnan(r["score"])):
                continue
            results.append({"task": {"type": r["kind"], "name": f"{r['type']} / {r['capability']}"},
                            "dataset": {"name": r["benchmark"], "type": r["benchmark"]},
                            "metrics": [{"type": r["metric"], "value": round(float(r["score"]), 4)}]})
        out.append({"name": model, "results": results})
    return out


def update_model_card(path: str | os.PathLike, table) -> Path:
    """Rewrite the card's `model-index` and its results section from the aggregate table."""
    from benchmarks.report import capability_table
    p = Path(path)
    meta, body = _split(p.read_text()) if p.exists() else ({}, f"# {p.stem}\n")
    meta["model-index"] = model_index(table)
    section = f"{START}\n## Evaluation results (vlm eval)\n\n{capability_table(table)}\n{END}"
    if START in body and END in body:
        body = body[:body.index(START)] + section + body[body.index(END) + len(END):]
    else:
        body = body.rstrip("\n") + "\n\n" + section + "\n"
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text("---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n" + body)
    os.replace(tmp, p)
    return p
