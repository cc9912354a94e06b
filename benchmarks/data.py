"""Reading benchmark shards through the data layer: the clip_benchmark / UniBench `wds` layout and
synthetic-world splits.

    shards = shard_files(folder, "test")                      # folder/test/*.tar, numeric order
    for s in iter_samples(shards): s.key, s.fields["jpg"]    # raw bytes per extension
    wds = read_wds_meta(folder)                              # classnames + templates

Samples come from `vlm.data.reader` (the training pipeline's tar reader, webdataset's key rule) and
media decode with the modality table's decoders (`vlm.modalities`), full size, as clip_benchmark
decodes them. `data_hash` keys the feature cache: file names, sizes and modification times, plus
whatever text the caller adds.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from vlm.data.convert import class_template_problem
from vlm.data.decode import SampleError, decode_media
from vlm.data.reader import FileCache, read_fields, scan_shard
from vlm.errors import UserError, read_text
from vlm.modalities import (
    FILE_EXTENSIONS,
    MODALITIES,
    MediaError,
    media_order,
    placeholder_modalities,
)


@dataclass
class Sample:
    key: str
    shard: str
    fields: dict[str, bytes] = field(default_factory=dict)

    def meta(self) -> dict[str, Any]:
        """The sample's json object, {} when it has none; json that does not parse or is not an object is a
        `SampleProblem` ('bad_json') naming the sample: the task skips and counts it."""
        raw = self.fields.get("json")
        if raw is None:
            return {}
        try:
            meta = json.loads(raw)
        except json.JSONDecodeError as e:
            raise SampleProblem("bad_json", self, f"invalid json ({e.msg})") from None
        except (RecursionError, UnicodeDecodeError) as e:     # nested past Python's limit; bytes not UTF-8
            raise SampleProblem("bad_json", self, f"invalid json ({type(e).__name__})") from None
        if not isinstance(meta, dict):
            raise SampleProblem("bad_json", self, f"its json is a {type(meta).__name__}, not an object")
        return meta

    def files(self, kind: str) -> list[bytes]:
        """Every field of a file kind ('image', 'audio', 'video'), in key order (`0.jpg` < `1.jpg` < `10.jpg`)."""
        names = [n for n in self.fields if n.rsplit(".", 1)[-1].lower() in FILE_EXTENSIONS[kind]]
        return [self.fields[n] for n in sorted(names, key=media_order)]

    def first(self, kind: str) -> bytes:
        """The first file of a kind; a sample without one is a `SampleProblem` ('no_<kind>') naming it."""
        found = self.files(kind)
        if not found:
            raise SampleProblem(f"no_{kind}", self, f"has no {kind} ({'/'.join(FILE_EXTENSIONS[kind])})")
        return found[0]

    def named(self, name: str, kind: str) -> bytes | None:
        """The file stored as `<key>.<name>.<ext>` of a kind, or None."""
        return next((v for n, v in self.fields.items()
                     if n.split(".")[0] == name and n.rsplit(".", 1)[-1].lower() in FILE_EXTENSIONS[kind]), None)

    def decode(self, modality: str, raw: bytes) -> Any:
        """One media file of this sample as the modality's raw item; a bad file names the sample."""
        try:
            return MODALITIES[modality].decode(raw)
        except MediaError as e:
            raise BadMedia(f"bad_{modality}", self, str(e)) from None


class SampleProblem(UserError):
    """One sample a task cannot use (no image, json that does not parse, no label ...): `reason` is the counter
    it goes to (`skipped_<reason>` in the metrics), `key` the sample. Tasks skip and count it
    (`benchmarks.tasks.Skips`); a benchmark none of whose samples is usable ends with the first one's message."""

    def __init__(self, reason: str, sample: Sample | None, message: str):
        where = f"{sample.shard}: sample {sample.key}" if sample is not None else ""
        super().__init__(f"{where}: {message}" if where and not message.startswith(where) else message)
        self.reason = reason
        self.key, self.shard = (sample.key, sample.shard) if sample is not None else ("", "")


class BadMedia(SampleProblem):
    """A sample's media file that does not decode (reason `bad_<modality>`)."""


def _numeric_key(p: Path) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name))


