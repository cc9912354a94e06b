"""MultimodalLM: splicing, label masking, KV-cache generation, save/load, hf-llava export, CLI errors."""
import os

import pytest
import torch

import helpers_media as M
import vlm
from helpers_model import lm_loss
from vlm.cli import main as cli
from vlm.data.collate import collate
from vlm.data.template import IGNORE
from vlm.errors import UserError
from vlm.families import build


@pytest.fixture(scope="module")
def model():
    return build("llava", "tiny").eval()


@pytest.fixture(scope="module")
def video_file(tmp_path_factory):
    return M.mp4(tmp_path_factory.mktemp("v") / "clip.mp4")


def _mixed_batch(model, video_file):
    p = model.processor
    s1 = p({"conversations": [{"from": "human", "value": "<image>\n<audio>\nWhat do you see and hear?"},
                              {"from": "gpt", "value": "A red circle and a tone."}]},
           media={"image": [M.image("red")], "audio": [M.waveform(0.7)]})
    s2 = p({"conversations": [{"from": "human", "value": "<music> then <image> and <image>: same colour?"},
                              {"from": "gpt", "value": "no"},
                              {"from": "human", "value": "Which is blue?"},
                              {"from": "gpt", "value": "the second"}]},
           media={"image": [M.image("red"), M.image("blue", shape="square")], "music": [M.waveform(2.0, 24000)]})
    s3 = p({"conversations": [{"from": "human", "value": "<video>\nDescribe the clip."},
                              {"from": "gpt", "value": "A red square moves right."}]}, media={"video": [video_file]})
    s4 = p({"conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "hi"}]})
    return [s1, s2, s3, s4]


def test_labels_cover_assistant_turns_only(model):
    tok = model.tokenizer
    s = model.processor({"conversations": [
        {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"},
        {"from": "human", "value": "And the shape?"}, {"from": "gpt", "value": "circle"}]},
        media={"image": [M.image()]})
    kept = [t for t, l in zip(s.input_ids, s.labels) if l != IGNORE]
    assert tok.decode(kept) == "red<|im_end|>circle<|im_end|>"
    assert all(l == IGNORE or l == t for t, l in zip(s.input_ids, s.labels))
    n_img = sum(t == model.placeholder_id["image"] for t in s.input_ids)
    assert n_img == model.num_media_tokens("image", s.media["image"][0]) > 1

def test_media_inside_an_answer_is_input_not_a_target(model):
    """An image in an assistant turn (a data set's "Here: <image>") takes no loss at its placeholder positions,
    as LLaVA masks image features: the rest of the answer still does."""
    tok, img = model.tokenizer, model.placeholder_id["image"]
    s = model.processor({"conversations": [
        {"from": "human", "value": "Show me a red one."}, {"from": "gpt", "value": "Here: <image> done."}]},
        media={"image": [M.image()]})
    assert img in s.input_ids
    assert all(l == IGNORE for t, l in zip(s.input_ids, s.labels) if t == img)
    kept = [t for t, l in zip(s.input_ids, s.labels) if l != IGNORE]
    assert tok.decode(kept).replace(" ", "") == "Here:done.<|im_end|>"



def test_remembered_conversations_tokenise_as_fresh_ones(model):
    """The template remembers short conversations: a repeat gives the ids a fresh template gives, a caller
    changing its lists changes nothing remembered, other media token counts are other keys."""
    from vlm.data.template import ChatTemplate
    tpl, fresh = model.processor.template, ChatTemplate(model.tokenizer, model.processor.template.system)
    turns = [{"role": "user", "text": "<image>\nRepresent the given image."}]
    first = tpl.tokenize(turns, [4], add_generation_prompt=True)
    first.input_ids.append(-1)
    first.labels.clear()
    for counts in ([4], [4], [9]):
        got, want = tpl.tokenize(turns, counts, True), fresh._tokenize(turns, counts, True)
        assert (got.input_ids, got.labels, got.media_order) == (want.input_ids, want.labels, want.media_order)
    assert tpl.tokenize(turns, [9], True).input_ids.count(model.placeholder_id["image"]) == 9


def test_mixed_modalities_any_order_splice_features(model, video_file):
    samples = _mixed_batch(model, video_file)
    batch = collate(samples, model.tokenizer.pad_token_id)
    assert [len(batch["media"][m]) for m in ("image", "audio", "music", "video")] == [3, 1, 1, 1]
    emb = model.embed_inputs(batch["input_ids"], batch["media"])
    for m, items in batch["media"].items():
        want = torch.cat(model.media[m](items))
        got = emb[batch["input_ids"] == model.placeholder_id[m]]
        assert torch.allclose(got, want, atol=1e-6), m
    from vlm.train.objectives import build_objective
    out = build_objective("next_token", {})(model, batch)
    assert torch.isfinite(out.loss) and out.count == (batch["labels"][:, 1:] != IGNORE).sum()
    out.loss.backward()
    assert model.media["image"].projector.linear_1.weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_placeholder_media_mismatch_is_an_error(model):
    with pytest.raises(UserError, match="placeholder"):
        model.processor({"conversations": [{"from": "human", "value": "<image> <image>"}, {"from": "gpt", "value": "x"}]},
                        media={"image": [M.image()]})
    s = model.processor({"conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}]},
                        media={"image": [M.image()]})
    b = collate([s], model.tokenizer.pad_token_id)
    with pytest.raises(UserError, match="no image items"):
        model(b["input_ids"])


def test_generation_same_tokens_with_and_without_kv_cache(model):
    p1 = model.processor.prompt("<image>\nWhat colour is the shape?", {"image": [M.image("green")]})
    p2 = model.processor.prompt("Hello there, what is this?")
    b = collate([p1, p2], model.tokenizer.pad_token_id, left_pad=True)
    kw = dict(media=b["media"], attention_mask=b["attention_mask"], max_new_tokens=12, eos_token_id=-1)
    greedy = model.generate(b["input_ids"], use_cache=True, **kw)
    assert greedy == model.generate(b["input_ids"], use_cache=False, **kw)
    assert all(len(r) == 12 for r in greedy)
    # a left-padded row generates what it generates alone
    alone = model.generate(torch.tensor([p2.input_ids]), max_new_tokens=12, eos_token_id=-1)
    assert alone[0] == greedy[1]
    sampled = [model.generate(b["input_ids"], use_cache=c, do_sample=True, temperature=1.5, top_k=50, top_p=0.9,
                              generator=torch.Generator().manual_seed(7), **kw) for c in (True, False)]
    assert sampled[0] == sampled[1]


def test_save_load_identical_logits(model, tmp_path, video_file):
    batch = collate(_mixed_batch(model, video_file), model.tokenizer.pad_token_id)
    path = model.save_pretrained(tmp_path / "ckpt")
    assert {"config.json", "model.safetensors"} <= {p.name for p in path.iterdir()}
    assert not list(tmp_path.glob(".ckpt.tmp-*"))
    umask = os.umask(0)
    os.umask(umask)                 # others may read what a plain mkdir / open under this umask makes
    assert {oct(p.stat().st_mode & 0o777) for p in [path, *path.iterdir()]} == \
        {oct(0o777 & ~umask), oct(0o666 & ~umask)}
    loaded = vlm.load(path)
    with torch.no_grad():
        a = model.logits(batch["input_ids"], batch["attention_mask"], media=batch["media"])
        b = loaded.logits(batch["input_ids"], batch["attention_mask"], media=batch["media"])
    assert torch.equal(a, b)


def test_a_save_killed_between_its_two_renames_loses_no_folder(tmp_path):
    """replace_dir moves the old folder aside, then the new one in: a kill between the two left the model only
    under `.NAME.old-PID`, and every later load said "checkpoint not found". The load puts it back; the next save
    removes such leftovers of a process no longer running."""
    import shutil
    import subprocess
    m = build("llava", vision="tiny-clip", llm="tiny:llama")
    ck = m.save_pretrained(tmp_path / "final")
    gone = subprocess.Popen(["true"])
    gone.wait()                                                 # a process id no longer running
    old = tmp_path / f".final.old-{gone.pid}"
    os.replace(ck, old)                                         # killed after the first rename
    loaded = vlm.load(ck)
    assert ck.is_dir() and not old.exists()
    a, b = m.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    shutil.copytree(ck, old)                                    # killed after the second: the old copy stays
    m.save_pretrained(ck)
    assert not old.exists() and (ck / "config.json").is_file()
    running = subprocess.Popen(["sleep", "60"])
    try:                                                        # a running process's folder is not touched
        theirs = tmp_path / f".final.old-{running.pid}"
        shutil.copytree(ck, theirs)
        m.save_pretrained(ck)
        assert theirs.is_dir()
    finally:
        running.kill()
        running.wait()
    mine = tmp_path / f".final.old-{os.getpid()}"               # this process id's own: a killed earlier one's
    shutil.copytree(ck, mine)                                   # (ids are reused): it blocked the rename
    m.save_pretrained(ck)
    assert not mine.exists() and (ck / "config.json").is_file()
    # killed while filling the new folder: its temporary (a model's worth of disk) stayed for ever (a random
    # name); it carries pid@host now and the next save removes it, not one of a process still running
    from vlm.atomic import this_host
    torn, live = (tmp_path / f".final.tmp-{pid}@{this_host()}-abc123" for pid in (gone.pid, os.getpid()))
    for d in (torn, live):
        shutil.copytree(ck, d)
    m.save_pretrained(ck)
    assert not torn.exists() and live.is_dir() and sorted(p.name for p in tmp_path.iterdir()) == [live.name, "final"]
    cwd = os.getcwd()                                           # "." (an empty --out): a traceback before
    try:
        os.chdir(ck)
        with pytest.raises(UserError, match="it is the current folder"):
            m.save_pretrained(".")
    finally:
        os.chdir(cwd)


def test_a_save_keeps_what_it_would_lose_and_a_checkpoints_own_code_never_runs(tmp_path, capsys):
    """Found by a review: save_pretrained replaced a folder of the user's files, a file or a symbolic link whole
    (their files gone, the link a folder, the file hidden as `.NAME.old-PID`): it keeps the other files (as
    transformers' save_pretrained does), writes through the link and refuses the file; a checkpoint whose
    tokenizer_config named its own Python class asked on the terminal whether to run it (and ran it on 'y')."""
    import json
    m = build("llava", vision="tiny-clip", llm="tiny:llama")
    mine = tmp_path / "mine"
    (mine / "notes").mkdir(parents=True)
    (mine / "thesis.txt").write_text("years of work")
    (mine / "notes" / "a.md").write_text("more")
    (tmp_path / "afile").write_text("keep")
    os.symlink(mine, tmp_path / "alink")
    with pytest.raises(UserError, match="a file, not a folder"):
        m.save_pretrained(tmp_path / "afile")
    assert (tmp_path / "afile").read_text() == "keep"
    m.save_pretrained(tmp_path / "alink")                       # through the link: its target, the link kept
    assert (tmp_path / "alink").is_symlink() and (mine / "config.json").is_file()
    assert (mine / "thesis.txt").read_text() == "years of work" and (mine / "notes" / "a.md").read_text() == "more"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "alink", "mine"]     # nothing hidden left over
    assert vlm.load(mine).config.family == "llava"
    ck = m.save_pretrained(tmp_path / "ck")
    assert m.save_pretrained(ck) == ck                           # an earlier save of the same kind: replaced
    odd = tmp_path / "caf\udce9"                                  # a name that is not UTF-8: one line, both ways
    with pytest.raises(UserError, match="the path is not UTF-8 text"):
        m.save_pretrained(odd)
    os.rename(ck, odd)
    with pytest.raises(UserError, match="the folder's path is not UTF-8 text .*rename it"):
        vlm.load(odd)
    os.rename(odd, ck)
    (ck / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["evil.Tok", None]},
                                                          "tokenizer_class": "Tok"}))
    (ck / "evil.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w')\n")
    capsys.readouterr()
    with pytest.raises(UserError, match="the tokenizer does not load: ValueError: .*contains custom code"):
        vlm.load(ck)
    assert not (tmp_path / "ran").exists() and capsys.readouterr().out == ""      # never asked, never run


