"""synthetic-world video: a coloured shape moving left/right/up/down with a music track (trailer style).

Clips are 12 frames of 64x64 at 4 fps (3 s), H.264 in mp4 with the music as a FLAC track (see
`encode_mp4` for why not AAC); for the `video*` tasks the same music is also stored as a separate
`flac` (24 kHz) for the `<music>` placeholder. The `trailer_*` tasks keep the music in the mp4 only
(the omni family hears it there), with MMTrail's kinds of caption (visual, music, merged) and a
quality score that curriculum filters can use.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from vlm.data.synthetic.audio import CHORDS, INSTRUMENTS, MUSIC_SR, chord_labels, play
from vlm.data.synthetic.common import COLOR_NAMES, COLORS, SHAPES, a, caption_json, pick, qa_json
from vlm.data.synthetic.images import draw_shape
from vlm.data.writer import Audio, encode_mp4

FRAMES, FPS, SIZE = 12, 4, 64
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def moving_shape(rng: np.random.Generator, shape: str, color: str, direction: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Frames [T, H, W, 3] of one shape crossing the frame in `direction`; returns the track too."""
    r = float(rng.uniform(8, 12))
    dx, dy = DIRECTIONS[direction]
    travel = SIZE - 2 * r - 8  # start and end fully inside the frame
    across = float(rng.uniform(r + 4, SIZE - r - 4))  # the fixed coordinate
    g = int(rng.integers(225, 256))
    frames, track = [], []
    for i in range(FRAMES):
        s = (i / (FRAMES - 1) - 0.5) * travel  # -travel/2 .. +travel/2 along the direction
        cx = SIZE / 2 + s * dx if dx else across
        cy = SIZE / 2 + s * dy if dy else across
        img = Image.new("RGB", (SIZE, SIZE), (g, g, g))
        draw_shape(ImageDraw.Draw(img), shape, cx, cy, r, COLORS[color])
        frames.append(np.asarray(img))
        track.append([round(cx, 1), round(cy, 1)])
    return np.stack(frames), {"shape": shape, "color": color, "direction": direction, "centers": track,
                              "radius": round(r, 2)}


def clip_difficulty(base: float, labels: dict[str, Any], quality: float = 1.0) -> float:
    """Smaller shapes (radius 12 -> 8 px: +0.1) and lower quality (1.0 -> 0.4: +0.15) are harder."""
    return base + 0.025 * (12.0 - labels["radius"]) + 0.25 * (1.0 - quality)


def clip(rng: np.random.Generator) -> tuple[dict[str, Any], dict[str, Any]]:
    """A clip's fields (mp4 + flac) and its labels: motion + music (instrument, chord)."""
    shape, color, direction = pick(rng, SHAPES), pick(rng, COLOR_NAMES), pick(rng, list(DIRECTIONS))
    frames, motion = moving_shape(rng, shape, color, direction)
    music = {**chord_labels(rng), "instrument": pick(rng, INSTRUMENTS)}
    x = play(music["instrument"], music["midis"], FRAMES / FPS, rng)
    mp4 = encode_mp4(frames, FPS, Audio(x, MUSIC_SR))
    labels = {**motion, "music": music, "frames": FRAMES, "fps": FPS, "size": SIZE}
    return {"mp4": mp4, "flac": Audio(x, MUSIC_SR)}, labels


def trailer_caption(labels: dict[str, Any]) -> str:
    m = labels["music"]
    return f"{a(labels['color']).capitalize()} {labels['shape']} moves {labels['direction']} while {a(m['instrument'])} plays a {m['quality']} chord."


def gen_video(rng: np.random.Generator, split: str) -> dict[str, Any]:
    fields, labels = clip(rng)
    meta = qa_json("video", "<video>\nWhich direction does the shape move?", labels["direction"],
                   list(DIRECTIONS), labels, clip_difficulty(0.35, labels))
    return {"mp4": fields["mp4"], "json": meta}