_NOTED: set[str] = set()         # nshards.txt files whose unread shards were already said


def split_task_counts(folder: str | Path, split: str) -> dict[str, int] | None:
    """Samples per task in `folder/split` as its `index.json` (a synthetic-world build's, a conversion's) lists
    them; None when there is no readable index or its shards are not the split's .tar files (shards added or
    removed since: the index no longer describes them)."""
    index = Path(folder) / split / "index.json"
    try:
        raw = json.loads(index.read_text())
        counts, listed = raw.get("tasks"), {s.get("file") for s in raw.get("shards")}
        if listed != {f.name for f in shard_files(folder, split)} or not isinstance(counts, dict):
            return None
    except (OSError, ValueError, AttributeError, TypeError, UserError):
        return None
    return {t: n for t, n in counts.items() if isinstance(n, int) and not isinstance(n, bool)}


def shard_files(folder: str | Path, split: str) -> list[Path]:
    """`folder/split/*.tar` in numeric order (clip_benchmark's `nshards.txt` is honoured when present)."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"benchmark folder not found: {root}")
    d = root / split
    if not d.is_dir():
        have = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise UserError(f"{root}: no '{split}' split (expected {d}/*.tar; found folders {have})")
    n_file = d / "nshards.txt"
    if n_file.exists():
        try:
            n = int(n_file.read_text().strip())
        except ValueError:
            raise UserError(f"{n_file}: not an integer") from None
        if n < 1:
            raise UserError(f"{n_file}: {n} shards; a split needs at least one")
        files = [d / f"{i}.tar" for i in range(n)]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise UserError(f"{n_file} says {n} shards but {missing[:3]} are missing")
        unread = sorted({p.name for p in d.glob("*.tar")} - {f.name for f in files}, key=lambda x: _numeric_key(Path(x)))
        if unread and str(n_file) not in _NOTED:   # read as clip_benchmark reads it (the first n), and said once
            _NOTED.add(str(n_file))
            print(f"note: {n_file} says {n} shard(s); {len(unread)} other .tar file(s) in {d} are not read "
                  f"(e.g. {unread[0]})", file=sys.stderr)
        return files
    files = sorted(d.glob("*.tar"), key=_numeric_key)
    if not files:
        raise UserError(f"{d}: no .tar shards")
    return files


def iter_samples(files: Iterable[Path]) -> Iterator[Sample]:
    """Samples of the tar shards, in order; a truncated or unreadable shard is a one-line error naming it."""
    cache = FileCache()
    try:
        for f in files:
            for ref in scan_shard(str(f)):
                if ref.error:               # (the reader's message names the shard too: once is enough)
                    raise UserError(f"{f}: unreadable tar shard ({ref.message.removeprefix(f'{f}: ')})")
                try:
                    fields = read_fields(ref, cache)
                except OSError as e:
                    raise UserError(f"{f}: unreadable tar shard ({e})") from None
                yield Sample(ref.key, str(f), fields)
    finally:
        cache.close()


@dataclass
class WdsMeta:
    folder: Path
    classnames: list[str]
    templates: list[str]


def _read_lines(path: Path, positional: bool = False) -> list[str]:
    """The non-blank lines; `positional` (class names: `cls` N is line N + 1): a blank line before the last name
    is refused, as dropping it would shift every later class (clip_benchmark keeps it as a class)."""
    lines = [ln.strip() for ln in read_text(path, "file").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if positional and "" in lines:
        raise UserError(f"{path}: line {lines.index('') + 1} is blank: class names are one per line, by position "
                        f"(`cls` N names line N + 1); remove the blank line or name the class")
    return [ln for ln in lines if ln]


def read_wds_meta(folder: str | Path) -> WdsMeta:
    """classnames.txt + zeroshot_classification_templates.txt of a clip_benchmark `wds` folder."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"benchmark folder not found: {root}")
    names, tmpl = root / "classnames.txt", root / "zeroshot_classification_templates.txt"
    for p in (names, tmpl):
        if not p.exists():
            raise UserError(f"{root}: no {p.name} (not a clip_benchmark wds folder)")
    classnames, templates = _read_lines(names, positional=True), _read_lines(tmpl)
    if len(classnames) < 2:             # one class: every image "correct", a top-1 of 1.0 that measures nothing
        raise UserError(f"{names}: {len(classnames)} class(es); zero-shot classification needs at least 2")
    if not templates:
        raise UserError(f"{tmpl}: empty")
    for t in templates:                   # str.format: '{}' or '{color}' beside {c} raised deep in the run
        problem = class_template_problem(t)
        if problem:
            raise UserError(f"{tmpl}: template {t!r} {problem}")
    dupes = sorted({c for c in classnames if classnames.count(c) > 1})
    if dupes:
        raise UserError(f"{names}: class name(s) {dupes[:3]} listed twice: the later class could never be predicted")
    return WdsMeta(root, classnames, templates)


