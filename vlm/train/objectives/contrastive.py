"""contrastive: InfoNCE between query and target embeddings (VLM2Vec), in-batch negatives gathered
across ranks, optional hard negatives from the data, and GradCache for big batches in small memory.

    stages: [{name: embed, objective: contrastive,
              objective_settings: {temperature: 0.02, negatives: 1, chunk_size: 32}}]

Each query's positive is its own target; every other target of the global batch (all ranks) and the
sample's hard negatives are its negatives. The model's `embed(input_ids, attention_mask, media)` gives
one L2-normalised vector per prompt (VLM2Vec: the last non-pad token of the final layer). Targets are
gathered across ranks WITH their gradients (`torch.distributed.nn.all_gather`), and each rank sums the
loss of its own queries only, so 2 ranks x b pairs make the same update as 1 rank x 2b pairs.

GradCache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup";
luyug/GradCache), `chunk_size` > 0: the loss couples every embedding of the batch, but its gradient
factors as dL/dtheta = sum_i (dL/ds_i)^T ds_i/dtheta. So
  1. embed the batch in chunks of `chunk_size` prompts, each chunk's graph dropped at once (kept only
     long enough to see whether the chunk reaches a trainable weight; the RNG state before each chunk is
     kept, so dropout draws the same masks again in step 3);
  2. compute the loss over all the (detached) embeddings s_i and backpropagate it to them only: the
     cache u_i = dL/ds_i (the cross-rank gather happens here);
  3. re-embed each chunk that reaches a trainable weight with a graph and backpropagate the surrogate
     sum_i s_i . u_i at once, which has the same parameter gradient as the chunk's share of the loss.
Activations of one chunk are alive at a time, so a batch of 1,024 pairs trains in the memory of 32;
the loss and the gradients equal the one-pass ones (tests/test_vlm2vec.py: 64 pairs in 8 chunks).

[Contract] with the trainer, which calls `out.loss.backward()` once per micro-step: every chunk but the
last is backpropagated here, inside the forward; the last chunk's surrogate is returned as the loss's
graph (its value is the full loss sum). Under DDP the backward calls made inside the forward run before
the reducer expects gradients, so they accumulate locally as `no_sync` micro-steps do, and the
trainer's backward of the last chunk all-reduces the accumulated gradients once, as GradCache's
`no_sync_except_last` does. No trainer code knows about it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vlm.data.collate import slice_rows
from vlm.errors import UserError
from vlm.train.objectives.base import (
    NO_GRADIENT,
    OBJECTIVES,
    Objective,
    ObjectiveOutput,
)


def _keep_nothing(_) -> None:
    """saved_tensors_hooks pack / unpack of a graph never backpropagated: no activation is kept."""


@dataclass
class ContrastiveSettings:
    temperature: float = 0.02          # VLM2Vec: 0.02 (logits = cos / t)
    negatives: int = 0                 # hard negatives per query taken from the data (json `negatives`)
    gather: bool = True                # in-batch negatives from every rank, not only this one
    chunk_size: int = 0                # GradCache: prompts embedded per pass (0: the whole micro-batch at once)

    def check(self, where: str) -> None:
        if not self.temperature > 0:
            raise UserError(f"recipe field '{where}.temperature': must be > 0, got {self.temperature}")
        if self.negatives < 0:
            raise UserError(f"recipe field '{where}.negatives': must be >= 0, got {self.negatives}")
        if self.chunk_size < 0:
            raise UserError(f"recipe field '{where}.chunk_size': must be >= 0 (0 = off), got {self.chunk_size}")


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every rank's x concatenated along dim 0 (gradients flow back to their owners), and this rank's
    offset in it. One process: x itself."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather
    return torch.cat(all_gather(x.contiguous())), dist.get_rank() * x.shape[0]


class RandState:
    """The RNG state a chunk's forward starts from (CPU, and the CUDA device's), to replay its dropout."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def replay(self):
        with torch.random.fork_rng(devices=[self.device] if self.cuda is not None else []):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


