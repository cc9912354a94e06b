"""IAA family: text-only input is the base LLM bit for bit; adaptors carry the multimodal path."""
import pytest
import torch

import helpers_media as M
import vlm
from helpers_model import lm_loss
from vlm.connectors.inner_adaptor import default_adaptor_layers
from vlm.data.collate import collate
from vlm.families import build
from vlm.llm import build_tiny_llm


def test_default_layers_follow_the_reference():
    assert default_adaptor_layers(32) == [0, 1, 5, 6, 10, 11, 15, 16, 20, 21, 25, 26, 30, 31]
    # pairs every 5 layers at any depth (DESIGN.md): the stride scaled with the depth gave every layer of a
    # 16-layer LLM an adaptor, and a 24-layer one a lone top adaptor (a review)
    assert default_adaptor_layers(24) == [0, 1, 5, 6, 10, 11, 15, 16, 20, 21]
    assert default_adaptor_layers(16) == [0, 1, 5, 6, 10, 11, 15]
    assert default_adaptor_layers(2) == [0, 1]


def _train_steps(model, steps=3):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    s = model.processor({"conversations": [{"from": "human", "value": "<image>\nWhat colour?"},
                                           {"from": "gpt", "value": "red"}]}, media={"image": [M.image()]})
    batch = collate([s, s], model.tokenizer.pad_token_id)
    for _ in range(steps):
        lm_loss(model, batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return batch


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma"])
def test_text_path_is_the_base_llm_after_training(arch):
    model = build("iaa", vision="tiny-clip", llm=f"tiny:{arch}", adaptor_layers=[1])
    base, _ = build_tiny_llm(arch, seed=0)
    llm_before = {k: v.clone() for k, v in model.llm.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("llm.") for n in trainable)
    assert any(n.startswith("route.adaptors.") for n in trainable) and "route.lm_head.weight" in trainable
    _train_steps(model)
    for k, v in model.llm.state_dict().items():
        assert torch.equal(v, llm_before[k]), k
    model.eval()
    p = model.processor.prompt("How many circles are there?")
    ids = torch.tensor([p.input_ids])
    with torch.no_grad():
        assert torch.equal(model.logits(ids), base(ids).logits)
        ours = model.generate(ids, max_new_tokens=10, eos_token_id=-1)
        ref = [base.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=None,
                             pad_token_id=0, min_new_tokens=10)[0, ids.shape[1]:].tolist()]
    assert ours == ref


def test_adaptors_carry_the_multimodal_path_and_cache_works_on_both():
    model = build("iaa", "tiny").eval()
    q = model.processor.prompt("<image>\nWhat colour?", {"image": [M.image()]})
    ids = torch.tensor([q.input_ids])
    with torch.no_grad():
        before = model.logits(ids, media=q.media)
        model.route.adaptors[str(model.route.adaptor_layers[0])].mlp.down_proj.weight.add_(0.5)
        after = model.logits(ids, media=q.media)
    assert not torch.allclose(before, after)
    for media in (q.media, None):
        kw = dict(media=media, max_new_tokens=10, eos_token_id=-1)
        x = ids if media else torch.tensor([model.processor.prompt("Hello, what is it?").input_ids])
        assert model.generate(x, use_cache=True, **kw) == model.generate(x, use_cache=False, **kw)
    # the explicit override sends text through the multimodal path, which now differs
    t = torch.tensor([model.processor.prompt("Hello").input_ids])
    with torch.no_grad():
        auto = model.logits(t)
        model.route.mode = "multimodal"
        forced = model.logits(t)
        model.route.mode = "auto"
    assert not torch.equal(auto, forced)


def test_iaa_checkpoint_round_trip(tmp_path):
    model = build("iaa", "tiny")
    batch = _train_steps(model, 1)
    model.eval()
    loaded = vlm.load(model.save_pretrained(tmp_path / "iaa"))
    assert loaded.route.settings() == model.route.settings() == {"type": "inner_adaptor", "adaptor_layers": [0, 1]}
    with torch.no_grad():
        a = model.logits(batch["input_ids"], batch["attention_mask"], media=batch["media"])
        assert torch.equal(a, loaded.logits(batch["input_ids"], batch["attention_mask"], media=batch["media"]))