def test_weights_and_configs_no_trained_model_has_are_one_line(tmp_path):
    """Found by a review: NaN / Inf weights or an LM head stored as int64 loaded and answered nothing (exit 0);
    `tie_word_embeddings: true` over two different stored tensors loaded one of them silently; a pad_token_id past
    the vocabulary, a config.json that is not UTF-8, nested 100,000 deep or holding a 5,000-digit number were
    tracebacks."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file
    m = build("llava", vision="tiny-clip", llm="tiny:llama")
    ck = m.save_pretrained(tmp_path / "ck")
    state = load_file(str(ck / "model.safetensors"))
    head = next(k for k in state if k.endswith("lm_head.weight"))

    def variant(name, tensors=None, config=None, raw=None):
        d = tmp_path / name
        shutil.copytree(ck, d)
        if tensors is not None:
            save_file({**state, **tensors}, str(d / "model.safetensors"))
        if config is not None:
            (d / "config.json").write_text(json.dumps(config(json.loads((ck / "config.json").read_text()))))
        if raw is not None:
            (d / "config.json").write_bytes(raw)
        return d
    nan = state[head].clone()
    nan[0, 0] = float("nan")
    cases = [(variant("nan", {head: nan}), f"tensor {head} holds NaN or Inf values"),
             (variant("int", {head: state[head].long()}), f"tensor {head} is stored as integers"),
             (variant("tied", config=lambda c: {**c, "llm": {**c["llm"], "tie_word_embeddings": True}}),
              "are one tensor in the model config.json describes .* but two different ones"),
             (variant("pad", config=lambda c: {**c, "llm": {**c["llm"], "pad_token_id": 5000}}),
              "does not build a model .*AssertionError"),
             (variant("latin", raw=b'{"family": "caf\xe9"}'), "config.json: invalid JSON .*utf-8"),
             (variant("deep", raw=b"[" * 100000), "config.json: invalid JSON"),
             (variant("digits", raw=b'{"x": ' + b"9" * 5000 + b"}"), "config.json: invalid JSON")]
    for folder, message in cases:
        with pytest.raises(UserError, match=message):
            vlm.load(folder)


def test_build_settings_it_cannot_use_are_one_line():
    """Found by a review: vlm.build with a setting the builder lacks, heads that do not divide the width or a seed
    that is not a number raised TypeError / ValueError / transformers' validation error from deep inside."""
    cases = [(("llava", "tiny"), {"nosuch": 1}, "family 'llava': no setting 'nosuch' \\(its settings: "),
             (("llava", "tiny"), {"seed": "x"}, "family 'llava' size 'tiny': the settings do not build a model"),
             (("llava", "tiny"), {"llm": {"model_type": "llama", "hidden_size": 60, "num_attention_heads": 7}},
              "hidden size \\(60\\) is not a multiple of the number of attention heads"),
             (("mert", "tiny"), {"num_attention_heads": 3}, "embed_dim must be divisible by num_heads")]
    for (family, size), settings, message in cases:
        with pytest.raises(UserError, match=message):
            build(family, size, **settings)


