"""The training loop: a recipe's stages in order, each with its own objective, trainable set, data,
LR schedule and budget; exact resume; DDP / FSDP2 under torchrun. It knows no family and no loss.

    vlm train llava-tiny                                   # one process (CPU, or one GPU)
    torchrun --nproc_per_node 2 -m vlm.cli train llava-tiny runtime.strategy=ddp
    vlm train llava-tiny --resume                          # from the newest complete checkpoint
    Trainer(load_recipe("llava-tiny"), Path("runs/x")).run()    # -> runs/x/final (vlm.load)

Loss normalisation: each micro-step backpropagates the *sum* of its objective's item losses (label
tokens, queries, masked frames: `vlm.train.objectives`); when the step's micro-batches are done, the
item count is all-reduced and the gradients are scaled by world_size / count (DDP and FSDP2 average
over ranks). So 2 ranks x batch b, 1 process x batch 2b and grad_accum 2 x batch b all make the same
update: the mean over every item of the step.

Evaluation during training (`runtime.eval`, vlm.train.evaluation): benchmarks scored on val every N steps
and at stage ends, the best checkpoint kept as `<run>/best`, an optional early stop; it draws nothing
from the training RNG, so the trained weights are the same with it and without it.

Exact resume (bitwise on the CPU): a checkpoint holds the weights, the optimizer, the stage's
schedule counters, every rank's RNG states and data position; on resume the model is rebuilt,
the LLM modes of the stages so far are replayed, the weights loaded, and the RNG restored last,
so the following steps draw exactly what the uninterrupted run drew.
"""
from __future__ import annotations

import contextlib
import fnmatch
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vlm.data.pipeline import data_streams
from vlm.errors import UserError
from vlm.train import checkpoint as ckpt_lib
from vlm.train.data import build_stage_loader, stage_sources, to_device
from vlm.train.logging import RunLog, SampleLog, plot
from vlm.train.objectives import (
    NO_GRADIENT,
    OBJECTIVES,
    Objective,
    TaskModule,
    build_objective,
)
from vlm.train.recipe import (
    Recipe,
    Stage,
    apply_stage,
    build_model,
    build_sources,
    save_resolved,
)
from vlm.train.schedules import StageSchedule
from vlm.train.strategies import Dist, Strategy, setup, strategy_for


class TrainingDiverged(UserError):
    """Too many non-finite steps in a row; the last good checkpoint is left as it was."""


@dataclass
class StepResult:
    loss: float                     # mean over the step's items (label tokens, queries, frames), all ranks
    grad_norm: float
    lr: float
    tokens: int                     # work done: non-padding tokens (or audio frames), all ranks
    count: int                      # the items the loss is the mean over, all ranks
    finite: bool
    keys: list[str]                 # this rank's samples
    metrics: dict[str, float]       # the objective's extra metrics, means over the same items


def decay_groups(model: nn.Module, weight_decay: float, lr_scale: dict[str, float] | None = None) -> list[dict]:
    """AdamW groups: weight decay on matrices, none on norms and biases (1-D), nn.Embedding tables and what a
    module's own `no_weight_decay()` names (timm's and open_clip's vision towers: position embeddings, class
    tokens); other parameter tables decay (MERT's code embeddings, as fairseq decays them). Each group is split
    again by `lr_scale` (the stage's pattern -> LR multiplier, matched as its
    `trainable` patterns are: on the model's names, a TaskModule's `model.` prefix dropped; a parameter takes
    its first match, else 1). Every group carries its `lr_scale`, which the schedule multiplies the stage's LR by."""
    embeds = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    for m in model.modules():                       # timm's convention: the module says (it was decayed, a review)
        if callable(getattr(m, "no_weight_decay", None)):
            names = set(m.no_weight_decay())
            embeds |= {id(p) for n, p in m.named_parameters() if n in names}
    patterns = list((lr_scale or {}).items())
    groups: dict[tuple[bool, float], list] = {}
    for n, p in model.named_parameters():
        if p.requires_grad:
            name = n.removeprefix("model.") if isinstance(model, TaskModule) else n
            scale = next((float(s) for pat, s in patterns if fnmatch.fnmatchcase(name, pat)), 1.0)
            groups.setdefault((p.ndim >= 2 and id(p) not in embeds, scale), []).append(p)
    return [{"params": groups[key], "weight_decay": weight_decay if key[0] else 0.0, "lr_scale": key[1]}
            for key in sorted(groups, key=lambda k: (not k[0], k[1]))]


