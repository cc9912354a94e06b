"""Batching processed samples: padding (right for training, left for generation).

Batch contract (what `MultimodalLM.forward` takes): `input_ids` [B, L], `labels` [B, L] (-100 off
the assistant turns and on padding), `attention_mask` [B, L], and `media`: per modality the
preprocessed items in the order their placeholders appear in the row-major flattened batch.
"""
from __future__ import annotations

import math
import sys

import torch

from vlm.data.template import IGNORE


def collate(samples, pad_id: int, left_pad: bool = False) -> dict:
    L = max(len(s.input_ids) for s in samples)
    rows_ids, rows_labels, rows_mask = [], [], []
    media: dict[str, list[torch.Tensor]] = {}
    for s in samples:                       # padded Python rows, one tensor each at the end (not 3 per row)
        n = len(s.input_ids)
        ids, labels, mask = list(s.input_ids), list(s.labels), [1] * n
        pad_ids, pad_labels, pad_mask = [pad_id] * (L - n), [IGNORE] * (L - n), [0] * (L - n)
        if left_pad:
            ids, labels, mask = pad_ids + ids, pad_labels + labels, pad_mask + mask
        else:
            ids, labels, mask = ids + pad_ids, labels + pad_labels, mask + pad_mask
        rows_ids.append(ids)
        rows_labels.append(labels)
        rows_mask.append(mask)
        for m, items in s.media.items():
            media.setdefault(m, []).extend(items)
    return {"input_ids": torch.tensor(rows_ids, dtype=torch.long),
            "labels": torch.tensor(rows_labels, dtype=torch.long),
            "attention_mask": torch.tensor(rows_mask, dtype=torch.long), "media": media}


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


# ------------------------------------------------------------------------------------------------ between processes
# A DataLoader worker hands every tensor of a batch to the main process through a shared-memory segment
# of its own: a file descriptor fetched from the worker over a socket (its sharer thread must win the
# worker's GIL first), then mapped: ~0.1-5 ms per tensor, whatever its size. A batch of 64 images plus
# ids / labels / mask is 67 of them. `pack_batch` makes each modality's items one flat array and sends
# arrays up to INLINE_BYTES by value in the pickle (a pipe write); only larger ones go through shared
# memory, one segment each. `unpack_batch` gives the same tensors back (the items as views of the flat one).
# A worker whose parent was killed flushes its queue into a pipe nobody reads (64 KiB) before it exits,
# so it would hang: on Linux workers die with their parent (`die_with_parent`); elsewhere only small
# arrays go by value.
INLINE_BYTES = (4 << 20) if sys.platform.startswith("linux") else (16 << 10)


class Inline:
    """A tensor sent by value (its numpy array in the pickle)."""

    __slots__ = ("array",)

    def __init__(self, t: torch.Tensor):
        self.array = t.numpy()

    def tensor(self) -> torch.Tensor:
        return torch.from_numpy(self.array)


NUMPY_DTYPES = frozenset({torch.float64, torch.float32, torch.float16, torch.int64, torch.int32, torch.int16,
                          torch.int8, torch.uint8, torch.bool})


def _send(t: torch.Tensor):
    inline = (t.device.type == "cpu" and t.nbytes <= INLINE_BYTES and t.dtype in NUMPY_DTYPES and not t.requires_grad)
    return Inline(t) if inline else t


def _receive(x):
    return x.tensor() if isinstance(x, Inline) else x


class PackedMedia:
    """One modality's media items (one dtype) as one flat tensor and their shapes."""

    __slots__ = ("flat", "shapes")

    def __init__(self, items: list[torch.Tensor]):
        self.shapes = [tuple(t.shape) for t in items]
        self.flat = _send(torch.cat([t.reshape(-1) for t in items]))

    def unpack(self) -> list[torch.Tensor]:
        flat = _receive(self.flat)
        return [x.view(s) for x, s in zip(flat.split([math.prod(s) for s in self.shapes]), self.shapes)]


def _packable(items) -> bool:
    return (isinstance(items, list) and bool(items) and all(isinstance(t, torch.Tensor) for t in items)
            and len({t.dtype for t in items}) == 1 and all(t.device.type == "cpu" for t in items))


def pack_batch(batch: dict) -> dict:
    """A batch (dict) ready to leave a worker: top-level tensors and each modality's media list packed as
    above; anything else as it is. `unpack_batch` restores it exactly."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = _send(v)
        elif k == "media" and isinstance(v, dict):
            out[k] = {m: PackedMedia(items) if _packable(items) else items for m, items in v.items()}
        else:
            out[k] = v
    return out


def unpack_batch(batch: dict) -> dict:
    out = {}
    for k, v in batch.items():
        if k == "media" and isinstance(v, dict):
            out[k] = {m: items.unpack() if isinstance(items, PackedMedia) else items for m, items in v.items()}
        else:
            out[k] = _receive(v)
    return out


def die_with_parent(worker_id: int = 0) -> None:
    """DataLoader `worker_init_fn`: on Linux the worker gets SIGKILL when the process that started it dies
    (kill -9 of a run), instead of outliving it (torch's own check runs between batches, and a worker
    blocked writing a batch to a queue nobody reads never gets there). No-op elsewhere."""
    import ctypes
    import os
    import signal
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))     # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:                      # the parent died before the call: follow it now
        os._exit(1)


def start_workers(loader):
    """`iter(loader)` with the parent's objects frozen for the fork (`gc.freeze`, as the gc module's docs
    advise before a fork without exec): a forked worker's garbage collector then never walks the heap it
    inherited. A process holding a model has millions of such objects; each full collection in the worker
    stopped it for ~0.3 s (long enough to stall the main process) and copied the pages it touched."""
    import gc
    if not loader.num_workers:
        return iter(loader)
    gc.freeze()
    try:
        return iter(loader)            # the workers fork here
    finally:
        gc.unfreeze()                  # the parent collects its own objects again