def test_a_file_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    """Every results file, report, log rewrite, config and index goes through vlm.atomic.write_file: a full disk
    while writing left `.report.html.tmp` (and the like) behind. Now the old file stays and nothing else."""
    import errno

    from vlm.atomic import remove_torn, write_file, write_text
    target = write_text(tmp_path / "report.html", "old")

    def full(tmp):
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    with pytest.raises(OSError):
        write_file(target, full)
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"] and target.read_text() == "old"
    target.chmod(0o640)
    write_text(target, "new", keep_mode=True, fsync=True)
    assert target.read_text() == "new" and target.stat().st_mode & 0o777 == 0o640
    # a killed writer's temporary: removed once its process is gone, kept while it runs
    import subprocess
    gone = subprocess.Popen(["true"])
    gone.wait()
    torn, live = tmp_path / f".report.html.tmp-{gone.pid}", tmp_path / f".report.html.tmp-{os.getpid()}"
    torn.write_text("x")
    live.write_text("x")
    assert remove_torn(tmp_path.glob(".*.tmp-*")) == [torn] and live.exists()


def test_a_tied_word_embedding_llm_saves_and_loads(tmp_path):
    """Qwen2-0.5B ties its LM head to the token table (llava-0.5b): safetensors stores the shared tensor once,
    and the load called the other name missing, so every such run's final model could not be loaded."""
    m = build("llava", vision="tiny-clip", llm={"model_type": "qwen2", "tie_word_embeddings": True},
              audio=None, music=None, video=None)
    loaded = vlm.load(m.save_pretrained(tmp_path / "ckpt"))
    a, b = m.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.llm.get_output_embeddings().weight is loaded.llm.get_input_embeddings().weight


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_hf_llava_export_gives_same_logits(tmp_path, arch):
    from transformers import LlavaForConditionalGeneration
    m = build("llava", vision="tiny-clip", llm=f"tiny:{arch}").eval()
    ck = m.save_pretrained(tmp_path / "ckpt")
    assert cli(["export", str(ck), "--to", "hf-llava", "--out", str(tmp_path / "hf")]) == 0
    hf = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    s = m.processor({"conversations": [{"from": "human", "value": "<image>\nWhat is it?"},
                                       {"from": "gpt", "value": "a red circle"}]}, media={"image": [M.image()]})
    ids = torch.tensor([s.input_ids])
    with torch.no_grad():
        ours = m.logits(ids, media=s.media)
        theirs = hf(input_ids=ids, pixel_values=torch.stack(s.media["image"])).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    # --out is never replaced: the checkpoint itself (it was wiped), a folder with files, a file
    (tmp_path / "a.txt").write_text("x")
    for out in (ck, tmp_path / "hf", tmp_path / "a.txt"):
        assert cli(["export", str(ck), "--to", "hf-llava", "--out", str(out)]) == 2
    assert (ck / "config.json").is_file() and (tmp_path / "a.txt").read_text() == "x"


