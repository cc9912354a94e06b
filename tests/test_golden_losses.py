"""Golden check: a few steps of each family's tiny recipe give, bit for bit, the losses recorded
before the architecture redesign (tests/golden/train_losses.json), so moving code never changes
what training computes. (llava-tiny and iaa-tiny were re-recorded once, on purpose, when HF vision
towers took transformers' default image preprocessing, so that exported models reproduce: issue 17.)

    python -m pytest tests/test_golden_losses.py
    VLM_UPDATE_GOLDEN=1 python -m pytest tests/test_golden_losses.py    # re-record, on purpose only

One intra-op thread (the recorded figures were made so; CPU reductions may differ with more).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import test_train_common as C

GOLDEN = Path(__file__).parent / "golden" / "train_losses.json"
RECIPES = ["llava-tiny", "iaa-tiny", "dragonfly-tiny"]
TASKS = ["color", "shape", "caption", "count", "multi_turn"]      # the tiny recipes' tasks: images only
STEPS = 2                                                          # per stage


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("golden") / "sw"
    C.run_vlm("data", "build", "synthetic-world", "--out", str(out), "--samples", "300", "--splits", "train",
              "--workers", "1", "--tasks", *TASKS)
    return out


def run_losses(recipe: str, world: Path, run: Path) -> list[dict]:
    overrides = [f"data.world.shards=[{world / 'train'}]", "runtime.checkpoint_every=0", "runtime.log_every=1",
                 "model.settings.llm=tiny:llama",      # the recorded losses start from the random tiny LLM
                 "runtime.num_workers=0"]
    for i in range(3):
        overrides += [f"stages.{i}.steps={STEPS}", f"stages.{i}.batch_size=4"]
    C.run_vlm("train", recipe, "--out", str(run), *overrides, timeout=600)
    return [{"step": s, "stage": r["stage"], "loss": r["loss"], "grad_norm": r["grad_norm"]}
            for s, r in sorted(C.step_rows(run).items())]


@pytest.mark.parametrize("recipe", RECIPES)
def test_losses_bitwise_equal_to_golden(recipe, world, tmp_path):
    got = run_losses(recipe, world, tmp_path / recipe)
    assert len(got) == 3 * STEPS
    if os.environ.get("VLM_UPDATE_GOLDEN"):
        table = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        table[recipe] = got
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(table, indent=1) + "\n")
        pytest.skip("golden re-recorded")
    want = json.loads(GOLDEN.read_text())[recipe]
    assert got == want           # exact floats: the JSON round trip of a Python float is exact
