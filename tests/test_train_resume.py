"""`vlm train` as users run it (subprocesses): kill -9 mid-stage, then --resume, gives bitwise the
losses, samples and weights of an uninterrupted run, also with a partial checkpoint folder left
behind; stage semantics (frozen stays bit-identical, trainable set logged); the run folder."""
from __future__ import annotations

import os
import shutil
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import test_train_common as C

STEPS = (4, 3)     # align (captions), sft (difficulty < 0.5): checkpoints every 2 steps and at stage ends


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One uninterrupted run and one killed (-9) after its first checkpoint, then resumed."""
    tmp = tmp_path_factory.mktemp("resume")
    world = C.write_image_world(tmp / "world")
    recipe = C.write_recipe(tmp / "r.yaml", world, [
        C.stage("align", ["media.*.projector.*"], steps=STEPS[0], filter={"kind": "caption"}),
        C.stage("sft", ["media.*.projector.*"], llm="full", steps=STEPS[1], filter={"max_difficulty": 0.5})])
    ref, victim = tmp / "ref", tmp / "victim"
    p_ref, killed_at = C.train_and_kill(recipe, ref, victim)
    # a crash during a checkpoint write: a temp folder, and (never made by the trainer) a marker-less one
    ckpts = victim / "checkpoints"
    newest = sorted(ckpts.glob("step-*"))[-1]
    shutil.copytree(newest, ckpts / ".tmp-step-00000099")
    (ckpts / "step-00000098").mkdir()
    shutil.copytree(newest / "model", ckpts / "step-00000098" / "model")
    resumed = C.run_vlm("train", str(recipe), "--out", str(victim), "--resume")
    assert p_ref.wait(timeout=300) == 0, p_ref.stderr.read()[-3000:]
    return {"ref": ref, "victim": victim, "killed_at": killed_at, "resumed_from": newest.name,
            "log": resumed.stdout + resumed.stderr, "recipe": recipe}


def test_resume_after_kill9_is_bitwise_the_uninterrupted_run(runs):
    ref, vic = C.step_rows(runs["ref"]), C.step_rows(runs["victim"])
    assert sorted(ref) == sorted(vic) == list(range(1, sum(STEPS) + 1))
    assert runs["killed_at"] < sum(STEPS)
    assert runs["resumed_from"] in runs["log"] and f"step {int(runs['resumed_from'][5:])}" in runs["log"]
    for step in ref:                                          # bitwise: the same float, every step
        assert ref[step]["loss"] == vic[step]["loss"], step
        assert ref[step]["lr"] == vic[step]["lr"] and ref[step]["grad_norm"] == vic[step]["grad_norm"]
    a, b = C.weights(runs["ref"] / "final"), C.weights(runs["victim"] / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_no_sample_is_skipped_or_repeated(runs):
    ref = (runs["ref"] / "samples-rank0.jsonl").read_text()
    assert ref == (runs["victim"] / "samples-rank0.jsonl").read_text()
    import json
    rows = [json.loads(x) for x in ref.splitlines()]
    align = [k for r in rows[:STEPS[0]] for k in r["keys"]]
    assert len(align) == len(set(align)) == STEPS[0] * 4          # one pass: each sample at most once


def test_partial_checkpoint_folders_are_ignored_and_removed(runs):
    ckpts = runs["victim"] / "checkpoints"
    assert not (ckpts / ".tmp-step-00000099").exists() and not (ckpts / "step-00000098").exists()
    assert "cleaned up after an interrupted save" in runs["log"]


def test_frozen_parameters_stay_bit_identical_and_trainable_sets_are_logged(runs):
    import vlm
    from vlm.train.recipe import build_model, load_recipe
    recipe = load_recipe(str(runs["recipe"]))
    init = build_model(recipe.model, seed=recipe.runtime.seed).state_dict()
    ckpts = runs["ref"] / "checkpoints"
    after_align = C.weights(ckpts / f"step-{STEPS[0]:08d}" / "model")
    after_sft = C.weights(ckpts / f"step-{sum(STEPS):08d}" / "model")
    for k, v in after_align.items():                     # align: only the projector moves
        assert torch.equal(v, init[k]) != (".projector." in k), k
    for k, v in after_sft.items():                       # sft: projector + LLM; the encoder stays
        assert torch.equal(v, after_align[k]) == k.startswith("encoders."), k
    starts = C.events(runs["ref"], "stage_start")
    assert [e["stage"] for e in starts] == ["align", "sft"]
    assert all(n.startswith("media.image.projector.") for n in starts[0]["trainable"])
    assert {n.split(".")[0] for n in starts[1]["trainable"]} == {"media", "llm"}
    assert "trainable 4 tensors" in (runs["ref"] / "train.log").read_text()
    model = vlm.load(runs["ref"] / "final")                  # the final folder is a plain checkpoint
    assert model.config.llm_mode == "full"


def test_run_folder_has_recipe_metrics_tensorboard_and_plot(runs):
    run = runs["ref"]
    assert (run / "recipe.yaml").exists() and (run / "loss_lr.png").stat().st_size > 1000
    assert list((run / "tb").glob("events.out.tfevents.*"))
    rows = C.step_rows(run)
    assert {"loss", "lr", "tok_per_s", "grad_norm", "stage"} <= set(rows[1])
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == [f"step-{s:08d}" for s in (2, 4, 6, 7)]   # every 2 steps + stage ends, keep_last 10


def test_a_resume_onto_another_encoder_layer_is_refused_naming_it():
    """Found by a review: hf:DIR CLIP folders read feature_layer -2 by default now (-1 before); a run started
    with the old default and resumed would have loaded its weights into a model reading other features."""
    import vlm
    from vlm.train.trainer import encoder_layer_difference
    base = {"audio": None, "music": None, "video": None}
    old = vlm.build("llava", "tiny", vision={"name": "tiny-clip", "feature_layer": -1}, **base)
    new = vlm.build("llava", "tiny", vision={"name": "tiny-clip"}, **base)           # the preset's -2
    assert encoder_layer_difference(new, old.config_dict()) == ("image", -1, -2)
    assert encoder_layer_difference(old, old.config_dict()) is None
    assert encoder_layer_difference(new, {}) is None and encoder_layer_difference(new, {"encoders": None}) is None