def test_hf_llava_export_refuses_an_llm_whose_logits_it_would_change(tmp_path, capsys):
    """Gemma2 caps its final logits; transformers' Llava applies its lm_head alone, so the export's logits
    differed (top-token probability 0.34 vs 0.52 at trained scale, a review) while the docstring promised ours."""
    m = build("llava", vision="tiny-clip", llm="tiny:gemma2", audio=None, music=None, video=None)
    ck = m.save_pretrained(tmp_path / "ckpt")
    assert cli(["export", str(ck), "--to", "hf-llava", "--out", str(tmp_path / "hf")]) == 2
    assert "final_logit_softcapping" in capsys.readouterr().err and not (tmp_path / "hf").exists()


def test_frozen_llm_bit_identical_after_step(model, video_file):
    m = build("llava", vision="tiny-clip", llm="tiny:llama", llm_mode="frozen")
    before = {k: v.clone() for k, v in m.llm.state_dict().items()}
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    s = m.processor({"conversations": [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "red"}]},
                    media={"image": [M.image()]})
    lm_loss(m, collate([s], m.tokenizer.pad_token_id)).backward()
    assert all(p.grad is None for p in m.llm.parameters())
    opt.step()
    assert all(torch.equal(v, before[k]) for k, v in m.llm.state_dict().items())


