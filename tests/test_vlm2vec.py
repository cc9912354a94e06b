"""VLM2Vec training: GradCache gives the loss and gradients of the one-pass batch (64 pairs in 8 chunks),
replays dropout, and trains under 2-rank DDP as one process does; the vlm2vec family turns any checkpoint
into an embedder and its tiny recipe validates."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import helpers_media as H
import test_objectives as O
import test_train_common as C


def pair_batch(model, n: int = 64) -> dict:
    """n image -> caption pairs with one hard negative each; instructions and captions of varied length
    so every chunk pads to another width."""
    from vlm.data.formats import FORMATS
    from vlm.data.writer import encode_sample
    fmt = FORMATS.get("pairs")(model.processor, max_len=128, negatives=1)
    items = []
    for i in range(n):
        c, s = O.COLORS[i % 4], O.SHAPES[(i // 4) % 2]
        words = " very" * (i % 5)
        enc = encode_sample({"__key__": f"p{i}", "jpg": H.image(c, 32, s), "json": {
            "query": {"text": "<image>\nFind a caption for this image.", "instruction": "Retrieve" + words},
            "positive": {"text": f"a{words} {c} {s}"}, "negatives": [{"text": f"a {O.COLORS[(i + 1) % 4]} {s}"}]}})
        items.append(fmt.make(f"p{i}", {k: v for k, v in enc.items() if not k.startswith("__")}, "memory")[0])
    return fmt.collate(items, model.processor.pad_id)


def trainable_model(dtype=torch.float32, lora: dict | None = None):
    import vlm
    model = vlm.build("llava", "tiny", audio=None, music=None, video=None)
    model.set_llm_mode("lora" if lora else "full", lora)
    for n, p in model.named_parameters():
        p.requires_grad_(lora is None or "lora_" in n or n.startswith("media."))
    return model.to(dtype)


def as_dtype(batch: dict, dtype) -> dict:
    return {side: {**sub, "media": {m: [x.to(dtype) for x in v] for m, v in sub["media"].items()}}
            for side, sub in batch.items()}


def loss_and_grads(model, settings: dict, batch: dict, seed: int = 0):
    """The trainer's view: mean loss over the queries and the gradients of that mean (as the trainer does:
    backpropagate the returned sum as it is, then scale the gradients by 1 / count)."""
    from vlm.train.objectives import build_objective
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = build_objective("contrastive", {"negatives": 1, **settings})(model, batch)
    out.loss.backward()
    return (out.loss / out.count).item(), out.metrics["accuracy"], {
        n: p.grad / out.count for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.usefixtures("one_intra_op_thread")
def test_grad_cache_64_in_8_chunks_equals_one_pass():
    model = trainable_model(torch.float64)          # float64: the comparison sees the method, not fp32 noise
    batch = as_dtype(pair_batch(model), torch.float64)
    l1, a1, g1 = loss_and_grads(model, {}, batch)
    l8, a8, g8 = loss_and_grads(model, {"chunk_size": 8}, batch)
    assert sorted(g1) == sorted(g8) and len(g1) > 20
    assert abs(l1 - l8) < 1e-5 and a1 == a8
    worst = max((g1[k] - g8[k]).abs().max().item() for k in g1)
    assert worst < 1e-5, worst
    assert max(g.abs().max().item() for g in g1.values()) > 1e-2          # the gradients are not all ~0
    # and in float32, as training runs: equal up to float32 rounding
    model32 = trainable_model()
    b32 = pair_batch(model32)
    l1, _, g1 = loss_and_grads(model32, {}, b32)
    l8, _, g8 = loss_and_grads(model32, {"chunk_size": 8}, b32)
    assert abs(l1 - l8) < 1e-5
    assert all(torch.allclose(g1[k], g8[k], rtol=1e-4, atol=1e-5) for k in g1)


@pytest.mark.usefixtures("one_intra_op_thread")
def test_grad_cache_replays_dropout():
    """With LoRA dropout on, GradCache equals embedding the same chunks with their graphs kept (the same
    masks drawn): the second pass restores each chunk's RNG state."""
    from vlm.data.collate import slice_rows
    from vlm.train.objectives.contrastive import Contrastive, ContrastiveSettings
    model = trainable_model(torch.float64, lora={"r": 4, "lora_alpha": 8, "lora_dropout": 0.3})
    model.train()
    batch = as_dtype(pair_batch(model, 16), torch.float64)
    _, _, cached = loss_and_grads(model, {"chunk_size": 4}, batch, seed=3)

    model.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    proc, reps = model.processor, {}
    for side in ("query", "target"):
        n = batch[side]["input_ids"].shape[0]
        reps[side] = torch.cat([model.embed(**slice_rows(batch[side], i, min(i + 4, n), proc.template.placeholder_id,
                                                         proc.num_media_tokens)) for i in range(0, n, 4)])
    obj = Contrastive(ContrastiveSettings(negatives=1))
    loss, _ = obj.scores(reps["query"], reps["target"])
    loss.backward()
    ref = {n: p.grad / 16 for n, p in model.named_parameters() if p.grad is not None}
    assert sorted(ref) == sorted(cached) and any("lora_" in k for k in ref)
    assert max((ref[k] - cached[k]).abs().max().item() for k in ref) < 1e-9


