"""Batching processed samples: padding (right for training, left for generation).

Batch contract (what `MultimodalLM.forward` takes): `input_ids` [B, L], `labels` [B, L] (-100 off
the assistant turns and on padding), `attention_mask` [B, L], and `media`: per modality the
preprocessed items in the order their placeholders appear in the row-major flattened batch.
"""
from __future__ import annotations

import torch

from vlm.data.template import IGNORE


def collate(samples, pad_id: int, left_pad: bool = False) -> dict:
    L = max(len(s.input_ids) for s in samples)
    B = len(samples)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    labels = torch.full((B, L), IGNORE, dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    media: dict[str, list[torch.Tensor]] = {}
    for i, s in enumerate(samples):
        n = len(s.input_ids)
        sl = slice(L - n, L) if left_pad else slice(0, n)
        ids[i, sl] = torch.tensor(s.input_ids)
        labels[i, sl] = torch.tensor(s.labels)
        mask[i, sl] = 1
        for m, items in s.media.items():
            media.setdefault(m, []).extend(items)
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "media": media}