@OBJECTIVES.register("contrastive")
class Contrastive(Objective):
    """InfoNCE between query and target embeddings, negatives from every rank, GradCache (VLM2Vec)."""

    Settings = ContrastiveSettings
    data_format = "pairs"
    count_name = "queries"
    resumable_settings = ("chunk_size",)        # GradCache: the same loss and gradients in any chunking

    def format_settings(self) -> dict:
        return {"negatives": self.settings.negatives}

    @classmethod
    def check_stage(cls, settings: ContrastiveSettings, stage, world_size: int, where: str) -> None:
        """The negatives are the other items of the micro-batch (of every rank with `gather`): grad_accum would
        cut them to one micro-step's share (a different loss; with 1 item a micro-step, none: loss 0, nothing
        learnt), and a query needs at least one negative."""
        if stage.grad_accum > 1:
            raise UserError(f"recipe field '{where}.grad_accum': {stage.grad_accum}, but objective 'contrastive' "
                            f"takes its in-batch negatives from the whole step's batch; keep grad_accum 1 and set "
                            f"objective_settings.chunk_size (GradCache) for a big batch in small memory")
        per_loss = stage.batch_size if settings.gather else stage.batch_size // world_size
        if settings.negatives == 0 and per_loss < 2:
            raise UserError(f"recipe field '{where}.batch_size': {stage.batch_size} gives each query no negative "
                            f"(the other pairs of the batch are its negatives); use batch_size >= 2"
                            + (" per rank (gather is off)" if not settings.gather else "")
                            + " or objective_settings.negatives >= 1")

    def check_model(self, model: nn.Module) -> None:
        if not hasattr(model, "embed"):
            raise UserError(f"objective 'contrastive' needs a model that embeds prompts; {type(model).__name__} "
                            f"has no embed()")

    def scores(self, q: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss sum over this rank's queries, hits) from query [b, D] and target [b * (1 + n), D] embeddings."""
        offset = 0
        if self.settings.gather:
            t, offset = gather_with_grad(t)                                # [W * b * (1 + n), D]
        logits = q @ t.T / self.settings.temperature                       # [b, T]
        gold = offset + torch.arange(q.shape[0], device=q.device)          # positives come first on each rank
        loss = F.cross_entropy(logits.float(), gold, reduction="sum")
        return loss, (logits.argmax(-1) == gold).sum()

    def forward(self, model: nn.Module, batch: dict) -> ObjectiveOutput:
        size = self.settings.chunk_size
        if size and torch.is_grad_enabled():
            loss, hits = self.grad_cache(model, batch, size)
        else:
            loss, hits = self.scores(model.embed(**batch["query"]), model.embed(**batch["target"]))
        b = batch["query"]["input_ids"].shape[0]
        tokens = int(batch["query"]["attention_mask"].sum() + batch["target"]["attention_mask"].sum())
        return ObjectiveOutput(loss, b, tokens, {"accuracy": float(hits)})

    # ------------------------------------------------------------------ GradCache
    def grad_cache(self, model: nn.Module, batch: dict, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        proc = model.processor
        chunks = []                                                        # (side, sub-batch), queries first
        for side in ("query", "target"):
            sub = batch[side]
            n = sub["input_ids"].shape[0]
            chunks += [(side, slice_rows(sub, i, min(i + size, n), proc.template.placeholder_id,
                                         proc.num_media_tokens)) for i in range(0, n, size)]
        # 1. the embeddings, each chunk's RNG state kept; built with a graph only to learn whether the chunk reaches
        # a trainable weight (text queries while only the image projector trains do not): a graph that saves no
        # activation (the hooks keep nothing), dropped at once. When the LLM's decoder stack trains, every chunk
        # passes through it: no graph is needed to know
        states, reps, needs = [], {"query": [], "target": []}, []
        probe = not any(p.requires_grad for p in model.parts.backbone.parameters())
        with (torch.enable_grad() if probe else torch.no_grad()), \
                torch.autograd.graph.saved_tensors_hooks(_keep_nothing, _keep_nothing):
            for side, sub in chunks:
                states.append(RandState(sub["input_ids"].device))
                e = model.embed(**sub)
                needs.append(e.requires_grad or not probe)
                reps[side].append(e.detach())
                del e                                                      # its graph goes before the next chunk's
        if not any(needs):
            raise UserError(f"objective 'contrastive': {NO_GRADIENT}")
        leaves = {s: torch.cat(r).requires_grad_() for s, r in reps.items()}
        # 2. the loss over the whole batch, backpropagated to the embeddings only: the gradient cache
        with torch.enable_grad():
            loss, hits = self.scores(leaves["query"], leaves["target"])
            loss.backward()
        cache = {s: iter(leaves[s].grad.split([r.shape[0] for r in reps[s]])) for s in reps}
        # 3. each chunk that reaches a trainable weight again, with a graph: the surrogate s . u has its share of the
        # parameter gradient, backpropagated at once (one chunk's graph alive at a time); the last one's is
        # returned for the trainer's backward
        last = max(i for i, n in enumerate(needs) if n)
        for i, ((side, sub), state) in enumerate(zip(chunks, states)):
            u = next(cache[side])
            if not needs[i]:
                continue
            with state.replay():
                s = model.embed(**sub)                                     # [c, D]
            if not s.requires_grad:             # the decoder trains but nothing of it is on the embedding's path
                raise UserError(f"objective 'contrastive': {NO_GRADIENT}")
            surrogate = (s * u).sum()
            if i == last:
                return loss.detach() + (surrogate - surrogate.detach()), hits
            surrogate.backward()
        raise AssertionError("unreachable: the last chunk with a gradient returns")
