"""synthetic-world images: shapes x colours x counts x positions, handwritten digits, words, fine detail.

Each `gen_<task>(rng, split)` returns the sample's fields ({"jpg": PIL image, "json": {...}}) with
exact ground truth in `json["labels"]`. Shapes are big relative to the canvas (a 2x2 or 3x3 grid
of cells, one object per cell, no overlap) so that scenes stay readable at the tiny models' 64 px;
fine-detail images are >= 1024 px with one small coloured shape, for zoom-in connectors.
"""
from __future__ import annotations

import functools
import importlib.util
import math
import os
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from vlm.data.synthetic.common import COLOR_NAMES, COLORS, NUMBER_WORDS, PLURAL, SHAPES, a, caption_json, chat_json, pick, qa_json

CANVAS_SIZES = (64, 96, 128, 160, 224)
FINE_SIZES = (1024, 1280, 1536)
WORDS = ["cat", "dog", "sun", "tree", "book", "fish", "bird", "car", "moon", "star",
         "milk", "door", "hat", "cup", "box", "key", "rain", "ship", "lamp", "frog"]
DIGIT_CHOICES = [str(d) for d in range(10)]
COUNT_CHOICES = [str(n) for n in range(1, 7)]
YES_NO = ["yes", "no"]
RELATIONS = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


# ---------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------

def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> list[int]:
    """Draw one filled shape of radius `r` centred at (cx, cy); returns its bbox [x0, y0, x1, y1]."""
    if shape == "circle":
        box = [cx - r, cy - r, cx + r, cy + r]
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        h = r * 0.85  # about the circle's area
        box = [cx - h, cy - h, cx + h, cy + h]
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        pts = [(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)]
        draw.polygon(pts, fill=fill)
        box = [cx - r * 0.95, cy - r, cx + r * 0.95, cy + r * 0.8]
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        draw.polygon(pts, fill=fill)
        box = [min(p[0] for p in pts), min(p[1] for p in pts), max(p[0] for p in pts), max(p[1] for p in pts)]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return [math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3])]


def background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """White or light-grey canvas (never saturated, so objects are the only coloured pixels)."""
    g = int(rng.integers(225, 256))
    return Image.new("RGB", (w, h), (g, g, g))


def add_clutter(rng: np.random.Generator, img: Image.Image, n: int, width: int = 1) -> None:
    """Low-contrast grey lines and outlines: visual clutter that never looks like a coloured object."""
    draw = ImageDraw.Draw(img)
    w, h = img.size
    for _ in range(n):
        g = int(rng.integers(150, 215))
        x0, y0, x1, y1 = (int(v) for v in rng.integers(0, [w, h, w, h]))
        if rng.random() < 0.5:
            draw.line([x0, y0, x1, y1], fill=(g, g, g), width=width)
        else:
            draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=(g, g, g), width=width)


def layout(rng: np.random.Generator, n: int, w: int, h: int, grid: int | None = None) -> list[tuple[float, float, float, int, int]]:
    """n non-overlapping slots (cx, cy, r, col, row): one per grid cell, jittered inside it."""
    grid = grid or (1 if n <= 1 else 2 if n <= 4 else 3)
    assert n <= grid * grid, (n, grid)
    cw, ch = w / grid, h / grid
    cells = rng.choice(grid * grid, size=n, replace=False)
    slots = []
    for c in cells:
        col, row = int(c) % grid, int(c) // grid
        r = min(cw, ch) / 2 * float(rng.uniform(0.5, 0.72))  # objects in neighbouring cells keep a gap
        jx, jy = (min(cw, ch) / 2 - r) * 0.6 * rng.uniform(-1, 1, size=2)
        slots.append(((col + 0.5) * cw + jx, (row + 0.5) * ch + jy, r, col, row))
    return slots


