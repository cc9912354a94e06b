"""Evaluation during training: a recipe's `runtime.eval` names benchmarks (or suites) that the benchmark
runner scores on a held-out split every N optimizer steps and at each stage's end; the scores go to
metrics.jsonl (an `eval` event) and TensorBoard (`eval/<benchmark>`, `eval/score`) beside the loss, the
checkpoint with the best score so far is kept as `<run>/best`, and the run can stop early when the score
has not improved for `patience` evaluations.

    runtime:
      eval: {benchmarks: [sw-vqa-trailer-shape, sw-vqa-trailer-instrument], every: 200, split: val,
             data: runs/av/data, metric: mean, patience: 0, limit: 100}

    <run>/eval/           the runner's output (results/<step-N>-<fingerprint>/..., aggregate.parquet)
    <run>/best/           the best checkpoint so far (a `vlm.load` folder; `best.json` beside it says which
                          step and score)

The model is scored as `vlm eval` scores it: rank 0 writes the weights to `<run>/eval/step-N` (the same
folder `vlm.load` reads) and runs `benchmarks.runner.evaluate` on it, one code path with the CLI. That
folder becomes `best/` when its score beats every earlier one (strictly; the first evaluation always
does) and is deleted otherwise. Every random generator is restored after the evaluation, so a run with
evaluation trains exactly (bitwise on the CPU) what the same run without it trains; the best score and
the evaluations since it are part of the checkpoint, so a resumed run keeps the same `best/` and stops
at the same step. Under torchrun rank 0 evaluates while the others wait (a long evaluation needs a
process-group timeout longer than it).
"""
from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

from vlm.atomic import replace_dir
from vlm.errors import UserError
from vlm.train import checkpoint as ckpt_lib

BEST, BEST_INFO, EVAL_DIR = "best", "best.json", "eval"


def eval_benchmarks(spec) -> tuple[list[str], list]:
    """`runtime.eval`'s benchmark names (each suite expanded to its benchmarks, each once, in order) and the
    benchmarks on its split; an unknown name is a UserError."""
    from benchmarks.registry import SUITES, get_benchmark, get_suite
    from benchmarks.runner import on_split
    names: list[str] = []
    for n in spec.benchmarks:
        for b in (get_suite(n).benchmarks if n in SUITES else [n]):
            if b not in names:
                names.append(b)
    return names, [on_split(get_benchmark(n), spec.split) for n in names]


def default_data(recipe) -> str | None:
    """The synthetic-world folder a recipe trains on: the dataset root (its `index.json` lists the
    splits) at or above its first data source's first shard pattern (runs/data for runs/data/train), or None."""
    for src in recipe.data.values():
        for pattern in src.shards[:1]:
            p = Path(pattern.split("{")[0].split("*")[0])
            for folder in (p, p.parent, p.parent.parent):
                try:
                    if "splits" in json.loads((folder / "index.json").read_text()):
                        return str(folder)
                except (OSError, ValueError):
                    continue
    return None


class TrainingEval:
    """Runs `runtime.eval` for a Trainer: `due`, then `run` (every rank calls it; rank 0 evaluates)."""

    def __init__(self, recipe, run_dir: Path, d, strategy, log):
        self.spec, self.run_dir, self.d, self.strategy, self.log = recipe.runtime.eval, Path(run_dir), d, strategy, log
        self.names, self.benches = eval_benchmarks(self.spec)
        self.data = self.spec.data or default_data(recipe)
        self.workers = max(1, recipe.runtime.num_workers)

    def due(self, step: int, stage_done: bool) -> bool:
        return stage_done or (self.spec.every > 0 and step % self.spec.every == 0)

    def run(self, wrapped, task, state: ckpt_lib.TrainerState, stage: str) -> bool:
        """Score the current weights; keep them as best/ when better; returns whether to stop early (the
        same answer on every rank)."""
        self.strategy.sync_plain(wrapped, task)
        stop = 0.0
        if self.d.is_main:
            rng = ckpt_lib.rng_state()
            try:
                stop = float(self._evaluate(task.model, state, stage))
            finally:
                ckpt_lib.set_rng_state(rng)
        (stop,) = self.d.all_reduce_sum([stop])
        return stop > 0

    def _evaluate(self, model, state: ckpt_lib.TrainerState, stage: str) -> bool:
        from benchmarks.config import RunConfig
        from benchmarks.runner import evaluate
        out = self.run_dir / EVAL_DIR
        candidate = out / f"step-{state.step:08d}"
        model.save_pretrained(candidate)
        cfg = RunConfig(out=str(out), data=self.data, cache=False, limit=self.spec.limit, progress=False,
                        report=False, workers=self.workers)
        records = evaluate([str(candidate)], self.benches, cfg).records
        bad = [r for r in records if r.get("status") != "ok" or r.get("score") is None]
        if bad:
            r = bad[0]
            raise UserError(f"recipe field 'runtime.eval.benchmarks': {r['benchmark']} cannot score this model "
                            f"({r.get('reason') or 'no score'})")
        scores = {name: float(r["score"]) for name, r in zip(self.names, records)}
        score = statistics.mean(scores.values()) if self.spec.metric == "mean" else scores[self.spec.metric]
        better = math.isfinite(score) and (state.best_score is None or score > state.best_score)
        if better:
            state.best_score, state.best_step, state.evals_since_best = score, state.step, 0
            self._keep(candidate, state, scores)
        else:
            state.evals_since_best += 1
            shutil.rmtree(candidate, ignore_errors=True)
        stop = bool(self.spec.patience) and state.evals_since_best >= self.spec.patience
        shown = ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
        self.log.event("eval", f"step {state.step} eval ({self.spec.split}): {shown}; {self.spec.metric} "
                       f"{score:.4f} (best {state.best_score:.4f} at step {state.best_step})"
                       + ("; stopping early" if stop else ""),
                       step=state.step, stage=stage, split=self.spec.split, scores=scores, score=score,
                       best=better, best_score=state.best_score, best_step=state.best_step, stop=stop)
        self.log.scalars("eval", {**scores, "score": score}, state.step)
        return stop

    def _keep(self, candidate: Path, state: ckpt_lib.TrainerState, scores: dict[str, float]) -> None:
        """candidate -> <run>/best, replacing the previous best (the old one is moved aside first, so a
        crash leaves one of the two whole)."""
        (candidate / BEST_INFO).write_text(json.dumps(
            {"step": state.step, "score": state.best_score, "metric": self.spec.metric, "split": self.spec.split,
             "scores": scores}, indent=2))
        replace_dir(candidate, self.run_dir / BEST)
