"""Every built-in recipe RUNS (not only validates): `vlm list recipes`, each at test widths
(`Family.test_settings`: same kinds of encoders, LLM and connectors), two steps per stage, on a freshly
built small synthetic-world at the path the recipe names (`data/synthetic-world/...`, relative to the
working directory). Each stage must read no sample as a data error (samples of a modality the model
has no encoder for are `not_for_model`, not errors), log finite losses, get a gradient into what it
trains and change the weights.

A new family plugs in by registering its recipes; its encoder presets need a test width in
`vlm.families.base.TEST_ENCODERS` (and a builder with other width settings gives `Family.test_widths`);
a recipe that names data this test does not build fails here, naming the path.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import helpers_media as H
import test_train_common as C

from vlm.data.filters import FILTERED, NOT_FOR_MODEL
from vlm.families.llava import MUSIC_DATA, MUSIC_TASKS, TEXT_DATA
from vlm.train.recipe import build_model, list_recipes, smoke_recipe
from vlm.train.trainer import train

NOT_ERRORS = {FILTERED, NOT_FOR_MODEL, "too_long"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A working directory with the data the recipes name: `data/synthetic-world` (every task and split,
    small), `data/synthetic-world-music` / `-text` (its music / text tasks), `data/sw-mmeb` (its MMEB-style
    pair tasks) and `data/mmeb-train` (MMEB-train's format, a
    hand-made local copy through `vlm data convert mmeb`)."""
    from vlm.data.mmeb import convert_mmeb_train
    from vlm.data.synthetic import build_synthetic_world
    root = tmp_path_factory.mktemp("recipes")
    build_synthetic_world(root / "data" / "synthetic-world", samples=120, seed=0, eval_per_task=2, workers=1)
    build_synthetic_world(root / "data" / "sw-mmeb", samples=48, seed=0, eval_per_task=2, workers=1, tasks=["mmeb"])
    for folder, tasks in ((MUSIC_DATA, MUSIC_TASKS), (TEXT_DATA, ["text"])):   # the music / text recipes' builds
        build_synthetic_world(root / folder, samples=40, seed=0, eval_per_task=2, workers=1, tasks=tasks,
                              classification=False)
    copy = root / "MMEB-train"
    (copy / "images").mkdir(parents=True)
    for i, colour in enumerate(["red", "blue", "green", "yellow"]):
        H.image(colour, 32).save(copy / "images" / f"{i}.jpg")
    H.write_parquet(copy / "A-OKVQA" / "original-00000-of-00001.parquet", [
        {"qry": "<|image_1|>\nRepresent the given image with the following question: What colour?\n",
         "qry_image_path": f"images/{i % 4}.jpg", "pos_text": c, "pos_image_path": "", "neg_text": "",
         "neg_image_path": ""} for i, c in enumerate(["red", "blue", "green", "yellow"] * 2)])
    convert_mmeb_train(str(copy), str(root / "data" / "mmeb-train"))
    return root


def safetensors_of(folder: Path) -> dict:
    from safetensors.torch import load_file
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update({f"{f.name}:{k}": v for k, v in load_file(str(f)).items()})
    return out


@pytest.mark.parametrize("name", [r["name"] for r in list_recipes()])
def test_every_builtin_recipe_runs_on_the_data_it_names(name, workdir, tmp_path, monkeypatch, one_intra_op_thread):
    monkeypatch.chdir(workdir)
    run = tmp_path / "run"
    recipe = smoke_recipe(name, run)
    for src in recipe.data.values():
        for pattern in src.shards:
            assert Path(pattern).exists() or "://" in pattern, f"{name} names data this test does not build: {pattern}"
    init = build_model(recipe.model, seed=recipe.runtime.seed).save_pretrained(tmp_path / "init")
    train(recipe, run)

    rows = C.step_rows(run)
    assert len(rows) == 2 * len(recipe.stages)
    assert all(r["loss"] is not None and r["loss"] == r["loss"] for r in rows.values()), rows
    ends = C.events(run, "stage_end")
    assert [e["stage"] for e in ends] == [st.name for st in recipe.stages]
    before = safetensors_of(Path(init))
    for st, end in zip(recipe.stages, ends):
        data = end["data"]
        errors = {r: n for r, n in data["skipped"].items() if r not in NOT_ERRORS}
        assert not errors, f"{name} stage '{st.name}' read samples as errors: {errors}; e.g. {data['first']}"
        norms = [r["grad_norm"] for r in rows.values() if r["stage"] == st.name]
        assert any(n and n > 0 for n in norms), f"{name} stage '{st.name}': no gradient reaches its trainables"
        after = safetensors_of(run / "checkpoints" / f"step-{end['step']:08d}" / "model")
        changed = [k for k in after if k in before and not before[k].equal(after[k])]
        assert changed, f"{name} stage '{st.name}' trained nothing (no weight changed)"
        before = after
    assert json.loads((run / "final" / "config.json").read_text())


def test_an_image_only_model_drops_other_media_as_not_for_model(workdir, tmp_path, monkeypatch, one_intra_op_thread):
    """With no modality filter at all, an image-only llava's stage skips the audio / music / video samples
    as `not_for_model` (not errors); the same stage on the tiny model with every encoder reads them."""
    from vlm.train.data import build_stage_loader
    monkeypatch.chdir(workdir)
    image_only = ["model.settings.audio=null", "model.settings.music=null", "model.settings.video=null",
                  "stages.0.filter={}"]
    counts = {}
    for label, extra in (("image_only", image_only), ("all", ["stages.0.filter={}"])):
        recipe = smoke_recipe("llava-tiny", tmp_path / label, overrides=extra)
        model = build_model(recipe.model, seed=0)
        loader = build_stage_loader(recipe, 0, model.processor)
        it = iter(loader)
        for _ in range(6):
            next(it)
        counts[label] = dict(loader.stats.skipped)
        assert loader.stats.errors == 0, loader.stats.report()
    assert counts["image_only"].get(NOT_FOR_MODEL, 0) > 0
    assert NOT_FOR_MODEL not in counts["all"]