def test_bad_checkpoints_one_line_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        vlm.load(tmp_path / "empty")
    assert cli(["export", str(tmp_path / "empty"), "--to", "hf-llava", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.json" in err[0]
    m = build("llava", vision="tiny-clip", llm="tiny:llama")
    ck = m.save_pretrained(tmp_path / "ck")
    (ck / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="model.safetensors"):
        vlm.load(ck)
    (ck / "config.json").write_text("{nope")
    with pytest.raises(UserError, match="invalid JSON"):
        vlm.load(ck)
    # a run folder, pickled weights, a folder named config.json, a tensor of another shape: each said as such
    run = tmp_path / "run"
    m.save_pretrained(run / "final")
    with pytest.raises(UserError, match=f"no config.json .not a vlm checkpoint folder.; the model is in {run / 'final'}"):
        vlm.load(run)
    (run / "final" / "model.safetensors").rename(run / "final" / "pytorch_model.bin")
    with pytest.raises(UserError, match="no model.safetensors .pytorch_model.bin is there: pickled weights are not"):
        vlm.load(run / "final")
    (run / "final" / "config.json").unlink()
    (run / "final" / "config.json").mkdir()
    with pytest.raises(UserError, match="config.json: a folder, not a file"):
        vlm.load(run / "final")
    from safetensors.torch import load_file, save_file
    ok = m.save_pretrained(tmp_path / "ok")
    state = load_file(ok / "model.safetensors")
    name = next(k for k, v in state.items() if v.dim() == 2)
    save_file({**state, name: state[name][:, :3].contiguous()}, ok / "model.safetensors")
    with pytest.raises(UserError, match=f"weights do not fit config.json .size mismatch for {name}: "):
        vlm.load(ok)


def test_a_hand_edited_checkpoint_config_is_one_line_naming_the_file(tmp_path):
    """Each edit below was a traceback (TypeError, AttributeError, KeyError, transformers' 5 KB ValueError)
    wherever the model loaded (chat, eval, embed, export, init of a recipe); an unknown projector did not name the
    file; a misspelt field loaded with its default."""
    import json
    import shutil
    ck = build("llava", vision="tiny-clip", llm="tiny:llama").save_pretrained(tmp_path / "ck")
    base = json.loads((ck / "config.json").read_text())
    edits = [(lambda c: c.pop("media"), "field 'media' is missing"),
             (lambda c: c.update(media=["image"]), r"field 'media' must be an object, got \['image'\]"),
             (lambda c: c.update(llm=[1]), "field 'llm' must be an object"),
             (lambda c: c.update(system=5), "field 'system' must be a string or null, got 5"),
             (lambda c: c.update(family="mert"), "says family 'mert', but the folder is not one of its checkpoints"),
             (lambda c: c["llm"].update(max_position_embeddings=0), "field 'llm.max_position_embeddings' must be a"),
             (lambda c: c.update(system="You see <image> always"), r"field 'system' holds a media placeholder \(<image>\)"),
             (lambda c: c["encoders"]["image"]["preprocess"].update(size="big"), r"image preprocess 'size': one or two"),
             # tracebacks at the first image (or a 30 GB allocation), found by a review
             (lambda c: c["encoders"]["image"]["preprocess"].update(size=[0, 0]), r"image preprocess 'size'"),
             (lambda c: c["encoders"]["image"]["preprocess"].update(size=[100000, 100000]), r"image preprocess 'size'"),
             (lambda c: c["encoders"]["image"]["preprocess"].update(mean=[0.5, 0.5]), r"image preprocess 'mean': three"),
             (lambda c: c["encoders"]["image"]["preprocess"].update(std=[0, 0, 0]), r"image preprocess 'std': every value > 0"),
             (lambda c: c["encoders"]["image"]["preprocess"].update(crop_pct=100), r"image preprocess 'crop_pct': a number in \(0, 4\]"),
             (lambda c: c["encoders"]["image"].pop("preprocess"), r"does not build a model \(KeyError: 'preprocess'"),
             (lambda c: c["llm"].update(model_type="nosuch"), "does not build a model .ValueError: Unrecognized model"),
             (lambda c: c["media"]["image"].update(projector="mlp3x"), "unknown projector 'mlp3x'"),
             (lambda c: c["media"]["image"].update(pool=0), r"projector connector: pool must be >= 1 .*got 0"),
             (lambda c: c.update(sytem=c.pop("system")), r"'sytem' is not a config field \(did you mean 'system'\?\)"),
             # today's config labelled as an older format, or an older one with fields of the wrong type: these
             # went through the upgrade unchecked (AttributeError / KeyError tracebacks)
             (lambda c: c.update(format_version=2), r"not a format-2 config \(format_version 2; KeyError"),
             (lambda c: c.update(format_version=2, media=["image"]), r"not a format-2 config .*AttributeError"),
             (lambda c: c.update(format_version=1, connectors=["x"]), r"not a format-1 config .*AttributeError")]
    for i, (edit, message) in enumerate(edits):
        bad = tmp_path / f"bad{i}"
        shutil.copytree(ck, bad)
        c = json.loads(json.dumps(base))
        edit(c)
        (bad / "config.json").write_text(json.dumps(c))
        with pytest.raises(UserError, match=f"^{bad / 'config.json'}: {message}") as e:
            vlm.load(bad)
        assert "\n" not in str(e.value) and len(str(e.value)) < 500, i


def test_unknown_encoder_is_an_error_naming_it():
    with pytest.raises(UserError, match="no-such-encoder"):
        build("llava", vision="no-such-encoder", llm="tiny:llama")
    # found by a review: an image encoder in the audio slot trained (every audio sample then failed, chat was a
    # TypeError traceback); `hf: DIR` (YAML's mapping) was a KeyError traceback
    with pytest.raises(UserError, match="encoder 'audio': tiny-clip is an image encoder, not one for audio"):
        build("llava", vision="tiny-clip", audio="tiny-clip", llm="tiny:llama")
    with pytest.raises(UserError, match=r"encoder 'image': \{'hf': '/x'\} names no encoder"):
        build("llava", vision={"hf": "/x"}, llm="tiny:llama")
    build("llava", vision="tiny-clip", music="whisper:tiny", llm="tiny:llama")      # a waveform encoder for music


def test_cli_lists_and_help(capsys):
    assert cli(["list", "families"]) == 0
    assert "llava" in capsys.readouterr().out
    assert cli(["list", "encoders"]) == 0
    out = capsys.readouterr().out
    for name in ("tiny-clip", "whisper:tiny", "mert:tiny"):
        assert name in out
    for cmd in (["--help"], ["list", "--help"], ["export", "--help"]):
        with pytest.raises(SystemExit) as e:
            cli(cmd)
        assert e.value.code == 0


def test_cli_chat_answers_and_rejects_extra_placeholders(tmp_path, capsys):
    m = build("llava", vision="tiny-clip", llm="tiny:llama")
    ck = m.save_pretrained(tmp_path / "ck")
    M.image().save(tmp_path / "a.png")
    assert cli(["chat", str(ck), "<image>\nWhat colour?", "--image", str(tmp_path / "a.png"),
                "--max-new-tokens", "4"]) == 0
    capsys.readouterr()
    assert cli(["chat", str(ck), "<image> and <image>?", "--image", str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "placeholder" in err[0]
    assert cli(["chat", str(ck), "<image>?", "--image", str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err
    # settings and prompts that answered noise or crashed
    context = m.llm.config.max_position_embeddings
    odd = [(["  "], "the prompt is empty"), (["caf\udce9?"], "not UTF-8"),          # argv's surrogate escape
           (["hi", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
           (["hi", "--temperature", "-1"], "--temperature must be a finite number >= 0"),
           ([" ".join(["red"] * context)], f"past the model's context of {context} tokens")]
    for argv, message in odd:
        assert cli(["chat", str(ck), *argv]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)


def test_cli_chat_names_the_file_its_preprocessing_refuses(tmp_path, capsys):
    """An audio file that decodes but is too short for the log-mel (1 sample) said "audio clip too short"
    without naming the file (a review): the file and its flag are named; a prompt problem stays as it was."""
    import soundfile as sf
    ck = build("llava", "tiny", vision=None, music=None, video=None).save_pretrained(tmp_path / "ck")
    sf.write(tmp_path / "one.wav", [0.5], 16000)
    sf.write(tmp_path / "ok.wav", [0.0] * 8000, 16000)
    capsys.readouterr()
    for argv, message in ((["<audio><audio>?", "--audio", str(tmp_path / "ok.wav"), "--audio", str(tmp_path / "one.wav")],
                           f"--audio {tmp_path / 'one.wav'}: audio clip too short: 1 samples"),
                          (["<audio>?", "--audio", str(tmp_path / "ok.wav"), "--audio", str(tmp_path / "ok.wav")],
                           "placeholder")):
        assert cli(["chat", str(ck), *argv]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)


def test_cli_chat_and_export_on_damaged_input_are_one_line(tmp_path, capsys):
    """Each of these was a traceback (or, for nan / inf, a silently greedy / uniformly random answer)."""
    import io
    import json
    import shutil
    m = build("llava", vision="tiny-clip", llm="tiny:llama", video="video:tiny-clip")
    ck = m.save_pretrained(tmp_path / "ck")
    buf = io.BytesIO()
    M.image().save(buf, "JPEG")
    (tmp_path / "half.jpg").write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])      # opens; fails on load
    (tmp_path / "text.txt").write_text("hello\n")
    notok = tmp_path / "notok"
    shutil.copytree(ck, notok)
    for f in notok.glob("tokenizer*"):
        f.unlink()
    oddtok = tmp_path / "oddtok"                    # valid JSON the tokenizers library refuses (a bare Exception)
    shutil.copytree(ck, oddtok)
    tj = json.loads((oddtok / "tokenizer.json").read_text())
    (oddtok / "tokenizer.json").write_text(json.dumps({**tj, "model": {"type": "Nope"}}))
    build("mert", "tiny").save_pretrained(tmp_path / "mert")
    (tmp_path / "afile").write_text("")
    newer = tmp_path / "newer"                      # a newer suite's checkpoint loaded as if it were today's
    shutil.copytree(ck, newer)
    config = json.loads((newer / "config.json").read_text())
    (newer / "config.json").write_text(json.dumps({**config, "format_version": 9}))
    capsys.readouterr()
    cases = [(["chat", str(ck), "<image>?", "--image", str(tmp_path / "half.jpg")], "half.jpg: cannot decode image"),
             (["chat", str(ck), "<video>?", "--video", str(tmp_path / "text.txt")], "cannot decode video"),
             (["chat", str(ck), "hi", "--temperature", "nan"], "--temperature must be a finite number"),
             (["chat", str(ck), "hi", "--temperature", "inf"], "--temperature must be a finite number"),
             (["chat", str(notok), "hi"], "the tokenizer does not load: no tokenizer.json"),
             (["chat", str(oddtok), "hi"], "the tokenizer does not load: Exception"),
             (["chat", str(tmp_path / "mert"), "hi"], "has no LLM to chat with"),
             (["chat", str(newer), "hi"], "format_version 9; this vlm-suite reads formats 1 to"),
             (["export", str(ck), "--to", "hf-llava", "--out", str(tmp_path / "afile" / "sub")], "cannot create")]
    for argv, message in cases:
        assert cli(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
    # what the export leaves out is said (the video part went without a word)
    assert cli(["export", str(ck), "--to", "hf-llava", "--out", str(tmp_path / "hf")]) == 0
    assert "the checkpoint's video part(s) are left out" in capsys.readouterr().err
    for argv, message in ((["chat", str(tmp_path / "hf"), "hi"], "a transformers 'llava' folder, not a vlm checkpoint"),
                          (["chat", str(ck), "<image>?", "--image", str(tmp_path)], "a folder, not an image file")):
        assert cli(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)


@pytest.mark.parametrize("size", [(75, 32), (32, 101), (150, 64), (64, 64)], ids=["wide", "tall", "wide-resized", "square"])
def test_hf_llava_export_reproduced_by_transformers_processor_and_generate(tmp_path_factory, size):
    """The exported folder end to end through transformers alone (AutoProcessor + chat template +
    LlavaForConditionalGeneration.generate) gives our pixels bit for bit, our prompt ids and our greedy
    tokens, on wide, tall and square images (odd crop offsets: 75 - 32 = 43)."""
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    root = tmp_path_factory.getbasetemp() / "hf-e2e"
    if not (root / "hf" / "config.json").exists():
        m = build("llava", vision="tiny-clip", llm="tiny:qwen2").eval()
        m.save_pretrained(root / "ckpt")
        assert cli(["export", str(root / "ckpt"), "--to", "hf-llava", "--out", str(root / "hf")]) == 0
    m = vlm.load(root / "ckpt").eval()
    w, h = size
    g = torch.Generator().manual_seed(w * 1000 + h)
    img = Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy())
    question = "What colour is the shape?"
    ours = m.processor.prompt(f"<image>\n{question}", {"image": [img]})

    proc = AutoProcessor.from_pretrained(root / "hf")
    hf = LlavaForConditionalGeneration.from_pretrained(root / "hf").eval()
    # content as parts, as llava-hf users write it: the image part renders '<image>\n' as our prompts do
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
                                    add_generation_prompt=True)
    assert proc.tokenizer.padding_side == "left"     # batched generate() on right padding answered wrongly
    inputs = proc(images=img, text=text, return_tensors="pt")
    assert torch.equal(inputs["pixel_values"][0], ours.media["image"][0])              # bit for bit
    assert inputs["input_ids"][0].tolist() == ours.input_ids
    with torch.no_grad():
        theirs = hf.generate(**inputs, max_new_tokens=8, do_sample=False)[0, inputs["input_ids"].shape[1]:].tolist()
        mine = m.generate(torch.tensor([ours.input_ids]), media={"image": ours.media["image"]}, max_new_tokens=8)[0]
        assert torch.allclose(hf(**inputs).logits, m.logits(torch.tensor([ours.input_ids]), media=ours.media), atol=1e-5)
    stop = [m.tokenizer.convert_tokens_to_ids("<|im_end|>"), m.tokenizer.eos_token_id]
    assert hf.generation_config.eos_token_id == stop                 # it generated past <|im_end|> forever
    cut = next((i for i, t in enumerate(theirs) if t in stop), len(theirs))
    assert theirs[:cut] == mine and len(mine) > 0


@pytest.mark.parametrize("version", [1, 2])
def test_older_checkpoint_formats_load_with_identical_logits(tmp_path, version):
    """Format 1 (a model class per family: encoders.* / connectors.*) and format 2 (encoders inside the
    media tokenizers: media.<m>.encoder.*) folders load as today's model, weights in the right places."""
    import json

    from safetensors.torch import load_file, save_file
    m = build("llava", vision="tiny-clip", llm="tiny:llama", audio="whisper:tiny", audio_pool=2).eval()
    path = m.save_pretrained(tmp_path / "now")
    cfg = json.loads((path / "config.json").read_text())
    state = load_file(str(path / "model.safetensors"))
    if version == 1:
        old_cfg = {k: v for k, v in cfg.items() if k not in ("media", "route", "format_version", "architecture")}
        old_cfg["connectors"] = {k: {"type": c["projector"], "pool": c["pool"]} for k, c in cfg["media"].items()}
        old_state = {k.replace("media.", "connectors.", 1).replace(".projector.", ".", 1)
                     if k.startswith("media.") else k: v for k, v in state.items()}
    else:
        old_cfg = {**{k: v for k, v in cfg.items() if k != "encoders"}, "format_version": 2,
                   "media": {k: {"encoder": cfg["encoders"][k], "connector": {x: y for x, y in c.items() if x != "encoder"}}
                             for k, c in cfg["media"].items()}}
        old_state = {(f"media.{k.split('.')[1]}.encoder." + k.split(".", 2)[2]) if k.startswith("encoders.") else k: v
                     for k, v in state.items()}
    (path / "config.json").write_text(json.dumps(old_cfg))
    save_file(old_state, str(path / "model.safetensors"))
    loaded = vlm.load(path)
    s = m.processor({"conversations": [{"from": "human", "value": "<image>\n<audio>\nWhat?"},
                                       {"from": "gpt", "value": "red"}]},
                    media={"image": [M.image()], "audio": [M.waveform(0.5)]})
    b = collate([s], m.tokenizer.pad_token_id)
    with torch.no_grad():
        assert torch.equal(m.logits(b["input_ids"], media=b["media"]), loaded.logits(b["input_ids"], media=b["media"]))


@pytest.mark.parametrize("family", ["llava", "mert"])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(family, video_file):
    """runtime.activation_checkpointing recomputes the LLM's (mert: the encoder's) layers in the backward:
    the same sums and gradients as keeping the activations (it also raised a FutureWarning per run)."""
    import copy
    import warnings

    import numpy as np
    if family == "llava":
        plain = build("llava", "tiny")
        plain.set_llm_mode("full")
        batch = collate(_mixed_batch(plain, video_file), plain.tokenizer.pad_token_id)

        def value(m):
            return m(batch["input_ids"], batch["attention_mask"], media=batch["media"]).float().pow(2).mean()
    else:
        plain = build("mert", "tiny", seed=0)
        wave = torch.stack([torch.sin(torch.arange(24000) * f / 24000 * 6.283) for f in (220.0, 330.0)])

        def value(m):
            return m.encoder(wave).last_hidden_state.pow(2).mean()
    ckpt = copy.deepcopy(plain)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        ckpt.enable_activation_checkpointing()
    from vlm.llm import base_model
    inner = base_model(ckpt.llm) if family == "llava" else ckpt.encoder
    assert inner.is_activation_checkpointing and not (base_model(plain.llm) if family == "llava"
                                                       else plain.encoder).is_activation_checkpointing
    grads = []
    for m in (plain, ckpt):
        m.train()
        m.zero_grad()
        torch.manual_seed(0)                        # the same random draws (mert's SpecAugment mask in train mode
        np.random.seed(0)                           # is drawn by numpy in transformers' HuBERT)
        loss = value(m)
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}))
    (a, ga), (b, gb) = grads
    assert torch.allclose(a, b, atol=1e-6) and ga.keys() == gb.keys() and len(ga) > 10
    assert all(torch.allclose(ga[n], gb[n], atol=1e-6) for n in ga)


SCALED_OR_OTHER_LLMS = {
    "granite": {"model_type": "granite", "logits_scaling": 4.0},       # divides its logits
    "cohere": {"model_type": "cohere", "logit_scale": 0.25},           # multiplies them
    "opt": {"model_type": "opt", "ffn_dim": 128, "word_embed_proj_dim": 64},   # final_layer_norm
    "gpt_neox": {"model_type": "gpt_neox"},
}


@pytest.mark.parametrize("arch", sorted(SCALED_OR_OTHER_LLMS))
@pytest.mark.parametrize("family", ["llava", "iaa"])
def test_any_llm_gives_its_own_causal_lms_logits(arch, family):
    """Granite's logits_scaling and Cohere's logit_scale were dropped (the loss, sampling and likelihoods at the
    wrong scale; IAA's text path was not the base LLM); OPT and GPT-NeoX were refused (their final norm is
    final_layer_norm). A review. The text-only logits are the LLM's own, bit for bit."""
    spec = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            **SCALED_OR_OTHER_LLMS[arch]}
    m = build(family, "tiny", llm=spec, audio=None, music=None, video=None).eval()
    ids = torch.tensor([[20, 25, 27, 29, 31]])
    with torch.no_grad():
        assert torch.equal(m.logits(ids), vlm.llm.base_model(m.llm)(input_ids=ids).logits)


def test_an_llm_scaling_its_logits_in_an_unknown_way_is_refused(tmp_path):
    """... and a scaling the suite does not know is refused, as is exporting one it applies (transformers'
    Llava would not)."""
    sizes = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
    m = build("llava", "tiny", llm={**SCALED_OR_OTHER_LLMS["granite"], **sizes}, audio=None, music=None, video=None)
    ck = m.save_pretrained(tmp_path / "g")
    assert cli(["export", str(ck), "--to", "hf-llava", "--out", str(tmp_path / "hf")]) == 2
    with pytest.raises(UserError, match="scales the logits .logits_scaling 4.0. in a way this suite does not apply"):
        build("llava", "tiny", llm={"model_type": "llama", "logits_scaling": 4.0, **sizes}, audio=None, music=None,
              video=None)
    # a hybrid state-space LLM built, then cached generation crashed inside transformers (a review): refused
    for arch, kind in (("jamba", "mamba"), ("bamba", "linear_attention")):
        with pytest.raises(UserError, match=rf"layers of kind {kind} .*not supported"):
            build("llava", "tiny", llm={"model_type": arch, **sizes}, audio=None, music=None, video=None)