def _dig(d, dotted: str):
    for k in dotted.split("."):
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _first_difference(a, b, path: str) -> tuple[str, object, object] | None:
    """(dotted path, a's value, b's value) of the first place two YAML documents differ; None if equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            found = _first_difference(a.get(k), b.get(k), f"{path}.{k}")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            found = _first_difference(x, y, f"{path}.{i}")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):     # other lengths: their counts (and names), not both lists
        return f"{path} (count)", _brief(a), _brief(b)
    return None if a == b else (path, a, b)


def _brief(items: list) -> str:
    """A list as its length and, when every item is a mapping with a `name` (stages, data sources), the names;
    a short list of plain values (a few shard paths, betas) as itself."""
    names = [x.get("name") for x in items if isinstance(x, dict) and x.get("name") is not None]
    if names and len(names) == len(items):
        return f"{len(items)}: {', '.join(map(str, names))}"
    if not any(isinstance(x, (dict, list)) for x in items) and len(repr(items)) <= 200:
        return repr(items)
    return f"{len(items)} item{'s' if len(items) != 1 else ''}"


def _drop_resumable(doc, recipe: Recipe) -> None:
    """Remove from a recipe document the objective settings a resume may change (an objective's
    `resumable_settings`, e.g. GradCache's chunk size: memory, not the loss), stage by stage of `recipe`."""
    stages = doc.get("stages") if isinstance(doc, dict) else None
    if not isinstance(stages, list):
        return
    for st, raw in zip(recipe.stages, stages):
        settings = raw.get("objective_settings") if isinstance(raw, dict) else None
        if isinstance(settings, dict):
            for key in OBJECTIVES.get(st.objective).resumable_settings:
                settings.pop(key, None)


def summarize_trainable(model: nn.Module, names: list[str], depth: int = 2) -> str:
    """'connectors.image (4), llm.model (19)': trainable tensors per module prefix."""
    counts: dict[str, int] = {}
    for n in names:
        key = ".".join(n.split(".")[:depth])
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k} ({v})" for k, v in counts.items()) or "nothing"


def check_run_dir(run_dir: Path) -> None:
    """The run folder can be a folder: not a file, not under a file, a name the file system takes."""
    for p in [run_dir, *run_dir.parents]:
        if p.exists():
            if not p.is_dir():
                raise UserError(f"output folder {run_dir}: {p} is a file")
            break
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"output folder {run_dir}: {e.strerror}") from None


LOCK_FILE = ".vlm-train.lock"


