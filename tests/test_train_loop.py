"""The step loop in-process: non-finite steps are skipped and counted, too many in a row stop the run
with the last good checkpoint intact; grad accumulation equals one big batch; a stage's lr_scale multiplies
the LR of the parameters it names; a finished run folder is not overwritten without --resume."""
from __future__ import annotations

import os
import shutil
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import test_train_common as C

import vlm
from vlm.cli import main
from vlm.model import MultimodalLM
from vlm.train.objectives import TaskModule
from vlm.train.recipe import load_recipe
from vlm.train.schedules import StageSchedule
from vlm.train.trainer import Trainer, decay_groups


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


def test_a_stage_whose_every_step_was_skipped_is_not_a_trained_model(tmp_path, world, monkeypatch, capsys):
    """Fewer steps than max_nan_steps, all non-finite: the run wrote final/ from untrained weights, exit 0."""
    recipe = C.write_recipe(tmp_path / "r.yaml", world, [C.stage("sft", ["media.*.projector.*"], steps=3)],
                            max_nan_steps=5, log_samples=False)
    forward = MultimodalLM.forward
    monkeypatch.setattr(MultimodalLM, "forward", lambda self, *a, **kw: forward(self, *a, **kw) * float("nan"))
    assert main(["train", str(recipe), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "stage 'sft': every one of its 3 steps was non-finite and skipped: nothing trained" in err, err
    assert not (tmp_path / "run" / "final").exists()


def test_a_loss_with_no_graph_to_the_trainable_weights_is_one_line(tmp_path, world, monkeypatch, capsys):
    recipe = C.write_recipe(tmp_path / "r.yaml", world, [C.stage("sft", ["media.*.projector.*"], steps=2)],
                            log_samples=False)
    forward = MultimodalLM.forward
    monkeypatch.setattr(MultimodalLM, "forward", lambda self, *a, **kw: forward(self, *a, **kw).detach())
    assert main(["train", str(recipe), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]                     # after the progress bar
    assert err.startswith("vlm train: error: stage 'sft' step 1: the loss depends on none of the stage's "
                          "trainable parameters"), err


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


def test_lr_scale_multiplies_the_lr_of_the_parameters_it_names(tmp_path, world):
    finals, losses = {}, {}
    for name, kw in {"lr2": {"lr": 2e-3}, "scaled": {"lr": 1e-3, "lr_scale": {"media.*.projector.*": 2.0}},
                     "lr1": {"lr": 1e-3}}.items():
        path = C.write_recipe(tmp_path / f"{name}.yaml", world, [C.stage("sft", ["media.*.projector.*"], steps=3, **kw)],
                              checkpoint_every=0, log_samples=False)
        Trainer(load_recipe(str(path)), tmp_path / name).run()
        finals[name] = C.weights(tmp_path / name / "final")
        losses[name] = [r["loss"] for _, r in sorted(C.step_rows(tmp_path / name).items())]
    assert losses["scaled"] == losses["lr2"] != losses["lr1"]
    assert all(torch.equal(finals["scaled"][k], finals["lr2"][k]) for k in finals["lr2"])
    # groups: the first matching pattern's scale, split from the decay / no-decay groups, on the model's names
    model = vlm.load(tmp_path / "lr1" / "final")
    for p in model.parameters():
        p.requires_grad_(True)
    stage = load_recipe(str(tmp_path / "scaled.yaml")).stages[0]
    stage.lr_scale = {"media.*.projector.*": 3.0, "media.*": 5.0, "llm.*.bias": 0.5}
    groups = decay_groups(TaskModule(model, None), 0.1, stage.lr_scale)
    scale_of = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    for n, p in model.named_parameters():
        want = (3.0 if n.startswith("media.") and ".projector." in n else 5.0 if n.startswith("media.")
                else 0.5 if n.startswith("llm.") and n.endswith(".bias") else 1.0)
        assert scale_of[id(p)][0] == want, n
    # no decay on norms, biases, embedding tables and what a module's no_weight_decay() names (timm's position
    # embedding and class token were decayed: a review)
    full = vlm.build("llava", "tiny")
    decays = {id(p) for g in decay_groups(full, 0.1) if g["weight_decay"] for p in g["params"]}
    tower = full.encoders["video"].image.model
    assert {"pos_embed", "cls_token"} <= set(tower.no_weight_decay())
    assert id(tower.pos_embed) not in decays and id(tower.cls_token) not in decays
    assert id(full.llm.get_input_embeddings().weight) not in decays and id(tower.patch_embed.proj.weight) in decays
    optimizer = torch.optim.AdamW(groups, lr=stage.lr)
    lr = StageSchedule(optimizer, stage).apply()
    assert sorted({g["lr"] / lr for g in optimizer.param_groups}) == pytest.approx(
        sorted({g["lr_scale"] for g in groups}))


def test_a_run_folder_with_checkpoints_needs_resume(tmp_path, world, capsys):
    (tmp_path / "run" / "checkpoints" / "step-00000002").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "step-00000002" / "trainer.json").write_text("{}")
    recipe = C.write_recipe(tmp_path / "r.yaml", world, [C.stage("a", ["media.*.projector.*"])])
    assert main(["train", str(recipe), "--out", str(tmp_path / "run")]) == 2
    assert "--resume" in capsys.readouterr().err


def test_a_finished_model_and_the_users_recipe_file_are_not_written_over(tmp_path, world, capsys):
    """Found by a review: a finished run whose checkpoints were removed was trained over (final/ replaced), and a
    recipe file in the run folder as recipe.yaml was replaced by the resolved recipe (its comments lost)."""
    recipe = C.write_recipe(tmp_path / "r.yaml", world, [C.stage("a", ["media.*.projector.*"], steps=1)],
                            checkpoint_every=0, log_samples=False)
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0
    shutil.rmtree(run / "checkpoints")                       # disk freed, the model kept
    before = (run / "final" / "model.safetensors").read_bytes()
    capsys.readouterr()
    for resume in ([], ["--resume"]):
        assert main(["train", str(recipe), "--out", str(run), "runtime.seed=7", *resume]) == 2
        err = capsys.readouterr().err.strip()
        assert "holds a finished model" in err and len(err.splitlines()) == 1, err
    assert (run / "final" / "model.safetensors").read_bytes() == before
    mine = tmp_path / "mine"
    mine.mkdir()
    text = "# my notes\n" + recipe.read_text()
    (mine / "recipe.yaml").write_text(text)
    assert main(["train", str(mine / "recipe.yaml"), "--out", str(mine)]) == 2
    assert "would write its resolved recipe over this file" in capsys.readouterr().err
    assert (mine / "recipe.yaml").read_text() == text and sorted(os.listdir(mine)) == ["recipe.yaml"]
    assert main(["train", str(recipe), 'runtime.output_dir=""']) == 2
    assert "recipe field 'runtime.output_dir': empty" in capsys.readouterr().err


def test_train_log_names_each_skip_reason_with_an_example(tmp_path, capsys):
    """train.log said only "144 samples read, 136 skipped (8 errors ...)"; the reasons were in metrics.jsonl alone
    (found by a review)."""
    from vlm.data.writer import ShardWriter
    with ShardWriter(tmp_path / "world", max_count=10**6, validate=False) as w:
        for i in range(12):
            sample = C.image_sample(i)
            if i == 5:
                sample["jpg"] = b"not a jpeg"
            w.write(sample)
    recipe = C.write_recipe(tmp_path / "r.yaml", str(tmp_path / "world"), [C.stage("a", ["media.*.projector.*"],
                            steps=3)], checkpoint_every=0, log_samples=False, max_error_rate=0.5)
    assert main(["train", str(recipe), "--out", str(tmp_path / "run")]) == 0
    log = (tmp_path / "run" / "train.log").read_text()
    assert "skipped (1 errors" in log and "  bad_image: 1  e.g. " in log and "s0005" in log, log


def test_wandb_that_cannot_start_is_one_line_and_leaves_the_logs(tmp_path, monkeypatch):
    """`runtime.wandb=true` without a wandb login was a 40-line traceback, after a resume had already cut the
    metrics file back (found by a review)."""
    wandb = pytest.importorskip("wandb")
    from vlm.errors import UserError
    from vlm.train.logging import RunLog

    def refuse(**kw):
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")
    monkeypatch.setattr(wandb, "init", refuse)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    with pytest.raises(UserError, match=r"recipe field 'runtime.wandb': wandb does not start \(UsageError: No API "
                                        r"key configured"):
        RunLog(tmp_path, True, resume_step=1, wandb={"project": "p"})
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'


def test_ddp_without_torchrun_trains_one_process_and_says_so(tmp_path, world, capsys):
    recipe = C.write_recipe(tmp_path / "r.yaml", world, [C.stage("a", ["media.*.projector.*"], steps=1)],
                            log_samples=False)
    assert main(["train", str(recipe), "--out", str(tmp_path / "run"), "runtime.strategy=fsdp2"]) == 0
    out = capsys.readouterr().out
    assert "runtime.strategy is 'fsdp2' but this is one process" in out and "torchrun --nproc_per_node N" in out
    assert main(["train", str(recipe), "--out", str(tmp_path / "run2")]) == 0
    assert "one process" not in capsys.readouterr().out


def test_a_run_folder_in_use_is_refused(tmp_path, world, capsys):
    """Two `vlm train` into one folder at once both crashed (a checkpoint rename raced, metrics.jsonl torn) and
    left two recipes' checkpoints mixed; the second is refused now, and the folder is free again after."""
    from filelock import FileLock

    from vlm.train.trainer import LOCK_FILE
    recipe = C.write_recipe(tmp_path / "r.yaml", world, [C.stage("a", ["media.*.projector.*"], steps=1)],
                            checkpoint_every=0, log_samples=False)
    run = tmp_path / "run"
    run.mkdir()
    with FileLock(str(run / LOCK_FILE)):                  # (FileLock: per process and thread; this test holds it)
        import threading
        out = {}
        t = threading.Thread(target=lambda: out.update(rc=main(["train", str(recipe), "--out", str(run)])))
        t.start()
        t.join()
    assert out["rc"] == 2 and "is in use by another `vlm train`" in capsys.readouterr().err
    assert not (run / "recipe.yaml").exists()
    assert main(["train", str(recipe), "--out", str(run)]) == 0


def test_resume_names_a_damaged_checkpoint_file_and_a_changed_recipe(tmp_path, world, capsys):
    recipe = C.write_recipe(tmp_path / "r.yaml", world, [C.stage("a", ["media.*.projector.*"], steps=3)],
                            checkpoint_every=1, log_samples=False)
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0
    capsys.readouterr()
    # the budget raised on resume: refused (it used to finish at once, training nothing more)
    assert main(["train", str(recipe), "--out", str(run), "--resume", "stages.0.steps=4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'stages.0.steps' (3 -> 4)" in err and len(err.splitlines()) == 1, err
    # the shuffle buffer makes the data stream: refused as well (it trained on another stream, exit 0)
    assert main(["train", str(recipe), "--out", str(run), "--resume", "runtime.shuffle_buffer=10"]) == 2
    assert "'runtime.shuffle_buffer'" in capsys.readouterr().err
    # other benchmarks scored from here on: their scores would be compared with the best score of the first ones
    # (here evaluation is off, so the setting is refused as such: test_train_eval has the resume's own check)
    assert main(["train", str(recipe), "--out", str(run), "--resume", "runtime.eval.split=test"]) == 2
    assert "'runtime.eval.split'" in capsys.readouterr().err
    # settings a resume may change are allowed
    assert main(["train", str(recipe), "--out", str(run), "--resume", "runtime.log_every=5"]) == 0
    capsys.readouterr()
    # a hand-edited trainer.json, a missing rank file (mid-stage: it is read): one line naming the file
    last, mid = run / "checkpoints" / "step-00000003", run / "checkpoints" / "step-00000002"
    good = (last / "trainer.json").read_text()
    shutil.rmtree(run / "final")
    (last / "trainer.json").write_text(good.replace('"step": 3', '"step": "three"'))
    assert main(["train", str(recipe), "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "trainer.json: 'step' is 'three', not a int" in err and len(err.splitlines()) == 1, err
    shutil.rmtree(last)
    # mid-stage, other data workers: the data position cannot be kept; said before the model is built
    assert main(["train", str(recipe), "--out", str(run), "--resume", "runtime.num_workers=2"]) == 2
    out, err = capsys.readouterr()
    assert "by 1 data worker(s) per rank, this run has 2" in err and "runtime.num_workers=1" in err, err
    assert len(err.strip().splitlines()) == 1 and "resuming from" not in out
    rank = (mid / "rank-00000.pt").read_bytes()
    (mid / "rank-00000.pt").unlink()
    assert main(["train", str(recipe), "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{mid / 'rank-00000.pt'}: missing" in err and len(err.splitlines()) == 1, err
    torch.save({"x": {}}, mid / "rank-00000.pt")                      # a file of another structure: KeyError 'data'
    assert main(["train", str(recipe), "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{mid / 'rank-00000.pt'}: not a rank state" in err and len(err.splitlines()) == 1, err
    (mid / "rank-00000.pt").write_bytes(rank)
    # a recipe.yaml deleted: resumed with a warning; what a kill while final/ was written leaves: removed
    (run / ".final.tmp-abc123").mkdir()                             # what a kill while final/ was written leaves
    (run / "recipe.yaml").unlink()
    assert main(["train", str(recipe), "--out", str(run), "--resume"]) == 0
    assert "recipe.yaml is missing, so this recipe cannot be checked" in capsys.readouterr().err
    assert not (run / ".final.tmp-abc123").exists() and (run / "final" / "config.json").is_file()
    # finished twice, done once (it was logged twice)
    from vlm.train.logging import read_metrics
    assert [r.get("event") for r in read_metrics(run)].count("done") == 1
    mid = run / "checkpoints" / "step-00000002"                     # mid-stage: optimizer and data state read
    for name in ("optimizer.pt", "rank-00000.pt"):
        shutil.rmtree(run / "final")
        shutil.rmtree(run / "checkpoints" / "step-00000003")
        good = (mid / name).read_bytes()
        (mid / name).write_bytes(good[:100])
        assert main(["train", str(recipe), "--out", str(run), "--resume"]) == 2
        err = capsys.readouterr().err.strip()
        assert f"{mid / name}: unreadable checkpoint file" in err and len(err.splitlines()) == 1, err
        (mid / name).write_bytes(good)
        assert main(["train", str(recipe), "--out", str(run), "--resume"]) == 0
        capsys.readouterr()
    # a readable optimizer file that is not this stage's state: torch took some of these in silence (Adam reset)
    good = torch.load(mid / "optimizer.pt", weights_only=True)
    name0 = next(iter(good["state"]))
    for damaged, why in [([1, 2], "no 'state' mapping"), ({**good, "state": {}}, "no moments after 2 step"),
                         ({**good, "param_groups": []}, "0 parameters in its groups for the stage's 4"),
                         ({**good, "state": {**good["state"], name0: {"step": 1}}}, f"entry '{name0}' is not AdamW")]:
        shutil.rmtree(run / "final")
        shutil.rmtree(run / "checkpoints" / "step-00000003")
        torch.save(damaged, mid / "optimizer.pt")
        assert main(["train", str(recipe), "--out", str(run), "--resume"]) == 2
        err = capsys.readouterr().err.strip()
        assert f"{mid / 'optimizer.pt'}: not this stage's optimizer state ({why}" in err, err
        assert len(err.splitlines()) == 1, err
        torch.save(good, mid / "optimizer.pt")
        assert main(["train", str(recipe), "--out", str(run), "--resume"]) == 0
        capsys.readouterr()


def test_a_resume_at_a_stage_end_checks_the_data_and_workers_and_a_fresh_start_inherits_nothing(tmp_path, world, capsys):
    """Found by a review of the run lifecycle:
    - resumed at a stage's end, a run whose shards were rebuilt in place trained its later stages on the new data
      (exit 0; mid-stage it was refused), and one with other data workers on another data order;
    - a run started from scratch in a folder an earlier run was killed in kept that run's fitted objective state
      (a MERT teacher fitted on other data), best/ model, TensorBoard events and sample-log rows;
    - a hand-edited schedule, or a resume onto another number of stages: a traceback / a 4 kB line."""
    import json
    data = tmp_path / "data"
    shutil.copytree(world, data)
    recipe = C.write_recipe(tmp_path / "r.yaml", str(data), [C.stage("a", ["media.*.projector.*"], steps=2),
                                                             C.stage("b", ["media.*.projector.*"], steps=2)],
                            checkpoint_every=1)
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0
    shutil.rmtree(run / "final")
    for late in ("step-00000003", "step-00000004"):               # back to the end of stage a
        shutil.rmtree(run / "checkpoints" / late)
    capsys.readouterr()
    assert main(["train", str(recipe), "--out", str(run), "--resume", "runtime.num_workers=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "saved at the end of stage 'a' by 1 data worker(s) per rank, this run has 2" in err and \
        len(err.splitlines()) == 1, err
    shard = next(data.glob("*.tar"))
    shard.write_bytes(shard.read_bytes() + b"\0" * 512)           # rebuilt in place: another size
    assert main(["train", str(recipe), "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"(the end of stage 'a'): data source 'world': shard {shard} changed since the checkpoint" in err and \
        len(err.splitlines()) == 1, err
    # another number of stages: the counts and names, not both stage lists
    three = C.write_recipe(tmp_path / "r3.yaml", str(data), [C.stage(n, ["media.*.projector.*"], steps=2)
                                                             for n in ("a", "b", "c")], checkpoint_every=1)
    assert main(["train", str(three), "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "at 'stages (count)' ('2: a, b' -> '3: a, b, c')" in err and len(err) < 400, err
    # a hand-edited schedule: one line naming the field
    ckpt = run / "checkpoints" / "step-00000001"
    state = json.loads((ckpt / "trainer.json").read_text())
    (ckpt / "trainer.json").write_text(json.dumps({**state, "schedule": {}}))
    from vlm.train.checkpoint import read_state
    with pytest.raises(vlm.errors.UserError, match="'schedule.steps' is None, not a count"):
        read_state(ckpt)
    # a fresh start where an earlier run was killed before its first checkpoint: nothing of it is inherited
    fresh = tmp_path / "fresh"
    for d in ("objectives/stage-0", "best", "tb", "eval"):
        (fresh / d).mkdir(parents=True)
    (fresh / "objectives" / "stage-0" / "teacher.safetensors").write_bytes(b"another run's teacher")
    (fresh / "samples-rank0.jsonl").write_text('{"step": 1, "text": "another run"}\n' * 5)
    (fresh / "recipe.yaml").write_text("the killed run's recipe\n")
    one = C.write_recipe(tmp_path / "r1.yaml", world, [C.stage("a", ["media.*.projector.*"], steps=2)],
                         checkpoint_every=0)
    assert main(["train", str(one), "--out", str(fresh)]) == 0
    out = capsys.readouterr().out
    assert "moved what an earlier run left there (objectives, best, eval, tb, samples-rank0.jsonl) to" in out, out
    [aside] = fresh.glob("previous-*")                   # kept, not deleted: its best/ may be all that run made
    assert (aside / "objectives" / "stage-0" / "teacher.safetensors").read_bytes() == b"another run's teacher"
    assert not (fresh / "objectives").exists() and not (fresh / "best").exists()
    rows = [json.loads(r) for r in (fresh / "samples-rank0.jsonl").read_text().splitlines()]
    assert rows and all(r.get("text") != "another run" for r in rows)
    # a folder no run wrote (no recipe.yaml, no train.log) is left alone
    mine = tmp_path / "mine"
    (mine / "eval").mkdir(parents=True)
    assert main(["train", str(one), "--out", str(mine)]) == 0
    assert (mine / "eval").is_dir() and not list(mine.glob("previous-*"))


def test_a_checkpoint_folder_removed_under_its_save_is_one_line(tmp_path):
    """`rm -rf RUN/checkpoints` while a checkpoint was being written: a FileNotFoundError traceback (a review)."""
    from types import SimpleNamespace

    from vlm.train import checkpoint as ckpt_lib

    class Removed:
        def save_pretrained(self, folder):
            shutil.rmtree(tmp_path / "checkpoints")
            (folder / "model.safetensors").write_bytes(b"")

    d = SimpleNamespace(is_main=True, rank=0, barrier=lambda: None)
    with pytest.raises(vlm.errors.UserError, match=r"the checkpoint being written was removed .* rerun with --resume"):
        ckpt_lib.save(tmp_path, ckpt_lib.TrainerState(world_size=1, recipe_name="t"), d, Removed(), {}, {"rng": 0},
                      keep_last=2)