def read_cls(sample: Sample, n_classes: int) -> int:
    """The integer class of a classification sample; a missing, negative or non-integer `cls` is a
    `SampleProblem` (skipped and counted), one past classnames.txt a one-line error naming the sample."""
    raw = sample.fields.get("cls")
    if raw is None:
        raise SampleProblem("no_label", sample, "has no 'cls' field (not a classification shard)")
    try:
        c = int(raw.decode().strip())
    except (ValueError, UnicodeDecodeError):
        raise SampleProblem("bad_label", sample, "'cls' is not an integer") from None
    if c < 0:                       # no class (-1 often marks an unlabelled sample)
        raise SampleProblem("bad_label", sample, f"'cls' is {c}, no class")
    if c >= n_classes:              # classnames.txt and the shards disagree: not one sample's fault
        raise UserError(f"{sample.shard}: sample {sample.key}: cls {c} outside the {n_classes} classes")
    return c


def data_hash(files: Iterable[Path], *extra: Any) -> str:
    """Identity of a data set for the feature cache: names, sizes and mtimes of its files, plus `extra`."""
    h = hashlib.sha256()
    for f in files:
        st = Path(f).stat()
        h.update(f"{Path(f).resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    for e in extra:
        h.update(json.dumps(e, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


def prefetch(items: Iterable[Any], fn: Callable[[Any], Any], batch_size: int, workers: int = 2) -> Iterator[list[Any]]:
    """Batches of fn(item), computed by a thread pool one batch ahead of the consumer (PIL and torch
    release the GIL while decoding and resizing, so this overlaps with the model's forward)."""
    it = iter(items)

    def take() -> list[Any]:
        return list(itertools.islice(it, batch_size))

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        chunk = take()
        pending = pool.map(fn, chunk) if chunk else None
        while pending is not None:
            nxt = take()
            nxt_pending = pool.map(fn, nxt) if nxt else None
            yield list(pending)
            pending = nxt_pending


def sample_media(sample: Sample, prompt: str) -> dict[str, list]:
    """The raw media a prompt's placeholders take, in order (the [Contract] of `vlm.modalities`)."""
    try:
        return decode_media(placeholder_modalities(prompt), sample.fields, strict=False)
    except SampleError as e:                 # a file that does not decode or is missing: the task skips the sample
        kind = BadMedia if e.reason in {f"bad_{k}" for k in FILE_EXTENSIONS} else SampleProblem   # decode_item's
        raise kind(e.reason, sample, str(e)) from None


def choices_of(meta: dict[str, Any]) -> list[str]:
    """A VQA sample's closed answer set as texts; [] when it has none (or `choices` is not a list)."""
    choices = meta.get("choices")
    return [str(c) for c in choices] if isinstance(choices, list) else []


def first_turn(meta: dict[str, Any], where: str) -> tuple[str, str]:
    """(the first human turn, the first assistant turn) of a sample's conversation; a sample without a human
    turn is a `SampleProblem` ('no_question')."""
    conv = meta.get("conversations")
    turns = [t for t in conv if isinstance(t, dict)] if isinstance(conv, list) else []
    human = next((t.get("value") for t in turns if t.get("from") in ("human", "user")), None)
    gpt = next((t.get("value") for t in turns if t.get("from") in ("gpt", "assistant")), None)
    if not isinstance(human, str):       # none, or a value that is not a text: the sample has no question
        raise SampleProblem("no_question", None, f"{where}: no human turn (a text) in 'conversations'")
    return human, meta.get("answer", gpt or "")
