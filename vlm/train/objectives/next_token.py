"""next_token: cross-entropy of the next token on the label positions (the assistant turns).

    stages: [{name: sft, objective: next_token, ...}]       # the default objective

Only label positions go through the LM head: no [B, L, V] logits tensor in training. Past
CE_CHUNK logits elements the head + loss run in recomputed chunks, so the fp32 [N, V] logits never
exist at once (a 152k vocabulary at 8k label tokens would be 5 GB, plus its gradient).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlm.data.template import IGNORE
from vlm.errors import UserError
from vlm.train.objectives.base import OBJECTIVES, Objective, ObjectiveOutput

CE_CHUNK = 2**28            # logits elements (1 GiB in fp32) above which the loss is computed in chunks
MODEL_KEYS = ("input_ids", "labels", "attention_mask", "position_ids", "media")


def token_losses(model: nn.Module, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per token of hidden [N, D] against target [N] through `model.head`. [N]"""
    def ce(h, t):
        return F.cross_entropy(model.head(h).float(), t, reduction="none")
    vocab = model.parts.lm_head.weight.shape[0]
    if hidden.shape[0] * vocab <= CE_CHUNK or not torch.is_grad_enabled():
        return ce(hidden, target)
    from torch.utils.checkpoint import checkpoint
    step = max(1, CE_CHUNK // vocab)
    return torch.cat([checkpoint(ce, hidden[i:i + step], target[i:i + step], use_reentrant=False)
                      for i in range(0, hidden.shape[0], step)])


def batch_tokens(batch: dict) -> int:
    """Non-padding tokens of a batch (padded: the attention mask; packed: the samples' lengths)."""
    if batch.get("seq_lens") is not None:
        lens = batch["seq_lens"]
        return int(sum(sum(r) for r in lens) if isinstance(lens, list) else lens.sum())
    if batch.get("attention_mask") is not None:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())


@OBJECTIVES.register("next_token")
class NextToken(Objective):
    """Cross-entropy of the next token on the assistant turns (LLaVA SFT)."""

    data_format = "chat"
    count_name = "label_tokens"

    def check_model(self, model: nn.Module) -> None:
        if not hasattr(model, "head"):
            raise UserError(f"objective 'next_token' needs a language model; {type(model).__name__} has no LM head")

    def forward(self, model: nn.Module, batch: dict) -> ObjectiveOutput:
        inputs = {k: batch[k] for k in MODEL_KEYS if batch.get(k) is not None}
        hidden = model(**inputs)                                             # [B, L, D]
        target = inputs["labels"][:, 1:]                                     # [B, L-1]
        sel = target != IGNORE
        loss = token_losses(model, hidden[:, :-1][sel], target[sel])         # [N]
        return ObjectiveOutput(loss.sum(), sel.sum(), batch_tokens(batch))
