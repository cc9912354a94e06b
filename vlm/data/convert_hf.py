"""Hugging Face datasets -> the suite's WebDataset shards, streamed (never loaded whole into memory).

    vlm data convert hf-dataset /data/llava-instruct --out shards/llava           # a parquet folder
    vlm data convert hf-dataset /data/cauldron-vqav2 --out shards/vqav2 --split train
    vlm data convert hf-dataset saved/ --out shards/x --image-column img --conversations-column chat

PATH is a local folder of parquet files (the Hub's layout: `data/train-00000-of-00002.parquet`, or
any `*.parquet`; splits from the file names, as `datasets` infers them) or a `save_to_disk` folder
(a Dataset or a DatasetDict). Rows stream through `datasets` (parquet row groups / memory-mapped
arrow), images are taken as stored (no decoding): bytes are kept byte for byte when they are
jpg / png / webp (other formats re-encoded as png), paths are read relative to `--image-root`
(default: PATH) and must stay inside it.

Conversation layouts, found by column name (`conversations`, `messages`, `texts`) or by
`--conversations-column`, and told apart by their turns' keys:
- LLaVA / ShareGPT4V: `[{"from": "human" | "gpt", "value": "<image>\\n..."}]`
- ShareGPT / OpenAI messages: `[{"role": "user" | "assistant" | "system", "content": str | parts}]`,
  parts `{"type": "text", "text": ...}` / `{"type": "image"}` (an image part becomes `<image>`)
- the_cauldron: `[{"user": ..., "assistant": ..., "source": ...}]`, one exchange per item
Images (column `images` or `image`, or `--image-column`): one or a list; each an `Image` feature
value ({"bytes", "path"}), raw bytes or a path. Prompts without `<image>` get one per image before
the first user turn, as LLaVA does; a prompt with more or fewer placeholders than images is skipped.
Every skip is counted by reason (`bad_image`, `path_outside_root`, `placeholder_mismatch` ...).
"""
from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import Any

from vlm.data.convert import (
    Keys,
    Report,
    Skip,
    _write_all,
    content_text,
    inside,
    make_key,
    text_of,
    with_image_placeholders,
)
from vlm.errors import UserError
from vlm.modalities import PLACEHOLDERS, short_error

CONVERSATION_COLUMNS = ("conversations", "messages", "texts")
IMAGE_COLUMNS = ("images", "image")
_PIL_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
_ROLES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt", "system": "system"}


def open_rows(path: str, split: str | None = None) -> tuple[Any, str]:
    """A streaming iterable of the rows of `split` (default: train, or the only split) and its name."""
    import datasets

    if not os.path.exists(path):
        raise UserError(f"{path}: not found (a parquet folder or a save_to_disk folder)")
    if os.path.isdir(path) and (os.path.exists(os.path.join(path, "dataset_dict.json"))
                                or os.path.exists(os.path.join(path, "state.json"))):
        try:
            ds = datasets.load_from_disk(path)
        except (OSError, ValueError, FileNotFoundError) as e:
            raise UserError(f"{path}: not a readable save_to_disk folder ({str(e).splitlines()[0]})") from None
        splits = dict(ds) if isinstance(ds, datasets.DatasetDict) else {"train": ds}
        split = _pick_split(path, split, list(splits))
        return splits[split].to_iterable_dataset().decode(False), split
    files = [path] if path.endswith(".parquet") else sorted(
        os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs if f.endswith(".parquet"))
    if not files:
        raise UserError(f"{path}: no *.parquet files and not a save_to_disk folder")
    check_parquet_files(files)
    try:
        if path.endswith(".parquet"):
            dd = datasets.load_dataset("parquet", data_files={"train": files}, streaming=True)
        else:
            dd = datasets.load_dataset(path, streaming=True)
    except (OSError, ValueError, FileNotFoundError) as e:
        raise UserError(f"{path}: cannot read the parquet files ({str(e).splitlines()[0]})") from None
    split = _pick_split(path, split, list(dd))
    return dd[split].decode(False), split


