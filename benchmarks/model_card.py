"""Model cards generated from results files: the card's `model-index` (the Hub's results format) and its
results section are made by a command from the results files the card names, never typed in.

    vlm eval --model runs/llava-tiny/final --suite synthetic-world-quick --out runs/eval --model-card model_cards/llava.md
    vlm card model_cards/iaa.md --results runs/iaa-compare/results-seed*.jsonl   # a study's results, then regenerate
    vlm card model_cards/iaa.md                                                  # regenerate from its files
    vlm card --check model_cards/*.md                                            # CI: exit 1 on any difference

A card's YAML front matter names its results files (paths relative to the card, kept small and
committed beside it in `model_cards/results/`):

    vlm-results: [results/iaa.jsonl]

A results file is JSON lines, one row per model x benchmark (x seed): `model`, `benchmark`, `metric`,
`score`, and optionally `type`, `capability`, `kind`, `n` (samples), `seed`, `chance`. `vlm eval`
writes them from its aggregate table (`results_rows`); a study script writes its own (e.g. a held-out
text perplexity beside the benchmark scores). The generated section is one table, benchmark x model:
the mean over seeds, with the spread (sample standard deviation) and the seed count when there are
several; `model-index` holds the means. Everything outside the section and the `model-index` key is
left as written. `tests/test_model_cards.py` regenerates every committed card and fails on a difference.
"""
from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from vlm.atomic import write_text
from vlm.config import load_yaml
from vlm.errors import UserError, read_jsonl, read_text

START, END = "<!-- vlm-eval results: start -->", "<!-- vlm-eval results: end -->"
RESULTS_KEY = "vlm-results"
RESULTS_DIR = "results"
FIELDS = ("model", "benchmark", "type", "capability", "kind", "metric", "score", "n", "seed", "chance")


def _split(text: str, where: str = "model card") -> tuple[dict, str, str | None]:
    """(front matter as data, body, the front matter's own text or None when the card has none)."""
    if text.startswith("---\n"):
        head, sep, body = text[4:].partition("\n---\n")
        if sep:
            try:
                meta = load_yaml(head) or {}          # a key given twice is refused (PyYAML kept the last)
            except yaml.YAMLError as e:
                problem = getattr(e, "problem", None) or str(e).splitlines()[0]
                raise UserError(f"{where}: front matter is not valid YAML ({problem})") from None
            if not isinstance(meta, dict):
                raise UserError(f"{where}: front matter is a YAML {type(meta).__name__}, not a mapping of keys")
            return meta, body, head
        # an opening `---` with no closing one: a new block on top would leave this one as body text
        raise UserError(f"{where}: the front matter opened by the first line `---` has no closing `---` line")
    return {}, text, None


def _section_span(body: str, where: str) -> tuple[int, int] | None:
    """Where the generated section is (start of its start marker, end of its end marker), None when the card
    has none; a marker without its pair, two pairs or an end before the start is a one-line error (replacing
    from a lone marker would delete what the author wrote after it)."""
    starts, ends = body.count(START), body.count(END)
    if starts == ends == 0:
        return None
    if starts != 1 or ends != 1 or body.index(END) < body.index(START):
        raise UserError(f"{where}: the generated section's markers do not pair up ({starts} x '{START}', {ends} x "
                        f"'{END}'; one of each, start first): fix them by hand, nothing was written")
    return body.index(START), body.index(END) + len(END)


def _join(meta: dict, body: str, head: str | None = None, keys: tuple[str, ...] = ()) -> str:
    """The card's text: with `head` (the front matter as written), only the top-level `keys` are rewritten
    from `meta` and the rest keeps its text, comments included; without it, `meta` dumped whole."""
    if head is not None:
        kept = _replace_keys(head, {k: meta[k] for k in keys if k in meta})
        if kept is not None:
            return "---\n" + kept + "---\n" + body
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=100) + "---\n" + body


_TOP_KEY = re.compile(r"^([A-Za-z0-9_][^:#]*?)\s*:(?:\s|$)")


