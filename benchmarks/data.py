"""Reading benchmark shards: the clip_benchmark / UniBench `wds` layout and synthetic-world splits.

    shards = shard_files(folder, "test")                      # folder/test/*.tar, numeric order
    for s in iter_samples(shards): s.key, s.fields["jpg"]    # raw bytes per extension
    wds = read_wds_meta(folder)                              # classnames + templates

Samples are read straight from the tar members (a sample = consecutive members sharing a key, as
webdataset groups them), so a benchmark never depends on the training pipeline. `data_hash` keys
the feature cache: file names, sizes and modification times, plus whatever text the caller adds.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import re
import tarfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from vlm.errors import UserError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
AUDIO_EXTS = ("flac", "wav")


@dataclass
class Sample:
    key: str
    shard: str
    fields: dict[str, bytes] = field(default_factory=dict)

    def meta(self) -> dict[str, Any]:
        """The sample's json, {} when it has none; invalid json is a one-line error naming the sample."""
        raw = self.fields.get("json")
        if raw is None:
            return {}
        try:
            return json.loads(raw)
        except json.JSONDecodeError as e:
            raise UserError(f"{self.shard}: sample {self.key}: invalid json ({e.msg})") from None

    def image_ext(self) -> str | None:
        return next((e for e in IMAGE_EXTS if e in self.fields), None)

    def media(self, exts: tuple[str, ...]) -> list[bytes]:
        """Every field with one of `exts`, in key order (`0.jpg` before `1.jpg` before `10.jpg`)."""
        names = [n for n in self.fields if n.rsplit(".", 1)[-1] in exts]
        names.sort(key=lambda n: (int(n.split(".")[0]) if n.split(".")[0].isdigit() else -1, n))
        return [self.fields[n] for n in names]


def _numeric_key(p: Path) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name))


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
        files = [d / f"{i}.tar" for i in range(n)]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise UserError(f"{n_file} says {n} shards but {missing[:3]} are missing")
        return files
    files = sorted(d.glob("*.tar"), key=_numeric_key)
    if not files:
        raise UserError(f"{d}: no .tar shards")
    return files


def _split_name(name: str) -> tuple[str, str]:
    """webdataset's key/extension split: the key is the path up to the first '.' of the basename."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    return (name, "") if dot < 0 else (name[:dot], name[dot + 1:])


def iter_samples(files: Iterable[Path]) -> Iterator[Sample]:
    """Samples of the tar shards, in order; a truncated or unreadable shard is a one-line error naming it."""
    for f in files:
        cur: Sample | None = None
        try:
            with tarfile.open(f, "r|*") as tar:
                for m in tar:
                    if not m.isfile():
                        continue
                    key, ext = _split_name(m.name)
                    if not ext:
                        continue
                    if cur is None or key != cur.key:
                        if cur is not None:
                            yield cur
                        cur = Sample(key, str(f))
                    data = tar.extractfile(m)
                    cur.fields[ext] = data.read() if data is not None else b""
        except (tarfile.TarError, OSError, EOFError) as e:
            raise UserError(f"{f}: unreadable tar shard ({e})") from None
        if cur is not None:
            yield cur


@dataclass
class WdsMeta:
    folder: Path
    classnames: list[str]
    templates: list[str]


def _read_lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def read_wds_meta(folder: str | Path) -> WdsMeta:
    """classnames.txt + zeroshot_classification_templates.txt of a clip_benchmark `wds` folder."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"benchmark folder not found: {root}")
    names, tmpl = root / "classnames.txt", root / "zeroshot_classification_templates.txt"
    for p in (names, tmpl):
        if not p.exists():
            raise UserError(f"{root}: no {p.name} (not a clip_benchmark wds folder)")
    classnames, templates = _read_lines(names), _read_lines(tmpl)
    if not classnames:
        raise UserError(f"{names}: empty")
    if not templates:
        raise UserError(f"{tmpl}: empty")
    bad = [t for t in templates if "{c}" not in t]
    if bad:
        raise UserError(f"{tmpl}: template without '{{c}}': {bad[0]!r}")
    return WdsMeta(root, classnames, templates)


def read_cls(sample: Sample, n_classes: int) -> int:
    """The integer class of a classification sample; a missing or out-of-range `cls` names the sample."""
    raw = sample.fields.get("cls")
    if raw is None:
        raise UserError(f"{sample.shard}: sample {sample.key} has no 'cls' field (not a classification shard)")
    try:
        c = int(raw.decode().strip())
    except ValueError:
        raise UserError(f"{sample.shard}: sample {sample.key}: 'cls' is not an integer") from None
    if not 0 <= c < n_classes:
        raise UserError(f"{sample.shard}: sample {sample.key}: cls {c} outside the {n_classes} classes")
    return c


def decode_image(raw: bytes, where: str = "image"):
    """Image bytes -> RGB PIL image (as webdataset's 'pil' handler decodes it)."""
    from PIL import Image, UnidentifiedImageError
    try:
        img = Image.open(io.BytesIO(raw))
        img.load()
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{where}: cannot decode image ({e})") from None
    return img.convert("RGB")


def decode_audio(raw: bytes, where: str = "audio"):
    """flac/wav bytes -> (waveform [C, N] float32 tensor, sample rate)."""
    import soundfile as sf
    import torch
    try:
        data, sr = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)   # [N, C]
    except Exception as e:  # soundfile raises its own LibsndfileError
        raise UserError(f"{where}: cannot decode audio ({e})") from None
    return torch.from_numpy(data).T.contiguous(), int(sr)


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
    """The raw media a prompt's placeholders take, in order (the writer's contract): the n-th <image> the
    n-th image file, <audio>/<music> the audio files in placeholder order, <video> the mp4s."""
    from vlm.data.template import placeholder_modalities
    pools = {"image": iter(sample.media(IMAGE_EXTS)), "audio": iter(sample.media(AUDIO_EXTS)),
             "video": iter(sample.media(("mp4",)))}
    media: dict[str, list] = {}
    for i, m in enumerate(placeholder_modalities(prompt)):
        raw = next(pools["audio" if m == "music" else m], None)
        if raw is None:
            raise UserError(f"{sample.shard}: sample {sample.key}: placeholder {i + 1} (<{m}>) has no media file")
        where = f"{sample.shard}: sample {sample.key}"
        item = decode_image(raw, where) if m == "image" else decode_audio(raw, where) if m in ("audio", "music") else raw
        media.setdefault(m, []).append(item)
    return media


def first_turn(meta: dict[str, Any], where: str) -> tuple[str, str]:
    """(the first human turn, the first assistant turn) of a sample's conversation."""
    conv = meta.get("conversations") or []
    human = next((t.get("value") for t in conv if t.get("from") in ("human", "user")), None)
    gpt = next((t.get("value") for t in conv if t.get("from") in ("gpt", "assistant")), None)
    if human is None:
        raise UserError(f"{where}: no human turn in 'conversations'")
    return human, meta.get("answer", gpt or "")
