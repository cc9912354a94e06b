"""Evaluation during training (`runtime.eval`, vlm.train.evaluation): val scores logged at every N steps
and at stage ends, the best checkpoint kept as best/, the trained weights the same with and without
evaluation, early stopping that also holds on --resume, and one-line errors for a bad eval config."""
from __future__ import annotations

import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import test_train_common as C

STEPS = (3, 3)


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_intra_op_thread):
    from vlm.data.synthetic import build_synthetic_world
    root = tmp_path_factory.mktemp("eval-world") / "sw"
    build_synthetic_world(root, samples=48, seed=0, eval_per_task=3, splits=("train", "val"), workers=1,
                          classification=False, tasks=["caption", "color", "shape"])
    return root


def recipe(tmp, world, name: str, eval_spec: dict | None = None, lr: float = 3e-3, **runtime):
    from vlm.train.recipe import load_recipe
    stages = [C.stage("align", ["media.*.projector.*"], steps=STEPS[0], lr=lr, filter={"kind": "caption"}),
              C.stage("sft", ["media.*.projector.*"], llm="full", steps=STEPS[1], lr=lr)]
    rt = {"log_samples": False, **({"eval": eval_spec} if eval_spec else {}), **runtime}
    return load_recipe(str(C.write_recipe(tmp / f"{name}.yaml", str(world / "train"), stages, **rt)))


def eval_rows(run) -> list[dict]:
    return C.events(run, "eval")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, world, one_intra_op_thread):
    """The same recipe trained without and with evaluation every 2 steps (2 val questions per benchmark)."""
    from vlm.train import train
    tmp = tmp_path_factory.mktemp("eval-runs")
    spec = {"benchmarks": ["sw-vqa-color", "sw-caption"], "every": 2, "limit": 2}
    train(recipe(tmp, world, "plain"), tmp / "plain")
    train(recipe(tmp, world, "evaluated", spec), tmp / "evaluated")
    return tmp / "plain", tmp / "evaluated"


def test_scores_are_logged_every_n_steps_and_at_stage_ends(runs):
    _, run = runs
    rows = eval_rows(run)
    assert [r["step"] for r in rows] == [2, 3, 4, 6]               # every 2, and the stage ends 3 and 6
    assert [r["stage"] for r in rows] == ["align", "align", "sft", "sft"]
    for r in rows:
        assert set(r["scores"]) == {"sw-vqa-color", "sw-caption"} and r["split"] == "val"
        assert r["score"] == pytest.approx(sum(r["scores"].values()) / 2)
    results = list((run / "eval" / "results").glob("*/sw-vqa-color*.json"))
    assert len(results) == 4 and all(json.loads(p.read_text())["metrics"]["n"] == 2 for p in results)
    assert (run / "tb").is_dir()


def test_best_is_the_checkpoint_with_the_best_score(tmp_path, world, monkeypatch, one_intra_op_thread):
    """The runner's scores scripted (a tiny model answers nothing right in 6 steps): best/ follows them."""
    import types

    import vlm
    from vlm.train import train
    scores = iter([0.1, 0.3, 0.2, 0.3])

    def scripted(specs, benches, cfg):
        assert cfg.split is None and all(b.data.split == "val" for b in benches) and cfg.limit == 2
        return types.SimpleNamespace(records=[{"benchmark": b.name, "status": "ok", "score": next(scores)}
                                              for b in benches])
    monkeypatch.setattr("benchmarks.runner.evaluate", scripted)
    run = tmp_path / "scripted"
    train(recipe(tmp_path, world, "scripted", {"benchmarks": ["sw-vqa-color"], "every": 2, "limit": 2}), run)
    rows = eval_rows(run)
    assert [(r["step"], r["score"], r["best"]) for r in rows] == [(2, 0.1, True), (3, 0.3, True), (4, 0.2, False),
                                                                   (6, 0.3, False)]
    best_step = 3                                    # the first of two equal bests
    info = json.loads((run / "best" / "best.json").read_text())
    assert info["step"] == best_step and info["score"] == 0.3 and info["scores"] == {"sw-vqa-color": 0.3}
    a = C.weights(run / "best")
    b = C.weights(run / "checkpoints" / f"step-{best_step:08d}" / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    vlm.load(run / "best")                                               # a loadable checkpoint
    assert not [p for p in (run / "eval").glob("step-*")]                # candidates not kept are deleted


def test_evaluation_leaves_training_bitwise_unchanged(runs):
    plain, evaluated = runs
    a, b = C.step_rows(plain), C.step_rows(evaluated)
    assert sorted(a) == sorted(b) == list(range(1, sum(STEPS) + 1))
    assert all(a[s]["loss"] == b[s]["loss"] for s in a)
    wa, wb = C.weights(plain / "final"), C.weights(evaluated / "final")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_early_stop_ends_the_run_and_resume_does_not_train_on(tmp_path, world, one_intra_op_thread):
    from vlm.train import train
    spec = {"benchmarks": ["sw-vqa-color"], "every": 1, "limit": 2, "patience": 2}
    rec = recipe(tmp_path, world, "stop", spec, lr=1e-12)    # nothing moves: every score equals the first
    run = tmp_path / "stop"
    train(rec, run)
    rows = eval_rows(run)
    assert [r["step"] for r in rows] == [1, 2, 3] and [r["stop"] for r in rows] == [False, False, True]
    assert [r["best"] for r in rows] == [True, False, False]
    assert sorted(C.step_rows(run)) == [1, 2, 3]                         # stage 'sft' never started
    assert [e["stage"] for e in C.events(run, "stage_start")] == ["align"]
    assert json.loads((run / "best" / "best.json").read_text())["step"] == 1 and (run / "final").is_dir()
    train(rec, run, resume=True)                                         # nothing left to do
    assert sorted(C.step_rows(run)) == [1, 2, 3] and len(eval_rows(run)) == 3


@pytest.mark.parametrize("field, value, message", [
    ("benchmarks", ["sw-vqa-nope"], "runtime.eval.benchmarks"),
    ("metric", "sw-vqa-shape", "runtime.eval.metric"),
    ("data", "/nonexistent/sw", "runtime.eval.data"),
    ("every", -1, "runtime.eval.every"),
])
def test_a_bad_eval_config_is_one_line_naming_the_field(tmp_path, world, field, value, message):
    from vlm.errors import UserError
    with pytest.raises(UserError) as e:
        recipe(tmp_path, world, "bad", {"benchmarks": ["sw-vqa-color"], field: value})
    assert message in str(e.value) and "\n" not in str(e.value)
