"""The SAIL-VL curriculum study (benchmarks/studies/curriculum_compare.py) at a tiny budget: the three
variants have the same alignment, data, trainable set and total SFT steps, the reverse order is the
curriculum's filters swapped with budgets and LRs kept by position, and the printed table has every
variant and a difference column per non-curriculum variant."""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from test_train_common import load_study


def study():
    return load_study("curriculum_compare")


def test_variants_match_the_budget_and_swap_the_filters():
    from vlm.train.recipe import raw_recipe
    s = study()
    raw, _ = raw_recipe(s.RECIPE)
    v = s.variants(raw)
    assert list(v) == ["curriculum", "mixed", "reverse"]
    assert v["curriculum"] == raw["stages"]                                     # the recipe as shipped
    total = sum(st["steps"] for st in raw["stages"])
    for stages in v.values():
        assert stages[0] == raw["stages"][0] and sum(st["steps"] for st in stages) == total
        assert all(st["trainable"] == raw["stages"][1]["trainable"] and st["llm"] == "full" for st in stages[1:])
        assert all(st["filter"]["tasks"] == raw["stages"][1]["filter"]["tasks"] for st in stages[1:])
    mixed = v["mixed"][1]["filter"]
    assert mixed["min_difficulty"] is None and mixed["max_difficulty"] is None
    cur, rev = v["curriculum"], v["reverse"]
    assert rev[1]["filter"] == cur[2]["filter"] and rev[2]["filter"] == cur[1]["filter"]
    assert [(st["steps"], st["lr"]) for st in rev] == [(st["steps"], st["lr"]) for st in cur]


def test_curriculum_study_table(tmp_path, capsys, one_intra_op_thread):
    from vlm.data.synthetic import build_synthetic_world
    s = study()
    data = tmp_path / "data"
    build_synthetic_world(data, samples=60, seed=0, eval_per_task=2, splits=("train", "test"), workers=1,
                          classification=False, tasks=s.TASKS)
    assert s.main(["--out", str(tmp_path / "out"), "--data", str(data), "--seeds", "0", "1", "--limit", "2",
                   "--every-stage", "steps=1", "batch_size=2", "--", "runtime.checkpoint_every=0",
                   "runtime.num_workers=0"]) == 0
    printed = capsys.readouterr().out
    text = (tmp_path / "out" / "table.md").read_text()
    assert text in printed
    assert "| benchmark | n | curriculum | mixed | reverse | mixed - curriculum | reverse - curriculum |" in text
    rows = json.loads((tmp_path / "out" / "summary.json").read_text())["rows"]
    assert {(r["seed"], r["variant"], r["benchmark"]) for r in rows} == {
        (sd, v, b) for sd in (0, 1) for v in s.VARIANTS for b in s.BENCHES}
    assert all(r["n"] == 2 for r in rows)
    for v in s.VARIANTS:                                 # every stage of every variant ran its one step
        steps = [json.loads(x)["step"] for x in (tmp_path / "out" / "train" / f"{v}-s0" / "metrics.jsonl")
                 .read_text().splitlines() if "loss" in x and "event" not in x]
        assert steps == list(range(1, 3 + (v != "mixed")))
    for b in s.BENCHES:
        line = next(x for x in text.splitlines() if x.startswith(f"| {b} |"))
        assert line.count("the spread") == 2
    cards = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert len(cards) == len(rows) and {c["model"] for c in cards} == {f"llava-tiny {v}" for v in s.VARIANTS}
