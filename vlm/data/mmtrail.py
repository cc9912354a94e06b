"""MMTrail -> shards: trailer clips cut from local videos by their frame ranges, with every kind of
caption MMTrail has (visual, music, merged) and its quality scores.

    vlm data convert mmtrail MMTrail2M_sample.json --videos /data/mmtrail/videos --out shards/mmtrail

Each record (the metadata format of litwellchi/MMTrail's README: `basic` with `video_path`, `video_fps`,
`clip_id`, `clip_start_end_idx` as a frame range [start, end), `imaging_quality`, `of_score`,
`aesthetic_score`; `misc` with `frame_caption` and `music_caption` ({text, time} windows); `scene` with
`caption`, `polish_caption`, `merge_caption` ...) becomes up to three samples sharing one mp4: the clip
re-encoded at `fps` frames per second and at most `size` px on the short side, with its audio track
(24 kHz mono, lossless), and a conversation per caption kind, tasks `trailer_visual`, `trailer_music`,
`trailer_merged` (the names synthetic-world's trailer clips use, so the `omni-tiny` recipe's curriculum
runs on either). `quality` is MMTrail's imaging quality / 100 (0..1; the stage filters' `min_quality`);
the raw scores and every caption are kept in the json.

A video is never decoded whole: the converter seeks to the clip's start and decodes only its range
(PyAV), so memory stays flat for any video length. Skipped and counted, by reason: a missing video, a
path outside --videos, a range past the video's end, an empty range, a corrupt file, no audio track
(unless --audio-optional), no caption.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlm.data.convert import Skip, inside
from vlm.errors import UserError
from vlm.modalities import audio_track

PROMPTS = {"visual": "Describe what you see.", "music": "Describe the music.", "merged": "Describe the clip."}
MUSIC_SR = 24000


@dataclass
class MMTrailReport:
    written: int = 0                              # samples (up to three per clip)
    clips: int = 0
    skipped: Counter = field(default_factory=Counter)     # reason -> clips
    first: dict[str, str] = field(default_factory=dict)   # reason -> the first message
    out: str = ""

    def skip(self, reason: str, message: str) -> None:
        self.skipped[reason] += 1
        self.first.setdefault(reason, message)

    def summary(self) -> str:
        text = f"wrote {self.written} samples from {self.clips} clips to {self.out}, skipped {sum(self.skipped.values())} clips"
        return text + "".join(f"\n  {r}: {n} (first: {self.first[r]})" for r, n in sorted(self.skipped.items()))


def read_records(path: str) -> Iterator[tuple[int, Any]]:
    """The records of a JSON list or a JSON-lines file, with their index."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: annotations file not found")
    try:
        yield from _records(path)
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None


def _records(path: str) -> Iterator[tuple[int, Any]]:
    with open(path, encoding="utf-8-sig") as f:
        head = f.read(1)
        while head and head.isspace():
            head = f.read(1)
        f.seek(0)
        if head == "[":
            try:
                records = json.load(f)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
            yield from enumerate(records)
            return
        for i, line in enumerate(f):
            if line.strip():
                try:
                    yield i, json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}: line {i + 1} is not JSON ({e.msg})") from None


def _av_reason(e: BaseException) -> str:
    """PyAV's error without its errno and the path again ("[Errno 1094995529] Invalid data ...: '<path>'")."""
    return (getattr(e, "strerror", None) or str(e).splitlines()[0])[:120]


