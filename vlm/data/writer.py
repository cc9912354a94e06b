"""Writing samples in the suite's WebDataset schema, and checking them.

    from vlm.data.writer import ShardWriter, Audio
    with ShardWriter("out/train", max_count=1000) as w:
        w.write({"__key__": "s000001", "jpg": pil_image,
                 "json": {"conversations": [{"from": "human", "value": "<image>\\nWhat colour?"},
                                            {"from": "gpt", "value": "red"}],
                          "source": "mine", "quality": 1.0, "difficulty": 0.2, "task": "color"}})

Sample schema: `__key__`; media under standard extensions (`jpg`/`png`/`webp`, `mp4`, `flac`/`wav`;
several as `0.jpg`, `1.jpg` ...: the modality table, `vlm.modalities`); `json` with LLaVA
`conversations`, a `caption`, or an embedding pair (`query`, `positive`, optional `negatives`, each
{"text": ...}), plus `source`, `quality` (0..1, higher = cleaner), `difficulty` (0..1), `task`,
`labels`; or `txt` alone (a caption); or media with a json of metadata only (bare clips, e.g. audio for
self-supervised pretraining).

[Contract] media <-> placeholders (`vlm.modalities`): the n-th `<image>` takes the n-th image file in
key order, the n-th `<video>` the n-th mp4; audio files (flac / wav / mp3 / ogg) fill the `<audio>` and `<music>`
placeholders in the order those placeholders appear. "Key order" is by the numeric prefix (`2.jpg`
before `10.jpg`). The texts are the conversation's turns, or a pair's query, positive, negatives.

Shards are byte-reproducible: tar members carry a fixed mtime/owner and sorted member order (as
webdataset writes them), and media are encoded without timestamps.
"""
from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import webdataset as wds

from vlm.atomic import held_by_live_process, left_by_dead_process, owner_tag, write_text
from vlm.errors import UserError
from vlm.modalities import MODALITIES, file_kind, media_order, placeholder_modalities

FIXED_MTIME = 0.0  # tar member mtime: a constant, so the same samples give the same bytes


@dataclass
class Audio:
    """A mono waveform (float in [-1, 1]) and its sample rate; encoded to flac/wav by the writer."""

    waveform: np.ndarray
    sample_rate: int


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------

def encode_image(image, ext: str = "jpg", quality: int = 90) -> bytes:
    """PIL image -> bytes of `ext` (jpg/png/webp, or gif/bmp/tif which the decoders read too); deterministic
    for the same pixels."""
    buf = io.BytesIO()
    image = image.convert("RGB")
    if ext in ("jpg", "jpeg"):
        image.save(buf, format="JPEG", quality=quality)
    elif ext == "png":
        image.save(buf, format="PNG", optimize=False)
    elif ext == "webp":
        image.save(buf, format="WEBP", quality=quality, method=4)
    elif ext in ("gif", "bmp", "tif", "tiff"):
        image.save(buf, format={"tif": "TIFF", "tiff": "TIFF"}.get(ext, ext.upper()))
    else:
        raise ValueError(f"not an image extension: {ext}")
    return buf.getvalue()


def encode_audio(audio: Audio, ext: str = "flac") -> bytes:
    """Mono float waveform -> 16-bit flac or wav bytes (soundfile)."""
    import soundfile as sf

    x = np.clip(np.asarray(audio.waveform, dtype=np.float32), -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, x, audio.sample_rate, format=ext.upper(), subtype="PCM_16")
    return buf.getvalue()