def _replace_keys(head: str, updates: dict) -> str | None:
    """`head` with each top-level key of `updates` rewritten as block YAML in place (a new key at the end),
    every other line as it was; None when the result would not read back as the intended mapping (flow
    styles, anchors, a layout this line-based edit does not follow)."""
    lines = head.splitlines()
    out, i = [], 0
    done = set()
    while i < len(lines):
        m = _TOP_KEY.match(lines[i])
        key = m.group(1).strip() if m else None
        if key in updates:
            j = i + 1                        # the key's block: indented, blank or `- ` lines (a comment at column 0 ends it)
            while j < len(lines) and not _TOP_KEY.match(lines[j]) and not lines[j].startswith("#"):
                j += 1
            while j > i + 1 and not lines[j - 1].strip():          # blank lines after the block stay
                j -= 1
            out.extend(yaml.safe_dump({key: updates[key]}, sort_keys=False, allow_unicode=True, width=100).splitlines())
            done.add(key)
            i = j
            continue
        out.append(lines[i])
        i += 1
    try:
        before = yaml.safe_load(head) or {}
    except yaml.YAMLError:
        return None
    if any(key in before and key not in done for key in updates):   # a quoted / complex key the lines missed
        return None
    for key, value in updates.items():
        if key not in done:
            out.extend(yaml.safe_dump({key: value}, sort_keys=False, allow_unicode=True, width=100).splitlines())
    text = "\n".join(out) + "\n"
    try:
        return text if yaml.safe_load(text) == {**before, **updates} else None
    except yaml.YAMLError:
        return None


# ---------------------------------------------------------------------------------------------
# results files
# ---------------------------------------------------------------------------------------------
def results_rows(table, **extra: Any) -> list[dict[str, Any]]:
    """Rows of a results file from an aggregate table (`benchmarks.runner.aggregate`): the ok results,
    with `extra` fields (e.g. seed=0) on every row."""
    rows = []
    for _, r in table[table["status"] == "ok"].iterrows():
        if r["score"] is None or (isinstance(r["score"], float) and math.isnan(r["score"])):
            continue
        metrics = json.loads(r["metrics"]) if isinstance(r.get("metrics"), str) else {}
        row = {k: r.get(k) for k in ("model", "benchmark", "type", "capability", "kind", "metric")}
        n = r.get("n")
        row.update(score=round(float(r["score"]), 6), n=None if n is None or n != n else int(n))
        if metrics.get("chance") is not None:
            row["chance"] = round(float(metrics["chance"]), 6)
        limit = r.get("limit")                          # a --limit run: its score is over the first `limit` items
        if limit is not None and not math.isnan(limit):
            row["limit"] = int(limit)
        if r.get("skipped"):                            # unreadable items its score does not cover
            row["skipped"] = r["skipped"]
        rows.append({**{k: v for k, v in row.items() if v is not None}, **extra})
    return rows


def write_results(path: str | os.PathLike, rows: list[dict[str, Any]]) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return write_text(p, "".join(json.dumps(r, sort_keys=False) + "\n" for r in rows))


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def row_problem(r: Any) -> str | None:
    """Why a results row cannot be used (None when it can): a JSON object with text `model`, `benchmark`,
    `metric`, a finite number `score` (not a string, a bool, NaN or inf), and if present a finite `chance`, an
    integer `n`, a text or integer `seed`."""
    if not isinstance(r, dict):
        return f"is a JSON {type(r).__name__}, not an object"
    missing = [k for k in ("model", "benchmark", "metric", "score") if k not in r]
    if missing:
        return f"has no {missing[0]!r}"
    for k in ("model", "benchmark", "metric", "type", "capability", "kind"):
        if k in r and r[k] is not None and not (isinstance(r[k], str) and r[k]):
            return f"has a {k!r} that is not text: {r[k]!r}"
    for k in ("score", "chance"):
        if (k == "score" or r.get(k) is not None) and not _number(r.get(k)):
            return f"has a {k!r} that is not a finite number: {r.get(k)!r}"
    if r.get("n") is not None and not (_number(r["n"]) and float(r["n"]).is_integer() and 0 <= r["n"] < 2**53):
        return f"has an 'n' that is not a count: {r['n']!r}"
    if r.get("seed") is not None and not (isinstance(r["seed"], str) or (_number(r["seed"]) and float(r["seed"]).is_integer())):
        return f"has a 'seed' that is neither text nor an integer: {r['seed']!r}"
    return None


