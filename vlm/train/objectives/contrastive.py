"""contrastive: InfoNCE between query and target embeddings (VLM2Vec), in-batch negatives gathered
across ranks, optional hard negatives from the data.

    stages: [{name: embed, objective: contrastive, objective_settings: {temperature: 0.02, negatives: 1}}]

Each query's positive is its own target; every other target of the global batch (all ranks) and the
sample's hard negatives are its negatives. The model's `embed(input_ids, attention_mask, media)` gives
one L2-normalised vector per prompt (VLM2Vec: the last non-pad token of the final layer). Targets are
gathered across ranks WITH their gradients (`torch.distributed.nn.all_gather`), and each rank sums the
loss of its own queries only, so 2 ranks x b pairs make the same update as 1 rank x 2b pairs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vlm.errors import UserError
from vlm.train.objectives.base import OBJECTIVES, Objective, ObjectiveOutput


@dataclass
class ContrastiveSettings:
    temperature: float = 0.02          # VLM2Vec: 0.02 (logits = cos / t)
    negatives: int = 0                 # hard negatives per query taken from the data (json `negatives`)
    gather: bool = True                # in-batch negatives from every rank, not only this one

    def check(self, where: str) -> None:
        if not self.temperature > 0:
            raise UserError(f"recipe field '{where}.temperature': must be > 0, got {self.temperature}")
        if self.negatives < 0:
            raise UserError(f"recipe field '{where}.negatives': must be >= 0, got {self.negatives}")


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every rank's x concatenated along dim 0 (gradients flow back to their owners), and this rank's
    offset in it. One process: x itself."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather
    return torch.cat(all_gather(x.contiguous())), dist.get_rank() * x.shape[0]


@OBJECTIVES.register("contrastive")
class Contrastive(Objective):
    """InfoNCE between query and target embeddings, negatives from every rank (VLM2Vec)."""

    Settings = ContrastiveSettings
    data_format = "pairs"
    count_name = "queries"

    def format_settings(self) -> dict:
        return {"negatives": self.settings.negatives}

    def check_model(self, model: nn.Module) -> None:
        if not hasattr(model, "embed"):
            raise UserError(f"objective 'contrastive' needs a model that embeds prompts; {type(model).__name__} "
                            f"has no embed()")

    def forward(self, model: nn.Module, batch: dict) -> ObjectiveOutput:
        q = model.embed(**batch["query"])                                  # [b, D]
        t = model.embed(**batch["target"])                                 # [b * (1 + n), D]
        if self.settings.gather:
            t, offset = gather_with_grad(t)                                # [W * b * (1 + n), D]
        else:
            offset = 0
        logits = q @ t.T / self.settings.temperature                       # [b, T]
        gold = offset + torch.arange(q.shape[0], device=q.device)          # positives come first on each rank
        loss = F.cross_entropy(logits.float(), gold, reduction="sum")
        hits = (logits.argmax(-1) == gold).sum()
        tokens = int(batch["query"]["attention_mask"].sum() + batch["target"]["attention_mask"].sum())
        return ObjectiveOutput(loss, q.shape[0], tokens, {"accuracy": float(hits)})