def rgb_to_yuv420p(frame: np.ndarray) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> yuv420p planes (Y, then U, then V) flattened into [H * 3 // 2, W].

    BT.601 limited range (what decoders assume for untagged SD video) in integer arithmetic, chroma
    from the mean of each 2x2 block. Done here rather than by libswscale, whose C and SIMD paths
    round differently (the same pixels gave different planes with and without SIMD).
    """
    rgb = frame.astype(np.int32)  # [H, W, 3]
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16  # [H, W]
    H, W = r.shape
    quad = rgb.reshape(H // 2, 2, W // 2, 2, 3).sum((1, 3))  # [H/2, W/2, 3]: sums of 4 pixels
    rs, gs, bs = quad[..., 0], quad[..., 1], quad[..., 2]
    u = ((-38 * rs - 74 * gs + 112 * bs + 512) >> 10) + 128  # >> 10: the 8-bit coefficients and the sum of 4
    v = ((112 * rs - 94 * gs - 18 * bs + 512) >> 10) + 128
    planes = np.concatenate([y.ravel(), u.ravel(), v.ravel()])
    return planes.astype(np.uint8).reshape(H * 3 // 2, W)


def encode_mp4(frames: np.ndarray, fps: int, audio: Audio | None = None, qp: int = 20) -> bytes:
    """uint8 frames [T, H, W, 3] (+ an optional mono track, FLAC) -> H.264 mp4 bytes, via PyAV.

    [Contract] the same input gives the same bytes on any machine with the pinned PyAV: every step
    is either integer-only or forced onto its portable C path, because the CPU-specific paths
    measurably change the bytes:
    - x264 runs its C code (`asm=0`), single-threaded, at a constant QP. With its auto-detected
      SIMD, the output differed between SSE2 and SSSE3+ CPUs, and on an AVX-512 CPU it even
      changed from one encode of the same frames to the next, depending on what earlier encodes
      had left in memory (the synthetic-world CI flake).
      Constant QP also keeps mb-tree and adaptive quantisation (float) out of it.
    - RGB -> YUV is `rgb_to_yuv420p` (integer numpy), not libswscale.
    - The audio track is FLAC with fixed (integer) predictors: ffmpeg's AAC encoder gave three
      different byte streams on SSE-only, AVX and AVX2/FMA CPUs, its default FLAC LPC search
      another with and without SIMD. FLAC in mp4 is lossless; PyAV and decord read it.
    - `+bitexact` keeps library version strings out of the container and codecs; the container
      has no timestamps.
    H and W must be even (yuv420p).
    """
    import av

    frames = np.asarray(frames, dtype=np.uint8)
    _, H, W, _ = frames.shape  # [T, H, W, 3]
    if H % 2 or W % 2:
        raise ValueError(f"mp4 frames need even height/width, got {H}x{W}")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4", options={"fflags": "+bitexact"}) as container:
        v = container.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = W, H, "yuv420p"
        v.codec_context.thread_count = 1
        v.codec_context.options = {"qp": str(qp), "preset": "veryfast", "x264-params": "asm=0", "flags": "+bitexact"}
        a = None
        if audio is not None:
            a = container.add_stream("flac", rate=audio.sample_rate)
            a.layout = "mono"
            # fixed predictors (orders 0-4) are chosen by integer residual sums, no float LPC search
            a.codec_context.options = {"lpc_type": "fixed", "max_prediction_order": "4", "flags": "+bitexact"}
        for f in frames:
            for packet in v.encode(av.VideoFrame.from_ndarray(rgb_to_yuv420p(f), format="yuv420p")):
                container.mux(packet)
        for packet in v.encode():
            container.mux(packet)
        if a is not None:
            pcm = (np.clip(audio.waveform, -1, 1) * 32767).astype(np.int16)[None]  # [1, N]
            af = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            af.sample_rate, af.pts, af.time_base = audio.sample_rate, 0, Fraction(1, audio.sample_rate)
            for packet in a.encode(af):
                container.mux(packet)
            for packet in a.encode(None):
                container.mux(packet)
    return buf.getvalue()


def _ext_of(field: str) -> str:
    return field.rsplit(".", 1)[-1].lower()


def encode_sample(sample: dict[str, Any]) -> dict[str, bytes | str]:
    """Turn a sample's values into bytes: PIL images, `Audio`, dicts (json), str, int (cls)."""
    out: dict[str, bytes | str] = {}
    for field, value in sample.items():
        if field.startswith("__"):
            out[field] = value
            continue
        ext = _ext_of(field)
        if isinstance(value, (bytes, bytearray)):
            out[field] = bytes(value)
        elif isinstance(value, str):
            out[field] = value.encode("utf-8")
        elif ext == "json":
            out[field] = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        elif file_kind(ext) == "image" and hasattr(value, "save"):
            out[field] = encode_image(value, ext)
        elif file_kind(ext) == "audio" and isinstance(value, Audio):
            out[field] = encode_audio(value, ext)
        elif ext == "cls" and isinstance(value, (int, np.integer)):
            out[field] = str(int(value)).encode("ascii")
        else:
            raise UserError(f"sample {sample.get('__key__')!r}: cannot encode field {field!r} ({type(value).__name__})")
    return out


# ---------------------------------------------------------------------------------------------
# Validation (also accepts plain img2dataset / clip_benchmark samples)
# ---------------------------------------------------------------------------------------------

def media_fields(sample: dict[str, Any]) -> dict[str, list[str]]:
    """The sample's media fields per file kind (`image`, `video`, `audio`), in placeholder-filling order."""
    kinds: dict[str, list[str]] = {"image": [], "video": [], "audio": []}
    for field in sample:
        kind = None if field.startswith("__") else file_kind(field)
        if kind:
            kinds[kind].append(field)
    return {k: sorted(v, key=media_order) for k, v in kinds.items()}


def sample_texts(meta: dict) -> list[str] | None:
    """The texts whose placeholders a sample's media fill, in order; None for a caption or bare sample."""
    conv = meta.get("conversations")
    if isinstance(conv, list):
        return [str(t.get("value", t.get("content", ""))) for t in conv if isinstance(t, dict)]
    sides = [meta.get("query"), meta.get("positive"), *(meta.get("negatives") or [])]
    texts = [s.get("text", "") if isinstance(s, dict) else s for s in sides if s is not None]
    return [t for t in texts if isinstance(t, str)] or None


def _as_meta(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return json.loads(bytes(value).decode("utf-8"))
    if isinstance(value, str):
        return json.loads(value)
    return value


def validate_sample(sample: dict[str, Any]) -> list[str]:
    """Problems with one sample (raw bytes as read by webdataset, or decoded values); [] when valid."""
    problems: list[str] = []
    key = sample.get("__key__")
    if not key:
        return ["missing __key__"]
    media = media_fields(sample)
    n_media = sum(len(v) for v in media.values())
    has_txt = "txt" in sample
    if "cls" in sample:  # clip_benchmark classification sample: cls + an image
        try:
            int(bytes(sample["cls"]).decode() if isinstance(sample["cls"], (bytes, bytearray)) else sample["cls"])
        except (ValueError, TypeError):
            problems.append(f"{key}: 'cls' is not an integer")
        if not media["image"]:
            problems.append(f"{key}: a 'cls' sample needs an image")
        return problems
    if "json" not in sample:
        if not has_txt:
            problems.append(f"{key}: needs 'json' (conversations or caption) or 'txt' (a caption)")
        if n_media == 0:
            problems.append(f"{key}: no media file")
        return problems
    try:
        meta = _as_meta(sample["json"])
    except (ValueError, UnicodeDecodeError, RecursionError) as e:      # (RecursionError: nested too deep)
        return [f"{key}: 'json' does not parse ({e.__class__.__name__})"]
    if not isinstance(meta, dict):
        return [f"{key}: 'json' must be an object"]
    conv = meta.get("conversations")
    if "query" in meta or "positive" in meta:
        problems += _pair_problems(key, meta, media)
    elif conv is None:
        if n_media == 0:
            problems.append(f"{key}: json needs 'conversations', 'caption' or a 'query' / 'positive' pair "
                            f"(or media: a bare clip)")
    else:
        if not isinstance(conv, list) or not conv:
            problems.append(f"{key}: 'conversations' must be a non-empty list")
        else:
            placeholders: list[str] = []
            for i, turn in enumerate(conv):
                value = turn.get("value", turn.get("content")) if isinstance(turn, dict) else None
                role = turn.get("from", turn.get("role")) if isinstance(turn, dict) else None
                if not isinstance(value, str) or role not in ("human", "user", "gpt", "assistant", "system"):
                    problems.append(f"{key}: turn {i} needs 'from' (human/gpt/system) and a string 'value'")
                    continue
                placeholders += placeholder_modalities(value)
            problems += _count_problems(key, placeholders, media)
    for name in ("quality", "difficulty"):
        if name in meta and not (isinstance(meta[name], (int, float)) and 0.0 <= meta[name] <= 1.0):
            problems.append(f"{key}: '{name}' must be a number in [0, 1]")
    if "labels" in meta and not isinstance(meta["labels"], dict):
        problems.append(f"{key}: 'labels' must be an object")
    if "choices" in meta and "answer" in meta and meta["answer"] not in meta["choices"]:
        problems.append(f"{key}: answer {meta['answer']!r} is not among its choices")
    return problems


# ---------------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------------

def _count_problems(key: str, placeholders: list[str], media: dict[str, list[str]]) -> list[str]:
    counts = Counter(MODALITIES[m].files for m in placeholders)
    return [f"{key}: {counts[kind]} {kind} placeholder(s) but {len(names)} {kind} file(s)"
            for kind, names in media.items() if counts[kind] != len(names)]


def pair_side_problem(side: Any) -> str | None:
    """Why a pair side (query, positive, a negative) is unusable, or None: it must be {'text': str[,
    'instruction': str]} with some text (every empty side would be one prompt, each with another positive).
    The writer, `vlm data inspect` and the `pairs` format all read pairs by this rule."""
    if not (isinstance(side, dict) and isinstance(side.get("text"), str)):
        return "must be {'text': ...}"
    if not isinstance(side.get("instruction"), (str, type(None))):
        return f"has an 'instruction' that is a {type(side['instruction']).__name__}, not text"
    return None if side["text"].strip() else "has an empty 'text'"


PAIR_SHAPE = "(a pair sample needs json 'query' and 'positive' (and 'negatives'), each {'text': ...})"


def pair_sides(meta: dict[str, Any], negatives: int | None = None) -> tuple[list[tuple[str, Any]], str | None]:
    """A pair sample's named sides (query, positive, negatives.0 ...; the first `negatives` of them when given)
    and why they are unusable (None when usable), by `pair_side_problem`."""
    negs = [] if meta.get("negatives") is None else meta["negatives"]     # absent / null: none
    if not isinstance(negs, list):
        return [], "'negatives' must be a list of {'text': ...}"
    sides = [("query", meta.get("query")), ("positive", meta.get("positive")),
             *((f"negatives.{i}", n) for i, n in enumerate(negs if negatives is None else negs[:negatives]))]
    why = next((f"pair side '{name}' {w}" for name, side in sides if (w := pair_side_problem(side)) is not None), None)
    return sides, why


def _pair_problems(key: str, meta: dict[str, Any], media: dict[str, list[str]]) -> list[str]:
    _, why = pair_sides(meta)
    if why is not None:
        return [f"{key}: {why}"]
    return _count_problems(key, [m for t in sample_texts(meta) or [] for m in placeholder_modalities(t)], media)


def _task_of(encoded: dict[str, Any], meta: dict[str, Any]) -> str:
    if meta.get("task"):
        return str(meta["task"])
    if "cls" in encoded:
        return "classification"
    return "caption" if "txt" in encoded or "caption" in meta else "other"


STAGING = ".partial-"                 # <out_dir>/.partial-<pid>@<host>-<random>: a writer's shards until it closes
STALE_SECONDS = 24 * 3600             # a staging folder untouched this long is a killed writer's
PUBLISHING = ".publishing"            # <out_dir>/.publishing: shards are being moved in (pid@host inside)


def _remove_stale_staging(out_dir: str) -> None:
    """Staging folders killed writers left: one of a process no longer running on this host, or one of another
    host untouched for a day (a live writer there touches its folder with every shard). One of a process of this
    host that still runs stays, however old (a writer a day into one shard)."""
    import time
    for name in os.listdir(out_dir):
        path = os.path.join(out_dir, name)
        if not (name.startswith(STAGING) and os.path.isdir(path)):
            continue
        tag = name[len(STAGING):]
        if held_by_live_process(tag):
            continue
        if left_by_dead_process(tag) or time.time() - os.path.getmtime(path) > STALE_SECONDS:
            shutil.rmtree(path, ignore_errors=True)


def check_not_torn(folder: str) -> None:
    """A shard folder whose writer stopped while moving its shards in (a kill between the renames: some shards
    new, some old, the old index) is refused, not read as one data set."""
    journal = os.path.join(folder, PUBLISHING)
    if os.path.exists(journal):
        raise UserError(f"{folder}: a writer stopped while moving a new data set in ({journal} is there): its "
                        f"shards mix two data sets; rerun the command that wrote it")


def _shard_regex(pattern: str) -> re.Pattern:
    """The file names a shard pattern makes (`shard-%06d.tar` -> shard-<digits>.tar)."""
    parts = re.split(r"%0?\d*d", pattern)
    return re.compile(r"\d+".join(re.escape(p) for p in parts))


def _read_index(index: str) -> Any:
    """An index.json as parsed (None: there is none, or it does not parse)."""
    try:
        with open(index) as f:
            return json.load(f)
    except (OSError, ValueError, RecursionError):
        return None


def _count_of(data: Any) -> int | None:
    """The sample count an index names (None: not one of ours)."""
    try:
        return int(data["num_samples"])
    except (KeyError, TypeError, ValueError):
        return None


def _samples_in(index: str) -> int | None:
    """The sample count an existing index.json names (None: no index, or not one of ours)."""
    return _count_of(_read_index(index))


def _is_shard_index(data: Any) -> bool:
    """An index a ShardWriter wrote: a JSON object listing its `shards`."""
    return isinstance(data, dict) and isinstance(data.get("shards"), list)


def _splits_of(data: Any) -> list[str] | None:
    """The split folders a data set's root index names (synthetic-world's `splits`); None for any other index."""
    if isinstance(data, dict) and "shards" not in data and isinstance(data.get("splits"), (dict, list)):
        return [str(s) for s in data["splits"]]
    return None


def root_splits(folder: str) -> list[str] | None:
    """The split folders a data set's root `index.json` names (synthetic-world's `splits`), None when `folder`
    holds no such index (a shard folder's index lists `shards`)."""
    return _splits_of(_read_index(os.path.join(folder, "index.json")))


def _missing_folders(path: str) -> list[str]:
    """The folders `os.makedirs(path)` would create, deepest first."""
    out, p = [], os.path.abspath(path)
    while not os.path.exists(p) and os.path.dirname(p) != p:
        out.append(p)
        p = os.path.dirname(p)
    return out


class ShardWriter:
    """`webdataset.ShardWriter` that encodes and validates samples, counts them, and writes `index.json`.

    Shards are `<out_dir>/<prefix>-000000.tar` ...; `index.json` (written on close) lists the shards,
    the samples in each, counts per task and per modality, and `meta` (e.g. the seed).

    The shards are written to `<out_dir>/.partial-<pid>/` and move into `out_dir` on close, replacing the
    previous data set there (its index and its shards of the same pattern): a failed or killed run leaves
    the folder as it was, and a smaller rebuild leaves no old shards behind.
    """

    def __init__(self, out_dir: str | os.PathLike, prefix: str = "shard", max_count: int = 1000,
                 max_size: float = 1e9, pattern: str | None = None, validate: bool = True,
                 meta: dict[str, Any] | None = None):
        self.out_dir = os.fspath(out_dir)
        if not isinstance(max_count, int) or max_count < 1:
            raise UserError(f"samples per shard (max_count) must be >= 1, got {max_count!r}")
        self._created = _missing_folders(self.out_dir)   # removed again by a failed run that leaves them empty
        try:
            os.makedirs(self.out_dir, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create output folder {self.out_dir}: {e.strerror}") from e
        index = os.path.join(self.out_dir, "index.json")
        data = _read_index(index)                        # (read once: what the checks below ask of it)
        splits = _splits_of(data)
        if splits is not None:           # its index.json would be replaced by this one: the splits orphaned
            raise UserError(f"{self.out_dir}: a data set's root folder (splits {', '.join(splits)}), not a shard "
                            f"folder; give a new folder, or one of its split folders to replace")
        if os.path.exists(index) and not _is_shard_index(data):     # a user's own index.json: ours would replace it
            raise UserError(f"{index}: not a shard index of this suite (no 'shards' list); not written over: give a "
                            f"new or empty folder")
        foreign = sorted(n for n in os.listdir(self.out_dir) if n.endswith(".tar"))
        if foreign and _count_of(data) is None and not os.path.exists(os.path.join(self.out_dir, PUBLISHING)):
            # tar files no index of ours names (a user's own shards, often named shard-000000.tar too): the move-in
            # would replace or remove them
            raise UserError(f"{self.out_dir}: holds {len(foreign)} .tar file(s) not written here by this suite (no "
                            f"index.json names them; e.g. {foreign[0]}); they are not written over: give a new or "
                            f"empty folder")
        _remove_stale_staging(self.out_dir)
        self.stage_dir = tempfile.mkdtemp(prefix=f"{STAGING}{owner_tag()}-", dir=self.out_dir)
        self.replaced: int | None = None       # samples of the data set this one replaced (None: there was none)
        self.pattern = pattern or f"{prefix}-%06d.tar"
        self.validate = validate
        self.meta = dict(meta or {})
        self.shards: list[dict[str, Any]] = []
        self.tasks: Counter[str] = Counter()
        self.modalities: Counter[str] = Counter()
        self.skipped = 0
        self._keys: set[str] = set()
        self._wds = wds.ShardWriter(os.path.join(self.stage_dir, self.pattern), maxcount=max_count,
                                    maxsize=max_size, post=self._finished, verbose=0,
                                    mtime=FIXED_MTIME, encoder=False)

    def _finished(self, fname: str) -> None:
        self.shards.append({"file": os.path.basename(fname), "samples": self._wds.count})

    def write(self, sample: dict[str, Any]) -> None:
        """Encode, check and write one sample; a bad sample raises UserError naming it."""
        key = sample.get("__key__")
        if not isinstance(key, str) or not key or "." in key:
            raise UserError(f"sample key {key!r} must be a non-empty string without dots")
        if key in self._keys:
            raise UserError(f"duplicate sample key {key!r}")
        encoded = encode_sample(sample)
        if self.validate:
            problems = validate_sample(encoded)
            if problems:
                raise UserError(problems[0])
        self._keys.add(key)
        self._wds.write(encoded)
        meta = _as_meta(encoded["json"]) if "json" in encoded else {}
        self.tasks[_task_of(encoded, meta)] += 1
        texts = sample_texts(meta)
        if texts:  # modalities named by the placeholders (tells <music> from <audio>)
            kinds = {m for t in texts for m in placeholder_modalities(t)}
        else:
            kinds = {k for k, fields in media_fields(encoded).items() if fields}
        self.modalities.update(kinds or {"text"})        # text only: counted as `vlm data inspect` counts it

    def close(self, write_index: bool = True) -> dict[str, Any]:
        """Finish the last shard, move the shards into `out_dir` in place of the previous data set and write
        `index.json` (not after a failure: `discard`); returns the index."""
        if self._wds is not None:
            self._wds.close()
            self._wds = None
        for shard in [s for s in self.shards if s["samples"] == 0]:  # only when nothing was written
            os.remove(os.path.join(self.stage_dir, shard["file"]))
            self.shards.remove(shard)
        index = {
            "shards": self.shards,
            "num_samples": sum(s["samples"] for s in self.shards),
            "tasks": dict(sorted(self.tasks.items())),
            "modalities": dict(sorted(self.modalities.items())),
            "skipped": self.skipped,
            **self.meta,
        }
        if write_index:
            self._publish(index)
        self.index = index
        return index

    def _publish(self, index: dict[str, Any]) -> None:
        """The staged shards replace the folder's data set: moved in (each rename atomic), then `index.json`
        replaced in one rename (the folder always has an index naming complete shards), then the previous data
        set's shards this index does not name removed. Under a lock on the folder: two writers finishing into one
        folder at once publish one after the other (the last one's data set wins whole; interleaved, the index of
        one named shards the other had just replaced)."""
        import fcntl
        with open(os.path.join(self.stage_dir, "index.json"), "w") as f:
            json.dump(index, f, indent=1, sort_keys=True)
            f.write("\n")
        fd = os.open(self.out_dir, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)           # released when the descriptor closes
            except OSError as e:                         # a file system without locks (some NFS / FUSE mounts)
                if e.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                print(f"warning: {self.out_dir}: no file locks here ({e.strerror}); publishing without one "
                      f"(two writers finishing into this folder at once could mix their data sets)",
                      file=sys.stderr, flush=True)
            self._move_in()
        finally:
            os.close(fd)
        shutil.rmtree(self.stage_dir, ignore_errors=True)

    def _move_in(self) -> None:
        """`_publish`'s renames and removals (with the folder locked), inside a journal: a kill among the renames
        leaves `.publishing`, and readers refuse the folder (`check_not_torn`) until a writer finishes into it."""
        self.replaced = _samples_in(os.path.join(self.out_dir, "index.json"))
        journal = write_text(os.path.join(self.out_dir, PUBLISHING), f"{owner_tag()}\n")
        for s in self.shards:
            os.replace(os.path.join(self.stage_dir, s["file"]), os.path.join(self.out_dir, s["file"]))
        os.replace(os.path.join(self.stage_dir, "index.json"), os.path.join(self.out_dir, "index.json"))
        ours, keep = _shard_regex(self.pattern), {s["file"] for s in self.shards}
        for name in os.listdir(self.out_dir):          # the previous data set's other shards (or a killed run's)
            if ours.fullmatch(name) and name not in keep and os.path.isfile(os.path.join(self.out_dir, name)):
                os.remove(os.path.join(self.out_dir, name))
        journal.unlink()

    def __enter__(self) -> ShardWriter:
        return self

    def discard(self) -> None:
        """After a failure: close and delete what this writer staged; the folder keeps its previous data set, and
        the folders this writer created are removed when nothing else was put in them (a failed conversion left
        an empty --out behind)."""
        self.close(write_index=False)
        shutil.rmtree(self.stage_dir, ignore_errors=True)
        self.shards = []
        for d in self._created:                       # deepest first; one that holds anything stays
            try:
                os.rmdir(d)
            except OSError:
                break

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()


def write_samples(samples: Iterable[dict[str, Any]], out_dir: str | os.PathLike, **kw) -> dict[str, Any]:
    """Write an iterable of samples to shards; returns the index."""
    with ShardWriter(out_dir, **kw) as w:
        for s in samples:
            w.write(s)
    return w.index
