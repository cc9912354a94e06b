"""Reports of an evaluation folder: a markdown report grouped by benchmark type and capability, and a
PNG chart of the headline scores.

    print(capability_table(table))     # capability x model (mean headline score), markdown
    write_report(out, table); write_chart(out, table)
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from vlm.atomic import write_file, write_text


def _fmt(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    text = f"{x:.3f}" if isinstance(x, float) else str(x)
    return " ".join(text.replace("|", "\\|").split())          # a name with | or a line break keeps the table whole


def _md(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(_fmt(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _count(v: Any) -> Any:
    """A count from a table column (floats there when another row has none): 100, not 100.000; none: '-'."""
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)


def _models(table) -> list[str]:
    return list(dict.fromkeys(table["model"].tolist()))


def _score(table, model: str, bench: str) -> float | None:
    sel = table[(table["model"] == model) & (table["benchmark"] == bench) & (table["status"] == "ok")]
    return float(sel["score"].iloc[0]) if len(sel) else None


def split_of(bench: str) -> str:
    """The split a result read when not its benchmark's own (`BENCH@val` -> 'val'; '' otherwise; an '@' inside
    a folder path is not one)."""
    head, at, tail = str(bench).rpartition("@")
    return tail if at and head and "/" not in tail else ""


def capability_groups(table):
    """(type, capability label, rows) of the ok results; another split's results are a group of their own
    (`color @val`), never averaged with the test split's, and so are benchmarks of another kind under one
    capability (`pitch (probe)`, the encoder alone, beside `pitch (vqa)`, the model answering). A user's
    folder (`wds:`, `audio-folder:`: type or capability `custom`) is a row of its own, labelled by its name: two
    folders are two data sets, not one capability."""
    ok = table[table["status"] == "ok"].copy()
    ok["split"] = [split_of(b) for b in ok["benchmark"]]
    own = (ok["type"] == "custom") | (ok["capability"] == "custom")
    ok.loc[own, "capability"] = [b[: len(b) - len(sp) - 1] if sp else b
                                 for b, sp in zip(ok.loc[own, "benchmark"], ok.loc[own, "split"])]
    if "kind" not in ok.columns:
        ok["kind"] = ""
    ok["kind"] = ok["kind"].fillna("")
    for (typ, cap, split), grp in ok.groupby(["type", "capability", "split"], sort=True):
        kinds = sorted(grp["kind"].unique())
        for kind in kinds:
            label = f"{cap} ({kind})" if len(kinds) > 1 else cap
            yield typ, f"{label} @{split}" if split else label, grp[grp["kind"] == kind]


def capability_cell(grp, model: str) -> tuple[float | None, str]:
    """A model's mean headline score over a capability group's benchmarks, and a note when it has scores for
    only some of them (`2 of 3`): such a mean is over other benchmarks than its neighbours' in the row."""
    s = grp[grp["model"] == model].dropna(subset=["score"])
    if not len(s):
        return None, ""
    have, total = s["benchmark"].nunique(), grp["benchmark"].nunique()
    return float(s["score"].mean()), (f"{have} of {total}" if have < total else "")


def capability_table(table) -> str:
    """Markdown: one row per (type, capability, kind, split), the mean headline score of its benchmarks per
    model, with `(k of n)` beside a mean over only some of the row's benchmarks. Results of another split
    (`BENCH@val`) are a row of their own, never averaged with the test split's."""
    models = _models(table)
    rows = []
    for typ, cap, grp in capability_groups(table):
        row: list[Any] = [typ, cap, ", ".join(sorted(grp["benchmark"].unique()))]
        for m in models:
            mean, part = capability_cell(grp, m)
            row.append(f"{mean:.3f} ({part})" if part else mean)
        rows.append(row)
    return _md(["type", "capability", "benchmarks", *models], rows)


def report_markdown(table) -> str:
    models = _models(table)
    specs = dict(zip(table["model"], table["model_spec"]))
    parts = ["# Evaluation report", "", "Models:", *[f"- `{m}`: {specs.get(m)}" for m in models], "",
             "## Capabilities (mean headline score)", "", capability_table(table), ""]
    for typ, grp in table.groupby("type", sort=True):
        parts += [f"## {typ}", ""]
        rows = []
        for b, g in grp.groupby("benchmark", sort=True):
            first = g.iloc[0]
            rows.append([b, first["capability"], first["kind"], first["metric"], *[_score(table, m, b) for m in models]])
        parts += [_md(["benchmark", "capability", "kind", "metric", *models], rows), ""]
    mmeb = table[(table["kind"] == "mmeb") & (table["status"] == "ok")]
    for _, r in mmeb.iterrows():
        met = json.loads(r["metrics"])
        parts += [f"### {r['benchmark']} ({r['model']}): Precision@1", "",
                  _md(["overall", "IND", "OOD", "classification", "vqa", "retrieval", "grounding"],
                      [[met.get(k) for k in ("precision@1", "ind", "ood", "classification", "vqa", "retrieval", "grounding")]]), ""]
    partial = table[(table["status"] == "ok") & (table["limit"].notna() | (table["skipped"].fillna("") != ""))] \
        if {"limit", "skipped"} <= set(table.columns) else table[:0]
    if len(partial):            # scores over fewer items than the benchmark holds: said beside them
        parts += ["## Items not scored", "", _md(["model", "benchmark", "n scored", "--limit", "skipped (by reason)"], [
            [r["model"], r["benchmark"], _count(r["n"]), _count(r["limit"]), r["skipped"] or "-"]
            for _, r in partial.iterrows()]), ""]
    skipped = table[table["status"] == "skipped"]
    if len(skipped):
        parts += ["## Not applicable", "", _md(["model", "benchmark", "reason"],
                                               skipped[["model", "benchmark", "reason"]].values.tolist()), ""]
    parts += ["Per-sample rows: `results/<model>/<benchmark>.parquet`; table: `aggregate.parquet`; chart: `chart.png`.", ""]
    return "\n".join(parts)


def write_report(out: str | os.PathLike, table) -> Path:
    return write_text(Path(out) / "report.md", report_markdown(table))


def write_chart(out: str | os.PathLike, table) -> Path | None:
    """Horizontal bars of the headline score per benchmark and model, one panel per benchmark type."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = table[(table["status"] == "ok") & table["score"].notna()]
    p = Path(out) / "chart.png"
    if not len(ok):
        return None
    models = _models(ok)
    types = sorted(ok["type"].unique())
    heights = [max(1, ok[ok["type"] == t]["benchmark"].nunique()) for t in types]
    fig, axes = plt.subplots(len(types), 1, figsize=(8, 1.2 + 0.35 * len(models) * sum(heights) / 1.5),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    width = 0.8 / len(models)
    for ax, typ in zip(axes[:, 0], types):
        benches = sorted(ok[ok["type"] == typ]["benchmark"].unique())
        top = 0.0
        for j, m in enumerate(models):
            vals = [_score(ok, m, b) or 0.0 for b in benches]
            top = max([top, *vals])
            ax.barh([i + j * width for i in range(len(benches))], vals, height=width, label=m)
        ax.set_xlim(0, 1.0 if top <= 1.0 else top * 1.05)          # rates on 0..1; BLEU / CIDEr on their own scale
        ax.set_yticks([i + width * (len(models) - 1) / 2 for i in range(len(benches))])
        ax.set_yticklabels([f"{b} ({ok[ok['benchmark'] == b]['metric'].iloc[0]})" for b in benches], fontsize=7)
        ax.set_title(typ, fontsize=9, loc="left")
        ax.invert_yaxis()
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    write_file(p, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return p