def read_results(paths: list[Path]) -> list[dict[str, Any]]:
    rows = [r for p in paths for r in _read_file(p)]
    if not rows:
        raise UserError(f"no results in {', '.join(map(str, paths))}")
    return rows


def _read_file(p: Path) -> list[dict[str, Any]]:
    """One results file's rows (checked; none for an empty file)."""
    rows = []
    for i, r in read_jsonl(p, "results file (JSON lines)"):
        why = row_problem(r)
        if why:
            raise UserError(f"{p}: line {i} {why}")
        rows.append(r)
    return rows


def _files_of(card: Path, meta: dict) -> list[Path]:
    files = meta.get(RESULTS_KEY)
    if not files:
        raise UserError(f"{card}: names no results files (front matter `{RESULTS_KEY}: [results/NAME.jsonl]`; "
                        f"`vlm card {card} --results FILE` or `vlm eval ... --model-card {card}` writes them)")
    files = [files] if isinstance(files, str) else files
    if not (isinstance(files, list) and all(isinstance(f, str) and f for f in files)):
        raise UserError(f"{card}: `{RESULTS_KEY}` must be a list of results file paths, got {files!r}")
    home = card.parent.resolve()
    for f in files:              # committed beside the card: a path outside its folder is another repository's file
        where = (card.parent / f).resolve()
        if Path(f).is_absolute() or not (where == home or home in where.parents):
            raise UserError(f"{card}: `{RESULTS_KEY}` names {f!r}, outside the card's folder; results files sit beside "
                            f"the card (results/NAME.jsonl)")
    return [card.parent / f for f in files]


