"""Truncation that never splits media, and packing several samples into fixed-length rows.

    rows = [[a, b], [c]]                             # Processed samples, greedy-filled by the pipeline
    batch = pack_rows(rows, max_len=2048, pad_id=0)  # input_ids/labels/position_ids [R, max_len]

A packed row is separate sequences to the model: `position_ids` restart at 0 per sample (and for the
padding tail), and `attention_mask` is None. Transformers with `masking_utils.
find_packed_sequence_indices` (the installed 5.x has it) then builds the block-diagonal causal mask
itself from the position restarts whenever position_ids come without attention_mask and without a
cache (sdpa / eager / flex; flash-attention goes varlen from the same position_ids). Where that
function is missing, `pack_rows` passes an explicit 4D boolean block-causal mask [R, 1, L, L]
instead (`PACKING_FROM_POSITIONS`); both give the padded batch's per-sample loss (tests).

[Contract] no loss crosses samples: the template starts every sample with `<|im_start|>` whose label
is -100, so the last token of one sample never learns to predict the first of the next.
"""
from __future__ import annotations

import torch

from vlm.data.template import IGNORE
from vlm.data.processor import Processed


def _transformers_detects_packing() -> bool:
    try:
        from transformers.masking_utils import find_packed_sequence_indices  # noqa: F401
    except ImportError:
        return False
    return True


PACKING_FROM_POSITIONS = _transformers_detects_packing()


def truncate(sample: Processed, max_len: int, placeholder_ids: set[int] | frozenset[int]) -> Processed | None:
    """Cut a sample to max_len tokens, or None if the cut would fall in or before a media placeholder run.

    [Contract] a kept sample has all its placeholder tokens, so placeholders == encoder features.
    """
    n = len(sample.input_ids)
    if n <= max_len:
        return sample
    last_media = max((i for i, t in enumerate(sample.input_ids) if t in placeholder_ids), default=-1)
    if last_media >= max_len:
        return None
    return Processed(sample.input_ids[:max_len], sample.labels[:max_len], sample.media)


def row_fits(row: list[Processed], sample: Processed, max_len: int, max_media: int | None) -> bool:
    """Greedy budget of one row: tokens and (optionally) media items."""
    if not row:
        return True
    if sum(len(s) for s in row) + len(sample) > max_len:
        return False
    if max_media is not None:
        n = sum(len(v) for s in (*row, sample) for v in s.media.values())
        return n <= max_media
    return True


def sequence_index(position_ids: torch.Tensor) -> torch.Tensor:
    """[..., L] -> [..., L]: which packed sequence of its row each position belongs to (1, 2, ...): a new one
    starts wherever the positions stop counting up by 1, as transformers reads packed rows."""
    start = torch.ones_like(position_ids, dtype=torch.bool)
    start[..., 1:] = position_ids[..., 1:] != position_ids[..., :-1] + 1
    return start.long().cumsum(-1)


def block_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """Boolean [B, 1, L, L] mask: causal within each run of positions that count up by 1, blind across runs."""
    seg = sequence_index(position_ids)                                        # [B, L] segment index
    L = position_ids.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=position_ids.device).tril()  # [L, L]
    return ((seg[:, :, None] == seg[:, None, :]) & causal)[:, None]           # [B, 1, L, L]


def pack_rows(rows: list[list[Processed]], max_len: int, pad_id: int, keys: list[str] | None = None) -> dict:
    """Rows of samples -> one packed batch of fixed length max_len.

    Returns input_ids, labels, position_ids, segment_ids ([R, L]; sample index in the batch, -1 on
    padding), attention_mask (None, or the 4D mask when transformers cannot infer it), media (per
    modality in row-major placeholder order), seq_lens (per row), sample_keys (if given).
    """
    R = len(rows)
    ids = torch.full((R, max_len), pad_id, dtype=torch.long)
    labels = torch.full((R, max_len), IGNORE, dtype=torch.long)
    pos = torch.zeros((R, max_len), dtype=torch.long)
    seg = torch.full((R, max_len), -1, dtype=torch.long)
    media: dict[str, list[torch.Tensor]] = {}
    seq_lens: list[list[int]] = []
    j = 0
    for r, row in enumerate(rows):
        at = 0
        seq_lens.append([])
        for s in row:
            n = len(s)
            assert at + n <= max_len, f"row {r}: {at + n} tokens > max_len {max_len}"
            ids[r, at:at + n] = torch.tensor(s.input_ids)
            labels[r, at:at + n] = torch.tensor(s.labels)
            pos[r, at:at + n] = torch.arange(n)
            seg[r, at:at + n] = j
            for m, items in s.media.items():
                media.setdefault(m, []).extend(items)
            seq_lens[-1].append(n)
            at += n
            j += 1
        pos[r, at:] = torch.arange(max_len - at)  # the padding tail is a sequence of its own
    batch = {"input_ids": ids, "labels": labels, "position_ids": pos, "segment_ids": seg,
             "attention_mask": None if PACKING_FROM_POSITIONS else block_causal_mask(pos),
             "media": media, "seq_lens": seq_lens}
    if keys is not None:
        batch["sample_keys"] = keys
    return batch