def render(rng: np.random.Generator, objects: list[dict[str, str]], size: tuple[int, int],
           clutter: int = 0, grid: int | None = None) -> tuple[Image.Image, list[dict[str, Any]]]:
    """Draw `objects` ({shape, color}) on a fresh canvas; returns the image and the objects with
    bbox, centre and grid cell filled in."""
    img = background(rng, *size)
    if clutter:
        add_clutter(rng, img, clutter)
    draw = ImageDraw.Draw(img)
    placed = []
    for obj, (cx, cy, r, col, row) in zip(objects, layout(rng, len(objects), *size, grid=grid)):
        bbox = draw_shape(draw, obj["shape"], cx, cy, r, COLORS[obj["color"]])
        placed.append({**obj, "bbox": bbox, "center": [round(cx, 1), round(cy, 1)], "cell": [col, row]})
    return img, placed


def degrade(rng: np.random.Generator, img: Image.Image, p: float) -> tuple[Image.Image, float]:
    """With probability p add Gaussian noise or blur; returns the image and its quality in (0, 1]."""
    if rng.random() >= p:
        return img, 1.0
    if rng.random() < 0.5:
        sigma = float(rng.uniform(8, 30))
        arr = np.asarray(img, dtype=np.float32) + rng.normal(0, sigma, size=(img.size[1], img.size[0], 3))
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), 1.0 - sigma / 60
    radius = float(rng.uniform(0.5, 1.5))
    return img.filter(ImageFilter.GaussianBlur(radius)), 1.0 - radius / 4


def canvas(rng: np.random.Generator) -> tuple[int, int]:
    s = int(pick(rng, CANVAS_SIZES))
    return s, s


def unique_objects(rng: np.random.Generator, n: int, distinct: str = "pair") -> list[dict[str, str]]:
    """n objects with distinct (colour, shape) pairs, or distinct shapes / colours."""
    if distinct == "shape":
        return [{"shape": s, "color": pick(rng, COLOR_NAMES)} for s in pick(rng, SHAPES, n)]
    if distinct == "color":
        return [{"shape": pick(rng, SHAPES), "color": c} for c in pick(rng, COLOR_NAMES, n)]
    pairs = [(c, s) for c in COLOR_NAMES for s in SHAPES]
    return [{"shape": s, "color": c} for c, s in pick(rng, pairs, n)]


def _name(obj: dict[str, Any]) -> str:
    return f"{obj['color']} {obj['shape']}"


