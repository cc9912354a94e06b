"""Small local models and shards for tests and perf benches: no network, seconds on a CPU.

    cfg = tiny_open_clip_config(tmp / "tiny-clip.json")          # an open_clip architecture file
    folder = write_wds_classification(tmp / "wds/colors", n_per_class=20)
    ckpt = fit_open_clip(cfg, folder, tmp / "tiny-clip.safetensors")   # predictions spread over classes
    spec = f"open_clip:{cfg}:{ckpt}"

A randomly initialised CLIP predicts one class for everything; `fit_open_clip` trains only the image
projection, on half the images, so the predictions of the saved checkpoint spread over the classes.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch

COLORS = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 70, 220), "yellow": (235, 200, 20),
          "purple": (140, 40, 180), "orange": (250, 130, 20)}
TEMPLATES = ["a photo of something {c}.", "a {c} picture.", "the color {c}.", "a drawing in {c}."]


def tiny_open_clip_config(path: str | Path, image_size: int = 32, width: int = 64, layers: int = 2,
                          embed_dim: int = 32) -> Path:
    """An open_clip model config file (a CLIP with a tiny ViT and a tiny causal text tower)."""
    cfg = {"embed_dim": embed_dim,
           "vision_cfg": {"image_size": image_size, "layers": layers, "width": width, "patch_size": 8, "head_width": 32},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": width, "heads": 2, "layers": layers}}
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(cfg, indent=2))
    return p


def color_image(rng: np.random.Generator, rgb: tuple[int, int, int], size: int = 48):
    """A coloured blob on a noisy light background."""
    from PIL import Image
    arr = rng.integers(200, 256, size=(size, size, 3)).astype(np.float32)
    x0, y0 = rng.integers(0, size // 2, size=2)
    s = int(rng.integers(size // 3, size // 2))
    arr[y0:y0 + s, x0:x0 + s] = np.array(rgb) + rng.normal(0, 12, size=(s, s, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def class_color(name: str, index: int) -> tuple[int, int, int]:
    """The colour of a class: its own for colour names, else one fixed by the class index."""
    if name in COLORS:
        return COLORS[name]
    r, g, b = (int(v) for v in np.random.default_rng(1000 + index).integers(0, 256, size=3))
    return r, g, b


def write_wds_classification(folder: str | Path, n_per_class: int = 20, shards: int = 2, seed: int = 0,
                             classes: list[str] | None = None, split: str = "test", with_cls: bool = True,
                             image_size: int = 48) -> Path:
    """A clip_benchmark `wds` folder: classnames.txt, templates, split/nshards.txt, split/{0..}.tar (cls + jpg)."""
    import webdataset as wds
    classes = classes or list(COLORS)
    folder = Path(folder)
    (folder / split).mkdir(parents=True, exist_ok=True)
    (folder / "classnames.txt").write_text("\n".join(classes) + "\n")
    (folder / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    rng = np.random.default_rng(seed)
    labels = [c for c in range(len(classes)) for _ in range(n_per_class)]
    labels = [labels[i] for i in rng.permutation(len(labels))]
    per = -(-len(labels) // shards)
    for s in range(shards):
        with wds.TarWriter(str(folder / split / f"{s}.tar")) as w:
            for i, c in enumerate(labels[s * per:(s + 1) * per]):
                buf = io.BytesIO()
                color_image(rng, class_color(classes[c], c), image_size).save(buf, format="JPEG", quality=90)
                sample = {"__key__": f"s{s}-{i:05d}", "jpg": buf.getvalue()}
                if with_cls:
                    sample["cls"] = str(c).encode()
                w.write(sample)
    (folder / split / "nshards.txt").write_text(f"{shards}\n")
    return folder


def fit_open_clip(config: str | Path, folder: str | Path, out: str | Path, steps: int = 150, seed: int = 0) -> Path:
    """Train only the image projection of a random tiny CLIP on half of a wds folder's images (cross-entropy
    against the zero-shot class weights) and save the whole model as safetensors."""
    import open_clip
    from safetensors.torch import save_file

    from benchmarks.data import iter_samples, read_wds_meta, shard_files
    from benchmarks.tasks.zeroshot import class_weights
    open_clip.add_model_config(Path(config))
    torch.manual_seed(seed)
    model, _, pre = open_clip.create_model_and_transforms(Path(config).stem)
    tok = open_clip.get_tokenizer(Path(config).stem)
    meta = read_wds_meta(folder)
    samples = list(iter_samples(shard_files(folder, "test")))[::2]
    x = torch.stack([pre(s.decode("image", s.fields["jpg"])) for s in samples])
    y = torch.tensor([int(s.fields["cls"]) for s in samples])

    class _Text:                                     # class_weights wants encode_texts
        def encode_texts(self, texts):
            with torch.no_grad():
                return torch.nn.functional.normalize(model.encode_text(tok(texts)), dim=-1)

    w = class_weights(_Text(), meta.classnames, meta.templates)                         # [C, D]
    for p in model.parameters():
        p.requires_grad_(False)
    model.visual.proj.requires_grad_(True)
    opt = torch.optim.Adam([model.visual.proj], lr=3e-2)
    for _ in range(steps):
        f = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
        loss = torch.nn.functional.cross_entropy(100.0 * f @ w.T, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = Path(out)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    return out
