"""synthetic-world MMEB-style pair tasks (VLM2Vec): the four meta-tasks, each a query (instruction +
input) and its positive target, with one hard negative, as the `pairs` batch format reads them.

    vlm data build synthetic-world --out data/sw-mmeb --tasks mmeb --samples 8000 --eval-per-task 200

| meta-task | dataset (task) | query | target | in train |
|---|---|---|---|---|
| classification | cls-shape (`mmeb_cls_shape`) | one object | its shape name | yes |
| classification | cls-color (`mmeb_cls_color`) | one object | its colour name | yes |
| classification | cls-object (`mmeb_cls_object`) | one object | "colour shape" (24 classes) | no (OOD) |
| vqa | vqa-color / vqa-shape / vqa-count | scene + question | the answer | yes |
| vqa | vqa-paraphrase (`mmeb_vqa_paraphrase`) | scene + reworded question | the answer | no (OOD) |
| retrieval | ret-t2i / ret-i2t | caption / scene | scene / caption | yes |
| retrieval | ret-i2i (`mmeb_ret_i2i`) | scene | the same objects drawn again | no (OOD) |
| grounding | ground-name (`mmeb_ground_name`) | scene + object name | the object's crop | yes |
| grounding | ground-position (`mmeb_ground_position`) | scene + position | the object's crop | no (OOD) |

Task instructions go on the query side only (`query.instruction`); an image target carries MMEB's
generic prompt ('Represent the given image.', stored as the target's `instruction` so that CLIP-style
models, which ignore instructions, embed the image alone; our models read '<image>\\nRepresent the given
image.', MMEB's target string). Hard negatives: another label, the answer about
another object of the scene, the scene with one object recoloured, the crop of another object. Val and
test samples also carry `choices` (the label set) for classification and VQA; the benchmark builds the
other candidate lists from the split's targets (`benchmarks/tasks/mmeb.py`). Train images are degraded
(noise / blur) now and then; val and test are clean, as in the rest of synthetic-world.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from vlm.data.synthetic.common import COLOR_NAMES, PLURAL, SHAPES, SOURCE, pick
from vlm.data.synthetic.images import (
    COUNT_CHOICES,
    canvas,
    degrade,
    describe,
    render,
    unique_objects,
)

INSTRUCTIONS = {
    "cls_shape": "Represent the given image for shape classification.",
    "cls_color": "Represent the given image for color classification.",
    "cls_object": "Represent the given image for object classification.",
    "vqa": "Represent the given image with the following question:",
    "ret_t2i": "Find me an everyday image that matches the given caption:",
    "ret_i2t": "Find an image caption describing the given image.",
    "ret_i2i": "Find a day-to-day image that looks similar to the provided image.",
    "ground": "Select the portion of the image that isolates the object labeled as:",
}
IMAGE_TARGET = {"text": "<image>", "instruction": "Represent the given image."}
CROP_TARGET = {"text": "<image>", "instruction": "Represent the given cropped image of the object."}
OBJECT_CLASSES = [f"{c} {s}" for c in COLOR_NAMES for s in SHAPES]
POSITIONS = {(0, 0): "top left", (1, 0): "top right", (0, 1): "bottom left", (1, 1): "bottom right"}


def _noise_p(split: str) -> float:
    return 0.15 if split == "train" else 0.0


def _side(x: str | dict) -> dict:
    return {"text": x} if isinstance(x, str) else dict(x)


def _meta(task: str, meta_task: str, dataset: str, ood: bool, query: dict, positive: str | dict,
          negative: str | dict | list, labels: dict, difficulty: float, quality: float = 1.0,
          choices: list[str] | None = None, answer: str | None = None) -> dict[str, Any]:
    negatives = negative if isinstance(negative, list) else [negative]
    meta = {"query": query, "positive": _side(positive), "negatives": [_side(t) for t in negatives], "task": task,
            "meta_task": meta_task, "dataset": dataset, "ood": ood, "source": SOURCE, "labels": labels,
            "difficulty": round(float(np.clip(difficulty, 0.0, 1.0)), 3), "quality": round(float(quality), 3)}
    if choices is not None:
        meta.update(choices=list(choices), answer=answer)
    return meta


def _other(rng: np.random.Generator, items: list[str], not_this: str) -> str:
    return pick(rng, [x for x in items if x != not_this])


def crop(img: Image.Image, bbox: list[int], margin: float = 0.15) -> Image.Image:
    """The object's box with a margin, clipped to the image (`benchmarks/tasks/mmeb.py` crops the same way)."""
    x0, y0, x1, y1 = bbox
    mx, my = (x1 - x0) * margin, (y1 - y0) * margin
    return img.crop((max(0, int(x0 - mx)), max(0, int(y0 - my)), min(img.width, int(x1 + mx)),
                     min(img.height, int(y1 + my))))