@pytest.mark.usefixtures("one_intra_op_thread")
def test_training_weights_the_embedding_never_uses_is_one_line():
    """Only the LM head trainable: the embedding (last hidden state) has no graph to it. GradCache's second pass
    and the trainer's backward both said "element 0 of tensors does not require grad" in a traceback."""
    from vlm.errors import UserError
    model = trainable_model()
    for n, p in model.named_parameters():
        p.requires_grad_("lm_head" in n)
    batch = pair_batch(model, 4)
    with pytest.raises(UserError, match="objective 'contrastive': the loss depends on none"):
        loss_and_grads(model, {"chunk_size": 2}, batch)
    # only the image projector trains: the text chunks have no graph, the image ones do; GradCache equals one pass
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith("media."))
    l1, _, g1 = loss_and_grads(model, {}, batch)
    l2, _, g2 = loss_and_grads(model, {"chunk_size": 2}, batch)
    assert abs(l1 - l2) < 1e-5 and sorted(g1) == sorted(g2) and g1
    assert all(torch.allclose(g1[k], g2[k], rtol=1e-4, atol=1e-6) for k in g1)


def test_slice_rows_keeps_each_rows_media_and_cuts_padding():
    from vlm.data.collate import collate, slice_rows
    from vlm.data.processor import Processed
    pid = {"image": 7, "audio": 8}
    rows = [Processed([1, 7, 7, 2], [0] * 4, {"image": [torch.zeros(1)]}),
            Processed([1, 2], [0] * 2),
            Processed([7, 7, 8, 7, 7, 2, 2], [0] * 7, {"image": [torch.ones(1), torch.full((1,), 2.0)],
                                                       "audio": [torch.full((1,), 3.0)]})]
    b = collate(rows, pad_id=0)

    def count(m, item):
        return 2 if m == "image" else 1
    s = slice_rows(b, 1, 3, pid, count)
    assert s["input_ids"].shape == (2, 7) and [x.item() for x in s["media"]["image"]] == [1.0, 2.0]
    s = slice_rows(b, 0, 2, pid, count)
    assert s["input_ids"].shape == (2, 4) and [x.item() for x in s["media"]["image"]] == [0.0]
    assert "audio" not in s["media"] and torch.equal(s["attention_mask"][1], torch.tensor([1, 1, 0, 0]))


