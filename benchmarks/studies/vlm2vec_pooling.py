"""Where a tiny VLM2Vec embedder loses the image: image -> image retrieval from three poolings of one forward.

    python benchmarks/studies/vlm2vec_pooling.py --model runs/vlm2vec-tiny/final [--model ...] \
        --mmeb data/sw-mmeb --split val [--dataset ret-i2i] [--same-instruction]

For each image-only pair of the dataset (query scene -> the same objects drawn again), each side goes through
the model once, as `vlm embed` embeds it (its instruction, the chat template), and three vectors are read:
  last token     the embedding itself: the final layer's hidden state at the last prompt token (VLM2Vec)
  image tokens   the mean of the image's tokens as the LLM receives them (encoder + projector output)
  final layer    the mean of the final layer's hidden states at the image's token positions
P@1 of each against all the dataset's positives of the split (gold among them; chance 1 / N). The pooled
vectors are diagnostics only: the embedding the suite trains and serves is the last token.
--same-instruction gives the query side the target side's instruction (ret-i2i's query reads an instruction no
training pair has, its target "Represent the given image."): whether the last token carries the image at all, or
the unseen instruction moves it.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F

POOLINGS = ("last token", "image tokens", "final layer")


def pair_queries(mmeb: Path, split: str, dataset: str) -> tuple[list, list]:
    from benchmarks.data import Sample
    from benchmarks.tasks.mmeb import pair_items
    from vlm.data.reader import expand_shards, read_fields, scan_shard
    queries, positives = [], []
    for shard in expand_shards(str(mmeb / split)):
        for r in scan_shard(shard):
            if r.error:
                continue
            q, targets, meta = pair_items(Sample(r.key, r.shard, read_fields(r)))
            if meta.get("dataset") == dataset:
                queries.append(q.query)
                positives.append(targets[0].query)
    return queries, positives


@torch.inference_mode()
def pooled(spec: str, items: list, batch_size: int = 32) -> dict[str, torch.Tensor]:
    from vlm.embed.backends import load_backend
    backend = load_backend(spec)
    model, prepare = backend.model, backend.preparer()
    if "image" not in model.media:
        raise SystemExit(f"{spec}: the model has no image encoder")
    seen: list = []
    hook = model.media["image"].register_forward_hook(lambda mod, args, out: seen.append(out))
    out = {k: [] for k in POOLINGS}
    try:
        for i in range(0, len(items), batch_size):
            batch = prepare(items[i:i + batch_size])
            ids, mask = batch["input_ids"], batch["attention_mask"]
            seen.clear()
            hidden = model(ids, attention_mask=mask, media=batch["media"])                      # [B, L, D]
            last = mask.shape[1] - 1 - mask.flip(1).long().argmax(1)
            out["last token"].append(hidden[torch.arange(len(ids)), last])
            out["image tokens"].append(torch.stack([f.mean(0) for f in seen[0]]))            # one image per row
            img = (ids == model.placeholder_id["image"]).to(hidden.dtype)[..., None]
            out["final layer"].append((hidden * img).sum(1) / img.sum(1))
    finally:
        hook.remove()
    return {k: F.normalize(torch.cat(v).float(), dim=-1) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, help="a checkpoint folder (repeatable)")
    ap.add_argument("--mmeb", type=Path, default=Path("data/sw-mmeb"))
    ap.add_argument("--split", default="val")
    ap.add_argument("--dataset", default="ret-i2i", help="an image-only pair dataset of the split")
    ap.add_argument("--same-instruction", action="store_true", help="queries read their target's instruction")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    queries, positives = pair_queries(args.mmeb, args.split, args.dataset)
    if not queries or any(q.image is None or p.image is None for q, p in zip(queries, positives)):
        raise SystemExit(f"{args.mmeb / args.split}: no image-only pairs of dataset {args.dataset!r}")
    if args.same_instruction:
        queries = [dataclasses.replace(q, instruction=p.instruction) for q, p in zip(queries, positives)]
    n = len(queries)
    given = ", ".join(repr(i) for i in dict.fromkeys(p.instruction for p in positives))    # a dataset's: usually one
    said = f"; queries with the targets' instruction {given}" if args.same_instruction else ""
    print(f"{args.dataset} ({args.split}): {n} image -> image pairs, P@1 against all {n} positives (chance {1 / n:.3f})"
          f"{said}\n")
    print("| model | " + " | ".join(POOLINGS) + " |")
    print("|---|" + "---|" * len(POOLINGS))
    gold = torch.arange(n)
    for spec in args.model:
        q, p = pooled(spec, queries), pooled(spec, positives)
        p1 = [((q[k] @ p[k].T).argmax(1) == gold).float().mean().item() for k in POOLINGS]
        print(f"| {spec} | " + " | ".join(f"{x:.3f}" for x in p1) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
