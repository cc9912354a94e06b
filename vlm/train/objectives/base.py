"""Training objectives as plug-ins: what a stage minimises, for one micro-batch.

    @OBJECTIVES.register("my_loss")
    class MyLoss(Objective):
        data_format = "chat"                          # the batches it needs (vlm.data.formats)
        Settings = MySettings                         # its typed recipe settings (a dataclass)
        def forward(self, model, batch) -> ObjectiveOutput:
            hidden = model(**batch)
            return ObjectiveOutput(loss_sum, count, tokens)

    stages: [{name: sft, objective: my_loss, objective_settings: {...}, ...}]

[Contract] an objective returns the SUM of its per-item losses over the micro-batch and how many items
that sum is over (label tokens, queries, masked frames). The trainer backpropagates the sum, all-reduces
the counts over micro-steps and ranks and scales the gradients by world_size / total, so the update is
the mean over every item of the step whatever the split into ranks and micro-batches; it clips,
checkpoints and resumes without knowing which objective runs. Randomness an objective draws must come
from the batch (`sample_seeds`) to stay the same under any split into ranks. An item's loss that depends on
the other items (contrastive's in-batch negatives) holds across ranks only if the objective gathers them;
such an objective refuses grad_accum > 1 in `check_stage`.

[Contract] `loss` is backpropagated as it is, once per micro-step (scaling happens on the gradients).
So an objective may run part of its backward itself inside `forward` and return the rest as the loss's
graph (its value still the whole sum): `contrastive` with GradCache does; under DDP such inner backward
calls accumulate locally and the trainer's backward reduces everything once.

The objective runs inside `TaskModule.forward`, the one module DDP / FSDP2 / torch.compile wrap.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from vlm.config import from_dict
from vlm.errors import UserError
from vlm.registry import Registry

OBJECTIVES: Registry[type["Objective"]] = Registry("objective")


# a loss with no graph to the trainable parameters (torch: "element 0 of tensors does not require grad")
NO_GRADIENT = ("the loss depends on none of the stage's trainable parameters: weights the objective never uses "
               "(e.g. only the LM head under contrastive, whose embedding is the last hidden state), or a batch "
               "without the one modality the stage trains")


@dataclass
class NoSettings:
    pass


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor                       # sum of the per-item losses (with a graph; see the contract)
    count: torch.Tensor | int                # the items the sum is over
    tokens: int = 0                          # work done: non-padding tokens (or frames) - throughput, token budgets
    metrics: dict[str, float] = field(default_factory=dict)   # extra sums over the same items, for the logs


class Objective(nn.Module):
    """Subclasses set `data_format`, optionally `Settings`, and implement `forward(model, batch)`."""

    Settings: ClassVar[type] = NoSettings
    data_format: ClassVar[str] = "chat"
    count_name: ClassVar[str] = "items"              # what `count` counts, for the logs
    # settings that change only memory or speed, never the loss or the data: a --resume may change them
    resumable_settings: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: Any = None):
        super().__init__()
        self.settings = settings if settings is not None else self.Settings()

    def format_settings(self) -> dict[str, Any]:
        """What the data format needs from this objective's settings (e.g. clip length)."""
        return {}

    @classmethod
    def smoke_settings(cls, raw: dict[str, Any]) -> dict[str, Any]:
        """The stage's raw `objective_settings` for a quick CPU run (`vlm.train.recipe.smoke_recipe`):
        only what costs time shrinks (a teacher's fitting steps ...), never what the objective computes."""
        return raw

    def check_model(self, model: nn.Module) -> None:
        """A one-line UserError if `model` cannot be trained with this objective."""

    @classmethod
    def check_stage(cls, settings: Any, stage: Any, world_size: int, where: str) -> None:
        """Recipe validation: a one-line UserError naming the field (`where`.batch_size ...) if the stage's
        batching cannot train this objective (`stage`: vlm.train.recipe.Stage; `settings`: its typed settings)."""

    def prepare(self, model: nn.Module, batches, state_dir) -> None:
        """Before the stage's first step (and again on resume): fit what the objective needs from data
        (a teacher's codebooks ...). `batches()` yields batches of the stage's data; anything fitted is
        kept under `state_dir` so a resumed run reads it instead of fitting again."""

    def forward(self, model: nn.Module, batch: dict) -> ObjectiveOutput:  # pragma: no cover - interface
        raise NotImplementedError


class TaskModule(nn.Module):
    """model + objective: `forward(batch)` -> ObjectiveOutput. The loss lives inside the wrapped module."""

    def __init__(self, model: nn.Module, objective: Objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: dict) -> ObjectiveOutput:
        return self.objective(self.model, batch)


def objective_class(name: str) -> type[Objective]:
    return OBJECTIVES.get(name)


def parse_settings(name: str, raw: dict, where: str = "objective_settings") -> Any:
    """The objective's typed settings from a recipe mapping (UserError naming the field)."""
    cls = objective_class(name).Settings
    return from_dict(cls, raw or {}, where)


def check_settings(name: str, raw: dict, where: str, stage: Any = None, world_size: int = 1) -> None:
    """Recipe validation of `objective` / `objective_settings` at `where` (e.g. 'stages.1'), and of the stage's
    batching for that objective when `stage` is given."""
    try:
        cls = objective_class(name)
    except UserError as e:
        raise UserError(f"recipe field '{where}.objective': {e}") from None
    settings = parse_settings(name, raw, f"{where}.objective_settings")
    check = getattr(settings, "check", None)
    if check is not None:
        check(f"{where}.objective_settings")
    if stage is not None:
        cls.check_stage(settings, stage, world_size, where)


def build_objective(name: str, raw: dict) -> Objective:
    return objective_class(name)(parse_settings(name, raw))

