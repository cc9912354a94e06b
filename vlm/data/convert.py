"""Converters from common on-disk layouts to the suite's WebDataset shards.

    vlm data convert llava-json --json llava_v1_5_mix665k.json --images data/ --out shards/llava
    vlm data convert caption-folder photos/ --out shards/captions          (a.jpg + a.txt)
    vlm data convert class-folder imagenette/val --out wds/imagenette      (clip_benchmark `wds` layout)
    vlm data convert media-folder clips/ --captions captions.csv --kind music --out shards/music

img2dataset output (`00000.tar` with jpg + txt + json) needs no conversion: it reads as is.

Bad input: a file that cannot be read at all (invalid JSON, a missing folder) raises `UserError`
naming it; one bad sample among many (a missing or corrupt media file, a malformed record) is
skipped and counted, and the first problems are reported. If more than `max_bad` (a fraction) of
the samples are bad, something systematic is wrong (a wrong image root, say) and the conversion
stops with a `UserError` naming the first bad sample. Skips are counted per reason
(`Report.reasons`: missing_file, bad_image, path_outside_root ...).

Paths stay inside their roots: every path an annotation names (an image of a LLaVA record, a file of
a captions table, an image path of a Hugging Face dataset) goes through `inside(root, path)`, which
refuses `..`, absolute paths elsewhere and symlinks out of the root (`path_outside_root`, skipped and
counted). A new converter reads annotation paths through it too.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from vlm.atomic import write_text
from vlm.data.template import normalise_conversation
from vlm.data.writer import ShardWriter, validate_sample
from vlm.errors import UserError, read_jsonl, read_text, text_of
from vlm.modalities import MODALITIES, PLACEHOLDERS, file_kind, short_error

DEFAULT_TEMPLATES = ["a photo of a {c}.", "a picture of a {c}.", "an image of a {c}.", "a photo of the {c}."]


def class_template_problem(template: str) -> str | None:
    """What is wrong with a zero-shot template (`str.format(c=class_name)`, as clip_benchmark fills it), or None:
    no `{c}`; a field that is not `c` (`{kind}`, `{}`); `{c.upper}` / `{c[0]}` (the class name's attribute or
    character, not the name); a lone brace."""
    import string
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        return f"does not format ({e}); write a literal brace as {{{{ or }}}}"
    other = next((f for f in fields if f != "c"), None)
    if other is not None:
        if other.startswith(("c.", "c[")):
            return f"uses {{{other}}}: only {{c}} itself (the class name) is filled in"
        return (f"has the field {{{other}}}: only {{c}} (the class name) is filled in; write a literal brace as "
                f"{{{{ or }}}}")
    if "c" not in fields:
        return "has no {c} for the class name"
    try:
        template.format(c="x")
    except (KeyError, IndexError, ValueError) as e:       # a format spec that a text does not take: `{c:d}`
        return f"does not format with the class name ({type(e).__name__}: {e})"
    return None
MEDIA_PROMPTS = {"audio": "Describe the sound.", "music": "Describe the music.", "video": "Describe the video."}
_KEY_BAD = re.compile(r"[^\w-]+")      # letters and digits of any script stay (`写真`, `café`): keys of names in
                                       # other scripts were all `sample`, `sample_1` ...; dots, slashes, spaces go


LLAVA_ROLES = {"user": "human", "assistant": "gpt", "system": "system"}    # normalised role -> LLaVA `from`


class Skip(ValueError):
    """One bad sample: skipped and counted under `reason`."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class Report:
    """What a conversion wrote and skipped; `reasons` counts skips per reason, `problems` holds the
    first few messages."""

    written: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)
    out: str = ""
    reasons: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)        # what was left alone on purpose, said once each
    replaced: int | None = None                            # samples of the data set --out held before (it is gone)

    def skip(self, problem: str, reason: str = "bad_sample") -> None:
        self.skipped += 1
        self.reasons[reason] += 1
        if len(self.problems) < 20:
            self.problems.append(problem)

    def summary(self) -> str:
        text = f"wrote {self.written} samples to {self.out}"
        if self.replaced is not None:
            text += f" (replacing the {self.replaced} samples there before)"
        text += f", skipped {self.skipped}"
        if self.reasons:
            text += " (" + ", ".join(f"{r}: {n}" for r, n in self.reasons.most_common()) + ")"
        return text + "".join(f"\n  skipped: {p}" for p in self.problems[:5]) + "".join(f"\n  note: {n}" for n in self.notes)


