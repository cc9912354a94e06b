"""grounded_next_token: next_token plus a relevance loss that teaches the zoom where to look.

    stages: [{name: sft, objective: grounded_next_token, objective_settings: {relevance_weight: 1.0}}]

For every image whose sample says which region the answer is about (json `bbox`; the `grounded_chat`
format turns it into the high crop holding the box centre, `batch["focus"]`), the cross-entropy of the
zoom's scores over that crop's mid region (its factor^2 high crops) against that crop; summed over the
batch's grounded images, times `relevance_weight`, and added to the answer tokens' cross-entropy sum.
Samples without a box train as next_token does. The scores are the ones the model selects with
(`ZoomSelect`, read by a forward hook): with `selection: text` the loss trains the query / key maps,
with `visual` it reaches the projector (the reference score has no parameters of its own); `salient`
too. The count stays the answer tokens: one grounded image weighs `relevance_weight` answer tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlm.connectors.zoom import ZoomSelect
from vlm.errors import UserError, require
from vlm.train.objectives.base import OBJECTIVES, ObjectiveOutput
from vlm.train.objectives.next_token import NextToken


@dataclass
class GroundedSettings:
    relevance_weight: float = 1.0       # one grounded image's relevance cross-entropy weighs this many answer tokens

    def check(self, where: str) -> None:
        require(self.relevance_weight >= 0, f"recipe field '{where}.relevance_weight' must be >= 0, "
                                            f"got {self.relevance_weight}")


def relevance_loss(scores: torch.Tensor, focus: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """scores [N, M, F] (every image's high crops per mid region), focus [N] (mid * F + slot, -1: none) ->
    (sum of the cross-entropies over the grounded images' regions, grounded images, of them whose top
    score in that region is the focus crop)."""
    require(scores.shape[0] == focus.numel(), f"{focus.numel()} focus entries for {scores.shape[0]} zoomed images")
    has = (focus >= 0).nonzero().squeeze(1)
    if has.numel() == 0:
        return scores.sum() * 0, 0, 0
    n_high = scores.shape[2]
    region = scores[has, focus[has] // n_high].float()                          # [n, F]
    slot = focus[has] % n_high
    hits = int((region.argmax(-1) == slot).sum())
    return F.cross_entropy(region, slot, reduction="sum"), int(has.numel()), hits


@OBJECTIVES.register("grounded_next_token")
class GroundedNextToken(NextToken):
    """next_token + the zoom's relevance cross-entropy where the data gives the answer's region (bbox)."""

    data_format = "grounded_chat"
    Settings = GroundedSettings

    def check_model(self, model: nn.Module) -> None:
        super().check_model(model)
        if not any(isinstance(m, ZoomSelect) for m in model.modules()):
            raise UserError(f"objective 'grounded_next_token' needs a model that zooms (the dragonfly family's "
                            f"connector); {type(model).__name__} has none")

    def forward(self, model: nn.Module, batch: dict) -> ObjectiveOutput:
        seen: list[torch.Tensor] = []
        hooks = [m.register_forward_hook(lambda mod, inp, out: seen.append(out[2]))
                 for m in model.modules() if isinstance(m, ZoomSelect)]
        try:
            out = super().forward(model, batch)
        finally:
            for h in hooks:
                h.remove()
        focus = batch.get("focus")
        if focus is None or not seen:
            return out
        ce, n, hits = relevance_loss(torch.cat(seen), focus.to(seen[0].device))
        out.loss = out.loss + self.settings.relevance_weight * ce
        # logged as means over the answer tokens (the objective's count), like the loss
        out.metrics = {**out.metrics, "relevance_ce": float(ce.detach()), "grounded_images": float(n),
                       "focus_top1": float(hits)}
        return out
