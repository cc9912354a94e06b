"""Parallel strategies, chosen by name in the recipe: none | ddp | fsdp2 (torchrun; gloo on the CPU).

    torchrun --nproc_per_node 2 -m vlm.cli train llava-tiny runtime.strategy=ddp

Each is a small object the trainer asks to wrap the task module (model + objective), to skip the
gradient reduction of the micro-steps before an accumulation's last, and to move full state between
the wrapped module and the plain one the trainer keeps:
- none: one process; the task module is used as is.
- ddp: `DistributedDataParallel` over the whole task module (the loss lives inside it).
- fsdp2: `torch.distributed.fsdp.fully_shard` per unit the model names (`model.fsdp_units()`: LLM
  decoder layers, encoders with the methods the model calls on them) and at the root. fully_shard
  converts the module in place, so the strategy shards a copy and the trainer keeps the plain
  module (on the CPU) for saving checkpoints and for changing the trainable set between stages.

Every rank must run the same modules every step (FSDP all-gathers per module; DDP reduces per
bucket), so under ddp / fsdp2 the model is told so (`model.set_distributed(True)`: a rank whose
batch has no image still runs the image encoder on a blank item and adds 0 x its output).
"""
from __future__ import annotations

import contextlib
import copy
import datetime
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from vlm.errors import UserError
from vlm.registry import Registry


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    strategy: str = "none"
    owns_group: bool = False                     # we created the process group, so we destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, values: list[float | int | torch.Tensor]) -> list[float]:
        """Sum a few scalars over ranks (float64, so token counts stay exact)."""
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        if self.distributed:
            dist.all_reduce(t)
        return t.tolist()

    def all_gather_object(self, obj) -> list:
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(strategy: str, device: str = "auto") -> Dist:
    """Join the torchrun process group (gloo on the CPU, nccl on GPUs) and pick this rank's device."""
    world = world_size_from_env()
    if world > 1 and strategy == "none":
        raise UserError(f"recipe field 'runtime.strategy': 'none' under torchrun (WORLD_SIZE={world}); "
                        f"use ddp or fsdp2")
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise UserError(f"recipe field 'runtime.device': {device!r} but no GPU is available")
    dev = torch.device(f"cuda:{local}" if device in ("auto", "cuda") else device) if want_cuda else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=30))
        owns = True
    return Dist(rank, world, local, dev, strategy if world > 1 else "none", owns)


# ---------------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------------
STRATEGIES: Registry[type["Strategy"]] = Registry("parallel strategy")


class Strategy:
    def __init__(self, d: Dist):
        self.d = d

    def wrap(self, task: nn.Module) -> nn.Module:
        """The module the training step calls."""
        return task.to(self.d.device)

    def inner(self, wrapped: nn.Module) -> nn.Module:
        """The task module under any wrapper."""
        return wrapped

    @contextlib.contextmanager
    def no_sync(self, wrapped: nn.Module):
        """No gradient reduction inside (the micro-steps before the last one of an accumulation)."""
        yield

    def sync_plain(self, wrapped: nn.Module, plain: nn.Module, all_ranks: bool = False) -> None:
        """Copy the trained weights into the plain module (collective where the strategy shards).
        all_ranks=False fills rank 0's copy only."""

    def optimizer_state(self, wrapped: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        """The optimizer state keyed by parameter name, full on rank 0 (collective)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        return get_optimizer_state_dict(wrapped, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_optimizer_state(self, wrapped: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """Every rank passes the full state read from the checkpoint (FSDP2 keeps each rank's shard)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(wrapped, optimizer, state, options=StateDictOptions(full_state_dict=True))


@STRATEGIES.register("none")
class Single(Strategy):
    """One process: the task module as it is."""


@STRATEGIES.register("ddp")
class DDP(Strategy):
    def wrap(self, task: nn.Module) -> nn.Module:
        task.model.set_distributed(True)
        task.to(self.d.device)
        ids = [self.d.device.index] if self.d.device.type == "cuda" else None
        # find_unused_parameters: an encoder may return a middle layer, leaving later ones unused.
        return nn.parallel.DistributedDataParallel(task, device_ids=ids, find_unused_parameters=True)

    def inner(self, wrapped: nn.Module) -> nn.Module:
        return wrapped.module

    @contextlib.contextmanager
    def no_sync(self, wrapped: nn.Module):
        with wrapped.no_sync():
            yield


@STRATEGIES.register("fsdp2")
class FSDP2(Strategy):
    def wrap(self, task: nn.Module) -> nn.Module:
        """Shard bottom-up from a CPU copy: each unit moves to the device as it is sharded, so the
        whole model is never on one device at once."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
        task.model.set_distributed(True)
        copy_ = copy.deepcopy(task)
        mesh = init_device_mesh(self.d.device.type, (self.d.world_size,))
        for unit, methods in copy_.model.fsdp_units():
            fully_shard(unit, mesh=mesh)
            for m in methods:
                register_fsdp_forward_method(unit, m)
        fully_shard(copy_, mesh=mesh)
        return copy_

    @contextlib.contextmanager
    def no_sync(self, wrapped: nn.Module):
        wrapped.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            wrapped.set_requires_gradient_sync(True)

    def sync_plain(self, wrapped: nn.Module, plain: nn.Module, all_ranks: bool = False) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        sd = get_model_state_dict(wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=not all_ranks))
        if all_ranks or self.d.is_main:
            with torch.no_grad():
                plain.load_state_dict({k: v.to("cpu") for k, v in sd.items()}, strict=True)


def strategy_for(d: Dist) -> Strategy:
    return STRATEGIES.get(d.strategy)(d)
