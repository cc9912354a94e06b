"""Learning-rate schedules of a stage, as a function of its progress through the budget (0 -> 1).

    lr = stage.lr * lr_factor("cosine", progress=0.4, warmup=0.03)

Progress, not step: a stage's budget is steps or tokens, and with a token budget the number of steps
is not known up front; progress = steps done / steps or tokens seen / tokens either way.

- cosine: linear warmup, then half a cosine down to min_lr_ratio (LLaVA-1.5, most VLM recipes).
- wsd: warmup-stable-decay (MiniCPM): warmup, a flat top, then a linear decay over the last `decay`.
- constant: linear warmup, then flat.
"""
from __future__ import annotations

import math


def lr_factor(schedule: str, progress: float, warmup: float = 0.0, decay: float = 0.2,
              min_ratio: float = 0.0) -> float:
    """Multiplier of the stage's peak LR at `progress` in [0, 1]."""
    p = min(max(progress, 0.0), 1.0)
    if warmup > 0 and p < warmup:
        return p / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        t = (p - warmup) / max(1.0 - warmup, 1e-12)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "wsd":
        start = 1.0 - decay
        if p < start or decay <= 0:
            return 1.0
        return min_ratio + (1.0 - min_ratio) * (1.0 - (p - start) / decay)
    raise ValueError(f"unknown schedule {schedule!r}")


class StageSchedule:
    """Sets the optimizer's LR from the stage's progress; its state is the progress counters."""

    def __init__(self, optimizer, stage, first_step_tokens: int = 1):
        self.optimizer, self.stage = optimizer, stage
        self.first_step_tokens = first_step_tokens   # a token budget's guess for the step-0 warmup LR
        self.steps = 0
        self.tokens = 0

    @property
    def progress(self) -> float:
        """Share of the budget done before the coming step."""
        if self.stage.steps:
            return self.steps / self.stage.steps
        return self.tokens / self.stage.tokens

    def _progress_after_step(self) -> float:
        """Share done at the end of the coming step: the warmup LR is never 0 (no wasted first step)."""
        if self.stage.steps:
            return (self.steps + 1) / self.stage.steps
        per_step = self.tokens / self.steps if self.steps else self.first_step_tokens
        return (self.tokens + per_step) / self.stage.tokens

    @property
    def done(self) -> bool:
        return self.progress >= 1.0

    def lr(self) -> float:
        st = self.stage
        if self.progress < st.warmup:
            return st.lr * min(1.0, self._progress_after_step() / st.warmup)
        return st.lr * lr_factor(st.schedule, self.progress, st.warmup, st.decay, st.min_lr_ratio)

    def apply(self) -> float:
        """Set the LR of every parameter group for the coming step (times the group's `lr_scale`, the stage's
        per-pattern multiplier); returns the stage's LR."""
        lr = self.lr()
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        return lr

    def advance(self, tokens: int) -> None:
        self.steps += 1
        self.tokens += int(tokens)

    def state_dict(self) -> dict:
        return {"steps": self.steps, "tokens": self.tokens}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.tokens = int(state["steps"]), int(state["tokens"])
