"""GradCache's memory: the activations one contrastive step keeps for backward, one pass against chunks.

    python benchmarks/studies/gradcache_memory.py [--pairs 1024] [--chunk 32]

Runs one step of the `contrastive` objective (vlm2vec-tiny's model, synthetic image -> caption pairs with
one hard negative) three ways: the whole batch in one pass, the whole batch with GradCache in chunks of
`--chunk` prompts, and a batch of `--chunk` pairs in one pass. It counts the bytes of the tensors autograd
saves for backward (`torch.autograd.graph.saved_tensors_hooks`; the parameters themselves not counted),
live at once: their peak is the activation memory of the step. On a GPU, `torch.cuda.max_memory_allocated`
shows the same ordering; this counts it on any device. Also checks that the two big-batch losses agree.
"""
from __future__ import annotations

import argparse
import time
import weakref

import torch


class SavedBytes:
    """Live bytes of saved activations (pack adds, the graph's release subtracts) and their peak."""

    def __init__(self, params):
        self.ptrs = {p.data_ptr() for p in params}
        self.live = self.peak = 0

    def pack(self, t: torch.Tensor) -> Box:
        box = Box(t)
        if t.data_ptr() not in self.ptrs:
            n = t.numel() * t.element_size()
            self.live += n
            self.peak = max(self.peak, self.live)
            weakref.finalize(box, self._free, n)
        return box

    def _free(self, n: int) -> None:
        self.live -= n

    @staticmethod
    def unpack(box: Box) -> torch.Tensor:
        return box.tensor


class Box:
    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


def pair_batch(model, n: int) -> dict:
    """n image -> caption pairs with one hard negative each, through the pairs batch format."""
    from PIL import Image, ImageDraw

    from vlm.data.formats import FORMATS
    from vlm.data.writer import encode_sample
    colors, shapes = ["red", "green", "blue", "yellow"], ["circle", "square"]
    fmt = FORMATS.get("pairs")(model.processor, max_len=128, negatives=1)
    items = []
    for i in range(n):
        c, s = colors[i % 4], shapes[(i // 4) % 2]
        img = Image.new("RGB", (32, 32), "white")
        (ImageDraw.Draw(img).ellipse if s == "circle" else ImageDraw.Draw(img).rectangle)((8, 8, 24, 24), fill=c)
        enc = encode_sample({"__key__": f"p{i}", "jpg": img, "json": {
            "query": {"text": "<image>", "instruction": "Find an image caption describing the given image."},
            "positive": {"text": f"a {c} {s} number {i % 97}"}, "negatives": [{"text": f"a {colors[(i + 1) % 4]} {s}"}]}})
        items.append(fmt.make(f"p{i}", {k: v for k, v in enc.items() if not k.startswith("__")}, "memory")[0])
    return fmt.collate(items, model.processor.pad_id)


def step(model, batch, chunk: int) -> tuple[float, int, float]:
    from vlm.train.objectives import build_objective
    model.zero_grad(set_to_none=True)
    counter = SavedBytes(model.parameters())
    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        out = build_objective("contrastive", {"negatives": 1, "chunk_size": chunk})(model, batch)
        out.loss.backward()
    return out.loss.item() / out.count, counter.peak, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    from vlm.train.recipe import ModelSpec, apply_stage, build_model, load_recipe
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=32)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model = build_model(ModelSpec("vlm2vec", "tiny"), seed=0)
    apply_stage(model, load_recipe("vlm2vec-tiny", check_files=False).stages[0])     # the recipe's trainable set
    model.train()
    big, small = pair_batch(model, args.pairs), pair_batch(model, args.chunk)
    rows = [(f"{args.pairs} pairs, one pass", *step(model, big, 0)),
            (f"{args.pairs} pairs, GradCache chunks of {args.chunk} prompts", *step(model, big, args.chunk)),
            (f"{args.chunk} pairs, one pass", *step(model, small, 0))]
    print("| step | loss (mean) | saved activations, peak | seconds |\n|---|---|---|---|")
    for name, loss, peak, sec in rows:
        print(f"| {name} | {loss:.5f} | {peak / 2**20:.1f} MiB | {sec:.1f} |")
    print(f"\nGradCache / one pass: {rows[1][2] / rows[0][2]:.3f}x the activation memory; "
          f"loss difference {abs(rows[0][1] - rows[1][1]):.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