# ------------------------------------------------------------------ 2 ranks (GradCache) == 1 process
@pytest.fixture(scope="module")
def gc_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gradcache")
    world = O.write_pair_world(tmp / "pairs")
    one = O.pair_recipe(tmp, world, steps=3, name="one", checkpoint_every=0)
    two = O.pair_recipe(tmp, world, steps=3, name="two", settings={"chunk_size": 2}, checkpoint_every=0)
    (tmp / "launch.py").write_text(O.DDP_LAUNCH)
    ddp = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            str(tmp / "launch.py"), str(two), str(tmp / "ddp"), "ddp"], cwd=C.REPO, env=C.env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    C.run_vlm("train", str(one), "--out", str(tmp / "single"), timeout=600)
    _, err = ddp.communicate(timeout=600)
    assert ddp.returncode == 0, err[-4000:]
    return tmp


def test_grad_cache_under_two_ranks_equals_one_process_without_it(gc_ranks):
    one, two = C.step_rows(gc_ranks / "single"), C.step_rows(gc_ranks / "ddp")
    assert sorted(one) == sorted(two) == [1, 2, 3]
    for s in one:
        assert abs(one[s]["loss"] - two[s]["loss"]) < 1e-5, (s, one[s]["loss"], two[s]["loss"])
        assert one[s]["queries"] == two[s]["queries"] == 8
    a, b = C.weights(gc_ranks / "single" / "final"), C.weights(gc_ranks / "ddp" / "final")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst


def test_the_open_clip_baseline_reads_the_backbones_tokenizer(tmp_path):
    """vlm2vec_compare.py's (b): an open_clip CLIP whose text tower tokenises with the vlm2vec backbone's own
    tokenizer (the same ids), so its trainable parameters match the backbone's, not CLIP's 49k-token table."""
    import json

    from transformers import AutoTokenizer

    import vlm
    from benchmarks.studies.vlm2vec_compare import CLIP_CFG, clip_config, llm_tokenizer
    from vlm.embed.backends import OpenClipBackend
    from vlm.embed.items import Item
    vlm.build("llava", "tiny", audio=None, music=None, video=None).save_pretrained(tmp_path / "backbone")
    tok = llm_tokenizer(tmp_path / "tok", tmp_path / "backbone")
    (tmp_path / "small.json").write_text(json.dumps(clip_config(tok)))
    (tmp_path / "big.json").write_text(json.dumps(CLIP_CFG))
    small, big = OpenClipBackend(f"open_clip:{tmp_path / 'small.json'}"), OpenClipBackend(f"open_clip:{tmp_path / 'big.json'}")
    text = "A red circle in the center."
    ids = AutoTokenizer.from_pretrained(str(tmp_path / "backbone"))(text).input_ids
    small.load()
    assert small.preparer()([Item(text=text)])["tokens"][0, :len(ids)].tolist() == ids
    size = {n: sum(p.numel() for p in b.model.parameters()) for n, b in (("small", small), ("big", big))}
    assert size["big"] - size["small"] == (49408 - len(AutoTokenizer.from_pretrained(str(tok)))) * 64
    v = small.embed_batch(small.preparer()([Item(text=text), Item(text="a blue square")]))
    assert v.shape == (2, 64) and not torch.allclose(v[0], v[1])
    (tok / "tokenizer.json").write_text((tok / "tokenizer.json").read_text())          # rewritten: another file
    assert OpenClipBackend(f"open_clip:{tmp_path / 'small.json'}").fingerprint != small.fingerprint


def test_comparison_report_calls_a_float_tie_a_tie():
    """benchmarks/studies/vlm2vec_compare.py's claim lines: means equal but for the last bit of a float sum
    (0.1 + 0.2 vs 0.3) are not 'met'; a real lead is, and 'every seed' needs the worst seed above the best."""
    from benchmarks.studies.vlm2vec_compare import META, report
    row = {"p@1/cls-shape": 0.5, **{m: 0.3 for m in META}, "ind": 0.3, "ood": 0.3, "precision@1": 0.3}
    ours = [dict(row, vqa=0.1 + 0.2, retrieval=0.4), dict(row, retrieval=0.35)]
    r = {"seeds": [0, 1], "steps": 2, "val": {}, "chosen": {}, "params": {}, "minutes": 0.1,
         "test": {"vlm2vec-tiny": ours, "(a) untrained": [dict(row), dict(row)], "(b) open_clip": [dict(row), dict(row)]}}
    lines = report(r).splitlines()
    assert "- vqa: vs (b) open_clip: 0.300 vs 0.300: NOT met (a tie)" in lines
    assert "- retrieval: vs (b) open_clip: 0.375 vs 0.300: met (every seed)" in lines
    assert "- grounding: vs (a) untrained: 0.300 vs 0.300: NOT met (a tie)" in lines