def _sample(img: Image.Image, meta: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
    meta["labels"]["image_size"] = list(size)
    if meta["labels"].get("objects"):       # the scene's canonical caption (captioning / retrieval references)
        meta["labels"]["description"] = describe(meta["labels"]["objects"], size)
    return {"jpg": img, "json": meta}


# ---------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------

def _noise_p(split: str) -> float:
    return 0.15 if split == "train" else 0.0  # benchmarks stay clean


def gen_color(rng: np.random.Generator, split: str) -> dict[str, Any]:
    size, n = canvas(rng), int(rng.integers(1, 5))
    clutter = int(rng.integers(0, 6)) if rng.random() < 0.3 else 0
    img, objs = render(rng, unique_objects(rng, n, "shape"), size, clutter)
    t = int(rng.integers(n))
    q = "What color is the shape?" if n == 1 else f"What color is the {objs[t]['shape']}?"
    img, quality = degrade(rng, img, _noise_p(split))
    meta = qa_json("color", "<image>\n" + q, objs[t]["color"], COLOR_NAMES,
                   {"objects": objs, "target": t}, 0.1 + 0.15 * (n - 1) + 0.03 * clutter, quality)
    return _sample(img, meta, size)


def gen_shape(rng: np.random.Generator, split: str) -> dict[str, Any]:
    size, n = canvas(rng), int(rng.integers(1, 5))
    clutter = int(rng.integers(0, 6)) if rng.random() < 0.3 else 0
    img, objs = render(rng, unique_objects(rng, n, "color"), size, clutter)
    t = int(rng.integers(n))
    q = "What shape is this?" if n == 1 else f"What shape is the {objs[t]['color']} object?"
    img, quality = degrade(rng, img, _noise_p(split))
    meta = qa_json("shape", "<image>\n" + q, objs[t]["shape"], SHAPES,
                   {"objects": objs, "target": t}, 0.1 + 0.15 * (n - 1) + 0.03 * clutter, quality)
    return _sample(img, meta, size)


def gen_count(rng: np.random.Generator, split: str) -> dict[str, Any]:
    size = canvas(rng)
    target = pick(rng, SHAPES)
    k = int(rng.integers(1, 7))
    d = int(rng.integers(0, min(3, 9 - k) + 1))
    others = [s for s in SHAPES if s != target]
    objects = [{"shape": target, "color": pick(rng, COLOR_NAMES)} for _ in range(k)]
    objects += [{"shape": pick(rng, others), "color": pick(rng, COLOR_NAMES)} for _ in range(d)]
    order = rng.permutation(len(objects))
    img, objs = render(rng, [objects[int(i)] for i in order], size)
    img, quality = degrade(rng, img, _noise_p(split))
    meta = qa_json("count", f"<image>\nHow many {PLURAL[target]} are there?", str(k), COUNT_CHOICES,
                   {"objects": objs, "shape": target, "count": k}, 0.1 + 0.1 * (k - 1) + 0.08 * d, quality)
    return _sample(img, meta, size)


def _relation(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """The unambiguous relation of a to b from their grid cells (None if same cell row and column)."""
    if a["cell"][0] != b["cell"][0]:
        return "left of" if a["center"][0] < b["center"][0] else "right of"
    if a["cell"][1] != b["cell"][1]:
        return "above" if a["center"][1] < b["center"][1] else "below"
    return None


def gen_spatial(rng: np.random.Generator, split: str) -> dict[str, Any]:
    size, n = canvas(rng), int(rng.integers(2, 6))
    img, objs = render(rng, unique_objects(rng, n), size)
    ia, ib = (int(i) for i in rng.choice(n, size=2, replace=False))
    true_rel = _relation(objs[ia], objs[ib])
    truth = bool(rng.random() < 0.5)
    asked = true_rel if truth else RELATIONS[true_rel]
    img, quality = degrade(rng, img, _noise_p(split))
    q = f"<image>\nIs the {_name(objs[ia])} {asked} the {_name(objs[ib])}?"
    meta = qa_json("spatial", q, "yes" if truth else "no", YES_NO,
                   {"objects": objs, "a": ia, "b": ib, "relation": asked, "true_relation": true_rel},
                   0.25 + 0.1 * (n - 2), quality)
    return _sample(img, meta, size)


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled `load_digits` (1,797 handwritten 8x8 digits, values 0..16).

    Read straight from sklearn's `datasets/data/digits.csv.gz` (what load_digits parses), because
    importing sklearn itself takes seconds; falls back to load_digits if the file moves.
    """
    spec = importlib.util.find_spec("sklearn")
    path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", "digits.csv.gz") if spec and spec.origin else ""
    if os.path.isfile(path):
        data = np.loadtxt(path, delimiter=",")
        images, target = data[:, :-1].reshape(-1, 8, 8), data[:, -1]
    else:
        from sklearn.datasets import load_digits

        d = load_digits()
        images, target = d.images, d.target
    return images.astype(np.float32) / 16.0, target.astype(np.int64)  # [1797, 8, 8] in [0, 1]


def digit_pool(split: str) -> np.ndarray:
    """Indices of load_digits reserved for a split (80/10/10 by index), so benchmarks hold out writers' digits."""
    idx = np.arange(len(_digits()[1]))
    return idx[idx % 10 < 8] if split == "train" else idx[idx % 10 == (8 if split == "val" else 9)]


def gen_digit(rng: np.random.Generator, split: str) -> dict[str, Any]:
    images, targets = _digits()
    i = int(pick(rng, digit_pool(split)))
    w, h = size = canvas(rng)
    img = background(rng, w, h)
    s = int(w * rng.uniform(0.5, 0.85))
    ink = np.array(pick(rng, [(0, 0, 0), (20, 20, 120), (90, 20, 20)]), dtype=np.float32)
    alpha = Image.fromarray((images[i] * 255).astype(np.uint8)).resize((s, s), Image.BILINEAR)
    x, y = (int(v) for v in rng.integers(0, [w - s + 1, h - s + 1]))
    img.paste(Image.new("RGB", (s, s), tuple(int(c) for c in ink)), (x, y), alpha)
    img, quality = degrade(rng, img, _noise_p(split))
    meta = qa_json("digit", "<image>\nWhat digit is written in the image?", str(int(targets[i])), DIGIT_CHOICES,
                   {"digit": int(targets[i]), "sklearn_index": i, "bbox": [x, y, x + s, y + s]},
                   0.3 + 0.3 * (1 - s / w), quality)
    return _sample(img, meta, size)


def gen_ocr(rng: np.random.Generator, split: str) -> dict[str, Any]:
    word = pick(rng, WORDS)
    w, h = size = canvas(rng)
    font = ImageFont.load_default_imagefont()  # the bitmap font: identical pixels everywhere
    x0, y0, x1, y1 = font.getbbox(word)
    mask = Image.new("L", (x1 - x0 + 2, y1 - y0 + 2), 0)
    ImageDraw.Draw(mask).text((1 - x0, 1 - y0), word, fill=255, font=font)
    scale = max(1, int(w * rng.uniform(0.6, 0.9)) // mask.size[0])
    mask = mask.resize((mask.size[0] * scale, mask.size[1] * scale), Image.NEAREST)
    img = background(rng, w, h)
    x, y = (int(v) for v in rng.integers(0, [max(1, w - mask.size[0] + 1), max(1, h - mask.size[1] + 1)]))
    ink = pick(rng, [(0, 0, 0), (20, 20, 120), (120, 20, 20), (20, 90, 20)])
    img.paste(Image.new("RGB", mask.size, ink), (x, y), mask)
    img, quality = degrade(rng, img, _noise_p(split))
    meta = qa_json("ocr", "<image>\nWhat word is written in the image?", word, WORDS,
                   {"word": word, "bbox": [x, y, x + mask.size[0], y + mask.size[1]], "scale": scale},
                   0.3 + 0.1 * len(word) / 4 - 0.03 * scale, quality)
    return _sample(img, meta, size)


def gen_fine_detail(rng: np.random.Generator, split: str) -> dict[str, Any]:
    w, h = int(pick(rng, FINE_SIZES)), int(pick(rng, FINE_SIZES))
    img = background(rng, w, h)
    add_clutter(rng, img, int(rng.integers(0, 40)), width=3)
    # Radius 2-3.5 % of the short side in val / test: a few pixels in a 32-224 px global view, clear
    # in a 3-6x zoom. Train also holds easier, larger ones (up to 8 %; difficulty falls with size)
    # for an easy -> hard curriculum.
    rel = float(rng.uniform(0.02, 0.08 if split == "train" else 0.035))
    r = rel * min(w, h)
    cx, cy = (float(v) for v in rng.uniform([r + 2, r + 2], [w - r - 2, h - r - 2]))
    shape, color = pick(rng, SHAPES), pick(rng, COLOR_NAMES)
    bbox = draw_shape(ImageDraw.Draw(img), shape, cx, cy, r, COLORS[color])
    if rng.random() < 0.5:
        q, answer, choices = "What color is the small shape?", color, COLOR_NAMES
    else:
        q, answer, choices = "What shape is the small colored object?", shape, SHAPES
    meta = qa_json("fine_detail", "<image>\n" + q, answer, choices,
                   {"shape": shape, "color": color, "bbox": bbox, "relative_size": round(2 * r / min(w, h), 4)},
                   0.6 + 0.4 * min(1.0, (0.08 - rel) / 0.045))
    return _sample(img, meta, (w, h))


def textured_background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A muted textured canvas: a few low-frequency waves of tinted light (drawn at 1/4 size, scaled up) plus
    grey pixel noise, pulled towards grey (no pixel near an object's saturation), so no crop is 'the only
    coloured one' by background alone."""
    sw, sh = max(1, w // 4), max(1, h // 4)
    yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32) / max(sw, sh)
    img = np.full((sh, sw, 3), float(rng.uniform(120, 190)), np.float32)
    for _ in range(3):
        fx, fy = rng.uniform(1.5, 12.0, size=2)
        wave = np.sin(2 * np.pi * (fx * xx + fy * yy) + rng.uniform(0, 2 * np.pi))
        img += wave[..., None] * rng.uniform(8, 28, size=3).astype(np.float32)
    grey = img.mean(-1, keepdims=True)
    img = grey + 0.35 * (img - grey)
    big = np.asarray(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize((w, h), Image.BILINEAR),
                     np.float32)
    big += rng.standard_normal((h, w, 1), dtype=np.float32) * 8
    return Image.fromarray(np.clip(big, 0, 255).astype(np.uint8))


def gen_fine_detail_hard(rng: np.random.Generator, split: str) -> dict[str, Any]:
    """fine_detail on a textured canvas with 2-3 distractors (every object a distinct colour and a distinct
    shape, all of the same small size); the question names the target by one attribute and asks the other.
    Half the images put the distractors next to the target (inside a quarter of the short side), where a
    crop that holds one object often holds another."""
    w, h = int(pick(rng, FINE_SIZES)), int(pick(rng, FINE_SIZES))
    img = textured_background(rng, w, h)
    n = int(rng.integers(3, 5))
    objs = [{"shape": sh, "color": c} for sh, c in zip(pick(rng, SHAPES, n), pick(rng, COLOR_NAMES, n))]
    rel = float(rng.uniform(0.02, 0.08 if split == "train" else 0.035))
    r = rel * min(w, h)
    near = bool(rng.random() < 0.5)
    draw, placed = ImageDraw.Draw(img), []
    for i, obj in enumerate(objs):
        for _ in range(200):                                 # rejection sampling: no two objects closer than 3 r
            if i and near:
                cx, cy = np.array(placed[0]) + rng.uniform(-1, 1, size=2) * min(w, h) / 4
            else:
                cx, cy = rng.uniform([r + 2, r + 2], [w - r - 2, h - r - 2])
            inside = r + 2 <= cx <= w - r - 2 and r + 2 <= cy <= h - r - 2
            if inside and all(math.dist((cx, cy), q) >= 3 * r for q in placed):
                break
        placed.append((float(cx), float(cy)))
        obj["bbox"] = draw_shape(draw, obj["shape"], float(cx), float(cy), r, COLORS[obj["color"]])
    target = objs[0]
    if rng.random() < 0.5:
        q, answer, choices = f"What color is the small {target['shape']}?", target["color"], COLOR_NAMES
    else:
        q, answer, choices = f"What shape is the small {target['color']} object?", target["shape"], SHAPES
    meta = qa_json("fine_detail_hard", "<image>\n" + q, answer, choices,
                   {"shape": target["shape"], "color": target["color"], "bbox": target["bbox"], "objects": objs,
                    "near": near, "relative_size": round(2 * r / min(w, h), 4)},
                   0.6 + 0.4 * min(1.0, (0.08 - rel) / 0.045))
    return _sample(img, meta, (w, h))


def _position(obj: dict[str, Any], size: tuple[int, int]) -> str:
    x, y = obj["center"][0] / size[0], obj["center"][1] / size[1]
    v = "top" if y < 1 / 3 else "bottom" if y > 2 / 3 else ""
    hz = "left" if x < 1 / 3 else "right" if x > 2 / 3 else ""
    return f"in the {v} {hz}".replace("  ", " ").strip() if (v or hz) else "in the center"


def describe(objs: list[dict[str, Any]], size: tuple[int, int]) -> str:
    """Canonical caption: groups of identical objects, e.g. 'Two red circles and a blue square.'"""
    groups: dict[tuple[str, str], int] = {}
    for o in objs:
        groups[(o["color"], o["shape"])] = groups.get((o["color"], o["shape"]), 0) + 1
    parts = [a(f"{c} {s}") if k == 1 else f"{NUMBER_WORDS[k]} {c} {PLURAL[s]}" for (c, s), k in groups.items()]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    if len(objs) == 1:
        text += " " + _position(objs[0], size)
    return text[0].upper() + text[1:] + "."


def gen_caption(rng: np.random.Generator, split: str) -> dict[str, Any]:
    size, n = canvas(rng), int(rng.integers(1, 5))
    objects = [{"shape": pick(rng, SHAPES), "color": pick(rng, COLOR_NAMES)} for _ in range(n)]
    img, objs = render(rng, objects, size)
    img, quality = degrade(rng, img, _noise_p(split))
    prompt = pick(rng, ["Describe the image briefly.", "What is in the picture?", "Write a short caption."])
    meta = caption_json("caption", "<image>\n" + prompt, describe(objs, size), {"objects": objs}, 0.1 * n, quality)
    return _sample(img, meta, size)


def gen_multi_turn(rng: np.random.Generator, split: str) -> dict[str, Any]:
    size, n = canvas(rng), int(rng.integers(2, 5))
    objects = [{"shape": s, "color": c} for s, c in zip(pick(rng, SHAPES, n), pick(rng, COLOR_NAMES, n))]
    img, objs = render(rng, objects, size)
    a, b = (int(i) for i in rng.choice(n, size=2, replace=False))
    candidates = [
        (f"What color is the {objs[a]['shape']}?", objs[a]["color"]),
        (f"What shape is the {objs[b]['color']} object?", objs[b]["shape"]),
        ("How many objects are there?", str(n)),
        (f"Is the {_name(objs[a])} {_relation(objs[a], objs[b])} the {_name(objs[b])}?", "yes"),
    ]
    k = int(rng.integers(2, 4))
    turns = [candidates[int(i)] for i in sorted(rng.choice(len(candidates), size=k, replace=False))]
    turns[0] = ("<image>\n" + turns[0][0], turns[0][1])
    img, quality = degrade(rng, img, _noise_p(split))
    meta = chat_json("multi_turn", turns, {"objects": objs, "answers": [t[1] for t in turns]},
                     0.5 + 0.1 * k + 0.05 * n, quality)
    return _sample(img, meta, size)


def gen_multi_image(rng: np.random.Generator, split: str) -> dict[str, Any]:
    target = pick(rng, SHAPES)
    k1, k2 = (int(v) for v in rng.choice(np.arange(0, 5), size=2, replace=False))
    images, scenes = [], []
    for k in (k1, k2):
        size = canvas(rng)
        others = [s for s in SHAPES if s != target]
        objects = [{"shape": target, "color": pick(rng, COLOR_NAMES)} for _ in range(k)]
        objects += [{"shape": pick(rng, others), "color": pick(rng, COLOR_NAMES)} for _ in range(int(rng.integers(0 if k else 1, 3)))]
        img, objs = render(rng, [objects[int(i)] for i in rng.permutation(len(objects))], size)
        images.append(img)
        scenes.append({"objects": objs, "count": k, "image_size": list(size)})
    answer = "first" if k1 > k2 else "second"
    meta = qa_json("multi_image", f"<image>\n<image>\nWhich image has more {PLURAL[target]}?", answer,
                   ["first", "second"], {"shape": target, "counts": [k1, k2], "images": scenes},
                   0.6 + 0.3 / (abs(k1 - k2)))
    return {"0.jpg": images[0], "1.jpg": images[1], "json": meta}


def gen_class_image(rng: np.random.Generator, by: str) -> tuple[Image.Image, str]:
    """One object on a canvas, for the zero-shot classification sets; `by` is "shape" or "color"."""
    size = canvas(rng)
    obj = {"shape": pick(rng, SHAPES), "color": pick(rng, COLOR_NAMES)}
    img, _ = render(rng, [obj], size)
    return img, obj[by]


GENERATORS = {
    "color": gen_color, "shape": gen_shape, "count": gen_count, "spatial": gen_spatial,
    "digit": gen_digit, "ocr": gen_ocr, "fine_detail": gen_fine_detail, "caption": gen_caption,
    "multi_turn": gen_multi_turn, "multi_image": gen_multi_image, "fine_detail_hard": gen_fine_detail_hard,
}