def lock_run_dir(run_dir: Path):
    """The run folder for this run alone: a second `vlm train` into it at the same time (two recipes' checkpoints
    and metrics interleaved, both crashing) is refused. The lock goes with the process, a kill -9 included."""
    from filelock import FileLock, Timeout
    lock = FileLock(str(run_dir / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UserError(f"output folder {run_dir} is in use by another `vlm train` (it holds {run_dir / LOCK_FILE}); "
                        f"wait for it to end, or train into another --out") from None
    return lock


def encoder_layer_difference(model: nn.Module, saved: dict) -> tuple[str, Any, Any] | None:
    """(encoder, saved layer, built layer) of the first encoder whose `feature_layer` differs from the one a
    checkpoint's config.json records: the weights load either way, but the projector was trained on other
    features (a recipe without the setting, resumed after its default changed)."""
    encoders = getattr(model, "encoders", None)
    for name, spec in (saved.get("encoders") or {}).items() if isinstance(saved, dict) else ():
        if encoders is None or name not in encoders or not isinstance(spec, dict) or "feature_layer" not in spec:
            continue
        if spec["feature_layer"] != encoders[name].feature_layer:
            return name, spec["feature_layer"], encoders[name].feature_layer
    return None


def recipe_difference(saved: Path, recipe: Recipe) -> tuple[str, Any, Any] | None:
    """Where `recipe` would train other than the run folder's saved recipe.yaml (`Trainer.RESUME_KEYS`: the
    model, data, stages, seed ...; logging and memory-only settings may differ): (key, saved, now), or None."""
    import yaml

    from vlm.config import read_yaml
    old = read_yaml(saved, "run's recipe")          # not YAML, not UTF-8, not a mapping: one line naming it
    new = yaml.safe_load(recipe.to_yaml())
    _drop_resumable(old, recipe)
    _drop_resumable(new, recipe)
    for key in Trainer.RESUME_KEYS:
        where = _first_difference(_dig(old, key), _dig(new, key), key)
        if where is not None:
            return where
    return None


class Trainer:
    def __init__(self, recipe: Recipe, run_dir: Path | str | None = None, resume: bool = False):
        self.recipe = recipe
        self.run_dir = Path(run_dir) if run_dir is not None else recipe.output_dir()
        self.resume = resume
        rt = recipe.runtime
        self.d: Dist = setup(rt.strategy, rt.device)
        self.strategy: Strategy = strategy_for(self.d)
        self.log: RunLog | None = None
        self.samples: SampleLog | None = None
        self.evaluator = None                    # runtime.eval: a TrainingEval once the logs are open

    # ------------------------------------------------------------------ the run
    def run(self) -> Path:
        """Train every stage not yet done; returns `<run>/final`."""
        lock = None
        try:
            check_run_dir(self.run_dir)
            if self.d.is_main:
                lock = lock_run_dir(self.run_dir)
                build_sources(self.recipe)       # synthetic-world sources with `build` settings, if absent
            ckpt = self._resume_point()          # (its barrier: the other ranks wait for the data)
            state = ckpt_lib.read_state(ckpt) if ckpt else ckpt_lib.TrainerState(
                world_size=self.d.world_size, recipe_name=self.recipe.name)
            self._check_world(ckpt, state)
            self._check_recipe(ckpt)
            self._open_logs(state.step if ckpt else None)
            self._note_one_process()
            plain = self._build_model()
            start = 0
            if ckpt:
                start = self._restore_model(plain, ckpt, state)
                self.log.event("resume", f"resuming from {ckpt} (stage '{state.stage_name}', step {state.step})",
                               step=state.step, checkpoint=str(ckpt))
            mid = ckpt is not None and start == state.stage and not state.stage_done   # resumed inside stage `start`
            if ckpt is not None and state.stage_done and start < len(self.recipe.stages):
                self._check_trained_data(plain, state.stage, ckpt)
            self._check_stage_data(plain, range(start + 1 if mid else start, len(self.recipe.stages)))
            for i in range(start, len(self.recipe.stages)):
                if state.early_stopped:          # runtime.eval.patience ended the run: no later stage
                    break
                mid_stage = mid and i == start
                if ckpt is not None and i == start and not mid_stage:
                    ckpt_lib.set_rng_state(ckpt_lib.load_rank(ckpt, self.d.rank)["rng"])
                self._run_stage(i, plain, state, ckpt if mid_stage else None)
            return self._finish(plain)
        except (Exception, KeyboardInterrupt) as e:
            if self.log is not None:
                self.log.failed(e)
            raise
        finally:
            if self.log is not None:
                self.log.close()
            if self.samples is not None:
                self.samples.close()
            if lock is not None:
                lock.release()
            self.d.close()

    def _check_trained_data(self, plain: nn.Module, i: int, ckpt: Path) -> None:
        """Resumed at the end of stage i: its shards must be the ones it trained on (a mid-stage resume checks its
        own stage's in the pipeline's load_state_dict). Shards rebuilt in place at the same paths would have the
        rest of the run train on another data set than the first stages, without a word."""
        saved = ckpt_lib.load_rank(ckpt, self.d.rank)["data"].get("contents")
        st = self.recipe.stages[i]
        later = {src["name"] for j in range(i + 1, len(self.recipe.stages)) for src in stage_sources(self.recipe, j)}
        loader = self._loader(i, build_objective(st.objective, st.objective_settings), plain, self.d.rank,
                              self.d.world_size)
        try:                                     # (a source no later stage reads may change: nothing mixes)
            loader.check_contents(saved, only=later)
        except UserError as e:
            raise UserError(f"{ckpt} (the end of stage '{st.name}'): {e}") from None

    def _check_stage_data(self, plain: nn.Module, stages: range) -> None:
        """A stage's data with no usable sample for this rank (a filter that keeps nothing, media the model has
        no encoder for, every sample broken) is found now, naming the stage, not after the stages before it
        trained: each of this rank's data workers reads its share of the stage until one batch comes (the
        stage's own rule for giving up). A stage resumed mid-way is not read again here."""
        for i in stages:
            st = self.recipe.stages[i]
            objective = build_objective(st.objective, st.objective_settings)
            data = self._loader(i, objective, plain, self.d.rank, self.d.world_size).dataset
            for w in range(data.workers):
                batches = data.batches(w, 0)
                try:
                    next(batches)
                except UserError as e:
                    raise UserError(f"stage '{st.name}' (stages.{i}, checked before training starts): {e}") from None
                finally:
                    batches.close()

    def _note_one_process(self) -> None:
        """runtime.strategy ddp / fsdp2 started without torchrun: one process trains, and says so."""
        asked = self.recipe.runtime.strategy
        if asked != "none" and self.d.world_size == 1:
            self.log.event("one_process", f"runtime.strategy is {asked!r} but this is one process (no torchrun, or "
                           f"--nproc_per_node 1): training on one rank; launch with `torchrun --nproc_per_node N -m "
                           f"vlm.cli train ...` for {asked} over N ranks", strategy=asked)

    def _resume_point(self) -> Path | None:
        if self.d.is_main:
            removed = ckpt_lib.remove_partial(self.run_dir) if self.resume else []
            for p in removed:
                print(f"cleaned up after an interrupted save: {p}", flush=True)
        self.d.barrier()
        found = ckpt_lib.latest(self.run_dir)
        if found is None and (self.run_dir / "final").exists():
            # a finished run whose checkpoints were removed (to free the disk): nothing to resume, and a new run
            # would write over its model
            raise UserError(f"{self.run_dir} holds a finished model ({self.run_dir / 'final'}) and no checkpoint to "
                            f"resume from; train into another --out (or move final/ away to train here again)")
        if found is not None and not self.resume:
            raise UserError(f"{self.run_dir} already has checkpoints ({found.name}); pass --resume to continue "
                            f"it or --out to start a new run")
        if self.resume and found is None and self.d.is_main:
            print(f"--resume: no complete checkpoint in {self.run_dir}; starting from scratch", flush=True)
        if found is None:
            if self.d.is_main:
                self._clear_unfinished_run()
            self.d.barrier()                     # (before any rank opens its sample log)
        return found

    # what a run writes beside its checkpoints that a new run must not inherit: a killed run's fitted MERT teacher
    # (a fresh run on other data trained on its targets), best model, evaluations, TensorBoard events, sample logs
    LEFT_BY_A_RUN = ("objectives", "best", "eval", "tb")

    def _clear_unfinished_run(self) -> None:
        """A run starting from scratch in the folder of an earlier run (its recipe.yaml / train.log are there)
        killed before its first checkpoint: what that run left (LEFT_BY_A_RUN, samples-rank*.jsonl) is moved to
        `previous-<time>/` in the folder, and said (its best/ may be the only model it made); train.log keeps
        its lines. A folder no run wrote is left alone."""
        if not ((self.run_dir / "recipe.yaml").is_file() or (self.run_dir / "train.log").is_file()):
            return
        left = [self.run_dir / n for n in self.LEFT_BY_A_RUN] + sorted(self.run_dir.glob("samples-rank*.jsonl"))
        left = [p for p in left if p.exists() or p.is_symlink()]
        if not left:
            return
        aside = self.run_dir / time.strftime("previous-%Y%m%d-%H%M%S")
        n = 1
        while aside.exists():                    # two fresh starts within a second
            aside, n = aside.with_name(f"{aside.name.split('.')[0]}.{n}"), n + 1
        aside.mkdir()
        for p in left:
            os.replace(p, aside / p.name)
        print(f"starting from scratch in {self.run_dir}: moved what an earlier run left there "
              f"({', '.join(p.name for p in left)}) to {aside}", flush=True)

    def _check_world(self, ckpt: Path | None, state: ckpt_lib.TrainerState) -> None:
        if ckpt is not None and state.world_size != self.d.world_size:
            raise UserError(f"{ckpt} was saved by {state.world_size} rank(s), this run has {self.d.world_size}; "
                            f"resume with the same number of ranks")
        if ckpt is not None and not state.early_stopped:
            # a mid-stage data position is per data worker, and the data streams a stage is split into (its order)
            # depend on their count, at a stage's end too (the next stage's order): said here, before the model is
            # built (the pipeline's own check at load_state_dict would say it only after that, mid-stage only)
            saved = ckpt_lib.load_rank(ckpt, self.d.rank)["data"].get("num_workers")
            mine = data_streams(self.recipe.runtime.num_workers)
            where = f"at the end of stage '{state.stage_name}'" if state.stage_done else \
                f"inside stage '{state.stage_name}'"
            if saved is not None and saved != mine:
                raise UserError(f"{ckpt} was saved {where} by {saved} data worker(s) per rank, this run has {mine} "
                                f"(runtime.num_workers={self.recipe.runtime.num_workers}); resume with "
                                f"runtime.num_workers={saved}")

    # what a checkpoint's weights, optimizer, schedule and data position depend on; runtime settings such as
    # logging, checkpoint cadence or evaluation may change on resume (the ranks and the data workers may not:
    # `_check_world`, mid-stage and at a stage's end, where the workers decide the next stage's data order)
    # the evaluation's benchmarks, split, data, limit and metric define the best score a checkpoint carries (a
    # resumed run comparing other benchmarks' scores with it would keep the wrong best/ or stop early); its
    # cadence and patience may change
    RESUME_KEYS = ("model", "data", "stages", "runtime.seed", "runtime.precision", "runtime.shuffle_buffer",
                   "runtime.eval.benchmarks", "runtime.eval.split", "runtime.eval.data", "runtime.eval.limit",
                   "runtime.eval.metric")

    def _check_recipe(self, ckpt: Path | None) -> None:
        """On resume, the recipe must train what the checkpoint was trained by (the run folder's recipe.yaml,
        written at its start): a changed budget, LR, stage or data set would silently be ignored or mixed."""
        saved = self.run_dir / "recipe.yaml"
        if ckpt is None:
            return
        if not saved.is_file():
            if self.d.is_main:
                print(f"warning: --resume: {saved} is missing, so this recipe cannot be checked against the one "
                      f"{ckpt.name} was trained with (a changed LR, budget or data would go unnoticed)",
                      file=sys.stderr, flush=True)
            return
        where = recipe_difference(saved, self.recipe)
        if where is not None:
            raise UserError(f"--resume: the recipe differs from the one {self.run_dir} was trained with at "
                            f"'{where[0]}' ({where[1]!r} -> {where[2]!r}); resume with that recipe, or train "
                            f"a new run (--out) from its checkpoint (e.g. model.settings.init=... where the "
                            f"family takes one)")

    def _open_logs(self, resume_step: int | None) -> None:
        rt = self.recipe.runtime
        wandb = {"project": rt.wandb_project, **self.recipe.to_dict()} if rt.wandb else None
        self.log = RunLog(self.run_dir, self.d.is_main, resume_step, wandb, rank=self.d.rank,
                          world_size=self.d.world_size)
        if rt.log_samples:
            self.samples = SampleLog(self.run_dir, self.d.rank, resume_step)
        if self.d.is_main:
            save_resolved(self.recipe, self.run_dir)
        if rt.eval.benchmarks:
            from vlm.train.evaluation import TrainingEval
            self.evaluator = TrainingEval(self.recipe, self.run_dir, self.d, self.strategy, self.log)
        self.d.barrier()

    def _build_model(self) -> nn.Module:
        rt = self.recipe.runtime
        model = build_model(self.recipe.model, seed=rt.seed)          # same init on every rank
        if rt.activation_checkpointing:
            model.enable_activation_checkpointing()
        _seed_everything(rt.seed + self.d.rank)
        return model

    def _restore_model(self, plain: nn.Module, ckpt: Path, state: ckpt_lib.TrainerState) -> int:
        """Replay the LLM modes of the stages so far, load the weights; returns the first stage to run."""
        stages = self.recipe.stages
        if not (isinstance(state.stage, int) and 0 <= state.stage < len(stages)) \
                or state.stage_name not in ("", None, stages[state.stage].name):
            raise UserError(f"{ckpt}: trainer state names stage {state.stage} ({state.stage_name!r}), which is not "
                            f"stage {state.stage} of this recipe ({[st.name for st in stages]}); resume with the "
                            f"recipe that wrote it")
        for st in self.recipe.stages[:state.stage + 1]:
            plain.set_llm_mode(st.llm, st.lora)
        try:
            saved = json.loads((ckpt / ckpt_lib.MODEL_DIR / "config.json").read_text())
        except (OSError, ValueError):
            saved = {}                                   # (load_model_weights names what is wrong with it)
        where = encoder_layer_difference(plain, saved)
        if where is not None:
            raise UserError(f"--resume: {ckpt} was trained on its {where[0]} encoder's feature_layer {where[1]}, "
                            f"this recipe builds {where[2]} (a default that changed: hf:DIR CLIP folders read -2 "
                            f"now); set the encoder's feature_layer: {where[1]} in the recipe to resume")
        route = saved.get("route") if isinstance(saved, dict) else None
        built = plain.route.settings() if hasattr(plain, "route") else {}
        if isinstance(route, dict) and route.get("adaptor_layers") not in (None, built.get("adaptor_layers")):
            # IAA's default depths changed on 2026-12-05 (a pair every 5 layers): a recipe without the setting
            raise UserError(f"--resume: {ckpt} has adaptors after layers {route['adaptor_layers']}, this recipe "
                            f"builds {built.get('adaptor_layers')} (a default that changed); set "
                            f"model.settings.adaptor_layers: {route['adaptor_layers']} in the recipe to resume")
        ckpt_lib.load_model_weights(plain, ckpt)
        return state.stage + 1 if state.stage_done else state.stage

    def _finish(self, plain: nn.Module) -> Path:
        final = self.run_dir / "final"
        if self.d.is_main:
            plain.save_pretrained(final)
            png = plot(self.run_dir)
            self.log.event("done", f"final model: {final}" + (f"; plot: {png}" if png else ""), path=str(final))
        self.d.barrier()
        return final

    # ------------------------------------------------------------------ one stage
    def _run_stage(self, i: int, plain: nn.Module, state: ckpt_lib.TrainerState, ckpt: Path | None) -> None:
        st, d = self.recipe.stages[i], self.d
        objective = build_objective(st.objective, st.objective_settings)
        objective.check_model(plain)
        names = apply_stage(plain, st)
        self._log_stage_start(i, st, plain, names, state.step)
        self._prepare(i, objective, plain)
        task = TaskModule(plain, objective)
        wrapped = self.strategy.wrap(task)
        if self.recipe.runtime.compile:
            wrapped.compile()
        wrapped.train()
        eval_frozen(self.strategy.inner(wrapped))
        optimizer = torch.optim.AdamW(decay_groups(self.strategy.inner(wrapped), st.weight_decay, st.lr_scale), lr=st.lr,
                                      betas=tuple(st.betas), eps=st.eps)
        schedule = StageSchedule(optimizer, st, first_step_tokens=st.batch_size * st.max_len // 2)
        loader = self._loader(i, objective, plain, d.rank, d.world_size)
        if ckpt is not None:
            trainable = {n: p.shape for n, p in task.named_parameters() if p.requires_grad}
            saved = ckpt_lib.load_optimizer(ckpt, trainable, int(state.schedule.get("steps", 0)))
            self.strategy.load_optimizer_state(wrapped, optimizer, saved)
            schedule.load_state_dict(state.schedule)
            rank_state = ckpt_lib.load_rank(ckpt, d.rank)
            loader.load_state_dict(rank_state["data"])
        else:
            state.stage, state.stage_name, state.stage_done = i, st.name, False
            state.schedule = schedule.state_dict()
        batches = iter(loader)
        if ckpt is not None:
            ckpt_lib.set_rng_state(rank_state["rng"])                # last: nothing draws after it
        self._train_loop(i, st, wrapped, optimizer, schedule, loader, batches, task, state, objective)
        self.strategy.sync_plain(wrapped, task, all_ranks=True)     # fsdp2: the next stage re-shards it
        report = loader.stats.report().splitlines()       # the counts, then per skip reason its count and a sample
        self.log.event("stage_end", f"stage '{st.name}' done at step {state.step}; data: {report[0]}"
                       + "".join(f"\n{line}" for line in report[1:]), stage=st.name, step=state.step,
                       data=loader.stats.to_dict())

    def _loader(self, i: int, objective: Objective, plain: nn.Module, rank: int, world_size: int, **overrides):
        return build_stage_loader(self.recipe, i, plain.processor, rank, world_size, objective.data_format,
                                  objective.format_settings(), **overrides)

    def _prepare(self, i: int, objective: Objective, plain: nn.Module) -> None:
        """The objective's own preparation (e.g. fitting a teacher) on the stage's data as one process
        reads it - the same on every rank - kept under <run>/objectives/stage-<i>."""
        def batches():
            return iter(self._loader(i, objective, plain, 0, 1, num_workers=0))
        objective.prepare(plain, batches, self.run_dir / "objectives" / f"stage-{i}")
        self.d.barrier()

    def _log_stage_start(self, i: int, st: Stage, plain: nn.Module, names: list[str], step: int) -> None:
        params = dict(plain.named_parameters())
        n_train = sum(params[n].numel() for n in names)
        n_all = sum(p.numel() for p in params.values())
        budget = f"{st.steps} steps" if st.steps else f"{st.tokens:,} tokens"
        self.log.event("stage_start", f"stage {i + 1}/{len(self.recipe.stages)} '{st.name}': llm {st.llm}, "
                       f"{budget}, lr {st.lr:g} ({st.schedule}); trainable {len(names)} tensors, {n_train:,} of "
                       f"{n_all:,} params: {summarize_trainable(plain, names)}",
                       step=step, stage=st.name, index=i, llm=st.llm, patterns=st.trainable, trainable=names,
                       trainable_params=n_train, total_params=n_all)

    def _train_loop(self, i, st, wrapped, optimizer, schedule, loader, batches, task, state, objective) -> None:
        rt, log = self.recipe.runtime, self.log
        unit, total = ("step", st.steps) if st.steps else ("tok", st.tokens)
        log.open_bar(st.name, total, schedule.steps if st.steps else schedule.tokens, unit)
        params = [p for p in self.strategy.inner(wrapped).parameters() if p.requires_grad]
        from_start, applied, nan_before = schedule.steps == 0, 0, state.nan_steps
        while not schedule.done:
            t0 = time.perf_counter()
            res = self._step(wrapped, optimizer, schedule, batches, params, st)
            state.step += 1
            state.schedule = schedule.state_dict()
            self._count_nonfinite(res, st, state)
            applied += res.finite
            if schedule.done and from_start and not applied:     # fewer steps than max_nan_steps, all skipped
                earlier = (f"; {nan_before} step(s) of earlier stages were non-finite too: the weights may have "
                           f"diverged there (their LR or temperature?)") if nan_before else ""
                raise TrainingDiverged(f"stage '{st.name}': every one of its {schedule.steps} steps was non-finite "
                                       f"and skipped: nothing trained (a temperature or LR far off?){earlier}")
            if self.samples is not None:
                self.samples.write(state.step, res.keys)
            if state.step % rt.log_every == 0 or schedule.done:
                log.metrics({"step": state.step, "stage": st.name, "stage_step": schedule.steps,
                             "loss": res.loss if res.finite else None, "lr": res.lr,
                             "grad_norm": res.grad_norm if math.isfinite(res.grad_norm) else None,
                             "tokens": res.tokens, objective.count_name: res.count,
                             "tok_per_s": res.tokens / max(time.perf_counter() - t0, 1e-9),
                             "skipped": not res.finite, "nan_steps": state.nan_steps, **res.metrics})
            log.advance(1 if st.steps else res.tokens)
            self._stop_if_diverged(st, state)
            stop = False                         # evaluated before the checkpoint, which then holds its result
            if self.evaluator is not None and self.evaluator.due(state.step, schedule.done):
                stop = state.early_stopped = self.evaluator.run(wrapped, task, state, st.name)
            due = rt.checkpoint_every and state.step % rt.checkpoint_every == 0
            if due or schedule.done or stop:
                self._save(wrapped, task, optimizer, loader, state, done=schedule.done or stop)
            if stop:
                break
        log.close_bar()

    # ------------------------------------------------------------------ one optimizer step
    def _step(self, wrapped, optimizer, schedule: StageSchedule, batches, params, st: Stage) -> StepResult:
        d = self.d
        lr = schedule.apply()
        loss_sum = torch.zeros((), dtype=torch.float64, device=d.device)
        count = tokens = 0
        sums: dict[str, float] = {}
        keys: list[str] = []
        for k in range(st.grad_accum):
            with torch.random.fork_rng(devices=[]):          # a DataLoader draws its worker seed from the
                batch = next(batches)                          # global RNG when it starts: keep that out of resume
            keys += batch.get("sample_keys", [])
            last = k == st.grad_accum - 1
            with contextlib.nullcontext() if last else self.strategy.no_sync(wrapped):
                with self._autocast():
                    out = wrapped(to_device(batch, d.device))
                if not out.loss.requires_grad:
                    raise UserError(f"stage '{st.name}' step {schedule.steps + 1}: {NO_GRADIENT}")
                out.loss.backward()
            loss_sum += out.loss.detach().double()
            count += int(out.count)
            tokens += out.tokens
            for name, v in out.metrics.items():
                sums[name] = sums.get(name, 0.0) + float(v)
        names = sorted(sums)
        loss_all, count_all, tokens_all, *metric_all = d.all_reduce_sum([loss_sum, count, tokens,
                                                                           *(sums[n] for n in names)])
        scale = d.world_size / max(count_all, 1.0)          # DDP / FSDP2 averaged over ranks: undo, then / count
        for p in params:
            if p.grad is None:
                # a modality absent from the batch: a zero gradient, as DDP / FSDP2 (every encoder runs
                # on every rank) give it, so AdamW steps every trainable tensor whatever the strategy
                p.grad = torch.zeros_like(p)
            else:
                p.grad.mul_(scale)
        norm = torch.nn.utils.clip_grad_norm_(params, st.grad_clip if st.grad_clip > 0 else float("inf"))
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        loss = loss_all / max(count_all, 1.0)
        finite = math.isfinite(loss) and math.isfinite(norm)
        if finite:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.advance(int(tokens_all))
        metrics = {n: v / max(count_all, 1.0) for n, v in zip(names, metric_all)}
        return StepResult(loss, norm, lr, int(tokens_all), int(count_all), finite, keys, metrics)

    def _autocast(self):
        rt, dev = self.recipe.runtime, self.d.device
        bf16 = rt.precision == "bf16" or (rt.precision == "auto" and dev.type == "cuda")
        return torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def _count_nonfinite(self, res: StepResult, st: Stage, state: ckpt_lib.TrainerState) -> None:
        if res.finite:
            state.nan_streak = 0
            return
        state.nan_steps += 1
        state.nan_streak += 1
        self.log.event("nonfinite", f"step {state.step}: loss {res.loss} / grad norm {res.grad_norm}: step skipped "
                       f"({state.nan_streak} in a row)", step=state.step, stage=st.name)

    def _stop_if_diverged(self, st: Stage, state: ckpt_lib.TrainerState) -> None:
        limit = self.recipe.runtime.max_nan_steps
        if state.nan_streak >= limit:
            last = ckpt_lib.latest(self.run_dir)
            raise TrainingDiverged(f"stage '{st.name}' step {state.step}: loss or gradients non-finite {limit} steps "
                                   f"in a row (runtime.max_nan_steps={limit}); stopped. Last good checkpoint: "
                                   f"{last if last else 'none'}")

    # ------------------------------------------------------------------ checkpoints
    def _save(self, wrapped, task, optimizer, loader, state: ckpt_lib.TrainerState, done: bool) -> None:
        if state.nan_streak:                                  # never overwrite good state while diverging
            self.log.info(f"step {state.step}: checkpoint skipped (non-finite steps in a row)")
            return
        state.stage_done = done
        self.strategy.sync_plain(wrapped, task)
        optim = self.strategy.optimizer_state(wrapped, optimizer)
        rank_state = {"rng": ckpt_lib.rng_state(), "data": loader.state_dict()}
        path = ckpt_lib.save(self.run_dir, state, self.d, task.model, optim, rank_state,
                             self.recipe.runtime.keep_last)
        self.log.event("checkpoint", f"checkpoint {path}", step=state.step, path=str(path))


def eval_frozen(module: nn.Module) -> None:
    """Parts with nothing to train this stage run in eval mode (no dropout, frozen norms): a frozen encoder
    gives the same features on every rank and every run, as the one it stands for at inference."""
    params = list(module.parameters())
    if params and not any(p.requires_grad for p in params):
        module.eval()
        return
    for child in module.children():
        eval_frozen(child)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(recipe: Recipe, run_dir: Path | str | None = None, resume: bool = False) -> Path:
    """Train a validated recipe; returns the final checkpoint folder."""
    return Trainer(recipe, run_dir, resume).run()
