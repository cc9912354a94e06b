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


def slice_rows(batch: dict, start: int, stop: int, placeholder_ids: dict[str, int],
               num_media_tokens) -> dict:
    """Rows [start, stop) of a right-padded batch (`collate`), with exactly the media items those rows'
    placeholders take and the columns that are padding in every kept row cut off the right end.
    `placeholder_ids`: modality -> token id; `num_media_tokens(modality, item)`: tokens an item fills.
    The kept rows' tokens, positions and attention are unchanged (right padding, causal attention)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    width = int(mask[start:stop].sum(1).max()) if stop > start else 0
    out = {"input_ids": ids[start:stop, :width], "attention_mask": mask[start:stop, :width]}
    if batch.get("labels") is not None:
        out["labels"] = batch["labels"][start:stop, :width]
    media: dict[str, list[torch.Tensor]] = {}
    for m, items in (batch.get("media") or {}).items():
        per_row = (ids == placeholder_ids[m]).sum(1).tolist()           # placeholder tokens per row
        first = sum(per_row[:start])                                    # tokens of the rows before
        want = sum(per_row[start:stop])
        pos, kept = 0, []
        for item in items:                                              # items fill rows in row-major order
            if first <= pos < first + want:
                kept.append(item)
            pos += num_media_tokens(m, item)
        if kept:
            media[m] = kept
    out["media"] = media
    return out