# ---------------------------------------------------------------------------------------------- classification
def _single(rng: np.random.Generator, split: str) -> tuple[Image.Image, dict[str, Any], float, int]:
    size = canvas(rng)
    clutter = int(rng.integers(0, 6)) if rng.random() < 0.3 else 0
    img, objs = render(rng, [{"shape": pick(rng, SHAPES), "color": pick(rng, COLOR_NAMES)}], size, clutter)
    img, quality = degrade(rng, img, _noise_p(split))
    return img, objs[0], quality, clutter


def _classification(by: str, task: str, dataset: str, ood: bool):
    classes = {"shape": SHAPES, "color": COLOR_NAMES, "object": OBJECT_CLASSES}[by]

    def gen(rng: np.random.Generator, split: str) -> dict[str, Any]:
        img, obj, quality, clutter = _single(rng, split)
        label = f"{obj['color']} {obj['shape']}" if by == "object" else obj[by]
        meta = _meta(task, "classification", dataset, ood, {"text": "<image>", "instruction": INSTRUCTIONS[f"cls_{by}"]},
                     label, _other(rng, classes, label), {"objects": [obj]}, 0.1 + 0.03 * clutter, quality,
                     choices=classes, answer=label)
        return {"jpg": img, "json": meta}
    return gen


# ---------------------------------------------------------------------------------------------- VQA
def _vqa(kind: str, task: str, dataset: str, ood: bool):
    """kind: color / shape / count (trained), paraphrase (the colour and shape questions reworded)."""

    def gen(rng: np.random.Generator, split: str) -> dict[str, Any]:
        size = canvas(rng)
        if kind == "count":
            target = pick(rng, SHAPES)
            k = int(rng.integers(1, 5))
            others = [s for s in SHAPES if s != target]
            objects = [{"shape": target, "color": pick(rng, COLOR_NAMES)} for _ in range(k)]
            objects += [{"shape": pick(rng, others), "color": pick(rng, COLOR_NAMES)} for _ in range(int(rng.integers(0, 5 - k)))]
            img, objs = render(rng, [objects[int(i)] for i in rng.permutation(len(objects))], size)
            question, answer, choices = f"How many {PLURAL[target]} are there?", str(k), COUNT_CHOICES
            negative = str(k + 1 if k < 4 else k - 1)
            labels: dict[str, Any] = {"objects": objs, "shape": target, "count": k}
        else:
            n = int(rng.integers(1, 5))
            ask = ("color" if rng.random() < 0.5 else "shape") if kind == "paraphrase" else kind
            by = "shape" if ask == "color" else "color"                        # the objects differ in this
            img, objs = render(rng, unique_objects(rng, n, by), size)
            t = int(rng.integers(n))
            answer = objs[t][ask]
            choices = COLOR_NAMES if ask == "color" else SHAPES
            if kind == "paraphrase":
                question = (f"Which color does the {objs[t]['shape']} have?" if ask == "color"
                            else f"Which shape is drawn in {objs[t]['color']}?")
            else:
                question = (f"What color is the {objs[t]['shape']}?" if ask == "color"
                            else f"What shape is the {objs[t]['color']} object?")
            others = [o[ask] for o in objs if o[ask] != answer]                   # about another object: hard
            negative = pick(rng, others) if others else _other(rng, choices, answer)
            labels = {"objects": objs, "target": t, "asked": ask}
        img, quality = degrade(rng, img, _noise_p(split))
        meta = _meta(task, "vqa", dataset, ood, {"text": f"<image>\n{question}", "instruction": INSTRUCTIONS["vqa"]},
                     answer, negative, labels, 0.1 + 0.1 * len(labels["objects"]), quality, choices=choices,
                     answer=answer)
        return {"jpg": img, "json": meta}
    return gen


# ---------------------------------------------------------------------------------------------- retrieval
def _scene(rng: np.random.Generator, split: str, n: int | None = None):
    size = canvas(rng)
    n = n or int(rng.integers(1, 4))
    objects = [{"shape": pick(rng, SHAPES), "color": pick(rng, COLOR_NAMES)} for _ in range(n)]
    img, objs = render(rng, objects, size)
    return img, objs, size


