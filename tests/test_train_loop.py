"""The step loop in-process: non-finite steps are skipped and counted, too many in a row stop the run
with the last good checkpoint intact; grad accumulation equals one big batch; a finished run folder
is not overwritten without --resume."""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import test_train_common as C

from vlm.cli import main
from vlm.model import MultimodalLM
from vlm.train.recipe import load_recipe
from vlm.train.trainer import Trainer


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> str:
    return C.write_image_world(tmp_path_factory.mktemp("loop") / "world", n=40)


def test_nonfinite_steps_are_skipped_then_stop_the_run_with_the_last_good_checkpoint(tmp_path, world, monkeypatch,
                                                                                     capsys):
    recipe = C.write_recipe(tmp_path / "r.yaml", world, [C.stage("sft", ["media.*.projector.*"], llm="full", steps=10)],
                            max_nan_steps=3, log_samples=False)
    bad_steps, calls = {2, 5, 6, 7, 8}, {"n": 0}
    forward = MultimodalLM.forward

    def poisoned(self, *a, **kw):                  # one micro-batch per step: call n is step n
        out = forward(self, *a, **kw)
        calls["n"] += 1
        return out * float("nan") if calls["n"] in bad_steps else out
    monkeypatch.setattr(MultimodalLM, "forward", poisoned)
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "non-finite 3 steps in a row" in err and "step-00000004" in err, err
    rows = C.step_rows(run)
    assert sorted(rows) == list(range(1, 8))                        # stopped at step 7
    assert [s for s, r in rows.items() if r["skipped"]] == [2, 5, 6, 7] and rows[7]["nan_steps"] == 4
    assert rows[3]["loss"] is not None and rows[2]["loss"] is None
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step-00000004"]            # 2 and 6 fell in a non-finite streak: not written
    w = C.weights(run / "checkpoints" / "step-00000004" / "model")
    assert all(torch.isfinite(v).all() for v in w.values())
    assert not (run / "final").exists()


def test_grad_accumulation_equals_one_big_batch(tmp_path, world):
    # eps 1e-6: with AdamW's default 1e-8, a gradient of ~1e-8 (a near-unused embedding row) turns
    # last-bit summation differences into LR-sized steps; the test is about the update, not that.
    losses, finals = {}, {}
    for accum in (1, 2):
        path = C.write_recipe(tmp_path / f"r{accum}.yaml", world,
                              [C.stage("sft", ["media.*.projector.*"], llm="full", steps=3, grad_accum=accum, lr=1e-3,
                                       eps=1e-6)],
                              checkpoint_every=0, log_samples=False)
        run = tmp_path / f"run{accum}"
        Trainer(load_recipe(str(path)), run).run()
        losses[accum] = [r["loss"] for _, r in sorted(C.step_rows(run).items())]
        finals[accum] = C.weights(run / "final")
    assert losses[1] == pytest.approx(losses[2], abs=1e-5)
    assert max((finals[1][k] - finals[2][k]).abs().max().item() for k in finals[1]) < 1e-5


def test_a_run_folder_with_checkpoints_needs_resume(tmp_path, world, capsys):
    (tmp_path / "run" / "checkpoints" / "step-00000002").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "step-00000002" / "trainer.json").write_text("{}")
    recipe = C.write_recipe(tmp_path / "r.yaml", world, [C.stage("a", ["media.*.projector.*"])])
    assert main(["train", str(recipe), "--out", str(tmp_path / "run")]) == 2
    assert "--resume" in capsys.readouterr().err