def test_resume_may_change_the_gradcache_chunk_size_but_not_the_loss(tmp_path, capsys):
    """GradCache's chunk size is memory, not the loss: a --resume may change it (it used to be refused as a
    changed recipe); the temperature, which changes the loss, is still refused."""
    from vlm.cli import main
    world = O.write_pair_world(tmp_path / "pairs")
    recipe = O.pair_recipe(tmp_path, world, steps=2, settings={"chunk_size": 4}, checkpoint_every=1)
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["train", str(recipe), "--out", str(run), "--resume", "stages.0.objective_settings.chunk_size=2"]) == 0
    capsys.readouterr()
    assert main(["train", str(recipe), "--out", str(run), "--resume",
                 "stages.0.objective_settings.temperature=0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'stages.0.objective_settings.temperature' (0.05 -> 0.1)" in err and len(err.splitlines()) == 1, err


def test_a_stage_cannot_remake_the_lora_adapters_its_init_checkpoint_has(tmp_path):
    """A checkpoint with LoRA adapters as the starting point: peft keeps its adapters, so a stage's `lora`
    naming another rank was ignored in silence (r=16 asked, r=4 trained); now a recipe error naming the field.
    The same settings, or none, train those adapters."""
    import vlm
    from vlm.errors import UserError
    from vlm.train.recipe import check_model, load_recipe
    model = vlm.build("llava", "tiny", audio=None, music=None, video=None)
    model.set_llm_mode("lora", {"r": 4})
    model.save_pretrained(tmp_path / "lora4")
    base = [f"model.settings.init={tmp_path / 'lora4'}", "stages.0.llm=lora"]
    with pytest.raises(UserError, match=r"recipe field 'stages.0.lora.r': .* r=4, which a stage cannot change to 16"):
        check_model(load_recipe("vlm2vec-tiny", [*base, "stages.0.lora={r: 16}"], check_files=False))
    for same in (["stages.0.lora={r: 4, lora_alpha: 32}"], []):
        trained = [n for n, p in check_model(load_recipe("vlm2vec-tiny", base + same, check_files=False))
                   .named_parameters() if p.requires_grad and n.startswith("llm.")]
        assert trained and all("lora_" in n for n in trained)


@pytest.mark.usefixtures("one_intra_op_thread")
def test_grad_cache_keeps_one_chunk_of_activations_at_a_time():
    """The README's claim (a big batch in the memory of one chunk): the second pass kept the previous chunk's
    graph alive while it built the next, twice the activations of a chunk. Counted as the study counts them
    (bytes autograd saves for backward, live at once): the step's peak is one chunk's."""
    from pathlib import Path

    import vlm
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "studies"))
    from gradcache_memory import SavedBytes, pair_batch, step

    from vlm.train.objectives.contrastive import slice_rows
    torch.manual_seed(0)
    model = vlm.build("vlm2vec", "tiny").train()
    batch = pair_batch(model, 24)
    _, peak, _ = step(model, batch, 6)
    one = SavedBytes(model.parameters())
    sub = slice_rows(batch["query"], 0, 6, model.processor.template.placeholder_id, model.processor.num_media_tokens)
    with torch.autograd.graph.saved_tensors_hooks(one.pack, one.unpack):
        model.embed(**sub).sum().backward()                         # the biggest chunk: 6 image queries
    assert one.peak > 0 and peak < 1.1 * one.peak, (peak, one.peak)
