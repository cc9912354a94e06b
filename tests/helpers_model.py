"""Losses of a batch for tests that train or compare models by hand (the trainer uses the objectives)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vlm.train.objectives import build_objective
from vlm.train.objectives.next_token import MODEL_KEYS


def lm_loss(model, batch: dict) -> torch.Tensor:
    """Mean next-token loss over the batch's label tokens (the `next_token` objective)."""
    out = build_objective("next_token", {})(model, batch)
    return out.loss / out.count


def token_losses(model, batch: dict) -> torch.Tensor:
    """Next-token loss per position [B, L-1]; 0 where the label is ignored."""
    hidden = model(**{k: batch[k] for k in MODEL_KEYS if batch.get(k) is not None})
    logits = model.head(hidden[:, :-1]).float()                                  # [B, L-1, V]
    return F.cross_entropy(logits.transpose(1, 2), batch["labels"][:, 1:], ignore_index=-100, reduction="none")
