"""`vlm embed`: a model's embeddings of shards or a media folder, written in clip-retrieval's layout.

    vlm embed --model runs/vlm2vec-tiny/final --input data/synthetic-world/test --out runs/emb \
        [--instruction "Represent the given image."] [--modality image] [--modality text]
    torchrun --nproc_per_node 2 -m vlm.cli embed --model ... --input ... --out runs/emb   # parts split over ranks

Output (clip-retrieval's, `clip_retrieval/clip_inference/writer.py`; row i of every file of part N is
the same sample):
    OUT/img_emb/img_emb_N.npy         [rows, D] L2-normalised (float16 by default, as clip-retrieval)
    OUT/text_emb/text_emb_N.npy       (with --modality text: the sample's caption)
    OUT/audio_emb/audio_emb_N.npy ... (audio / music / video likewise)
    OUT/metadata/metadata_N.parquet   key, caption, source (the shard or file the sample came from)
    OUT/stats/stats_N.json            rows, every skipped sample with its reason, files left out beside a sample's own
    OUT/run.json                      model, fingerprint (and content), instruction, modalities, dim, the part plan
N is zero-padded to log10(parts) + 1 digits, so names sort in part order.

Parts are fixed by the input alone: each shard (or the sorted media files) cut into runs of at most
`part_size` samples, numbered in input order. A part is written when its last sample is embedded (npy
files first, its metadata last, each through a temporary file and a rename), so memory holds only the
parts in flight and a part whose metadata exists is complete. A rerun after a crash skips complete parts
and redoes the rest; as a part's batches are always the same samples in the same order, the files come
out identical to an uninterrupted export. A complete part is first read back (its metadata, each
modality's embeddings with as many rows of the model's dimension, its stats): a damaged one (a truncated
.npy ...) is embedded again and listed in the result (`ExportResult.redone`). Under torchrun rank r
takes parts r, r + W, ...: the union is what one process writes. A sample that cannot be read (broken
image, no caption for --modality text, not in the model's modalities ...) is skipped in every output
file at once, counted and listed with its reason in the part's stats: rows never shift between
embeddings and metadata.

Data loading: `num_workers` processes read, decode and prepare (preprocess, tokenise) whole parts while
the main process runs the model, so the export runs at the model's pace (benchmarks/studies/embed_throughput.py).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlm.atomic import remove_torn, write_file, write_text
from vlm.data.collate import die_with_parent, pack_batch, start_workers, unpack_batch
from vlm.embed.items import Item
from vlm.errors import UserError, is_utf8, text_of
from vlm.modalities import (
    MODALITIES,
    PLACEHOLDER_RE,
    MediaError,
    file_kind,
    short_error,
)

# clip-retrieval's folder prefixes: img_emb / text_emb; the other modalities by their name
PREFIX = {"image": "img", "text": "text", **{m: m for m in MODALITIES if m != "image"}}
TEXT_EXTENSIONS = ("txt",)
# a media folder's second file of one kind under a name stem (case.JPG beside case.jpg): listed in the part's
# stats as a left-out file, not a skipped sample (the sample is the first file)
DUPLICATE_FILE = "duplicate_file"


def emb_dir(modality: str) -> str:
    return f"{PREFIX[modality]}_emb"


def part_name(i: int, count: int) -> str:
    """clip-retrieval's suffix: zero-padded to int(log10(count)) + 1 digits."""
    return str(i).zfill(int(math.log10(max(count, 1))) + 1)


# ------------------------------------------------------------------------------------------------ input
@dataclass(frozen=True)
class Part:
    index: int
    source: str                     # a shard, or the input folder (files mode)
    start: int                      # the first sample of the source in this part
    stop: int


@dataclass
class InputPlan:
    kind: str                       # "shards" | "files"
    sources: list[str]
    counts: list[int]               # samples per source
    parts: list[Part]
    files: list[list[str]] = field(default_factory=list)   # files mode: each sample's files (relative paths)
    not_read: list[str] = field(default_factory=list)       # files mode: folders not entered, files of no media kind

    def samples(self) -> int:
        return sum(self.counts)


