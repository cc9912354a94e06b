"""synthetic-world's text-only tasks (`--tasks text`): every answer follows from the question, the build is
opt-in and deterministic, the text benchmarks score a model without any encoder (chance from the choices),
and `llava-text-tiny` learns them: after a short run its greedy answers beat chance on held-out arithmetic and
fact questions."""
from __future__ import annotations

import re

import numpy as np
import pytest

from vlm.data.synthetic import build_synthetic_world, select_tasks
from vlm.data.synthetic.common import NUMBER_WORDS
from vlm.data.synthetic.text import FACTS, GENERATORS


@pytest.mark.parametrize("task", sorted(GENERATORS))
def test_each_answer_follows_from_its_question(task):
    for i in range(200):
        meta = GENERATORS[task](np.random.default_rng([3, i]), "train")["json"]
        q, answer, labels = meta["question"], meta["answer"], meta["labels"]
        assert answer in meta["choices"] and meta["task"] == task and set(meta) >= {"conversations", "difficulty"}
        if task == "text_fact":
            assert answer == FACTS[labels["thing"]] and f"the {labels['thing']}?" in q
        elif task == "text_arith":
            x, y = NUMBER_WORDS.index(q.split()[2]), NUMBER_WORDS.index(q.split()[4].rstrip("?"))
            assert NUMBER_WORDS.index(answer) == (x + y if " plus " in q else x - y)
        elif task == "text_count":
            target, words = re.fullmatch(r"How many times does '(\w+)' appear in: ([\w ]+)\?", q).groups()
            assert NUMBER_WORDS.index(answer) == words.split().count(target) >= 1
        else:
            which, words = re.fullmatch(r"What is the (first|last) word of: ([\w ]+)\?", q).groups()
            words = words.split()
            assert answer == words[0 if which == "first" else -1] and sorted(words) == meta["choices"]
            assert len(set(words)) == len(words)


def test_text_build_is_opt_in_and_deterministic(tmp_path):
    a = build_synthetic_world(tmp_path / "a", samples=40, eval_per_task=3, tasks=["text"], workers=1,
                              classification=False)
    build_synthetic_world(tmp_path / "b", samples=40, eval_per_task=3, tasks=sorted(GENERATORS), workers=1,
                          classification=False)
    assert a["splits"]["test"]["tasks"] == {t: 3 for t in GENERATORS}
    assert a["splits"]["train"]["modalities"] == {"text": 40}
    for split in ("train", "test"):
        for f in sorted((tmp_path / "a" / split).glob("*.tar")):
            assert f.read_bytes() == (tmp_path / "b" / split / f.name).read_bytes()
    assert not any(t.startswith("text_") for t in select_tasks(None))


def test_llava_text_tiny_learns_the_text_questions(tmp_path, one_intra_op_thread):
    """A short run of the recipe (test widths are the recipe's own: the tiny LLM) on a small text build: greedy
    answers to held-out questions, scored by the runner, well above the untrained model and chance on
    arithmetic and facts; the benchmarks run on a model with no encoder at all."""
    import vlm
    from benchmarks.registry import resolve
    from benchmarks.runner import RunConfig, evaluate
    from vlm.train import load_recipe, train
    from vlm.train.recipe import build_model
    data = tmp_path / "data"
    build_synthetic_world(data, samples=2000, eval_per_task=40, tasks=["text"], workers=1, classification=False,
                          splits=("train", "test"))
    recipe = load_recipe("llava-text-tiny", [f"data.world.shards=[{data / 'train'}]", "stages.0.steps=400",
                                             "runtime.checkpoint_every=0", "runtime.num_workers=0"])
    build_model(recipe.model, seed=0).save_pretrained(tmp_path / "untrained")
    train(recipe, tmp_path / "run")
    assert not vlm.load(tmp_path / "run" / "final").encoders
    res = evaluate([str(tmp_path / "run" / "final"), str(tmp_path / "untrained")], resolve(suite="synthetic-world-text"),
                   RunConfig(out=str(tmp_path / "eval"), data=str(data), progress=False))
    assert {r["status"] for r in res.records} == {"ok"}
    score = {(r["model_spec"].endswith("final"), r["benchmark"]): (r["score"], r["metrics"]["chance"])
             for r in res.records}
    assert score[(True, "sw-text-count")][1] == pytest.approx(1 / 8)
    assert score[(True, "sw-text-fact")][1] == pytest.approx(1 / 6)
    for bench in ("sw-text-arith", "sw-text-fact"):           # word order and counting need the recipe's budget
        trained, chance = score[(True, bench)]
        assert trained >= chance + 0.2 and trained > score[(False, bench)][0] + 0.2, (bench, score)
