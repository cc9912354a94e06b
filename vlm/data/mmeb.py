"""MMEB's training set (TIGER-Lab/MMEB-train, VLM2Vec) from a local copy -> pair shards for `contrastive`.

    git clone https://huggingface.co/datasets/TIGER-Lab/MMEB-train && (cd MMEB-train && python unzip_file.py)
    vlm data convert mmeb MMEB-train --out data/mmeb-train [--subsets A-OKVQA ChartQA ...] \
        [--split original|diverse_instruction] [--images MMEB-train] [--max-per-subset 50000]

The copy holds one folder per subset with `<split>-*.parquet` (or `.jsonl`) rows: `qry`, `qry_image_path`,
`pos_text`, `pos_image_path` and, in some subsets, `neg_text` / `neg_image_path`; image paths are relative
to the copy (`images/DocVQA/Train/...jpg`). Each row becomes a pair sample (`vlm.data.formats` pairs):
the query and the positive keep MMEB's strings with the instruction baked in (Phi-3-V's `<|image_1|>`
becomes our `<image>`; a side with an image but no token gets one in front, a token without an image is
dropped, as WebQA's rows have it), the negative (when given) becomes `negatives[0]`, and the images are
stored as `0.jpg`, `1.jpg` ... in placeholder order. Paths must stay inside the image root (no absolute
paths, no `..`, no symlinks out): a row that leaves it, or whose image is missing or broken, is skipped
and counted like any bad sample; more than `max_bad` of them stops the conversion naming the first.
VLM2Vec caps each subset at 50,000 rows (`--max-per-subset`).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vlm.data.convert import (
    Keys,
    Report,
    Skip,
    _write_all,
    inside,
    make_key,
    read_image,
)
from vlm.errors import UserError
from vlm.modalities import short_error

PHI3_IMAGE = "<|image_1|>"
COLUMNS = ("qry", "qry_image_path", "pos_text", "pos_image_path")
# The 20 training subsets of MMEB-train (VLM2Vec's --subset_name list).
SUBSETS = ("ImageNet_1K", "N24News", "HatefulMemes", "VOC2007", "SUN397", "OK-VQA", "A-OKVQA", "DocVQA",
           "InfographicsVQA", "ChartQA", "Visual7W", "VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t",
           "MSCOCO_t2i", "MSCOCO_i2t", "NIGHTS", "WebQA", "MSCOCO")


def subset_files(root: str, subset: str, split: str) -> list[str]:
    d = Path(root) / subset
    files = sorted([*d.glob(f"{split}-*.parquet"), *d.glob(f"{split}*.jsonl")]) if d.is_dir() else []
    if not files:
        raise UserError(f"{d}: no {split}-*.parquet (or .jsonl) files; is {root} a local copy of MMEB-train "
                        f"and {subset!r} one of its subsets?")
    return [str(f) for f in files]


def read_rows(path: str) -> Iterator[dict[str, Any]]:
    """The rows of one parquet / jsonl file, streamed (a few thousand rows in memory, not the file: a
    --max-per-subset 10 read a 150 MB file whole); a file without MMEB's columns, a line that is not a JSON
    object, a file that does not read: a UserError naming it (and the line)."""
    if path.endswith(".jsonl"):
        yield from _jsonl_rows(path)
        return
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(path)
        _check_columns(path, set(pf.schema_arrow.names))
        for batch in pf.iter_batches(4096):
            yield from batch.to_pylist()
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001  pyarrow.ArrowInvalid on a truncated / foreign file, OSError
        raise UserError(f"{path}: not a readable parquet file ({short_error(e)[:160]})") from None


def _check_columns(path: str, cols: set[str]) -> None:
    missing = [c for c in COLUMNS if c not in cols]
    if missing:
        raise UserError(f"{path}: not an MMEB-train file (no column {missing[0]!r})")


def _jsonl_rows(path: str) -> Iterator[dict[str, Any]]:
    n, first = 0, True
    try:
        with open(path, encoding="utf-8-sig") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise TypeError("not a JSON object")
                if first:
                    _check_columns(path, set(row))
                    first = False
                yield row
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text (after line {n})") from None
    except (ValueError, TypeError, RecursionError) as e:
        raise UserError(f"{path}: line {n}: not a JSON object row ({short_error(e)[:120]})") from None


def side(text: str | None, image: str | None) -> tuple[str, bool]:
    """An MMEB string as our prompt text, and whether it takes an image."""
    for value in (text, image):
        if not isinstance(value, (str, type(None))):
            raise Skip("bad_row", f"a text or image path that is a {type(value).__name__}, not a string")
    text, has_image = (text or "").strip(), bool(image)
    if PHI3_IMAGE in text:
        text = text.replace(PHI3_IMAGE, "<image>" if has_image else "").strip()
    elif has_image and "<image>" not in text:          # a side already in our placeholder keeps it
        text = f"<image>\n{text}"
    if text.count("<image>") > 1:
        raise Skip("bad_row", "more than one image token in a side with one image path")
    return text, has_image


def convert_mmeb_train(root: str, out: str, subsets: list[str] | None = None, split: str = "original",
                       images: str | None = None, max_per_subset: int | None = None, max_count: int = 1000,
                       max_bad: float = 0.1, source: str | None = None) -> Report:
    """MMEB-train subsets of a local copy at `root` -> pair shards in `out` (images relative to `images`,
    default `root`)."""
    if not os.path.isdir(root):
        raise UserError(f"{root}: not a folder (a local copy of TIGER-Lab/MMEB-train)")
    if max_per_subset is not None and max_per_subset < 1:
        raise UserError(f"--max-per-subset must be >= 1, got {max_per_subset}")
    image_root = images or root
    if not os.path.isdir(image_root):
        raise UserError(f"{image_root}: image folder not found")
    subsets = list(dict.fromkeys(subsets or [s for s in SUBSETS if (Path(root) / s).is_dir()]))   # each once
    if not subsets:
        raise UserError(f"{root}: none of MMEB-train's subsets ({', '.join(SUBSETS[:4])} ...) is there")
    files = {s: subset_files(root, s, split) for s in subsets}       # every subset checked before writing

    def rows() -> Iterator[tuple[str, int, dict]]:
        for s in subsets:
            n = 0
            for f in files[s]:
                if max_per_subset is not None and n >= max_per_subset:
                    break                                  # the later files are not opened
                for row in read_rows(f):
                    if max_per_subset is not None and n >= max_per_subset:
                        break
                    yield s, n, row
                    n += 1

    def build(item: tuple[str, int, dict], seen: Keys) -> dict[str, Any]:
        subset, i, row = item
        where = f"{subset} row {i}"
        sides = [("query", row.get("qry"), row.get("qry_image_path")),
                 ("positive", row.get("pos_text"), row.get("pos_image_path"))]
        neg = row.get("neg_text")
        if (neg.strip() if isinstance(neg, str) else neg) or row.get("neg_image_path"):
            sides.append(("negative", row.get("neg_text"), row.get("neg_image_path")))
        sample: dict[str, Any] = {"__key__": make_key(f"{subset}-{i}", seen)}
        texts, k = [], 0
        for name, text, image in sides:
            try:
                t, has = side(text, image)
                if not t:
                    raise Skip("empty_side", f"empty {name}")
                if has:
                    ext, data = read_image(inside(image_root, image, "image"))
            except Skip as e:                               # the reason kept: missing_file, path_outside_root ...
                raise Skip(e.reason, f"{where}: {name}: {e}") from None
            if has:
                sample[f"{k}.{ext}"] = data
                k += 1
            texts.append(t)
        meta = {"query": {"text": texts[0]}, "positive": {"text": texts[1]},
                "negatives": [{"text": t} for t in texts[2:]], "task": subset, "source": source or "MMEB-train", "split": split}
        sample["json"] = meta
        return sample

    return _write_all(out, rows(), build, root, max_bad, max_count=max_count,
                      meta={"source": "MMEB-train", "subsets": subsets, "split": split})