def _media_groups(folder: Path) -> tuple[list[list[str]], list[str]]:
    """Files under `folder` grouped by path without extension (`a.jpg` + `a.txt` = one sample), sorted, and what
    is not read: folders os.walk cannot enter (unreadable) or does not follow (symlinks: they can loop), files of
    no media kind. Those are said on stderr and kept for stats/summary.json."""
    groups: dict[str, list[str]] = {}
    unread: list[str] = []
    other: list[str] = []                   # files of no media kind (no extension, .pdf ...): said, not silently gone
    def note(e: OSError) -> None:
        unread.append(f"{e.filename} (unreadable)")

    for root, dirs, files in os.walk(folder, onerror=note):
        dirs.sort()
        unread += [f"{os.path.join(root, d)} (a symlink)" for d in dirs if os.path.islink(os.path.join(root, d))]
        for f in sorted(files):
            ext = f.rsplit(".", 1)[-1].lower() if "." in f else ""
            if file_kind(ext) is None and ext not in TEXT_EXTENSIONS + ("json",):
                if not f.startswith("."):
                    other.append(os.path.relpath(os.path.join(root, f), folder))
                continue
            rel = os.path.relpath(os.path.join(root, f), folder)
            groups.setdefault(rel.rsplit(".", 1)[0], []).append(rel)
    if unread:
        print(f"{folder}: {len(unread)} folder(s) not read: {', '.join(unread[:5])}"
              f"{' ...' if len(unread) > 5 else ''}", file=sys.stderr)
    if other:
        print(f"{folder}: {len(other)} file(s) of no media kind left out: {', '.join(map(text_of, other[:5]))}"
              f"{' ...' if len(other) > 5 else ''}", file=sys.stderr)
    return [groups[k] for k in sorted(groups)], unread + other


def plan_input(spec: str, part_size: int) -> InputPlan:
    """The fixed part plan of an input: tar shards (a folder of them, a glob, a brace pattern, a file) or
    a folder of media files (with same-stem .txt captions). One-line UserError when there is nothing."""
    from vlm.data.reader import expand_shards, scan_shard
    if part_size < 1:
        raise UserError(f"part_size must be >= 1, got {part_size}")
    p = Path(spec)
    if p.is_file() and file_kind(p.name) is not None:
        raise UserError(f"{spec}: a {file_kind(p.name)} file, not shards; give the folder that holds it")
    if spec.endswith((".tar.gz", ".tgz")) or (p.is_dir() and not any(p.glob("*.tar")) and any(p.glob("*.tar.gz"))):
        raise UserError(f"{spec}: compressed (.tar.gz) shards are not read; give uncompressed .tar shards")
    if p.is_dir() and not any(p.glob("*.tar")) and not (p / "index.json").exists():
        groups, not_read = _media_groups(p)
        if not groups:
            raise UserError(f"{spec}: no shards and no media files to embed")
        parts = [Part(i, str(p), s, min(s + part_size, len(groups)))
                 for i, s in enumerate(range(0, len(groups), part_size))]
        return InputPlan("files", [str(p)], [len(groups)], parts, groups, not_read)
    shards = expand_shards(spec)
    if p.is_dir():                  # a folder of shards is read as its shards: media files beside them are said
        loose = sorted(f.name for f in p.iterdir() if f.is_file() and file_kind(f.name) is not None)
        if loose:
            print(f"{spec}: {len(loose)} media file(s) beside its shards are not embedded (a folder of .tar shards is "
                  f"read as its shards): {', '.join(map(text_of, loose[:3]))}{' ...' if len(loose) > 3 else ''}",
                  file=sys.stderr)
    counts = [sum(1 for _ in scan_shard(s)) for s in shards]
    if not sum(counts):
        raise UserError(f"{spec}: the shards hold no samples")
    parts = []
    for shard, n in zip(shards, counts):
        for s in range(0, n, part_size):
            parts.append(Part(len(parts), shard, s, min(s + part_size, n)))
    return InputPlan("shards", shards, counts, parts)


def _kind(name: str) -> str:
    ext = name.rsplit(".", 1)[-1].lower()
    return file_kind(ext) or ext


def _one_file_per_kind(files: list[str]) -> tuple[dict[str, str], list[str]]:
    """A folder sample's files: the first (sorted) of each kind (image / audio / video, txt, json) and the
    rest (`case.JPG` beside `case.jpg`, `dup.png` beside `dup.jpg`)."""
    kept: dict[str, str] = {}
    extra = []
    for f in files:
        kind = _kind(f)
        if kind in kept:
            extra.append(f)
        else:
            kept[kind] = f
    return kept, extra