def cut_clip(path: str, start: int, end: int, fps: float, size: int, audio: bool) -> tuple[np.ndarray, float, np.ndarray | None]:
    """Frames [start, end) of a video at about `fps` (short side <= `size`) and the audio of the same
    time span (mono float32 at 24 kHz, or None). Seeks, then decodes only the range."""
    import av
    try:
        container = av.open(path)
    except Exception as e:
        raise Skip("bad_video", f"{path}: cannot open ({_av_reason(e)})") from None
    try:
        if not container.streams.video:
            raise Skip("bad_video", f"{path}: no video stream")
        vs = container.streams.video[0]
        rate = float(vs.average_rate or vs.guessed_rate or 0) or None
        if rate is None:
            raise Skip("bad_video", f"{path}: unknown frame rate")
        total = vs.frames or (int(float(vs.duration * vs.time_base) * rate) if vs.duration else 0)
        if total and start >= total:
            raise Skip("range_past_end", f"frames [{start}, {end}) start past the video's {total} frames")
        t0, t1 = start / rate, end / rate
        # frame indices count from the video's first frame (as decord's do), not from time 0: a video whose
        # first frame is at 2 s gave frame 8's pixels for frame 0 ... and no frame for [0, 4)
        v0 = float(vs.start_time * vs.time_base) if vs.start_time is not None else 0.0
        step = max(1, round(rate / fps))
        frames = []
        try:
            container.seek(int((v0 + t0) / vs.time_base), stream=vs, backward=True)
            for frame in container.decode(vs):
                idx = round((float(frame.pts * vs.time_base) - v0) * rate) if frame.pts is not None else None
                if idx is None or idx < start:
                    continue
                if idx >= end:
                    break
                if (idx - start) % step == 0:
                    img = frame.to_image()
                    scale = size / min(img.size)
                    if scale < 1:
                        w, h = (max(2, round(img.size[0] * scale / 2) * 2), max(2, round(img.size[1] * scale / 2) * 2))
                        img = img.resize((w, h))
                    frames.append(np.asarray(img.convert("RGB")))
        except av.FFmpegError as e:
            raise Skip("bad_video", f"{path}: decoding failed ({_av_reason(e)})") from None
        if not frames:
            raise Skip("range_past_end", f"frames [{start}, {end}) hold no decodable frame")
        arr = np.stack(frames)
        if arr.shape[1] % 2 or arr.shape[2] % 2:                     # H.264 yuv420p: even sizes
            arr = arr[:, : arr.shape[1] // 2 * 2, : arr.shape[2] // 2 * 2]
        wave = None
        if audio and container.streams.audio:
            wave = audio_track(container, MUSIC_SR, v0 + t0, v0 + t1)       # the same span of the timeline
        return arr, len(frames) / max(t1 - t0, 1e-9), wave
    finally:
        container.close()


def captions_of(rec: dict) -> dict[str, str]:
    """The record's captions by kind; a value that is not text (null, a number) is no caption, never 'None'."""
    def text(x: Any) -> str:
        return x.strip() if isinstance(x, str) else ""
    misc, scene = _mapping(rec.get("misc")), _mapping(rec.get("scene"))
    parts = misc.get("music_caption")
    music = " ".join(text(m.get("text")) for m in parts if isinstance(m, dict)) if isinstance(parts, list) else ""
    out = {"visual": text(scene.get("polish_caption")) or text(scene.get("caption")),
           "music": music.strip(), "merged": text(scene.get("merge_caption"))}
    return {k: v for k, v in out.items() if v}


def _mapping(x: Any) -> dict:
    return x if isinstance(x, dict) else {}


def convert_mmtrail(annotations: str, videos: str, out: str, fps: float = 4.0, size: int = 224,
                    max_seconds: float = 30.0, audio_optional: bool = False, source: str = "mmtrail",
                    max_count: int = 1000, max_bad: float = 0.1) -> MMTrailReport:
    """Stops (nothing published) when no clip converts or more than `max_bad` of the records are skipped."""
    from vlm.data.convert import Keys, make_key
    from vlm.data.writer import Audio, ShardWriter, encode_mp4
    if not os.path.isdir(videos):
        raise UserError(f"--videos {videos}: not a folder")
    if not 0 <= max_bad <= 1:
        raise UserError(f"--max-bad is a fraction of the records in [0, 1], got {max_bad}")
    missing, total = _missing_videos(annotations, videos)      # before minutes of encoding, not after
    if missing > max_bad * total:
        raise UserError(f"{annotations}: {missing} of {total} records name a video not found under {videos}, more than "
                        f"--max-bad {max_bad:g}; nothing converted (--max-bad 1 converts the clips that are there)")
    report, seen = MMTrailReport(out=out), Keys()
    with ShardWriter(out, max_count=max_count, meta={"source": source, "annotations": os.path.basename(annotations)}) as w:
        for i, rec in read_records(annotations):
            where = f"record {i}"
            try:
                if not isinstance(rec, dict) or not isinstance(rec.get("basic"), dict):
                    raise Skip("bad_record", f"{where}: no 'basic' object")
                basic = rec["basic"]
                where = f"record {i} ({basic.get('clip_id', '?')})"
                rng = basic.get("clip_start_end_idx")
                if not (isinstance(rng, list) and len(rng) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                                         and x >= 0 for x in rng)):
                    raise Skip("bad_record", f"{where}: clip_start_end_idx must be [start, end] frame numbers >= 0, "
                                             f"got {rng!r:.40}")
                start, end = rng
                if end <= start:
                    raise Skip("empty_range", f"{where}: frames [{start}, {end}) are empty")
                path, rel = _video_of(basic, videos, where)
                caps = captions_of(rec)
                if not caps:
                    raise Skip("no_caption", f"{where}: no visual, music or merged caption")
                fps_value = basic.get("video_fps")
                if fps_value is not None and (isinstance(fps_value, bool) or not isinstance(fps_value, (int, float))):
                    raise Skip("bad_record", f"{where}: video_fps must be a number, got {fps_value!r}")
                rate = float(fps_value or 0) or None
                if rate:                                                   # cap the clip's length
                    end = min(end, start + int(max_seconds * rate))
                frames, clip_fps, wave = cut_clip(path, start, end, fps, size, audio=True)
                if wave is None and not audio_optional:
                    raise Skip("no_audio_track", f"{where}: {rel} has no audio track (pass --audio-optional)")
            except Skip as e:
                report.skip(e.reason, str(e))
                continue
            mp4 = encode_mp4(frames, max(1, round(clip_fps)), Audio(wave, MUSIC_SR) if wave is not None else None)
            scores = {k: basic.get(k) for k in ("imaging_quality", "of_score", "aesthetic_score")}
            quality = basic.get("imaging_quality")
            meta = {"source": source, "video_id": basic.get("video_id"), "clip_id": basic.get("clip_id"),
                    "captions": caps, "scores": scores, "frame_caption": _mapping(rec.get("misc")).get("frame_caption"),
                    "labels": {"description": caps.get("merged") or caps.get("visual") or caps.get("music")}}
            if isinstance(quality, (int, float)):
                meta["quality"] = round(min(1.0, max(0.0, float(quality) / 100.0)), 4)
            base = make_key(str(basic.get("clip_id") or f"clip{i}"), seen)
            for kind, text in caps.items():
                w.write({"__key__": f"{base}_{kind}", "mp4": mp4, "json": {
                    **meta, "task": f"trailer_{kind}",
                    "conversations": [{"from": "human", "value": f"<video>\n{PROMPTS[kind]}"},
                                      {"from": "gpt", "value": text}]}})
                report.written += 1
            report.clips += 1
        bad = sum(report.skipped.values())                 # inside the writer: a stop publishes no shard
        if report.clips == 0:
            raise UserError(f"{annotations}: no clip converted; {report.summary()}")
        if bad > max_bad * (bad + report.clips):
            reasons = ", ".join(f"{r} {n}" for r, n in sorted(report.skipped.items()))
            first = next(iter(report.first.values()))
            raise UserError(f"{annotations}: {bad} of {bad + report.clips} clips are bad ({reasons}; first: {first}), "
                            f"more than --max-bad {max_bad:g}; nothing published (--max-bad 1 keeps the "
                            f"{report.clips} that converted)")
    return report


def _video_of(basic: dict, videos: str, where: str) -> tuple[str, str]:
    """(the file a record's video_path names, confined to the videos folder; that path as written), or Skip
    (`path_outside_root`, `missing_video`)."""
    rel = str(basic.get("video_path") or "")
    path = inside(videos, rel, f"{where}: video_path")
    if not os.path.isfile(path):
        raise Skip("missing_video", f"{where}: {rel} not found under {videos}")
    return path, rel


def _missing_videos(annotations: str, videos: str) -> tuple[int, int]:
    """(records whose video is missing, records): the cheap part of the --max-bad check, made before any clip
    is cut by the conversion's own lookup (`_video_of`; the other reasons need the decode)."""
    missing = total = 0
    for i, rec in read_records(annotations):
        total += 1
        if isinstance(rec, dict) and isinstance(rec.get("basic"), dict):
            try:
                _video_of(rec["basic"], videos, f"record {i}")
            except Skip as e:
                missing += e.reason == "missing_video"      # the others are counted by the conversion
    return missing, total