# ---------------------------------------------------------------------------------------------
# the generated parts
# ---------------------------------------------------------------------------------------------
def _stats(values: list[float]) -> tuple[float, float | None]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarize(rows: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """Models in order of appearance, and per (benchmark, metric): its fields and per model
    (mean, std, seeds, n)."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    benches: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        b = benches.setdefault((r["benchmark"], r["metric"]), {"benchmark": r["benchmark"], "metric": r["metric"],
                                                                "type": r.get("type"), "capability": r.get("capability"),
                                                                "kind": r.get("kind"), "chance": r.get("chance"),
                                                                "by_model": {}})
        b["by_model"].setdefault(r["model"], []).append(r)
        if b["chance"] is None:
            b["chance"] = r.get("chance")
    for b in benches.values():
        for m, rs in b["by_model"].items():
            seeds = [r.get("seed") for r in rs]
            if len(seeds) > 1 and all(s is None for s in seeds):       # two runs of one thing, not seeds
                raise UserError(f"results: {m} / {b['benchmark']} ({b['metric']}) has {len(seeds)} rows and no "
                                f"'seed' in them (the same evaluation twice, a --limit run beside a whole one?): "
                                f"keep one row, or give each its seed")
            if len(seeds) > 1 and None in seeds:
                raise UserError(f"results: {m} / {b['benchmark']} ({b['metric']}) has rows with and without a "
                                f"'seed' ({seeds}): give every row its seed, or one row")
            if len(set(map(str, seeds))) != len(seeds):
                raise UserError(f"results: {m} / {b['benchmark']} ({b['metric']}) appears twice for seed {seeds}")
            mean, std = _stats([float(r["score"]) for r in rs])
            n = {None if r.get("n") is None else int(r["n"]) for r in rs}      # (5.0 printed as n=5.0)
            b["by_model"][m] = {"mean": mean, "std": std, "seeds": len(rs), "n": n.pop() if len(n) == 1 else None}
    return models, list(benches.values())


def _fmt(s: dict | None) -> str:
    if s is None:
        return "-"
    big = abs(s["mean"]) >= 100
    f = "{:,.1f}" if big else "{:.3f}"
    text = f.format(s["mean"])
    if s["std"] is not None:
        text += " ± " + f.format(s["std"])
    return text


def results_section(rows: list[dict[str, Any]], sources: list[str], card: str) -> str:
    models, benches = summarize(rows)
    seeds = sorted({b["by_model"][m]["seeds"] for b in benches for m in b["by_model"]})
    chance = any(b["chance"] is not None for b in benches)
    head = ["benchmark", "capability", "metric", *(["chance"] if chance else []), *models]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < 3 else "---:" for i in range(len(head))) + "|"]
    for b in benches:
        ns = {s["n"] for s in b["by_model"].values()} - {None}
        name = f"`{b['benchmark']}`" + (f" (n={ns.pop()})" if len(ns) == 1 else "")
        cells = [name, b["capability"] or "", b["metric"], *([f"{b['chance']:.3f}" if b["chance"] is not None else ""]
                                                            if chance else []),
                 *[_fmt(b["by_model"].get(m)) for m in models]]
        lines.append("| " + " | ".join(cells) + " |")
    spread = ("one seed per model" if seeds == [1] else
              f"mean ± sample standard deviation over {' / '.join(map(str, seeds))} seeds per model")
    return "\n".join([
        START, "## Evaluation results", "",
        f"Generated by `vlm card {card}` from {', '.join(f'`{s}`' for s in sources)} ({spread}); "
        "do not edit by hand.", "", *lines, END])


def model_index(rows: list[dict[str, Any]]) -> list[dict]:
    """HF `model-index`: per model, one result per benchmark and metric (the mean over seeds)."""
    models, benches = summarize(rows)
    out = []
    for m in models:
        results = []
        for b in benches:
            s = b["by_model"].get(m)
            if s is None:
                continue
            metric = {"type": b["metric"], "value": round(s["mean"], 4)}
            if s["seeds"] > 1:
                metric["name"] = f"{b['metric']} (mean of {s['seeds']} seeds, std {s['std']:.4f})"
            results.append({"task": {"type": b["kind"] or "evaluation",
                                     "name": f"{b['type'] or 'other'} / {b['capability'] or b['benchmark']}"},
                            "dataset": {"name": b["benchmark"], "type": b["benchmark"]}, "metrics": [metric]})
        out.append({"name": m, "results": results})
    return out


def _read_card(card: Path) -> str:
    if card.is_dir():
        raise UserError(f"{card}: a folder, not a model card file")
    return read_text(card, "model card")                       # (a BOM dropped: the front matter starts the file)


def render(card: str | os.PathLike, text: str | None = None, pending: dict[Path, list[dict]] | None = None) -> str:
    """The card with its `model-index` and results section regenerated from its results files (`pending`:
    rows of files about to be written, read from there instead of the disk)."""
    card = Path(card)
    text = _read_card(card) if text is None else text
    meta, body, head = _split(text, str(card))
    span = _section_span(body, str(card))
    files = _files_of(card, meta)
    pending = pending or {}
    rows = [r for f in files for r in (pending[f] if f in pending else _read_file(f))]
    if not rows:
        raise UserError(f"no results in {', '.join(map(str, files))}")
    meta["model-index"] = model_index(rows)
    shown = "/".join(x for x in (card.resolve().parent.name, card.name) if x)   # the same from any working folder
    section = results_section(rows, [os.path.relpath(f, card.parent) for f in files], shown)
    if span is not None:
        body = body[:span[0]] + section + body[span[1]:]
    else:
        body = body.rstrip("\n") + "\n\n" + section + "\n"
    return _join(meta, body, head, ("model-index",))


def _write_card(p: Path, text: str) -> None:
    """Atomically, keeping the card's file mode."""
    write_text(p, text, keep_mode=True)


def regenerate(card: str | os.PathLike) -> Path:
    p = Path(card)
    _write_card(p, render(p))
    return p


def check(card: str | os.PathLike) -> list[str]:
    """The diff between a card and what its results files give ([] when they agree)."""
    p = Path(card)
    old = _read_card(p)
    return list(difflib.unified_diff(old.splitlines(), render(p, old).splitlines(), str(p), "regenerated", lineterm=""))


def attach(card: str | os.PathLike, results: list[str | os.PathLike], name: str | None = None) -> Path:
    """Copy (concatenate) results files into `<card dir>/results/<name or card stem>.jsonl` (replacing that
    file: said on stderr when it held other rows), name it in the card's front matter beside the results files
    it already names, and regenerate the card. Everything is checked first: a bad row, card or front matter
    writes nothing."""
    p = Path(card)
    if name is not None:
        name = name.removesuffix(".jsonl")
        if not name or name != name.strip() or name in (".", "..") or any(c in name for c in "/\\"):
            raise UserError(f"--name {name!r}: a results file name (written to {p.parent / RESULTS_DIR}), without "
                            f"a folder or surrounding spaces")
    rows = read_results([Path(r) for r in results])
    dest = p.parent / RESULTS_DIR / f"{name or p.stem}.jsonl"
    text = _read_card(p) if p.exists() or p.is_dir() else f"# {p.stem}\n"
    meta, body, head = _split(text, str(p))
    named = _files_of(p, meta) if meta.get(RESULTS_KEY) else []
    rel = f"{RESULTS_DIR}/{dest.name}"
    meta[RESULTS_KEY] = [os.path.relpath(f, p.parent) for f in named] + [rel for f in [dest] if f not in named]
    new = render(p, _join(meta, body, head, (RESULTS_KEY,)), pending={dest: rows})
    before = dest.read_bytes() if dest.is_file() else b""
    p.parent.mkdir(parents=True, exist_ok=True)
    write_results(dest, rows)
    _write_card(p, new)
    if before.strip() and dest.read_bytes() != before:
        print(f"{dest}: replaced ({sum(1 for x in before.splitlines() if x.strip())} row(s) before, {len(rows)} now; "
              f"--name NAME writes a results file beside it)", file=sys.stderr)
    return p


def check_card(path: str | os.PathLike) -> None:
    """What `update_model_card` will need of the card, checked before an evaluation runs (it was said only after
    it): a readable card, its front matter a mapping, its section markers paired. A missing card is made."""
    p = Path(path)
    if p.exists() or p.is_dir():
        _, body, _ = _split(_read_card(p), str(p))
        _section_span(body, str(p))


def update_model_card(path: str | os.PathLike, table, **extra: Any) -> Path:
    """`vlm eval --model-card`: this run's results become the card's results file, then the card is
    regenerated from it."""
    p = Path(path)
    dest = p.parent / RESULTS_DIR / f"{p.stem}.jsonl"
    rows = results_rows(table, **extra)
    if not rows:
        raise UserError(f"no finished results to write into {p}")
    tmp = write_results(dest.with_name(f".{dest.stem}.new.jsonl"), rows)
    try:
        return attach(p, [tmp])
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# `vlm card`
# ---------------------------------------------------------------------------------------------
def cmd_card(args: argparse.Namespace) -> int:
    if args.results and len(args.cards) != 1:
        raise UserError("--results goes with one card")
    if args.results and args.check:
        raise UserError("--check compares a card with the results files it names; it does not go with --results")
    if args.results:
        attach(args.cards[0], args.results, args.name)
        print(f"{args.cards[0]}: results from {', '.join(args.results)}")
        return 0
    bad = 0
    for card in args.cards:
        if not Path(card).exists():
            raise UserError(f"{card}: no such model card")
        if args.check:
            diff = check(card)
            if diff:
                bad += 1
                print("\n".join(diff))
        else:
            regenerate(card)
            print(f"{card}: regenerated")
    if bad:
        print(f"{bad} card(s) differ from their results files; run `vlm card CARD` to regenerate", file=sys.stderr)
        return 1
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("card", help="generate model cards' results from results files",
                       description="Regenerate model cards' model-index and results section from the results files "
                                   "their front matter names (benchmarks.model_card).")
    p.add_argument("cards", nargs="+", metavar="CARD", help="model card(s), e.g. model_cards/llava.md")
    p.add_argument("--check", action="store_true", help="only compare; exit 1 if a card differs")
    p.add_argument("--results", nargs="+", metavar="FILE", default=None,
                   help="results files (JSON lines) to copy into model_cards/results/ as the card's source")
    p.add_argument("--name", default=None, help="with --results: the results file's name (default: the card's)")
    p.set_defaults(func=cmd_card)