def test_a_text_only_row_is_the_base_llm_whatever_its_batch_holds_in_evaluation_and_embedding(tmp_path):
    """The path is chosen per batch (any media: the adaptors), so a text question batched with an image question
    was answered, scored and embedded through the adaptors, another answer than alone (a review). Evaluation and
    the Embedder batch rows with media apart from rows without, for IAA; the answers are those given alone."""
    from benchmarks.models import Query, load_model
    ckpt = build("iaa", "tiny", audio=None, music=None, video=None).save_pretrained(tmp_path / "iaa")
    m = load_model(str(ckpt))
    text = ("What is two plus three?", {})
    image = ("<image>\nWhat colour is it?", {"image": [M.image("red", 32)]})
    alone = [m.generate([p], max_new_tokens=6, batch_size=1)[0] for p in (text, image)]
    assert m.generate([text, image, text], max_new_tokens=6, batch_size=3) == [alone[0], alone[1], alone[0]]
    ll_alone = [m.loglikelihood([(*p, " five")], batch_size=1)[0] for p in (text, image)]
    ll_mixed = m.loglikelihood([(*text, " five"), (*image, " five")], batch_size=2)
    assert all(abs(a[0] - b[0]) < 1e-4 for a, b in zip(ll_alone, ll_mixed)), (ll_alone, ll_mixed)
    queries = [Query(text="a red circle"), Query(image=M.image("red", 32)), Query(text="a blue square")]
    mixed = m.embed(queries, batch_size=3)
    each = torch.cat([m.embed([q], batch_size=1) for q in queries])
    assert torch.allclose(mixed, each, atol=1e-5)
    # (the text path really differs: the same text through the adaptors is another vector)
    m.model.route.mode = "multimodal"
    with torch.inference_mode():
        assert not torch.allclose(m.model.embed(*_ids(m, "a red circle")), each[:1], atol=1e-3)
    m.model.route.mode = "auto"


def _ids(m, text):
    from vlm.embed.items import Item
    p = m.model.processor.prompt(Item(text=text).prompt(), {})
    return torch.tensor([p.input_ids]), torch.ones(1, len(p.input_ids), dtype=torch.long)


def test_text_only_samples_are_not_for_an_iaa_model_in_training(tmp_path, capsys):
    """IAA's text path is the frozen LLM: a batch of text-only samples had no gradient and ended the run at a
    random step (a review: a shard with text-only samples, batch size 1). Such samples are dropped and counted
    as not_for_model, as media the model has no encoder for are."""
    import test_train_common as C

    from vlm.cli import main
    world = C.write_image_world(tmp_path / "world", n=20)                 # every 5th sample text-only
    iaa = {"family": "iaa", "size": "tiny", "settings": {"llm": "tiny:llama", "audio": None, "music": None,
                                                         "video": None}}
    recipe = C.write_recipe(tmp_path / "r.yaml", world, [C.stage("s", ["route.*", "media.*.projector.*"],
                                                                 steps=8, batch_size=1)],
                            model=iaa, checkpoint_every=0, log_samples=False)
    assert main(["train", str(recipe), "--out", str(tmp_path / "run")]) == 0, capsys.readouterr().err
    log = (tmp_path / "run" / "train.log").read_text()
    assert "not_for_model" in log and "text only" in log, log[-2000:]


def test_adaptor_layers_named_twice_or_not_depths_are_refused_naming_the_setting():
    """[0, 0] built one adaptor but hooked layer 0 twice: the adaptor ran twice, and generation with a cache
    answered otherwise than without (a review); out-of-range depths named the recipe's 'model' only."""
    from vlm.errors import UserError
    from vlm.train.recipe import load_recipe, model_skeleton
    with pytest.raises(UserError, match=r"names a depth twice"):
        build("iaa", "tiny", llm="tiny:llama", adaptor_layers=[0, 0])
    for value, message in (("[0,0]", "names a depth twice"), ("[5]", r"must be depths in \[0, 2\)")):
        recipe = load_recipe("iaa-tiny", [f"model.settings.adaptor_layers={value}", "model.settings.llm=tiny:llama"],
                             check_files=False)
        with pytest.raises(UserError, match=r"recipe field 'model.settings.adaptor_layers': \[.*" + message):
            model_skeleton(recipe.model)


def test_a_resume_onto_other_default_adaptor_depths_says_which_to_set(tmp_path, monkeypatch, capsys):
    """IAA's default depths changed (a review): a run begun before, resumed from a recipe without the setting,
    built other adaptors and failed on missing weight keys with no hint. It names the depths to set."""
    import shutil

    import test_train_common as C

    import vlm.connectors.inner_adaptor as ia
    from vlm.cli import main
    world = C.write_image_world(tmp_path / "world", n=12)
    iaa = {"family": "iaa", "size": "tiny", "settings": {"llm": "tiny:llama", "audio": None, "music": None,
                                                         "video": None}}
    recipe = C.write_recipe(tmp_path / "r.yaml", world, [C.stage("s", ["route.*"], steps=2)], model=iaa,
                            checkpoint_every=1, log_samples=False)
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0
    shutil.rmtree(run / "final")
    shutil.rmtree(run / "checkpoints" / "step-00000002")
    monkeypatch.setattr(ia, "default_adaptor_layers", lambda n: [1])       # as if the default had changed
    capsys.readouterr()
    assert main(["train", str(recipe), "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "has adaptors after layers [0, 1], this recipe builds [1]" in err and \
        "model.settings.adaptor_layers: [0, 1]" in err and len(err.splitlines()) == 1, err
