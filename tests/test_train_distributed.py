"""torchrun --nproc_per_node 2 (gloo, CPU): DDP and FSDP2 give the losses and final weights of one
process with the same global batch (atol 1e-5), on batches mixing text-only, image, audio and video
samples where rank 1 never gets an image, through two stages with different trainable sets."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import test_train_common as C

ATOL = 1e-5
# One torchrun launch runs both strategies (half the start-up cost of two launches); the process
# group is made once here (gloo cannot re-rendezvous on torchrun's store), and the trainer joins it.
LAUNCH = """
import sys
import torch.distributed as dist
from vlm.cli import main
recipe, out = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")
for strategy in ("ddp", "fsdp2"):
    rc = main(["train", recipe, "--out", f"{out}/{strategy}", f"runtime.strategy={strategy}"])
    if rc:
        sys.exit(rc)
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    world = C.write_mixed_world(tmp / "world")
    recipe = C.write_recipe(tmp / "r.yaml", world, [
        C.stage("align", ["media.*.projector.*"], steps=2, lr=1e-3, eps=1e-6),   # eps: see test_train_loop
        C.stage("sft", ["media.*.projector.*"], llm="full", steps=2, lr=1e-3, eps=1e-6)], model=C.MIXED_MODEL, checkpoint_every=0)
    (tmp / "launch.py").write_text(LAUNCH)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(tmp / "launch.py"), str(recipe), str(tmp)]
    dist = subprocess.Popen(cmd, cwd=C.REPO, env=C.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    single = C.run_vlm("train", str(recipe), "--out", str(tmp / "single"))   # meanwhile, on the other core
    _, err = dist.communicate(timeout=420)
    assert dist.returncode == 0, err[-4000:]
    assert single.returncode == 0
    return tmp


def test_rank1_batches_have_no_image_and_ranks_split_the_global_batch(runs):
    import json
    read = lambda p: [json.loads(x)["keys"] for x in p.read_text().splitlines()]
    single = read(runs / "single" / "samples-rank0.jsonl")
    for strategy in ("ddp", "fsdp2"):
        r0, r1 = (read(runs / strategy / f"samples-rank{r}.jsonl") for r in (0, 1))
        for s, a, b in zip(single, r0, r1):
            assert sorted(a + b) == sorted(s)
            assert all(int(k[1:]) % 2 == 0 for k in a) and all(int(k[1:]) % 2 == 1 for k in b)  # b: no image


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_ranks_match_one_process(runs, strategy):
    one, two = C.step_rows(runs / "single"), C.step_rows(runs / strategy)
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    for step in one:
        assert abs(one[step]["loss"] - two[step]["loss"]) < ATOL, (step, one[step]["loss"], two[step]["loss"])
        assert one[step]["label_tokens"] == two[step]["label_tokens"]
    a, b = C.weights(runs / "single" / "final"), C.weights(runs / strategy / "final")
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < ATOL, worst
    mid = C.weights(runs / strategy / "checkpoints" / "step-00000002" / "model")
    assert any(k.startswith("llm.") and not torch.equal(b[k], mid[k]) for k in b), "the LLM did not train in sft"