def check_parquet_files(files: list[str]) -> None:
    """Each file's footer read (cheap): a corrupt file, or one whose columns differ from those of the first file
    in its folder (datasets streams them as one table and stops mid-way with "Couldn't cast"; files of other
    folders may be other configs), is one line naming it."""
    import pyarrow.parquet as pq
    first: dict[str, tuple[str, list[str]]] = {}          # folder -> (its first file, that file's columns)
    for f in files:
        try:
            meta = pq.read_metadata(f)
            names = sorted(meta.schema.to_arrow_schema().names)
        except Exception as e:  # noqa: BLE001  pyarrow.ArrowInvalid on a truncated / foreign file, OSError
            raise UserError(f"{f}: not a readable parquet file ({short_error(e)[:160]})") from None
        if meta.num_rows == 0:            # the streaming reader stops on it with "BatchSize must be greater than 0"
            raise UserError(f"{f}: a parquet file with no rows; remove it or convert the others without it")
        ref, cols = first.setdefault(os.path.dirname(f), (f, names))
        if names != cols:
            raise UserError(f"{f}: columns {names} differ from {ref}'s {cols}; convert the files with different "
                            f"columns separately")


def _pick_split(path: str, split: str | None, have: list[str]) -> str:
    if split is not None:
        if split not in have:
            raise UserError(f"{path}: no split {split!r}; it has {have}")
        return split
    if "train" in have or len(have) == 1:
        return "train" if "train" in have else have[0]
    raise UserError(f"{path}: several splits {have}; choose one with --split")


def _column(names: list[str], given: str | None, candidates: tuple[str, ...], what: str, path: str,
            required: bool = True) -> str | None:
    if given is not None:
        if given not in names:
            raise UserError(f"{path}: no column {given!r} ({what}); columns: {names}")
        return given
    found = next((c for c in candidates if c in names), None)
    if found is None and required:
        raise UserError(f"{path}: no {what} column (looked for {list(candidates)}); columns: {names} "
                        f"(use --{what.replace(' ', '-')}-column)")
    return found


# ---------------------------------------------------------------------------------------------
# one row -> one sample
# ---------------------------------------------------------------------------------------------
def conversation_of(turns: Any) -> list[dict[str, str]]:
    """LLaVA / ShareGPT messages / the_cauldron turns -> LLaVA `from/value` turns."""
    if not isinstance(turns, list) or not turns or not all(isinstance(t, dict) for t in turns):
        raise Skip("no_conversation", "the conversation is not a non-empty list of turns")
    out: list[dict[str, str]] = []
    for t in turns:
        if "from" in t and "value" in t:                                  # LLaVA / ShareGPT4V
            role, text = _ROLES.get(str(t["from"]).lower()), t["value"]
        elif "role" in t and "content" in t:                              # ShareGPT / OpenAI messages
            role, text = _ROLES.get(str(t["role"]).lower()), content_text(t["content"])
        elif "user" in t and "assistant" in t:                            # the_cauldron
            if not (isinstance(t["user"], str) and isinstance(t["assistant"], str)):
                raise Skip("bad_turn", "a the_cauldron turn whose user or assistant text is not text")
            out += [{"from": "human", "value": t["user"]}, {"from": "gpt", "value": t["assistant"]}]
            continue
        else:
            raise Skip("bad_turn", f"a turn with keys {sorted(t)} (want from/value, role/content or user/assistant)")
        if role is None or not isinstance(text, str):
            raise Skip("bad_turn", f"a turn with role {t.get('from', t.get('role'))!r} or non-text content")
        out.append({"from": role, "value": text})
    if not any(t["from"] == "gpt" for t in out):
        raise Skip("no_answer", "no assistant turn")
    if not any(t["from"] == "gpt" and t["value"].strip() for t in out):   # as llava-json: a sample of no target
        raise Skip("no_answer", "every assistant turn is empty")
    return out


def _holds_images(value: Any) -> bool:
    """A row's value is an `Image` feature's (undecoded: {"bytes", "path"}), or a list of them."""
    if isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, dict) and set(value) == {"bytes", "path"}