def caption_of(meta: dict, fields: dict[str, bytes], strict: bool = True) -> str | None:
    """A sample's caption: json `caption`, `txt` (all of it), or a synthetic-world scene's canonical description. A txt
    that is not UTF-8 makes the sample a bad one (SampleSkip `bad_text`), not a caption with U+FFFD in it,
    when the caption is embedded (`strict`); when it is only metadata, its bad bytes read as U+FFFD."""
    if isinstance(meta.get("caption"), str) and meta["caption"].strip():
        return meta["caption"].strip()
    if "txt" in fields:
        try:                                # utf-8-sig: a BOM is no part of the caption (as training reads it)
            text = fields["txt"].decode("utf-8-sig").strip()
        except UnicodeDecodeError as e:
            if not strict:                  # only the metadata's caption: kept, its bad bytes as U+FFFD
                text = fields["txt"].decode("utf-8-sig", errors="replace").strip()
            else:
                raise SampleSkip("bad_text", f"txt is not UTF-8 text (byte {e.start}: {e.reason})") from None
        if text:                            # the whole caption, as training and clip-retrieval read it (its first
            return text                     # line alone was embedded: a review)
    labels = meta.get("labels")
    desc = labels.get("description") if isinstance(labels, dict) else None
    return desc if isinstance(desc, str) and desc else None


