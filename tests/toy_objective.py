"""A new objective in one file, through the public API only (tests/test_architecture.py)."""
from __future__ import annotations

from dataclasses import dataclass

from vlm.train.objectives.base import OBJECTIVES, Objective, ObjectiveOutput


@dataclass
class HiddenNormSettings:
    weight: float = 1.0


@OBJECTIVES.register("toy_hidden_norm")
class HiddenNorm(Objective):
    """Pulls the final hidden state of every real token towards zero (a test's toy)."""

    Settings = HiddenNormSettings
    data_format = "chat"
    count_name = "tokens_seen"

    def forward(self, model, batch) -> ObjectiveOutput:
        mask = batch["attention_mask"]
        hidden = model(batch["input_ids"], mask, media=batch["media"])             # [B, L, D]
        loss = self.settings.weight * (hidden.pow(2).mean(-1) * mask).sum()
        return ObjectiveOutput(loss, int(mask.sum()), int(mask.sum()))