def image_bytes(value: Any, root: str) -> tuple[str, bytes]:
    """One stored image (an Image feature dict, bytes, a path, a PIL image) -> (extension, bytes)."""
    from PIL import Image

    from vlm.data.convert import checked_image, png_bytes, read_image
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data is None:
            if not path:
                raise Skip("missing_image", "an image with neither bytes nor a path")
            return read_image(inside(root, path, "image"))
    elif isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    elif isinstance(value, str):
        return read_image(inside(root, value, "image"))
    elif isinstance(value, Image.Image):
        from vlm.modalities import MediaError, to_rgb
        buf = io.BytesIO()
        try:
            to_rgb(value).save(buf, format="PNG")          # 16-bit / float scaled, not clipped by convert("RGB")
        except MediaError as e:
            raise Skip("bad_image", str(e)) from None
        return "png", buf.getvalue()
    else:
        raise Skip("bad_image", f"an image stored as {type(value).__name__}")
    fmt = checked_image(data, "image bytes")
    if fmt in _PIL_EXT:
        return _PIL_EXT[fmt], bytes(data)
    return "png", png_bytes(data, "image bytes")


def convert_hf_dataset(path: str, out: str, split: str | None = None, image_column: str | None = None,
                       conversations_column: str | None = None, image_root: str | None = None,
                       source: str | None = None, task: str = "sft", max_count: int = 1000,
                       max_bad: float = 0.1) -> Report:
    """A local Hugging Face dataset (parquet or save_to_disk) -> conversation shards; see the module doc."""
    rows, split = open_rows(path, split)
    root = image_root or (path if os.path.isdir(path) else os.path.dirname(path) or ".")
    if not os.path.isdir(root):
        raise UserError(f"{root}: image root folder not found")
    source = source or text_of(os.path.basename(os.path.normpath(path)))
    try:
        first = next(iter(rows), None)
    except Exception as e:  # noqa: BLE001  pyarrow.ArrowInvalid (a parquet of 0 rows), datasets' errors ...
        raise UserError(f"{path}: split {split!r} does not read ({type(e).__name__}: {short_error(e)[:300]})") from None
    if first is None:
        raise UserError(f"{path}: split {split!r} has no rows")
    names = list(first)
    conv_col = _column(names, conversations_column, CONVERSATION_COLUMNS, "conversations", path)
    img_col = _column(names, image_column, IMAGE_COLUMNS, "image", path, required=image_column is not None)
    unread = [c for c in names if c != img_col and _holds_images(first[c])]
    if img_col is None and unread:        # the rows would train without their images, exit 0 (a review)
        raise UserError(f"{path}: column {unread[0]!r} holds images but no column is named "
                        f"{' or '.join(IMAGE_COLUMNS)}: name it with --image-column {unread[0]}")

    def items() -> Iterator[tuple[int, dict]]:
        """The rows; a file that stops the stream (a corrupt parquet, one whose columns differ from the
        others') is one line naming it, not an arrow / datasets traceback from inside the loop."""
        it, i = iter(rows), 0
        while True:
            try:
                row = next(it)
            except StopIteration:
                return
            except Exception as e:  # noqa: BLE001  pyarrow.ArrowInvalid, datasets' CastError, OSError ...
                raise UserError(f"{path}: reading stopped after {i} row(s) ({type(e).__name__}: "
                                f"{short_error(e)[:300]})") from None
            yield i, row
            i += 1

    def build(item: tuple[int, dict], seen: Keys) -> dict[str, Any]:
        i, row = item
        rid = str(row.get("id", i)) if row.get("id") is not None else str(i)
        try:
            conv = conversation_of(row[conv_col])
            images = row.get(img_col) if img_col else None
            images = [] if images is None else images if isinstance(images, list) else [images]
            files = [image_bytes(v, root) for v in images]
        except Skip as e:
            raise Skip(e.reason, f"row {i} (id {rid}): {e}") from None
        placeholder = PLACEHOLDERS["image"]
        conv = with_image_placeholders(conv, len(files), f"row {i} (id {rid})")
        n = sum(t["value"].count(placeholder) for t in conv)
        if n != len(files):
            raise Skip("placeholder_mismatch", f"row {i} (id {rid}): {n} {placeholder} placeholder(s), "
                                               f"{len(files)} image(s)")
        sample: dict[str, Any] = {"__key__": make_key(rid, seen)}
        for k, (ext, data) in enumerate(files):
            sample[ext if len(files) == 1 else f"{k}.{ext}"] = data
        meta = {"conversations": conv, "source": source, "task": row.get("task") or task, "id": rid}
        meta.update({k: row[k] for k in ("quality", "difficulty") if isinstance(row.get(k), (int, float))})
        sample["json"] = meta
        return sample

    return _write_all(out, items(), build, path, max_bad, max_count=max_count,
                      meta={"source": source, "converted_from": os.path.abspath(path), "split": split})
