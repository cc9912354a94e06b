"""The sound / music / video study (benchmarks/studies/modality_recipes.py) at a very small budget: the
omni recipe trained for one step a stage on two seeds (on its own trailer subset), its untrained and muted variants scored by the
runner; the table has every variant, the runner's chance and a target per question benchmark, and the
muted checkpoints really leave their streams out."""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from test_train_common import load_study


def test_modality_study_table(tmp_path, capsys, one_intra_op_thread):
    import vlm
    from vlm.data.synthetic import build_synthetic_world
    study = load_study("modality_recipes")
    data = tmp_path / "data"
    build_synthetic_world(data, samples=80, seed=0, eval_per_task=2, splits=("train", "test"), workers=1,
                          classification=False, tasks=study.SUBSETS["trailer"][0])
    steps = [f"stages.{i}.{k}={v}" for i in range(3) for k, v in (("steps", 1), ("batch_size", 2))]
    assert study.main(["--out", str(tmp_path / "out"), "--trailer-data", str(data), "--seeds", "0", "1",
                       "--recipes", "omni-tiny", "--limit", "2", *steps, "runtime.checkpoint_every=0",
                       "runtime.num_workers=0"]) == 0
    printed = capsys.readouterr().out
    table = (tmp_path / "out" / "table.md").read_text()
    assert table in printed
    assert "| benchmark | metric | n | chance | untrained | trained | music muted | soundtrack muted | target |" in table
    rows = json.loads((tmp_path / "out" / "summary.json").read_text())["rows"]
    benches = {"sw-vqa-trailer-shape", "sw-vqa-trailer-instrument", "sw-caption-trailer"}
    assert {(r["seed"], r["variant"], r["benchmark"]) for r in rows} == {
        (s, v, b) for s in (0, 1) for v in ("untrained", "trained", "music muted", "soundtrack muted") for b in benches}
    for r in rows:
        if r["benchmark"] == "sw-vqa-trailer-shape":
            assert r["chance"] == 0.25 and r["n"] == 2          # 4 shapes; --limit 2
        if r["benchmark"] == "sw-vqa-trailer-instrument":
            assert 0 < r["chance"] < 0.5
    shape_line = next(line for line in table.splitlines() if line.startswith("| sw-vqa-trailer-shape"))
    assert "trained ≥ chance + 0.20" in shape_line and "music muted stays" in shape_line
    assert "every seed above chance (binomial p < 0.01)" in shape_line
    assert study.p_above(0.25, 0.25, 100) > 0.5 and 0.001 < study.p_above(0.35, 0.25, 100) < 0.05
    assert study.p_above(0.39, 0.25, 100) < 0.01 and study.p_above(1.0, 0.25, 4) == 0.25 ** 4
    muted = vlm.load(tmp_path / "out" / "ckpt" / "omni-tiny-s0-soundtrack-muted")
    assert muted.media["video"].mute == ["audio", "music"]
    assert muted.media["video"].token_count().music is None and muted.media["video"].token_count().audio is None