# ------------------------------------------------------------------------------------------------ workers
class SampleSkip(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def windows(part: Part, batch_size: int) -> int:
    """Batches of a part: fixed windows of `batch_size` samples (minus the skipped ones), so which
    samples share a batch never depends on the number of workers or ranks."""
    return max(1, math.ceil((part.stop - part.start) / batch_size))


class WindowReader(torch.utils.data.IterableDataset):
    """Prepared batches, one per window of a part: {part, window, keys, captions, sources, batches:
    {modality: prepared batch}, skipped: [...]}. DataLoader worker w takes windows w, w + n, ... of the
    plan (the main process puts them back in order)."""

    def __init__(self, plan: InputPlan, parts: list[Part], prepare, modalities: list[str], instruction: str | None,
                 batch_size: int):
        super().__init__()
        self.plan, self.parts, self.prepare = plan, parts, prepare
        self.modalities, self.instruction, self.batch_size = modalities, instruction, batch_size
        self._refs: tuple[str, Any, list] | None = None

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w, n = (info.id, info.num_workers) if info is not None else (0, 1)
        jobs = [(p, j) for p in self.parts for j in range(windows(p, self.batch_size))]
        defer = info is not None and hasattr(self.prepare, "finish")      # a VLMPreparer leaving a worker
        for part, j in jobs[w::n]:
            chunk = self.window(part, j, defer=defer)
            if info is not None:            # leaving a worker: a few transfers per window, not one per tensor
                chunk["batches"] = {m: pack_batch(b) for m, b in chunk["batches"].items()}
            yield chunk

    def finish(self, batch: dict) -> dict:
        """A batch as `window` made it (packed or not, deferred or not) -> the model's input."""
        batch = unpack_batch(batch)
        return self.prepare.finish(batch) if hasattr(self.prepare, "finish") else batch

    # -- reading
    def _shard_refs(self, shard: str, stop: int) -> list:
        """The shard's first `stop` member refs, scanned as far as asked (the first window goes out after
        scanning its own samples, not the whole shard); parts of a shard come one after another."""
        if self._refs is None or self._refs[0] != shard:
            from vlm.data.reader import scan_shard
            self._refs = (shard, scan_shard(shard), [])
        _, scan, refs = self._refs
        while len(refs) < stop:
            ref = next(scan, None)
            if ref is None:
                break
            refs.append(ref)
        return refs

    def samples(self, part: Part, lo: int, hi: int):
        """(key, source, fields | None, reason, message) of samples lo..hi of the part's source."""
        if self.plan.kind == "files":
            root = Path(part.source)
            for files in self.plan.files[lo:hi]:
                key = files[0].rsplit(".", 1)[0]
                kept, extra = _one_file_per_kind(files)
                for f in extra:                 # a.jpg + a.png: one sample per name stem; the others listed
                    yield key, str(root / f), None, DUPLICATE_FILE, (f"{f}: {kept[_kind(f)]} has the same name stem "
                                                                      "(one sample per stem)")
                # the source: the file embedded (a.wav for --modality audio, not the a.jpg beside it: a review),
                # else the sample's first media file, not its caption
                asked = {MODALITIES[m].files for m in self.modalities if m in MODALITIES}   # (text: its caption)
                media = ([f for k, f in kept.items() if k in asked]
                         or [f for k, f in kept.items() if k in ("image", "audio", "video")])
                where = str(root / (media[0] if media else files[0]))
                try:
                    unusual = [f for f in kept.values() if not (root / f).is_file()]
                    if unusual:                 # a FIFO blocks read_bytes for ever; a broken symlink
                        yield key, str(root / unusual[0]), None, "unreadable_file", "not a regular file"
                        continue
                    yield key, where, {f.rsplit(".", 1)[-1].lower(): (root / f).read_bytes() for f in kept.values()}, "", ""
                except OSError as e:
                    yield key, where, None, "unreadable_file", str(e.strerror)
            return
        from vlm.data.reader import FileCache, read_fields
        cache = FileCache()
        try:
            for k, ref in enumerate(self._shard_refs(part.source, hi)[lo:hi], lo):
                if ref.error:
                    yield ref.key or f"#{k}", part.source, None, ref.error, ref.message
                    continue
                try:
                    yield ref.key, part.source, read_fields(ref, cache), "", ""
                except OSError as e:
                    yield ref.key, part.source, None, "bad_tar", str(e)
        finally:
            cache.close()

    def items(self, fields: dict[str, bytes]) -> tuple[dict[str, Item], str]:
        """The sample's item per exported modality, and its caption; SampleSkip(reason) when it has none."""
        from vlm.data.decode import SampleError, read_meta
        from vlm.data.writer import media_fields
        try:
            meta = read_meta(fields)
        except SampleError as e:
            raise SampleSkip(e.reason, str(e)) from None
        caption = caption_of(meta, fields, strict="text" in self.modalities)
        kinds = media_fields(fields)
        out = {}
        for m in self.modalities:
            if m == "text":
                if caption is None:
                    raise SampleSkip("no_text", "no caption (json caption, txt or labels.description)")
                out[m] = Item(text=caption, instruction=self.instruction)
                continue
            names = kinds[MODALITIES[m].files]
            if not names:
                raise SampleSkip(f"no_{m}", f"no {m} file ({'/'.join(MODALITIES[m].extensions)})")
            try:
                raw = MODALITIES[m].decode(fields[names[0]], getattr(self.prepare, "draft_size", None))
            except MediaError as e:
                raise SampleSkip(f"bad_{MODALITIES[m].files}", str(e)) from None
            out[m] = Item(instruction=self.instruction, **{m: raw})
        return out, caption or ""

    def window(self, part: Part, j: int, defer: bool = False) -> dict:
        """Window j of the part, prepared; `defer` (a `VLMPreparer` in a worker): images as uint8 crops,
        which `finish` normalises in the main process."""
        lo = part.start + j * self.batch_size
        hi = min(lo + self.batch_size, part.stop)
        rows: list[tuple[str, str, str, dict[str, Item]]] = []        # key, caption, source, items
        skipped: list[dict] = []
        left_out: list[dict] = []                       # files beside a sample's own (not samples: not counted)
        for key, source, fields, reason, message in self.samples(part, lo, hi):
            if reason == DUPLICATE_FILE:
                left_out.append({"key": key, "source": source, "reason": reason, "message": message})
                continue
            if fields is None:
                skipped.append({"key": key, "source": source, "reason": reason, "message": message})
                continue
            try:
                items, caption = self.items(fields)
            except SampleSkip as e:
                skipped.append({"key": key, "source": source, "reason": e.reason, "message": str(e)})
                continue
            except Exception as e:  # noqa: BLE001  a sample no rule above foresaw: skipped and listed, never fatal
                skipped.append({"key": key, "source": source, "reason": "bad_sample", "message": short_error(e)})
                continue
            rows.append((key, caption, source, items))
        batches: dict[str, Any] = {}
        kw = {"defer": True} if defer else {}
        while rows:
            try:
                batches = {m: self.prepare([r[3][m] for r in rows], **kw) for m in self.modalities}
                break
            except Exception as e:  # a broken item only its preprocessing finds: skip it, keep the others' places
                survivors = self._survivors(rows, skipped, kw)
                if len(survivors) == len(rows):       # each prepares alone, not together: skip the window, listed
                    skipped += [{"key": r[0], "source": r[2], "reason": "bad_batch", "message": short_error(e)}
                                for r in rows]
                    survivors = []
                rows = survivors
        return {"part": part.index, "window": j, "keys": [r[0] for r in rows], "captions": [r[1] for r in rows],
                "sources": [r[2] for r in rows], "batches": batches, "skipped": skipped, "left_out": left_out}

    def _survivors(self, rows: list, skipped: list[dict], kw: dict) -> list:
        good = []
        for row in rows:
            for m in self.modalities:
                try:
                    self.prepare([row[3][m]], **kw)
                except Exception as e:  # anything a broken file makes a preprocess raise
                    skipped.append({"key": row[0], "source": row[2], "reason": getattr(e, "reason", None) or f"bad_{m}",
                                    "message": short_error(e)})
                    break
            else:
                good.append(row)
        return good


# ------------------------------------------------------------------------------------------------ writing
def write_part(out: Path, name: str, modalities: list[str], emb: dict[str, list[np.ndarray]], dim: int,
               dtype: np.dtype, keys: list[str], captions: list[str], sources: list[str], stats: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq  # not pandas: seconds of import in the middle of the loop
    for m in modalities:
        arr = np.concatenate(emb[m]) if emb[m] else np.zeros((0, dim), dtype=dtype)
        path = out / emb_dir(m) / f"{emb_dir(m)}_{name}.npy"

        def save(tmp, arr=arr):
            with open(tmp, "wb") as f:
                np.save(f, arr)
        write_file(path, save)
    stats_path = out / "stats" / f"stats_{name}.json"
    write_text(stats_path, json.dumps(stats, indent=1))
    table = pa.table({"key": pa.array([text_of(k) for k in keys], pa.string()),    # names not UTF-8: U+FFFD
                      "caption": pa.array([None if c is None else text_of(c) for c in captions], pa.string()),
                      "source": pa.array([text_of(s) for s in sources], pa.string())})
    write_file(out / "metadata" / f"metadata_{name}.parquet", lambda tmp: pq.write_table(table, tmp))


def _remove_torn(out: Path) -> None:
    """Temporary files a killed export left (their process is gone; a live rank's are kept)."""
    remove_torn(out.glob("*/.*.tmp-*"))


def part_done(out: Path, name: str) -> bool:
    return (out / "metadata" / f"metadata_{name}.parquet").exists()


def npy_shape(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """A .npy file's shape and dtype from its header, checked against the file's size (a truncated file
    fails here, not in a memory map later); OSError / ValueError with the reason when it does not read."""
    from numpy.lib import format as npy_format
    with open(path, "rb") as f:
        version = npy_format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"npy format version {version[0]}.{version[1]} is not supported")
        read = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        shape, _, dtype = read(f)
        need = f.tell() + math.prod(shape) * dtype.itemsize
    size = path.stat().st_size
    if dtype.hasobject:
        raise ValueError("it holds Python objects, not numbers")
    if size < need:
        raise ValueError(f"truncated: {size:,} of {need:,} bytes")
    return shape, dtype


def part_damage(out: Path, name: str, modalities: list[str], dim: int, dtype: np.dtype) -> str | None:
    """Why a complete part (its metadata exists) does not read back, naming the file; None when its
    metadata, the embeddings of every modality ([rows, dim] of `dtype`) and its stats agree."""
    import pyarrow.parquet as pq
    meta = out / "metadata" / f"metadata_{name}.parquet"
    try:
        info = pq.read_metadata(meta)
    except (OSError, ValueError) as e:              # pyarrow's ArrowInvalid is a ValueError
        return f"{meta}: unreadable ({short_error(e)})"
    rows, columns = info.num_rows, set(info.schema.names)
    if not {"key", "caption", "source"} <= columns:
        return f"{meta}: columns {sorted(columns)}, expected key, caption, source"
    for m in modalities:
        path = out / emb_dir(m) / f"{emb_dir(m)}_{name}.npy"
        try:
            shape, have = npy_shape(path)
        except (OSError, ValueError) as e:
            return f"{path}: unreadable ({short_error(e)})"
        if shape != (rows, dim) or have != dtype:
            return f"{path}: {list(shape)} {have}, expected [{rows}, {dim}] {dtype} (the metadata's rows)"
    stats = out / "stats" / f"stats_{name}.json"
    try:
        got = json.loads(stats.read_text())
    except (OSError, ValueError) as e:
        return f"{stats}: unreadable ({short_error(e)})"
    if not isinstance(got, dict) or got.get("rows") != rows:
        return f"{stats}: does not say rows {rows} (the metadata's)"
    return None


def parts_to_do(out: Path, plan: InputPlan, names: list[str], world: int, rank: int, modalities: list[str],
                dim: int, dtype: np.dtype) -> tuple[list[Part], list[str]]:
    """This rank's parts still to embed: those never finished and those whose files are damaged (their
    metadata is removed first, so a part whose metadata exists is again a complete one), and why each
    damaged one is redone."""
    todo, redone = [], []
    for p in plan.parts[rank::world]:
        name = names[p.index]
        if part_done(out, name):
            damage = part_damage(out, name, modalities, dim, dtype)
            if damage is None:
                continue
            redone.append(damage)
            (out / "metadata" / f"metadata_{name}.parquet").unlink(missing_ok=True)
        todo.append(p)
    return todo, redone


def model_reference(spec: str) -> str:
    """The model spec as run.json keeps it: a folder, or the files of an `open_clip:ARCH[:CKPT]` spec, as
    absolute paths, so `vlm search` finds the model from any working directory."""
    if spec.startswith("open_clip:"):
        head, *rest = spec.split(":")
        return ":".join([head, *(os.path.abspath(x) if os.path.exists(x) else x for x in rest)])
    return os.path.abspath(spec) if os.path.exists(spec) else spec


def input_contents(plan: InputPlan) -> list:
    """Per source, what a resume checks besides its path and sample count: a shard's size and a digest of its
    ends (a data set rebuilt in place, another seed); a media folder's digest of its files' names, sizes and
    modification times (an image replaced in place)."""
    from vlm.data.reader import ends_digest
    if plan.kind == "files":
        root = Path(plan.sources[0])
        listing = []
        for f in (f for group in plan.files for f in group):
            try:
                st = (root / f).stat()
                listing.append(f"{text_of(f)}|{st.st_size}|{st.st_mtime_ns}")
            except OSError:
                listing.append(f"{text_of(f)}|-")
        return [{"files": hashlib.sha256("\n".join(listing).encode()).hexdigest()[:16]}]
    return [{"size": os.path.getsize(s), "ends": ends_digest(s)} if os.path.isfile(s) else {} for s in plan.sources]


def manifest(cfg, backend, plan: InputPlan) -> dict:
    return {"model": model_reference(cfg.model), "fingerprint": backend.fingerprint,
            "instruction": cfg.instruction or None,          # "" and none embed alike
            "modalities": list(cfg.modality), "dtype": cfg.out_dtype, "part_size": cfg.part_size,
            "compute_dtype": cfg.dtype, "batch_size": cfg.batch_size,
            "input": cfg.input, "sources": [os.path.abspath(s) for s in plan.sources], "samples": plan.counts,
            "contents": input_contents(plan), "parts": len(plan.parts), "dim": backend.dim, "layout": "clip-retrieval"}


# what a resume must share with the export it continues (the rows of a part come out bitwise the same only
# then); the last two were not recorded by earlier versions: not compared when run.json lacks them
SAME_EXPORT = ("instruction", "modalities", "dtype", "part_size", "sources", "samples")
SAME_EXPORT_IF_RECORDED = ("compute_dtype", "batch_size")


def check_manifest(out: Path, want: dict, backend=None) -> None:
    """A rerun into `out` must be the same export (`backend.matches`: a fingerprint recorded by an earlier
    version of the suite for the same files is the same model); a folder holding parts but no run.json is
    refused (its parts would be taken as this export's)."""
    path = out / "run.json"
    if path.exists():
        try:
            have = json.loads(path.read_text())
        except (ValueError, OSError) as e:           # invalid JSON, not text at all, a folder
            have = short_error(e)
        if not isinstance(have, dict):              # its parts cannot be told this export's or another's
            raise UserError(f"{path}: does not read as the export's settings ({str(have)[:80]}); restore it, or "
                            f"export into another --out")
        same_model = have.get("fingerprint") == want.get("fingerprint") or (
            backend is not None and isinstance(have.get("fingerprint"), str)
            and backend.matches(have["fingerprint"], have.get("content")))
        diff = [f"{k} ({have.get(k)!r:.60} -> {want.get(k)!r:.60})" for k in SAME_EXPORT
                if ((have.get(k) or None) if k == "instruction" else have.get(k)) != want.get(k)]
        diff += [f"{k} ({have[k]!r} -> {want.get(k)!r})" for k in SAME_EXPORT_IF_RECORDED
                 if k in have and have[k] != want.get(k)]
        if not same_model:
            diff.insert(0, f"model ({have.get('model')} -> {want.get('model')}: another folder, or its weights or "
                           f"tokenizer files changed since)")
        if diff:
            raise UserError(f"{out} holds an export with other settings: {'; '.join(diff)}; "
                            f"use another --out or delete it")
        for src, a, b in zip(want["sources"], have.get("contents") or [], want["contents"]):
            if a != b:
                raise UserError(f"{out}: input {src} changed since the export began ({_changed(a, b)}); finish it "
                                f"with that input, or export into another --out")
        return
    made = [p for d in ("metadata", "stats", *(emb_dir(m) for m in PREFIX)) if (out / d).is_dir()
            for p in (out / d).iterdir() if not p.name.startswith(".")]
    if made:
        raise UserError(f"{out} holds {len(made)} export file(s) ({made[0].relative_to(out)} ...) but no run.json "
                        f"(another export, or its run.json removed): its parts would be taken as this export's; "
                        f"use another --out or delete the folder")
    # the model by content (a full read of its weights) only here, where run.json is first written: a resume, which
    # compares fingerprints, does not read them again (`Backend.matches` reads them only when those differ)
    write_text(path, json.dumps({**want, "content": backend.content} if backend is not None else want, indent=1))


def _changed(a: dict, b: dict) -> str:
    if "size" in a and a.get("size") != b.get("size"):
        return f"{a['size']} -> {b['size']} bytes"
    return "the same size, other bytes" if "ends" in a else "its files' names, sizes or times"


# ------------------------------------------------------------------------------------------------ the export
@dataclass
class ExportResult:
    out: Path
    parts: int
    written: list[int]                   # parts this process wrote
    rows: int                            # rows this process wrote
    skipped: int
    seconds: float
    items_per_s: float
    model_seconds: float = 0.0           # of `seconds`, in the model's forward (the rest: waiting, writing)
    redone: list[str] = field(default_factory=list)     # complete parts found damaged and embedded again: why
    skipped_by_reason: dict[str, int] = field(default_factory=dict)     # of `skipped` (this process's)


def export(cfg) -> ExportResult:
    """Run an export described by an `EmbedConfig` (vlm.embed.cli); the CLI's and Python's entry point."""
    import pyarrow as pa
    import pyarrow.parquet  # the part writer's, at start-up: inside the stream its import stalls the model
    from tqdm.auto import tqdm

    # (here, not at import: `vlm embed` starts without the converters)
    from vlm.data.convert import within
    from vlm.embed.backends import load_backend
    pa.array([], pa.string())      # and so is the pandas import pyarrow makes on its first array (~0.3 s)
    modalities = list(dict.fromkeys(cfg.modality))
    for m in modalities:
        if m not in PREFIX:
            raise UserError(f"--modality {m}: not one of {', '.join(PREFIX)}")
    if cfg.batch_size < 1 or cfg.num_workers < 0:
        raise UserError(f"batch_size must be >= 1 and num_workers >= 0 (got {cfg.batch_size}, {cfg.num_workers})")
    if cfg.out_dtype not in ("float16", "float32"):
        raise UserError(f"out_dtype: float16 | float32, got {cfg.out_dtype!r}")
    if cfg.instruction is not None and (placeholder := PLACEHOLDER_RE.search(cfg.instruction)):
        raise UserError(f"--instruction {cfg.instruction!r}: holds a media placeholder ({placeholder.group(0)}); "
                        f"the sample's media go in by themselves")
    for flag, value in (("--out", cfg.out), ("--input", cfg.input), ("--instruction", cfg.instruction)):
        if value is not None and not is_utf8(value):     # parquet and JSON take UTF-8 only (a traceback midway)
            raise UserError(f"{flag} {text_of(value)!r}: not UTF-8 text (a byte that is not); rename it or give "
                            f"it in UTF-8")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: a file, not a folder")
    backend = load_backend(cfg.model, cfg.device, cfg.dtype)
    backend.load()                      # a damaged weights file fails here, before anything is written
    for m in modalities:
        if m != "text" and m not in backend.modalities:
            raise UserError(f"{backend.name} cannot embed {m} (it embeds {', '.join(['text', *backend.modalities])})")
    plan = plan_input(cfg.input, cfg.part_size)
    if plan.kind == "files" and within(out, plan.sources[0]):   # a rerun would read the export as input
        raise UserError(f"--out {out} is the input folder {plan.sources[0]} or inside it: a rerun would read the "
                        f"export's own files as input; give a folder outside it")
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    for d in [*(emb_dir(m) for m in modalities), "metadata", "stats"]:
        try:
            (out / d).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"--out {out}: cannot create {out / d} ({e.strerror})") from None
    check_manifest(out, manifest(cfg, backend, plan), backend)
    _remove_torn(out)
    dtype, dim = np.dtype(cfg.out_dtype), backend.dim
    names = [part_name(p.index, len(plan.parts)) for p in plan.parts]
    mine, redone = parts_to_do(out, plan, names, world, rank, modalities, dim, dtype)
    total = sum(p.stop - p.start for p in mine)
    reader = WindowReader(plan, mine, backend.preparer(within_context=True), modalities, cfg.instruction,
                          cfg.batch_size)
    workers = min(cfg.num_workers, sum(windows(p, cfg.batch_size) for p in mine))
    loader = torch.utils.data.DataLoader(reader, batch_size=None, num_workers=workers,
                                         prefetch_factor=4 if workers else None,
                                         worker_init_fn=die_with_parent if workers else None)
    pending: dict[int, dict[int, dict]] = {}               # part -> window -> its embedded chunk
    written, rows, skipped, model_s, t0 = [], 0, Counter(), 0.0, time.perf_counter()
    with tqdm(total=total, desc=f"embed{f' rank {rank}' if world > 1 else ''}", unit="item", dynamic_ncols=True,
              disable=not cfg.progress, position=rank if world > 1 else None) as bar:
        for chunk in start_workers(loader):
            batches = {m: reader.finish(b) for m, b in chunk.pop("batches").items()}
            t = time.perf_counter()
            chunk["emb"] = {m: backend.forward(b).numpy().astype(dtype) for m, b in batches.items()}
            model_s += time.perf_counter() - t
            got = pending.setdefault(chunk["part"], {})
            got[chunk["window"]] = chunk
            bar.update(len(chunk["keys"]) + len(chunk["skipped"]))
            part = plan.parts[chunk["part"]]
            if len(got) < windows(part, cfg.batch_size):
                continue
            got = pending.pop(part.index)
            done = [got[j] for j in range(windows(part, cfg.batch_size))]
            lost = [s for c in done for s in c["skipped"]]
            keys = [k for c in done for k in c["keys"]]
            stats = {"part": part.index, "source": part.source, "samples": [part.start, part.stop], "rows": len(keys),
                     "skipped": lost, "skipped_by_reason": dict(Counter(s["reason"] for s in lost)),
                     "left_out_files": [x for c in done for x in c.get("left_out", [])]}
            write_part(out, names[part.index], modalities, {m: [c["emb"][m] for c in done if c["keys"]] for m in modalities},
                       dim, dtype, keys, [x for c in done for x in c["captions"]],
                       [x for c in done for x in c["sources"]], stats)
            written.append(part.index)
            rows += len(keys)
            skipped.update(s["reason"] for s in lost)
    seconds = time.perf_counter() - t0
    _finish(out, world, rank, len(plan.parts), names, plan.not_read)
    lost = sum(skipped.values())
    return ExportResult(out, len(plan.parts), written, rows, lost, seconds, (rows + lost) / max(seconds, 1e-9),
                        model_s, redone, dict(skipped))


def _finish(out: Path, world: int, rank: int, count: int, names: list[str], not_read: list[str]) -> None:
    """After every rank is done (a barrier under torchrun), rank 0 sums the parts' stats into stats/summary.json;
    the other ranks wait for it (a second barrier: each reads the summary it prints)."""
    import torch.distributed as dist
    if world == 1:
        _write_summary(out, count, names, not_read)
        return
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("gloo")
    dist.barrier()
    if rank == 0:
        _write_summary(out, count, names, not_read)
    dist.barrier()
    if owns:
        dist.destroy_process_group()


def _write_summary(out: Path, count: int, names: list[str], not_read: list[str]) -> None:
    parts = [json.loads((out / "stats" / f"stats_{n}.json").read_text()) for n in names
             if (out / "stats" / f"stats_{n}.json").exists()]
    reasons = Counter()
    for p in parts:
        reasons.update(p["skipped_by_reason"])
    summary = {"parts": count, "parts_done": len(parts), "rows": sum(p["rows"] for p in parts),
               "skipped": sum(len(p["skipped"]) for p in parts), "skipped_by_reason": dict(reasons),
               "left_out_files": sum(len(p.get("left_out_files", [])) for p in parts),
               # a media folder's folders not entered and files of no media kind (said on stderr only before)
               "not_read": len(not_read), "not_read_examples": [text_of(x) for x in not_read[:100]]}
    write_text(out / "stats" / "summary.json", json.dumps(summary, indent=1))


def read_summary(out: Path) -> dict:
    return json.loads((Path(out) / "stats" / "summary.json").read_text())