def _recoloured(rng: np.random.Generator, objs: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The same objects with one of them in another colour (a hard negative scene)."""
    i = int(rng.integers(len(objs)))
    out = [{"shape": o["shape"], "color": o["color"]} for o in objs]
    out[i]["color"] = _other(rng, COLOR_NAMES, out[i]["color"])
    return out


def _retrieval(direction: str, task: str, dataset: str, ood: bool):
    """t2i: caption -> image; i2t: image -> caption; i2i: image -> the same objects drawn again."""

    def gen(rng: np.random.Generator, split: str) -> dict[str, Any]:
        img, objs, size = _scene(rng, split)
        caption = describe(objs, size)
        neg_img, neg_objs = render(rng, _recoloured(rng, objs), size)
        img, quality = degrade(rng, img, _noise_p(split))
        # what each image target shows (the benchmark never counts a look-alike of the gold as a distractor)
        labels = {"objects": objs, "description": caption, "target_labels": [caption, describe(neg_objs, size)]}
        if direction == "t2i":
            meta = _meta(task, "retrieval", dataset, ood, {"text": caption, "instruction": INSTRUCTIONS["ret_t2i"]},
                         IMAGE_TARGET, IMAGE_TARGET, labels, 0.1 * len(objs), quality)
            return {"0.jpg": img, "1.jpg": neg_img, "json": meta}
        if direction == "i2t":
            meta = _meta(task, "retrieval", dataset, ood, {"text": "<image>", "instruction": INSTRUCTIONS["ret_i2t"]},
                         caption, describe(neg_objs, size), labels, 0.1 * len(objs), quality)
            return {"jpg": img, "json": meta}
        again_size = canvas(rng)                                                # the same objects, redrawn
        again, _ = render(rng, [{"shape": o["shape"], "color": o["color"]} for o in objs], again_size)
        meta = _meta(task, "retrieval", dataset, ood, {"text": "<image>", "instruction": INSTRUCTIONS["ret_i2i"]},
                     IMAGE_TARGET, IMAGE_TARGET, labels, 0.1 * len(objs), quality)
        return {"0.jpg": img, "1.jpg": again, "2.jpg": neg_img, "json": meta}
    return gen


# ---------------------------------------------------------------------------------------------- grounding
def _grounding(by: str, task: str, dataset: str, ood: bool):
    """name: 'red square' -> its crop; position: 'top left' -> the crop of the object there (2x2 grid).
    Negatives: the crops of every other object of the scene (the first is the training's hard negative)."""

    def gen(rng: np.random.Generator, split: str) -> dict[str, Any]:
        size = canvas(rng)
        n = int(rng.integers(2, 5))
        img, objs = render(rng, unique_objects(rng, n), size, grid=2)
        img, quality = degrade(rng, img, _noise_p(split))
        t = int(rng.integers(n))
        order = [t] + [int(i) for i in rng.permutation([i for i in range(n) if i != t])]
        label = f"{objs[t]['color']} {objs[t]['shape']}" if by == "name" else POSITIONS[tuple(objs[t]["cell"])]
        meta = _meta(task, "grounding", dataset, ood,
                     {"text": f"<image>\n{label}", "instruction": INSTRUCTIONS["ground"]}, CROP_TARGET,
                     [CROP_TARGET] * (n - 1),
                     {"objects": objs, "target": t, "label": label,
                      "target_labels": [f"{objs[i]['color']} {objs[i]['shape']}" for i in order]}, 0.2 + 0.1 * n, quality)
        crops = {f"{k + 1}.jpg": crop(img, objs[i]["bbox"]) for k, i in enumerate(order)}
        return {"0.jpg": img, **crops, "json": meta}
    return gen


def _task(factory, variant: str, meta: str, dataset: str, ood: bool) -> tuple:
    """(task, meta-task, dataset, ood, generator); the task is named after its dataset (mmeb_cls_shape)."""
    task = "mmeb_" + dataset.replace("-", "_")
    return task, meta, dataset, ood, factory(variant, task, dataset, ood)


# (task, meta-task, dataset, ood, generator)
TASKS = [
    _task(_classification, "shape", "classification", "cls-shape", False),
    _task(_classification, "color", "classification", "cls-color", False),
    _task(_classification, "object", "classification", "cls-object", True),
    _task(_vqa, "color", "vqa", "vqa-color", False),
    _task(_vqa, "shape", "vqa", "vqa-shape", False),
    _task(_vqa, "count", "vqa", "vqa-count", False),
    _task(_vqa, "paraphrase", "vqa", "vqa-paraphrase", True),
    _task(_retrieval, "t2i", "retrieval", "ret-t2i", False),
    _task(_retrieval, "i2t", "retrieval", "ret-i2t", False),
    _task(_retrieval, "i2i", "retrieval", "ret-i2i", True),
    _task(_grounding, "name", "grounding", "ground-name", False),
    _task(_grounding, "position", "grounding", "ground-position", True),
]
GENERATORS = {name: gen for name, *_, gen in TASKS}
OOD = {name for name, _, _, ood, _ in TASKS if ood}
# The training mixture: in-distribution datasets only, equal shares (OOD ones are val / test only).
TRAIN_WEIGHTS = {name: 1 for name in GENERATORS if name not in OOD}