def named(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def within(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether `path` is `folder` or lies inside it, links resolved (an output inside its own input is read
    back as input on a rerun)."""
    p, f = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([p, f]) == f


def inside(root: str, path: str, what: str = "path") -> str:
    """`path` (relative to `root`, or absolute) resolved, if it lies inside `root`; else Skip
    (`path_outside_root`): `..`, an absolute path elsewhere, a symlink pointing out."""
    if not path.strip():
        raise Skip("missing_file", f"{what}: an empty path")
    base = os.path.realpath(root)
    full = os.path.realpath(os.path.join(base, path))
    if os.path.commonpath([full, base]) != base:
        raise Skip("path_outside_root", f"{what}: {path!r} is outside {root}")
    return full


def _check_bad(report: Report, what: str, max_bad: float) -> None:
    total = report.written + report.skipped
    if total == 0:
        raise UserError(f"{what}: no samples found")
    if report.written == 0 or report.skipped > max_bad * total:
        raise UserError(f"{what}: {report.skipped} of {total} samples are bad; first: {report.problems[0]}")


def _list_dir(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: not a folder")
    try:
        return sorted(os.listdir(folder))
    except OSError as e:
        raise UserError(f"{folder}: cannot read the folder ({e.strerror})") from e


def _walk(folder: str) -> list[str]:
    """Paths of all files under `folder`, relative to it, sorted; hidden files and folders (`.DS_Store`,
    `.git/`, `._a.jpg` resource forks) left out."""
    _list_dir(folder)
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [os.path.relpath(os.path.join(root, f), folder) for f in sorted(files) if not f.startswith(".")]
    return out


class Keys(set):
    """The keys a conversion has given, and per base name the next suffix to try: N records of one id cost
    N steps, not N^2 / 2 (a VQA set whose records all carry their image's id took hours at 100k records)."""

    def __init__(self) -> None:
        super().__init__()
        self.next_suffix: dict[str, int] = {}


def make_key(name: str, seen: Keys) -> str:
    """A tar-safe sample key (no dots or slashes) from a file name or id; unique within `seen`: the name,
    else name_1, name_2 ... (the first free one)."""
    base = _KEY_BAD.sub("_", text_of(str(name))).strip("_") or "sample"
    key, i = base, seen.next_suffix.get(base, 1)
    while key in seen:
        key, i = f"{base}_{i}", i + 1
    seen.next_suffix[base] = i
    seen.add(key)
    return key


def _image_ext(path: str) -> str:
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    return "jpg" if ext == "jpeg" else ext


def read_image(path: str) -> tuple[str, bytes]:
    """An image file -> (extension, bytes): jpg/png/webp kept byte for byte, others re-encoded as png.

    Raises ValueError with the reason when the file is missing or not a readable image.
    """

    if not os.path.isfile(path):
        raise Skip("missing_file", f"{path} is a folder, not an image file" if os.path.isdir(path)
                   else f"image file not found: {path}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise Skip("bad_image", f"not a readable image: {path} ({e.__class__.__name__})") from e
    checked_image(data, path)
    ext = _image_ext(path)
    if ext in ("jpg", "jpeg", "png", "webp"):            # what shards keep; gif / bmp / tif ... become png
        return ext, data
    return "png", png_bytes(data, path)


def checked_image(data: bytes, what: str) -> str:
    """The PIL format of image bytes that decode, else a bad_image Skip. `verify()` alone does not decode JPEG
    data: a truncated JPEG was written as a good sample and skipped by every reader after. JPEGs decode at
    draft size (every coefficient is still read, so a cut file still fails)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            im.verify()
        with Image.open(io.BytesIO(data)) as im:
            if fmt == "JPEG":
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # (PIL names the BytesIO with its address: without it the message, and index.json, is the same each run)
        raise Skip("bad_image", f"not a readable image: {what} ({e.__class__.__name__}: {short_error(e)})") from None
    return fmt


def png_bytes(data: bytes, what: str) -> bytes:
    """Image bytes of a format shards do not keep (bmp, gif ...) re-encoded as png; one that verified but does
    not decode (truncated) is a bad_image Skip."""
    from PIL import Image

    from vlm.modalities import MediaError, to_rgb, upright
    buf = io.BytesIO()
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            to_rgb(upright(im)).save(buf, format="PNG")     # 16-bit / float scaled (convert clipped them); EXIF turned
    except MediaError as e:
        raise Skip("bad_image", f"not a usable image: {what} ({e})") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise Skip("bad_image", f"not a readable image: {what} ({e.__class__.__name__})") from None
    return buf.getvalue()


def _load_json(path: str) -> Any:
    text = read_text(path, "JSON file")                        # a BOM (Windows editors) is not JSON's: dropped
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deep to read") from None


UNREAD_MEDIA_KEYS = ("video", "videos", "audio", "audios")     # llava-json record keys of media it does not read
ALIASES = {"image": "images", "conversations": "messages"}       # llava-json record keys read under two names


def _caption_meta(placeholder: str, prompt: str, caption: str, source: str, task: str) -> dict[str, Any]:
    return {"conversations": [{"from": "human", "value": f"{placeholder}\n{prompt}"}, {"from": "gpt", "value": caption}],
            "caption": caption, "source": source, "task": task, "modality": placeholder.strip("<>")}


def _write_all(out: str, items: Iterable[Any], build: Callable[[Any, set[str]], dict[str, Any]], what: str,
               max_bad: float, **writer_kw) -> Report:
    """Build a sample from each item (ValueError/KeyError/TypeError = a bad sample: skipped, counted)."""
    report, seen = Report(out=out), Keys()
    with ShardWriter(out, **writer_kw) as w:
        for n, item in enumerate(items):
            try:
                sample = build(item, seen)
            except (ValueError, KeyError, TypeError) as e:       # a KeyError's str() is its key quoted
                report.skip(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e),
                            getattr(e, "reason", "bad_sample"))
                continue
            problems = validate_sample(sample)
            if problems:                # named by its place in the input too: the key is the converter's own
                report.skip(f"entry {n} of {what}: {problems[0]}", "invalid_sample")
                continue
            w.write(sample)
            report.written += 1
        w.skipped = report.skipped
        if report.skipped:         # kept with the data set: the terminal's summary was the only record of them
            w.meta["skipped_by_reason"] = dict(report.reasons.most_common())
            w.meta["skipped_examples"] = report.problems[:20]
        _check_bad(report, what, max_bad)          # inside: a failed conversion leaves no shards and no index
    report.replaced = w.replaced
    return report


# ---------------------------------------------------------------------------------------------
# LLaVA JSON
# ---------------------------------------------------------------------------------------------

def convert_llava_json(json_path: str, image_root: str, out: str, source: str | None = None, task: str = "sft",
                       max_count: int = 1000, max_bad: float = 0.1) -> Report:
    """LLaVA-format JSON (a list of {id, image, conversations}) + image folder -> shards.

    `image` (or `images`) may be a path (relative to image_root) or a list of paths; records without it are
    text-only. Records whose prompt has no `<image>` get one per image before the first human turn, as LLaVA does.
    Turns are `conversations` (or `messages`): LLaVA from/value or OpenAI role/content, content a string or parts
    (`{"type": "image"}` is `<image>`). A record with media this converter does not read (`video`, `audio`) is
    skipped and counted (`unread_media`), not trained as text. A `.jsonl` file is read one record per line.
    """
    records = ([r for _, r in read_jsonl(json_path, "JSON Lines file")] if json_path.lower().endswith(".jsonl")
               else _load_json(json_path))
    if not isinstance(records, list):
        raise UserError(f"{json_path}: expected a list of records, got {type(records).__name__}")
    if not os.path.isdir(image_root):
        raise UserError(f"{image_root}: image folder not found")
    source = source or text_of(os.path.splitext(os.path.basename(json_path))[0])
    empty_image: list[str] = []                         # records with "image": "": text-only, said in the summary

    def build(item: tuple[int, Any], seen: Keys) -> dict[str, Any]:
        i, rec = item
        if not isinstance(rec, dict):
            raise ValueError(f"record {i}: not an object")
        rid = str(i) if rec.get("id") is None else str(rec["id"])      # "id": null is no id (it was key "None")
        where = f"record {i} (id {rid})"
        unread = [k for k in UNREAD_MEDIA_KEYS if rec.get(k) not in (None, "", [])]
        if unread:
            raise Skip("unread_media", f"{where}: llava-json reads images only, not its {unread[0]!r} (convert "
                                       "audio / video with media-folder or hf-dataset): not trained without it")
        twice = [k for k in ("image", "conversations") if k in rec and ALIASES[k] in rec]
        if twice:
            raise Skip("bad_record", f"{where}: both {twice[0]!r} and {ALIASES[twice[0]]!r}: give one")
        conv = rec.get("conversations", rec.get("messages"))
        try:           # LLaVA from/value or OpenAI role/content turns, content a string or parts
            if isinstance(conv, list):
                conv = [{**t, "content": content_text(t["content"])}
                        if isinstance(t, dict) and isinstance(t.get("content"), list) else t for t in conv]
            turns = normalise_conversation(conv, where)
        except Skip as e:
            raise Skip(e.reason, f"{where}: {e}") from None
        except UserError as e:
            raise Skip("bad_turn", str(e)) from None
        if not any(t["role"] == "assistant" for t in turns):
            raise Skip("no_answer", f"record {i} (id {rid}): no gpt / assistant turn to learn from")
        if not any(t["role"] == "assistant" and t["text"].strip() for t in turns):   # every answer "": a sample
            raise Skip("no_answer", f"record {i} (id {rid}): every gpt / assistant turn is empty")  # of no target
        images = rec.get("image", rec.get("images"))
        if images is None or images == "":              # null / absent / "": a text-only record
            if images == "":
                empty_image.append(rid)
            images = []
        images = [images] if isinstance(images, str) else images
        if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
            raise ValueError(f"record {i} (id {rid}): 'image' must be a path or a list of paths")
        sample: dict[str, Any] = {"__key__": make_key(rid, seen)}
        for n, rel in enumerate(images):
            try:
                ext, data = read_image(inside(image_root, rel, "image"))
            except Skip as e:
                raise Skip(e.reason, f"record {i} (id {rid}): {e}") from None
            sample[ext if len(images) == 1 else f"{n}.{ext}"] = data
        conv = with_image_placeholders([{"from": LLAVA_ROLES[t["role"]], "value": t["text"]} for t in turns],
                                       len(images), f"record {i} (id {rid})")
        meta = {"conversations": conv, "source": source, "task": rec.get("task") or task, "id": rid}   # null: the default
        meta.update({k: rec[k] for k in ("quality", "difficulty", "labels") if k in rec})
        sample["json"] = meta
        return sample

    report = _write_all(out, enumerate(records), build, json_path, max_bad, max_count=max_count,
                        meta={"source": source, "converted_from": os.path.basename(json_path)})
    if empty_image:
        report.notes.append(f"{len(empty_image)} record(s) have \"image\": \"\" (read as text-only records): "
                            f"{named(empty_image)}")
    return report


# ---------------------------------------------------------------------------------------------
# Image folder with captions (a.jpg + a.txt)
# ---------------------------------------------------------------------------------------------

IMAGE_FILE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def convert_caption_folder(folder: str, out: str, source: str | None = None, max_count: int = 1000,
                           max_bad: float = 0.1) -> Report:
    """Images with same-stem caption files (`a.jpg` + `a.txt`, in any sub-folder) -> caption shards."""
    files = _walk(folder)
    present = set(files)
    images = [f for f in files if f.lower().endswith(IMAGE_FILE_EXTS)]
    source = source or text_of(os.path.basename(os.path.normpath(folder)))

    def build(rel: str, seen: Keys) -> dict[str, Any]:
        stem = os.path.splitext(rel)[0]
        txt = next((stem + e for e in (".txt", ".TXT", ".Txt") if stem + e in present), stem + ".txt")  # B.JPG, B.TXT
        if txt not in present:
            raise Skip("no_caption", f"{os.path.join(folder, rel)}: no caption file {txt}")
        path = os.path.join(folder, txt)
        if os.path.exists(path) and not os.path.isfile(path):  # a FIFO or a device would block the read
            raise Skip("bad_caption", f"{path}: not a regular file")
        try:                          # utf-8-sig: a BOM (Windows editors) is not part of the caption
            with open(inside(folder, txt, "caption file"), encoding="utf-8-sig") as f:
                caption = f.read().strip()
        except UnicodeDecodeError as e:
            raise Skip("bad_caption", f"{os.path.join(folder, txt)}: not UTF-8 text (byte {e.start})") from None
        except OSError as e:          # a dangling link, no permission
            raise Skip("bad_caption", f"{os.path.join(folder, txt)}: cannot be read ({e.strerror or e})") from None
        if not caption:
            raise Skip("no_caption", f"{os.path.join(folder, txt)}: empty caption")
        ext, data = read_image(inside(folder, rel, "image"))
        return {"__key__": make_key(os.path.splitext(rel)[0], seen), ext: data,
                "json": _caption_meta("<image>", "Describe the image briefly.", caption, source, "caption")}

    report = _write_all(out, images, build, folder, max_bad, max_count=max_count, meta={"source": source})
    stems = {os.path.splitext(f)[0] for f in images}
    orphans = [f for f in files if f.lower().endswith(".txt") and os.path.splitext(f)[0] not in stems]
    if orphans:                       # a caption whose image is missing or of another extension: said, not lost
        report.notes.append(f"{len(orphans)} caption file(s) in {folder} have no image beside them: {named(orphans)}")
    return report


# ---------------------------------------------------------------------------------------------
# Class folders -> clip_benchmark / UniBench `wds` layout
# ---------------------------------------------------------------------------------------------

def _check_class_list(out: str, split: str, names: list[str], folder: str) -> None:
    """A split converted into a folder whose other splits have another class list: their `cls` numbers would
    name other classes (one classnames.txt serves every split). One line."""
    path = os.path.join(out, "classnames.txt")
    ours = os.path.isdir(out) and any(os.path.isfile(os.path.join(out, d, "index.json")) for d in os.listdir(out))
    for own in ("classnames.txt", "zeroshot_classification_templates.txt"):
        if os.path.isfile(os.path.join(out, own)) and not ours:      # a user's wds folder, not a conversion's
            raise UserError(f"{os.path.join(out, own)}: not written by a conversion here (no split folder of this "
                            f"suite beside it); not written over: give a new or empty --out")
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        old = [line.rstrip("\n") for line in f if line.strip()]
    others = sorted(d for d in os.listdir(out) if d != split and os.path.isfile(os.path.join(out, d, "index.json")))
    if old != names and others:
        diff = ", ".join(sorted(set(old) ^ set(names))[:3]) or "the same names in another order"
        raise UserError(f"{path}: split(s) {', '.join(others)} were converted with {len(old)} classes, {folder} has "
                        f"{len(names)} (differing: {diff}): their labels would shift; give the same class "
                        f"folders (an empty one for a class with no images) or another --out")


def _class_names(folder: str, classes: list[str]) -> list[str]:
    """Sub-folder names as class names (`_` -> space); one line each in classnames.txt, so a name with a line
    break or another control character, one that is not UTF-8, or two folders giving one name (`hot_dog`,
    `hot dog`) would shift or merge the labels: one line naming them."""
    names, first = [], {}
    for c in classes:
        where = os.path.join(folder, c)
        try:
            c.encode("utf-8")
        except UnicodeEncodeError:
            raise UserError(f"{where!r}: a class folder name that is not UTF-8; rename it") from None
        if any(ch < " " or ch == "\x7f" for ch in c):
            raise UserError(f"{where!r}: a class folder name with a line break or control character; rename it")
        name = c.replace("_", " ")
        if name in first:
            raise UserError(f"class folders {first[name]!r} and {c!r} in {folder} both give the class name {name!r}")
        first[name] = c
        names.append(name)
    return names


def convert_class_folder(folder: str, out: str, templates: list[str] | None = None, split: str = "test",
                         max_count: int = 10_000, max_bad: float = 0.1) -> Report:
    """`folder/<class>/*.jpg` -> `out/classnames.txt`, `out/zeroshot_classification_templates.txt`,
    `out/dataset_type.txt`, `out/<split>/nshards.txt`, `out/<split>/0.tar` ... (samples: `cls` + image).

    Class names are the sub-folder names (sorted; `_` -> space); templates must contain `{c}`.
    """
    if not split or split in (".", "..") or os.sep in split or (os.altsep and os.altsep in split):
        raise UserError(f"--split {split!r}: a split is a folder name inside --out (test, train ...), not a path")
    classes = [d for d in _list_dir(folder) if os.path.isdir(os.path.join(folder, d)) and not d.startswith(".")]
    here = os.path.realpath(folder)
    if within(out, here):                               # a rerun would read its own split folder as a class
        raise UserError(f"--out {out} is inside the class folder {folder}; give a folder outside it")
    looped = [d for d in classes if within(here, os.path.join(folder, d))]
    classes = [d for d in classes if d not in looped]   # a link to the folder itself or above it: no class
    if not classes:
        raise UserError(f"{folder}: no class sub-folders")
    templates = templates or DEFAULT_TEMPLATES
    for t in templates:
        problem = class_template_problem(t)
        if problem:
            raise UserError(f"template {t!r} {problem}")
    names = _class_names(folder, classes)
    items = [(ci, os.path.join(c, f)) for ci, c in enumerate(classes) for f in _walk(os.path.join(folder, c))
             if f.lower().endswith(IMAGE_FILE_EXTS)]
    _check_class_list(out, split, names, folder)

    def build(item: tuple[int, str], seen: Keys) -> dict[str, Any]:
        ci, rel = item
        ext, data = read_image(inside(folder, rel, "image"))
        return {"__key__": make_key(os.path.splitext(rel)[0], seen), "cls": str(ci).encode(), ext: data}

    split_dir = os.path.join(out, split)
    report = _write_all(split_dir, items, build, folder, max_bad, pattern="%d.tar",
                        max_count=max_count, meta={"classes": len(classes)})
    for fname, lines in (("classnames.txt", names), ("zeroshot_classification_templates.txt", templates),
                         ("dataset_type.txt", ["classification"])):       # after the split: a failed one changes nothing
        write_text(os.path.join(out, fname), "\n".join(lines) + "\n")
    with open(os.path.join(split_dir, "index.json")) as f:
        n_shards = len(json.load(f)["shards"])
    write_text(os.path.join(split_dir, "nshards.txt"), f"{n_shards}\n")
    if looped:
        report.notes.append(f"{len(looped)} sub-folder(s) of {folder} link to the folder itself or a folder above "
                            f"it (e.g. {looped[0]!r}): not classes, not converted")
    loose = [f for f in _list_dir(folder) if f.lower().endswith(IMAGE_FILE_EXTS)
             and os.path.isfile(os.path.join(folder, f))]
    if loose:                         # an image outside every class folder has no label: said, not converted
        report.notes.append(f"{len(loose)} image(s) directly in {folder} are in no class sub-folder, not converted: "
                            f"{named(loose)}")
    present = {ci for ci, _ in items}
    empty = [names[i] for i in range(len(classes)) if i not in present]
    if empty:
        report.notes.append(f"{len(empty)} class(es) with no image in {folder}: {named(empty)} (kept in "
                            "classnames.txt: a zero-shot candidate with no test image)")
    report.out = out
    return report


# ---------------------------------------------------------------------------------------------
# Audio / music / video folder + captions (JSON or CSV)
# ---------------------------------------------------------------------------------------------

def content_text(content: Any) -> str:
    """A message's content: a string, or OpenAI-style parts with `<image>` where an image part is (llava-json
    and hf-dataset read both)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if not isinstance(part, dict):
                raise Skip("bad_turn", f"a content part is not an object: {str(part)[:40]}")
            kind = part.get("type")
            if kind == "image":
                out.append(PLACEHOLDERS["image"])
            elif kind == "text" and isinstance(part.get("text"), str):
                out.append(part["text"])
            elif kind is not None and kind != "text":
                raise Skip("unsupported_part", f"content part of type {kind!r}")
        return "".join(out)
    raise Skip("bad_turn", f"content is {type(content).__name__}, not text")


def with_image_placeholders(conv: list[dict], n_images: int, where: str) -> list[dict]:
    """A conversation whose text has no `<image>` gets one per image before its first human turn (not the
    system prompt); with images and no human turn to put them in, the record is a bad_turn Skip."""
    placeholder = PLACEHOLDERS["image"]
    if not n_images or any(placeholder in t["value"] for t in conv):
        return conv
    first = next((k for k, t in enumerate(conv) if t["from"] == "human"), None)
    if first is None:
        raise Skip("bad_turn", f"{where}: no human / user turn to put its image(s) in")
    conv = list(conv)
    conv[first] = {**conv[first], "value": f"{placeholder}\n" * n_images + conv[first]["value"]}
    return conv


FILE_COLUMNS = ("file", "file_name", "filename", "fname", "path")           # a captions CSV header's file column
CAPTION_COLUMN = re.compile(r"(caption|text|description)(_?\d+)?")           # caption, caption_1 ... (Clotho's 5)


def _captions_header(row: list[str], path: str) -> tuple[int, list[int]] | None:
    """A captions CSV's first row -> (file column, caption columns) when it is a header, None when it is a
    file's row. A row naming a file column is a header (a Clotho header, `file_name,caption_1..5`, was read as
    a sample); one naming a caption column but no file column is an error, not a sample."""
    names = [c.strip().lower() for c in row]
    file_col = next((i for i, c in enumerate(names) if c in FILE_COLUMNS), None)
    if file_col is None:
        if len(names) < 2 or not any(CAPTION_COLUMN.fullmatch(c) for c in names):
            return None                       # a file's row (`clip001,a dog barks`: a name without a dot too)
        raise UserError(f"{path}: the first row ({','.join(row)[:80]}) is a header with no file column "
                        f"({', '.join(FILE_COLUMNS)}); name it so, or give rows file,caption without a header")
    caps = [i for i, c in enumerate(names) if CAPTION_COLUMN.fullmatch(c)]
    if not caps:
        raise UserError(f"{path}: the header ({','.join(row)[:80]}) has no caption column (caption, caption_1 "
                        "..., text or description)")
    return file_col, caps


def read_captions(path: str) -> dict[str, Any]:
    """Captions file -> {file: caption, or a list of captions}: JSON ({file: caption(s)} or [{file, caption}]) or
    CSV: rows file,caption, or a header naming a file column and one or more caption columns (Clotho's
    file_name,caption_1 ... caption_5: every caption of a file, in order); Excel's BOM read. A caption that is not
    text is kept as it is, for the converter to skip; a file captioned twice is a one-line error naming both
    entries."""
    if path.lower().endswith(".json"):
        data = _load_json(path)
        if isinstance(data, dict):
            pairs = list(data.items())
        elif isinstance(data, list):
            bad = next((i for i, d in enumerate(data) if not (isinstance(d, dict) and "file" in d and "caption" in d)),
                       None)
            if bad is not None:
                raise UserError(f"{path}: record {bad} needs 'file' and 'caption', got {data[bad]!r:.80}")
            pairs = [(d["file"], d["caption"]) for d in data]
        else:
            raise UserError(f"{path}: expected an object or a list of records")
    else:
        text = read_text(path, "captions file", newline="")
        try:
            rows = [r for r in csv.reader(io.StringIO(text, newline="")) if r]
        except csv.Error as e:
            raise UserError(f"{path}: cannot read the CSV ({e})") from e
        header = _captions_header(rows[0], path) if rows else None
        if header is not None:
            n_header, rows, (file_col, caps) = len(rows[0]), rows[1:], header
            need = max(file_col, caps[0]) + 1
            bad = next((i for i, r in enumerate(rows) if len(r) < need), None)
            if bad is not None:
                raise UserError(f"{path}: line {bad + 2} has {len(rows[bad])} field(s), the header's file and caption "
                                f"columns need {need}")
            if n_header == 2 and (file_col, caps) == (0, [1]):   # file,caption only: a comma in a caption is kept
                pairs = [(r[0], ",".join(r[1:])) for r in rows]
            else:                                 # more columns: a row longer than the header is ambiguous
                bad = next((i for i, r in enumerate(rows) if len(r) > n_header), None)
                if bad is not None:
                    raise UserError(f"{path}: line {bad + 2} has {len(rows[bad])} fields, the header "
                                    f"{n_header}: quote a caption that holds a comma")
                pairs = [(r[file_col], r[caps[0]] if len(caps) == 1 else    # every blank: no caption, as one
                          [r[c].strip() for c in caps if c < len(r) and r[c].strip()] or "") for r in rows]
        else:                                     # file,caption without a header: a comma in a caption is kept
            bad = next((i for i, r in enumerate(rows) if len(r) < 2), None)
            if bad is not None:
                raise UserError(f"{path}: line {bad + 1} needs two columns: file,caption")
            pairs = [(r[0], ",".join(r[1:])) for r in rows]
    if not pairs:
        raise UserError(f"{path}: no captions")
    table: dict[str, Any] = {}
    entry: dict[str, int] = {}
    for n, (k, v) in enumerate(pairs, 1):
        name = os.path.normpath(str(k).strip())        # ./a.wav and a.wav: one file
        if name in table:
            raise UserError(f"{path}: entries {entry[name]} and {n} both caption {name}; give each file once")
        table[name], entry[name] = v.strip() if isinstance(v, str) else v, n
    return table


def _read_media(path: str, kind: str) -> tuple[str, bytes]:
    """flac / wav / mp3 / ogg kept as is (others readable by soundfile -> flac); mp4 kept as is after a probe."""
    if not os.path.isfile(path):
        raise Skip("missing_file", f"file not found: {path}")
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    with open(path, "rb") as f:
        data = f.read()
    if kind == "video":
        if ext != "mp4":
            raise Skip("bad_video", f"{path}: only mp4 video is supported (re-mux it first)")
        import av

        try:
            with av.open(io.BytesIO(data)) as c:
                if not c.streams.video:
                    raise Skip("bad_video", f"{path}: no video stream")
                if next(c.decode(video=0), None) is None:     # headers fine, frames not: as the JPEG check does
                    raise Skip("bad_video", f"{path}: no video frame decodes")
        except av.error.FFmpegError as e:
            raise Skip("bad_video", f"{path}: not a readable mp4 ({e.__class__.__name__})") from e
        return "mp4", data
    import numpy as np
    import soundfile as sf

    try:
        x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise Skip("bad_audio", f"{path}: not a readable audio file") from e
    if x.shape[0] == 0:
        raise Skip("bad_audio", f"{path}: an audio file with no samples")
    if not np.isfinite(x).all():     # the decoders refuse it (bad_audio): not written, as they would skip it
        raise Skip("bad_audio", f"{path}: samples that are not finite (NaN or inf)")
    if file_kind(ext) == "audio":
        return ext, data
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="FLAC")
    return "flac", buf.getvalue()


def convert_media_folder(folder: str, captions: str, out: str, kind: str = "audio", source: str | None = None,
                         max_count: int = 1000, max_bad: float = 0.1) -> Report:
    """Audio / music / video files + a captions file -> caption shards with a `<audio>`/`<music>`/`<video>` prompt."""
    if kind not in MEDIA_PROMPTS:
        raise UserError(f"unknown media kind {kind!r}; choose from {', '.join(MEDIA_PROMPTS)}")
    _list_dir(folder)
    table = read_captions(captions)
    placeholder, prompt = MODALITIES[kind].placeholder, MEDIA_PROMPTS[kind]
    source = source or text_of(os.path.basename(os.path.normpath(folder)))

    def build(item: tuple[str, str], seen: Keys) -> dict[str, Any]:
        rel, caption = item
        if not isinstance(caption, str):
            raise Skip("bad_caption", f"{captions}: the caption of {rel} is a {type(caption).__name__}, not text")
        if not caption:
            raise Skip("no_caption", f"{captions}: empty caption for {rel}")
        ext, data = _read_media(inside(folder, rel, f"{captions}: file"), kind)
        return {"__key__": make_key(os.path.splitext(rel)[0], seen), ext: data,
                "json": _caption_meta(placeholder, prompt, caption, source, f"{kind}_caption")}

    # a file with several captions (a list: Clotho's five) is one sample per caption, keys name, name_1 ...
    items = [(rel, c) for rel, v in sorted(table.items()) for c in (v if isinstance(v, list) and v else [v])]
    report = _write_all(out, items, build, captions, max_bad, max_count=max_count,
                        meta={"source": source, "kind": kind})
    base = os.path.realpath(folder)
    listed = {os.path.realpath(os.path.join(base, k)) for k in table}
    wanted = "video" if kind == "video" else "audio"
    unlisted = [f for f in _walk(folder) if file_kind(f) == wanted and os.path.realpath(os.path.join(base, f)) not in listed]
    if unlisted:
        report.notes.append(f"{len(unlisted)} {wanted} file(s) under {folder} have no caption in {captions}, not "
                            f"converted: {named(unlisted)}")
    return report


CONVERTERS = {"llava-json": convert_llava_json, "caption-folder": convert_caption_folder,
              "class-folder": convert_class_folder, "media-folder": convert_media_folder}
# hf-dataset: vlm.data.convert_hf.convert_hf_dataset (it imports `datasets`; it uses this module's helpers)