def gen_video_music(rng: np.random.Generator, split: str) -> dict[str, Any]:
    fields, labels = clip(rng)
    meta = qa_json("video_music", "<video>\n<music>\nIs the chord in the music major or minor?",
                   labels["music"]["quality"], list(CHORDS), labels, clip_difficulty(0.55, labels))
    return {**fields, "json": meta}


def gen_video_caption(rng: np.random.Generator, split: str) -> dict[str, Any]:
    fields, labels = clip(rng)
    meta = caption_json("video_caption", "<video>\n<music>\nDescribe the clip.", trailer_caption(labels), labels,
                        clip_difficulty(0.45, labels))
    return {**fields, "json": meta}


# ---------------------------------------------------------------------------------------------
# trailer clips (MMTrail-style): one clip, captions of what is seen, of what is heard, and merged;
# quality scores as MMTrail keeps them (low quality: noisier frames, a quieter, noisier soundtrack)
# ---------------------------------------------------------------------------------------------
def trailer_clip(rng: np.random.Generator, split: str = "train") -> tuple[bytes, dict[str, Any], float]:
    """An mp4 (frames + music track) of a trailer-style clip, its labels and its quality score (training
    clips vary in quality; val / test clips are clean, as every benchmark)."""
    quality = round(float(rng.uniform(0.4, 1.0)), 3) if split == "train" else 1.0
    shape, color, direction = pick(rng, SHAPES), pick(rng, COLOR_NAMES), pick(rng, list(DIRECTIONS))
    frames, motion = moving_shape(rng, shape, color, direction)
    noise = (1.0 - quality) * 60.0                                     # pixel noise std at low quality
    frames = np.clip(frames + rng.normal(0, noise, frames.shape), 0, 255).astype(np.uint8)
    music = {**chord_labels(rng), "instrument": pick(rng, INSTRUMENTS)}
    x = play(music["instrument"], music["midis"], FRAMES / FPS, rng)
    x = (x * (0.5 + 0.5 * quality) + rng.normal(0, 0.1 * (1.0 - quality), x.shape)).astype(np.float32)
    labels = {**motion, "music": music, "frames": FRAMES, "fps": FPS, "size": SIZE,
              "visual_caption": visual_caption(motion), "music_caption": music_caption(music)}
    labels["description"] = trailer_caption(labels)
    return encode_mp4(frames, FPS, Audio(x, MUSIC_SR)), labels, quality


def visual_caption(motion: dict[str, Any]) -> str:
    return f"{a(motion['color']).capitalize()} {motion['shape']} moves {motion['direction']}."


def music_caption(music: dict[str, Any]) -> str:
    return f"{a(music['instrument']).capitalize()} plays a {music['quality']} chord."


def _trailer(task: str, kind: str):
    """A generator of one trailer task: kind 'visual' / 'music' / 'merged' (a caption) or 'shape' /
    'instrument' (a question)."""
    def gen(rng: np.random.Generator, split: str) -> dict[str, Any]:
        mp4, labels, quality = trailer_clip(rng, split)
        if kind == "shape":
            meta = qa_json(task, "<video>\nWhich shape moves?", labels["shape"], SHAPES, labels,
                           clip_difficulty(0.35, labels, quality), quality)
        elif kind == "instrument":
            meta = qa_json(task, "<video>\nWhich instrument plays?", labels["music"]["instrument"], INSTRUMENTS,
                           labels, clip_difficulty(0.55, labels, quality), quality)
        else:
            prompt = {"visual": "Describe what you see.", "music": "Describe the music.", "merged": "Describe the clip."}
            text = {"visual": labels["visual_caption"], "music": labels["music_caption"],
                    "merged": labels["description"]}
            meta = caption_json(task, "<video>\n" + prompt[kind], text[kind], labels,
                                clip_difficulty({"visual": 0.25, "music": 0.45, "merged": 0.65}[kind], labels, quality),
                                quality)
        return {"mp4": mp4, "json": meta}
    return gen


GENERATORS = {"video": gen_video, "video_music": gen_video_music, "video_caption": gen_video_caption,
              **{f"trailer_{k}": _trailer(f"trailer_{k}", k) for k in ("visual", "music", "merged", "shape", "instrument")}}
