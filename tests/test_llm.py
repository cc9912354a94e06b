"""vlm.llm: loading any HF causal LM from a folder, tiny builds, modes (frozen / full / lora)."""
import pytest
import torch

from vlm import llm as L
from vlm.errors import UserError


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gemma", "gemma2"])
def test_loads_from_saved_folder(tmp_path, arch):
    """(gemma2 has no SDPA attention in transformers: built and loaded with eager, it was a ValueError)"""
    model, tok = L.build_tiny_llm(arch, seed=0)
    model.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    loaded, tok2 = L.load_llm(tmp_path)
    assert type(loaded) is type(model)
    ids = torch.tensor([tok("What color is the circle?")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert tok2.convert_tokens_to_ids("<image>") == tok.convert_tokens_to_ids("<image>")
    parts = L.llm_parts(loaded)
    assert len(parts.layers) == loaded.config.num_hidden_layers
    assert parts.lm_head is loaded.get_output_embeddings()


def test_hf_tokenizer_without_placeholders_gets_them_and_embeddings_grow(tmp_path):
    from transformers import PreTrainedTokenizerFast
    model, tok = L.build_tiny_llm("llama", seed=0)
    plain = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer)
    model.save_pretrained(tmp_path, safe_serialization=True)
    plain.save_pretrained(tmp_path)
    loaded, tok2 = L.load_llm(tmp_path)
    assert tok2.pad_token is not None and "<music>" in tok2.get_vocab()
    assert loaded.get_input_embeddings().weight.shape[0] >= len(tok2)


def test_bad_folders_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        L.load_llm(tmp_path / "nope")
    with pytest.raises(UserError, match="no config.json"):
        L.load_llm(tmp_path)
    model, tok = L.build_tiny_llm("llama", seed=0)
    model.save_pretrained(tmp_path, safe_serialization=False)  # pickled weights only
    tok.save_pretrained(tmp_path)
    for f in tmp_path.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(UserError, match="safetensors"):
        L.load_llm(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(UserError, match="model.safetensors|corrupt|cannot load"):
        L.load_llm(tmp_path)


def test_frozen_gets_no_gradient_and_stays_bit_identical():
    model, tok = L.build_tiny_llm("qwen2", seed=0)
    model = L.set_llm_mode(model, "frozen")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    head = torch.nn.Linear(8, model.config.hidden_size)  # something trainable in front of it
    opt = torch.optim.AdamW(list(head.parameters()) + list(model.parameters()), lr=1e-2, weight_decay=0.1)
    ids = torch.randint(10, 200, (2, 12))
    emb = model.get_input_embeddings()(ids) + head(torch.randn(2, 12, 8))
    loss = model(inputs_embeds=emb, labels=ids).loss
    loss.backward()
    assert all(p.grad is None for p in model.parameters())
    assert head.weight.grad is not None
    opt.step()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_lora_trains_only_adapters():
    model, tok = L.build_tiny_llm("llama", seed=0)
    model = L.set_llm_mode(model, "lora", {"r": 4})
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    base = {n: p.clone() for n, p in model.named_parameters() if "lora_" not in n}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(10, 200, (2, 12))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base[n]), n
    assert L.lora_config_dict(model)["r"] == 4
    merged = L.merged_copy(model)
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, model(input_ids=ids).logits, atol=1e-5)


@pytest.mark.parametrize("settings", [{"modules_to_save": ["lm_head"]}, {"bias": "all"}, {"bias": "lora_only"}])
def test_lora_trains_what_peft_trains_also_after_another_mode(settings):
    """`modules_to_save` and `bias` add parameters peft trains; only the adapters trained (a review: lm_head's
    copy grew the model and never moved). The same set after a frozen stage and back."""
    from peft import get_peft_model
    own = get_peft_model(L.build_tiny_llm("qwen2", seed=0)[0], L.lora_config({"r": 4, **settings}))
    want = {n for n, p in own.named_parameters() if p.requires_grad}
    assert any("lora_" not in n for n in want)                    # qwen2's q/k/v biases, the lm_head copy
    model = L.set_llm_mode(L.build_tiny_llm("qwen2", seed=0)[0], "lora", {"r": 4, **settings})
    assert {n for n, p in model.named_parameters() if p.requires_grad} == want
    model = L.set_llm_mode(L.set_llm_mode(model, "frozen"), "lora", {"r": 4, **settings})
    assert {n for n, p in model.named_parameters() if p.requires_grad} == want


@pytest.mark.parametrize("settings", [{"modules_to_save": ["lm_head"]}, {"use_dora": True}])
def test_a_checkpoint_with_lora_settings_that_add_weights_loads(tmp_path, settings):
    """config.json kept r / alpha / dropout / targets only: a DoRA run (VLM2Vec's own setting) or one with
    modules_to_save saved weights its config did not describe and did not load (a review)."""
    import vlm
    m = vlm.build("llava", "tiny", llm="tiny:qwen2", audio=None, music=None, video=None).eval()
    m.set_llm_mode("lora", {"r": 4, **settings})
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(0.1)
    ids = torch.tensor([[20, 25, 27, 29]])
    loaded = vlm.load(m.save_pretrained(tmp_path / "ck")).eval()
    with torch.no_grad():
        assert torch.equal(loaded.logits(ids), m.logits(ids))


def test_unknown_mode_and_arch():
    model, _ = L.build_tiny_llm("llama")
    with pytest.raises(UserError, match="mode"):
        L.set_llm_mode(model, "half")
    with pytest.raises(UserError, match="architecture|model_type"):
        L.build_tiny_llm("no-such-arch")
