"""`report.html`: an evaluation folder to look at, not only to read. Self-contained (one file, no network):
the capability chart and tables inline, per-benchmark tables with chance levels, and a per-sample
gallery - the media (images as thumbnails, audio in <audio>, video in <video> players, all inlined as
data: URIs), the question, the gold answer and every model's prediction side by side - that filters to
the samples where the models disagree or where any model is wrong.

    vlm eval --model A --model B --suite synthetic-world-quick --out runs/eval    # -> runs/eval/report.html
    write_html("runs/eval", table, benches, roots)

Rows come from `results/<model>/<benchmark>.parquet` (the latest result of each model x benchmark, as in
the aggregate table), media from the benchmark's shards (found by sample key; a benchmark whose data is
not at hand gets a gallery without media).
"""
from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

from benchmarks.metrics import skipped_items
from benchmarks.registry import BENCHMARKS, Benchmark, Roots
from benchmarks.store import latest, read_records
from vlm.atomic import write_text

GALLERY_LIMIT = 1000              # samples per benchmark in the gallery (all rows stay in results/)
THUMB = 192                       # px, the longest side of an image thumbnail
MAX_MEDIA_BYTES = 4 << 20         # a larger audio / video file is named, not inlined
_MIME = {"flac": "audio/flac", "wav": "audio/wav", "mp3": "audio/mpeg", "ogg": "audio/ogg", "mp4": "video/mp4"}
CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1400px;padding:0 18px 40px;color:#222}
h1{margin:18px 0 4px}h2{margin-top:34px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #ddd;padding:4px 8px;vertical-align:top;text-align:left}
th{background:#f4f4f4;position:sticky;top:0}td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{background:#e7f6e7}.bad{background:#fbe3e3}.muted{color:#888}.chart{max-width:100%;border:1px solid #eee}
details{margin:10px 0;border:1px solid #ddd;border-radius:6px;padding:4px 10px}summary{cursor:pointer;font-weight:600;padding:4px 0}
.gallery img{max-height:128px;max-width:192px;display:block;margin:2px 0}.gallery audio{width:220px}.gallery video{max-width:220px}
.bar{position:sticky;top:0;background:#fff;padding:8px 0;border-bottom:1px solid #eee;z-index:2}
.q{max-width:340px;white-space:pre-wrap}.pred{max-width:260px;white-space:pre-wrap}code{font-size:12px}
"""
JS = """
function applyFilter(){
  const mode=document.querySelector('input[name=show]:checked').value;
  const text=document.getElementById('search').value.toLowerCase();
  for(const g of document.querySelectorAll('table.gallery')){
    let shown=0;
    for(const r of g.tBodies[0].rows){
      const ok=(mode==='all'||(mode==='disagree'&&r.dataset.disagree==='1')||(mode==='error'&&r.dataset.error==='1'))
               &&(!text||r.textContent.toLowerCase().includes(text));
      r.style.display=ok?'':'none'; if(ok) shown++;
    }
    const c=document.getElementById('count-'+g.id); if(c) c.textContent=shown;
  }
}
document.addEventListener('DOMContentLoaded',()=>{
  for(const e of document.querySelectorAll('input[name=show],#search')) e.addEventListener('input',applyFilter);
  applyFilter();
});
"""


def _esc(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _num(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return '<span class="muted">n/a</span>'
    return f"{x:.3f}" if isinstance(x, float) else _esc(x)


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _thumb(data: bytes) -> str | None:
    from vlm.modalities import decode_image
    try:
        im = decode_image(data, (THUMB, THUMB))               # as the model saw it: upright, 16-bit scaled
        im.thumbnail((THUMB, THUMB))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
    except Exception:                                                  # a broken file: no thumbnail
        return None
    return _data_uri("image/jpeg", buf.getvalue())


def media_html(fields: dict[str, bytes]) -> str:
    """Every media file of a sample, in member order, inlined."""
    from vlm.modalities import file_kind, media_order
    parts = []
    for name in sorted(fields, key=media_order):
        ext = name.rsplit(".", 1)[-1].lower()
        kind, data = file_kind(ext), fields[name]
        if kind == "image":
            uri = _thumb(data)
            parts.append(f'<img loading="lazy" alt="{_esc(name)}" src="{uri}">' if uri
                         else f'<span class="muted">{_esc(name)}: unreadable</span>')
        elif kind in ("audio", "video") and ext in _MIME:
            if len(data) > MAX_MEDIA_BYTES:
                parts.append(f'<span class="muted">{_esc(name)} ({len(data) >> 10} KiB, not inlined)</span>')
            else:
                tag = "video" if kind == "video" else "audio"
                parts.append(f'<{tag} controls preload="none" src="{_data_uri(_MIME[ext], data)}"></{tag}>')
    return "".join(parts) or '<span class="muted">-</span>'


# ---------------------------------------------------------------------------------------------
# what the folder holds
# ---------------------------------------------------------------------------------------------
def latest_records(out: Path) -> list[dict[str, Any]]:
    """The latest record of each (model, benchmark) in `out/results` (the one the aggregate shows) when it
    is ok, with its rows file."""
    return [{**r, "_rows": p.parent / r["rows"]} for p, r in latest(read_records(out))
            if r.get("status") == "ok" and r.get("rows")]


def _cell(row: dict[str, Any], names: list[str] | None, *keys: str) -> Any:
    for k in keys:
        v = row.get(k)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            if names is not None and k in ("label", "pred") and isinstance(v, int) and 0 <= v < len(names):
                return names[v]
            return v
    return None


def _correct(row: dict[str, Any]) -> float | None:
    for k in ("correct", "accuracy", "exact_match"):
        v = row.get(k)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            return float(v)
    return None


def _samples(bench: Benchmark | None, roots: Roots, keys: set[str]) -> dict[str, Any]:
    """key -> Sample (bytes) from the benchmark's test shards; {} when its data is not at hand."""
    from benchmarks.data import iter_samples, shard_files
    if bench is None or not keys:
        return {}
    try:
        files = shard_files(bench.data.folder(roots), bench.data.split)
        found = {}
        for s in iter_samples(files):
            if s.key in keys:
                found[s.key] = s
                if len(found) == len(keys):
                    break
        return found
    except Exception:                                                  # no data here: a gallery without media
        return {}


def _classnames(bench: Benchmark | None, roots: Roots) -> list[str] | None:
    if bench is None or bench.kind not in ("zeroshot",):
        return None
    try:
        from benchmarks.data import read_wds_meta
        return read_wds_meta(bench.data.folder(roots)).classnames
    except Exception:
        return None


def _question(row: dict[str, Any], sample) -> str:
    q = row.get("prompt") or row.get("caption")
    if q:
        return str(q)
    if sample is not None:
        try:
            meta = sample.meta()
        except Exception:
            return ""
        conv = meta.get("conversations")
        if isinstance(conv, list) and conv and isinstance(conv[0], dict):
            return str(conv[0].get("value", ""))
        q = meta.get("query")
        if isinstance(q, dict):
            return str(q.get("text", ""))
    return ""


def chance_of(bench_name: str, recs: list[dict], samples: dict[str, Any], names: list[str] | None) -> float | None:
    """The benchmark's chance level: its metrics' `chance`, else the samples' closed answer sets
    (mean of 1 / |choices|), else 1 / classes for zero-shot classification."""
    for r in recs:
        c = (r.get("metrics") or {}).get("chance")
        if c is not None:
            return float(c)
    from benchmarks.data import SampleProblem, choices_of
    inv = []
    for s in samples.values():
        try:
            choices = choices_of(s.meta())
        except SampleProblem:
            choices = []
        if choices:
            inv.append(1 / len(choices))
    if inv:
        return sum(inv) / len(inv)
    return 1 / len(names) if names else None


# ---------------------------------------------------------------------------------------------
# the page
# ---------------------------------------------------------------------------------------------
def report_html(out: str | Path, table, benches: list[Benchmark] = (), roots: Roots | None = None,
                limit: int = GALLERY_LIMIT) -> str:
    import pandas as pd

    from benchmarks.report import _models
    out, roots = Path(out), roots or Roots()
    known = {b.name: b for b in benches}
    models = _models(table)
    specs = dict(zip(table["model"], table["model_spec"]))
    recs = latest_records(out)
    by_bench: dict[str, list[dict]] = {}
    for r in recs:
        by_bench.setdefault(r["benchmark"], []).append(r)

    parts = [f"<h1>Evaluation report</h1><p class=muted>{_esc(out.resolve())}</p><ul>"]
    parts += [f"<li><b>{_esc(m)}</b>: <code>{_esc(specs.get(m))}</code></li>" for m in models]
    parts.append("</ul>")
    chart = out / "chart.png"
    if chart.exists():
        parts.append(f'<h2>Capabilities</h2><img class="chart" alt="capability chart" '
                     f'src="{_data_uri("image/png", chart.read_bytes())}">')
    parts.append(_capability_html(table, models))

    galleries, rows_html = [], []
    for bench_name in sorted(by_bench):
        brecs = sorted(by_bench[bench_name], key=lambda r: models.index(r["model"]) if r["model"] in models else 99)
        bench = known.get(bench_name) or (BENCHMARKS.get(bench_name) if bench_name in BENCHMARKS else None)
        per_model = {r["model"]: pd.read_parquet(r["_rows"]).to_dict("records") for r in brecs if r["_rows"].exists()}
        bmodels = [m for m in models if m in per_model] + [m for m in per_model if m not in models]
        keys = list(dict.fromkeys(str(row["key"]) for m in bmodels for row in per_model[m]))
        names = _classnames(bench, roots)
        samples = _samples(bench, roots, set(keys[:limit]))
        first = brecs[0]
        scores = {r["model"]: r.get("score") for r in brecs}
        rows_html.append([bench_name, first.get("type"), first.get("capability"), first.get("metric"),
                          chance_of(bench_name, brecs, samples, names), len(keys), *[scores.get(m) for m in models]])
        galleries.append(_gallery(bench_name, first, bmodels, per_model, keys, samples, names, limit))

    parts.append("<h2>Benchmarks</h2><table><thead><tr>" + "".join(
        f"<th>{_esc(h)}</th>" for h in ["benchmark", "type", "capability", "metric", "chance", "samples", *models])
        + "</tr></thead><tbody>")
    for r in rows_html:
        cells = [f"<td>{_esc(c)}</td>" for c in r[:4]] + [f'<td class="num">{_num(c)}</td>' for c in r[4:]]
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table>")
    parts.append('<h2>Samples</h2><div class="bar">Show: '
                 '<label><input type="radio" name="show" value="all" checked> all</label> '
                 '<label><input type="radio" name="show" value="disagree"> models disagree</label> '
                 '<label><input type="radio" name="show" value="error"> any model wrong</label> '
                 '&nbsp; <input id="search" type="search" placeholder="filter text"></div>')
    parts += galleries
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8><meta name=viewport "
            "content='width=device-width,initial-scale=1'><title>Evaluation report</title>"
            f"<style>{CSS}</style><script>{JS}</script></head><body>" + "\n".join(parts) + "</body></html>\n")


def _capability_html(table, models: list[str]) -> str:
    from benchmarks.report import capability_cell, capability_groups
    out = ["<table><thead><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in ["type", "capability", "benchmarks", *models])
           + "</tr></thead><tbody>"]
    for typ, cap, grp in capability_groups(table):
        cells = [typ, cap, ", ".join(sorted(grp["benchmark"].unique()))]
        vals = [capability_cell(grp, m) for m in models]
        out.append("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in cells)
                   + "".join(f'<td class="num">{_num(v)}'
                             + (f' <span class="muted">({_esc(part)})</span>' if part else "") + "</td>"
                             for v, part in vals) + "</tr>")
    return "".join(out) + "</tbody></table>"


def _norm(x: Any) -> str:
    return " ".join(str(x).lower().split()) if x is not None else ""


def _gallery(name: str, rec: dict, models: list[str], per_model: dict[str, list[dict]], keys: list[str],
             samples: dict, names: list[str] | None, limit: int) -> str:
    gid = "g-" + "".join(c if c.isalnum() else "-" for c in name)
    index = {m: {str(r["key"]): r for r in rows} for m, rows in per_model.items()}
    head = ["#", "media", "question", "gold", *models]
    body = []
    for i, key in enumerate(keys[:limit]):
        rows = {m: index[m].get(key) for m in models}
        any_row = next(r for r in rows.values() if r is not None)
        sample = samples.get(key)
        gold = _cell(any_row, names, "gold", "reference", "label_name", "label")
        preds = {m: (None if r is None else _cell(r, names, "pred_name", "pred")) for m, r in rows.items()}
        marks = {m: (None if r is None else _correct(r)) for m, r in rows.items()}
        disagree = len({_norm(p) for p in preds.values()}) > 1 or len({c for c in marks.values()}) > 1
        error = any(c is not None and c < 0.5 for c in marks.values())
        cells = [f'<td class="num">{i + 1}<br><code>{_esc(key)}</code></td>',
                 f"<td>{media_html(sample.fields) if sample is not None else '<span class=muted>-</span>'}</td>",
                 f'<td class="q">{_esc(_question(any_row, sample))}</td>', f'<td class="pred">{_esc(gold)}</td>']
        for m in models:
            c = marks[m]
            cls = "" if c is None else (" ok" if c >= 0.5 else " bad")
            extra = "" if rows[m] is None or rows[m].get("cider") is None else f"<br><span class=muted>CIDEr {rows[m]['cider']:.2f}</span>"
            cells.append(f'<td class="pred{cls}">{_esc(preds[m])}{extra}</td>')
        body.append(f'<tr data-disagree="{int(disagree)}" data-error="{int(error)}">' + "".join(cells) + "</tr>")
    more = f" (the first {limit} of {len(keys)}; all rows in results/)" if len(keys) > limit else ""
    bad = skipped_items(rec.get("metrics") or {})        # items the score does not cover, said beside it
    more += (f"; scored under --limit {rec['limit']}" if rec.get("limit") else "") + \
        (f"; not scored: {', '.join(f'{k} {v}' for k, v in bad.items())}" if bad else "")
    return (f'<details id="d-{gid}"><summary>{_esc(name)} <span class=muted>({_esc(rec.get("kind"))}, '
            f'{_esc(rec.get("metric"))}) - <span id="count-{gid}">{min(len(keys), limit)}</span> of '
            f"{len(keys)} shown{more}</span></summary>"
            f'<table class="gallery" id="{gid}"><thead><tr>' + "".join(f"<th>{_esc(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(body) + "</tbody></table></details>")


def write_html(out: str | Path, table, benches: list[Benchmark] = (), roots: Roots | None = None) -> Path:
    return write_text(Path(out) / "report.html", report_html(out, table, benches, roots))
