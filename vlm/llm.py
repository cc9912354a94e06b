"""The language model: any Hugging Face causal LM from a local folder, or a tiny one from config.

    from vlm.llm import load_llm, build_tiny_llm, set_llm_mode
    llm, tok = load_llm("/models/qwen2-0.5b")            # local folder, never the hub
    llm, tok = build_tiny_llm("llama", hidden_size=64)   # random weights + the shipped tiny tokenizer
    set_llm_mode(llm, "lora", lora={"r": 8})             # frozen | full | lora (peft)

Connectors that work inside the LLM (inner adaptors) reach its parts through
`llm_parts(llm)`: embeddings, decoder layers, final norm and LM head.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vlm.errors import UserError, require
from vlm.modalities import PLACEHOLDERS  # added to every tokenizer as special tokens

ASSETS = Path(__file__).parent / "assets"
MODES = ("frozen", "full", "lora")
CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]
TINY_VOCAB = 1024

# Tiny architectures for tests and the default run; any other HF model type works from a folder.
TINY_ARCH = {
    "llama": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2),
    "qwen2": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2),
    "mistral": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, sliding_window=None),
    "gemma": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=1, head_dim=16),
    "gemma2": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=1, head_dim=16),     # eager attention: transformers has no SDPA for it
}


# ---------------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------------
def train_tiny_tokenizer(corpus: Path = ASSETS / "corpus.txt", vocab_size: int = TINY_VOCAB):
    """Byte-level BPE trained with `tokenizers` on the text we ship; encodes any string."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", *CHAT_TOKENS, *PLACEHOLDERS.values()]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(corpus)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", additional_special_tokens=[*CHAT_TOKENS, *PLACEHOLDERS.values()])


@functools.lru_cache(maxsize=1)
def _tiny_tokenizer_file() -> str:
    """The shipped tokenizer file (vlm/assets/tiny_tokenizer); trained from the corpus if absent."""
    folder = ASSETS / "tiny_tokenizer"
    if not (folder / "tokenizer.json").exists():
        train_tiny_tokenizer().save_pretrained(folder)
    return str(folder)


def tiny_tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(_tiny_tokenizer_file())


def add_special_tokens(tokenizer) -> int:
    """Make sure placeholders, chat markers and a pad token exist; returns how many were added."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in [*CHAT_TOKENS, *PLACEHOLDERS.values()] if t not in vocab]
    added = tokenizer.add_special_tokens({"additional_special_tokens": missing}) if missing else 0
    if tokenizer.pad_token is None:
        added += tokenizer.add_special_tokens({"pad_token": "<pad>"})
    return added


# ---------------------------------------------------------------------------------------------
# building / loading
# ---------------------------------------------------------------------------------------------
def llm_config(model_type: str, vocab_size: int, **overrides):
    from transformers import CONFIG_MAPPING, AutoConfig
    require(model_type in TINY_ARCH or overrides, f"unknown tiny LLM architecture '{model_type}'; "
            f"choose one of {sorted(TINY_ARCH)} or give its sizes")
    if model_type not in CONFIG_MAPPING:
        raise UserError(f"unknown LLM model_type '{model_type}' (not a transformers architecture)")
    # a config takes any keyword as an attribute: a misspelt size would be kept and ignored
    from vlm.config import misspelt_options
    unknown = misspelt_options(CONFIG_MAPPING[model_type], overrides, ("attn_implementation", "vocab_size"))
    require(not unknown, f"unknown LLM setting(s) {unknown} for model_type '{model_type}': not fields of "
            f"transformers' {CONFIG_MAPPING[model_type].__name__}, though close to one")
    kw = {**TINY_ARCH.get(model_type, {}), **overrides}
    kw.setdefault("max_position_embeddings", 2048)
    kw.setdefault("tie_word_embeddings", False)
    try:
        cfg = AutoConfig.for_model(model_type, vocab_size=vocab_size, **kw)
    except ValueError as e:
        raise UserError(f"LLM model_type '{model_type}': {e}") from None
    cfg._attn_implementation = kw.get("attn_implementation", "sdpa")
    return cfg


def _attention_fallback(make, impl: str):
    """`make(attn_implementation)`; an architecture transformers gives no SDPA kernel (Gemma2) is built
    with eager attention instead (said on stderr), as transformers' own default would."""
    try:
        return make(impl)
    except ValueError as e:
        if impl != "sdpa" or "does not support an attention implementation" not in str(e):
            raise
        print(f"note: {str(e).split(' does not support', 1)[0]} has no SDPA attention in transformers; "
              f"using eager attention", file=sys.stderr)
        return make("eager")


def from_config(config):
    """An AutoModelForCausalLM from a config (random init), fp32, SDPA attention (eager where none)."""
    from transformers import AutoModelForCausalLM
    impl = getattr(config, "_attn_implementation", None) or "sdpa"
    return _attention_fallback(lambda a: AutoModelForCausalLM.from_config(config, attn_implementation=a), impl)


def build_tiny_llm(model_type: str = "llama", seed: int | None = None, **overrides):
    """A tiny random LLM of any registered architecture, with the shipped tokenizer."""
    tok = tiny_tokenizer()
    add_special_tokens(tok)
    # A larger vocab_size (e.g. a Qwen2-shaped 151,936) is kept: rows past the tokenizer are unused.
    vocab = max(len(tok), overrides.pop("vocab_size", 0))
    cfg = llm_config(model_type, vocab_size=vocab, bos_token_id=tok.bos_token_id,
                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **overrides)
    if seed is not None:
        torch.manual_seed(seed)
    return from_config(cfg), tok


def load_llm(path: str | os.PathLike, trust_remote_code: bool = False, dtype=torch.float32):
    """AutoModelForCausalLM + tokenizer from a local folder; safetensors only, no hub, no remote code."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    p = Path(path)
    require(p.is_dir(), f"LLM folder not found: '{p}'")
    require((p / "config.json").exists(), f"{p}: no config.json (not a Hugging Face model folder)")
    weights = list(p.glob("*.safetensors"))
    require(weights, f"{p}: no *.safetensors weights (pickled .bin files are never loaded)")
    try:
        if torch.empty(0).is_meta:
            # a recipe's weightless skeleton (`vlm.train.recipe.model_skeleton`): the architecture from config.json;
            # from_pretrained refuses the meta device, so `vlm train ... llm=DIR` was refused (a review)
            from transformers import AutoConfig
            config = AutoConfig.from_pretrained(p, local_files_only=True, trust_remote_code=trust_remote_code)
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code, dtype=dtype)
        else:
            model = _attention_fallback(lambda a: AutoModelForCausalLM.from_pretrained(
                p, local_files_only=True, use_safetensors=True, trust_remote_code=trust_remote_code, dtype=dtype,
                attn_implementation=a), "sdpa")
    except (OSError, ValueError) as e:
        raise UserError(f"{p}: cannot load the LLM: {str(e).splitlines()[0]}") from None
    except Exception as e:  # safetensors raises its own error type on a corrupt file
        if "safetensor" in type(e).__module__.lower() or "header" in str(e).lower():
            raise UserError(f"{p}: corrupt weights file: {str(e).splitlines()[0]}") from None
        raise
    try:
        tok = AutoTokenizer.from_pretrained(p, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"{p}: cannot load the tokenizer: {str(e).splitlines()[0]}") from None
    if add_special_tokens(tok):
        resize_embeddings(model, len(tok))
    return model, tok


def resize_embeddings(llm, n: int) -> None:
    """Grow the vocabulary to n rows; new rows start at the mean of the old ones (as LLaVA does)."""
    old = llm.get_input_embeddings().weight.shape[0]
    if n <= old:
        return
    llm.resize_token_embeddings(n, mean_resizing=False)
    with torch.no_grad():
        for w in {id(m.weight): m.weight for m in (llm.get_input_embeddings(), llm.get_output_embeddings())
                  if m is not None}.values():
            w[old:] = w[:old].mean(0, keepdim=True)


# ---------------------------------------------------------------------------------------------
# parts, for connectors that work inside the LLM
# ---------------------------------------------------------------------------------------------
@dataclass
class LLMParts:
    embed_tokens: nn.Module
    layers: nn.ModuleList
    norm: nn.Module
    lm_head: nn.Module
    backbone: nn.Module  # the decoder stack (LlamaModel, Qwen2Model ...)


def base_model(llm):
    """The plain HF causal LM under a peft wrapper, if any."""
    from peft import PeftModel
    return llm.get_base_model() if isinstance(llm, PeftModel) else llm


def llm_parts(llm) -> LLMParts:
    causal = base_model(llm)
    backbone = causal.get_decoder()
    layers = next((getattr(backbone, n) for n in ("layers", "h", "blocks") if hasattr(backbone, n)), None)
    norm = next((getattr(backbone, n) for n in ("norm", "final_layernorm", "ln_f", "final_layer_norm")
                 if hasattr(backbone, n)), None)                      # final_layer_norm: OPT, GPT-NeoX (Pythia)
    if layers is None or norm is None:
        raise UserError(f"LLM {type(causal).__name__}: cannot find its decoder layers / final norm (a decoder "
                        f"stack under layers / h / blocks and a final norm: Llama-, GPT-2-, OPT-like architectures)")
    logit_scale(causal.config)                        # an unknown scaling of its logits: refused here, not ignored
    kinds = getattr(causal.config, "layers_block_type", None) or getattr(causal.config, "layer_types", None) or []
    other = sorted({str(k) for k in kinds} - ATTENTION_LAYERS)
    if other:                 # Jamba, Bamba ...: cached generation crashed inside transformers (a review)
        raise UserError(f"LLM {type(causal).__name__}: layers of kind {', '.join(other)} (a hybrid state-space / "
                        "linear-attention architecture), whose state the suite's cached generation does not carry: "
                        "not supported")
    return LLMParts(causal.get_input_embeddings(), layers, norm, causal.get_output_embeddings(), backbone)


ATTENTION_LAYERS = {"attention", "full_attention", "sliding_attention", "chunked_attention"}   # a config's layer kinds


# What a CausalLM's forward does to its lm_head's output that a backbone-and-head model (ours: an IAA route has
# heads of its own) must do too: model_type prefix -> (config attribute, how). Granite divides by
# logits_scaling, HyperCLOVA X multiplies by it, Cohere multiplies by logit_scale (they were dropped: the
# training loss, sampling and likelihoods at the wrong scale, a review).
LOGIT_SCALES = {"granite": ("logits_scaling", "divide"), "hyperclovax": ("logits_scaling", "multiply"),
                "cohere": ("logit_scale", "multiply")}


def logit_scale(config) -> float:
    """The factor a CausalLM of `config` multiplies its lm_head's logits by (1.0: none); a config with a scaling
    attribute this table does not know is a UserError (its semantics differ by model)."""
    model_type = str(getattr(config, "model_type", ""))
    for prefix, (attr, how) in LOGIT_SCALES.items():
        if model_type.startswith(prefix):
            value = getattr(config, attr, None)
            return 1.0 if not value else (1.0 / value if how == "divide" else float(value))
    unknown = [a for a in ("logits_scaling", "logit_scale") if getattr(config, a, None) not in (None, 1, 1.0)]
    if unknown:
        raise UserError(f"LLM {model_type}: its config scales the logits ({unknown[0]} {getattr(config, unknown[0])}) "
                        "in a way this suite does not apply: refused (its loss and sampling would be off)")
    return 1.0


def finish_logits(config, logits: torch.Tensor) -> torch.Tensor:
    """The lm_head's logits as the CausalLM returns them: scaled (`logit_scale`), then soft-capped (Gemma 2 / 3)."""
    scale = logit_scale(config)
    if scale != 1.0:
        logits = logits * scale
    cap = getattr(config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


# ---------------------------------------------------------------------------------------------
# modes
# ---------------------------------------------------------------------------------------------
DEFAULT_LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")


def lora_config(lora: dict | None):
    """peft's LoraConfig of a stage's `lora` settings over DEFAULT_LORA; an unknown key or a bad value is a
    one-line UserError naming it (peft raises TypeError / ValueError, or fails later inside the model)."""
    from peft import LoraConfig
    require(lora is None or isinstance(lora, dict), f"lora: a mapping of LoraConfig settings, got {lora!r}")
    known = {f.name for f in dataclasses.fields(LoraConfig)}
    unknown = sorted(set(lora or {}) - known)
    require(not unknown, f"lora: unknown LoraConfig setting(s) {unknown} (e.g. r, lora_alpha, lora_dropout, "
                         f"target_modules, use_dora)")
    for key, kind, low, what in (("r", int, 1, "an integer >= 1"), ("lora_alpha", (int, float), 0, "a number >= 0"),
                                 ("lora_dropout", (int, float), 0, "a number in [0, 1)")):
        value = (lora or {}).get(key, DEFAULT_LORA[key])
        require(isinstance(value, kind) and not isinstance(value, bool) and value >= low
                and (key != "lora_dropout" or value < 1), f"lora.{key}: {what}, got {value!r}")
    try:
        return LoraConfig(**{**DEFAULT_LORA, **(lora or {})}, task_type="CAUSAL_LM")
    except (TypeError, ValueError) as e:
        raise UserError(f"lora: {str(e).splitlines()[0][:200]}") from None


def set_llm_mode(llm, mode: str, lora: dict | None = None):
    """frozen: no parameter trains; full: all do; lora: only peft adapters. Returns the (maybe wrapped) LLM."""
    require(mode in MODES, f"llm mode '{mode}' is not one of {MODES}")
    from peft import PeftModel, get_peft_model
    if mode == "lora":
        if isinstance(llm, PeftModel):
            _check_same_adapters(llm, lora)
        else:
            try:
                with warnings.catch_warnings():     # peft reads a property transformers deprecates (FutureWarning)
                    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                    llm = get_peft_model(llm, lora_config(lora))
            except ValueError as e:     # peft's NoMatchingPeftModuleError (target_modules naming nothing) ...
                why = str(e).splitlines()[0][:200]
                raise UserError(f"lora{'.target_modules' if 'target modules' in why.lower() else ''}: {why}") from None
        cfg = llm.peft_config["default"]
        for n, p in llm.named_parameters():
            p.requires_grad_(_peft_trains(n, cfg))
        return llm
    for p in llm.parameters():
        p.requires_grad_(mode == "full")
    if isinstance(llm, PeftModel):  # leaving lora: adapters stay but follow the mode
        for n, p in llm.named_parameters():
            p.requires_grad_(mode == "full")
    return llm


def _peft_trains(name: str, cfg) -> bool:
    """Whether peft trains a parameter of a LoRA-wrapped LLM: the adapters, the copies of `modules_to_save`,
    `trainable_token_indices`' deltas and the biases its `bias` setting names (only the adapters trained: a
    `modules_to_save: [lm_head]` grew the model and stayed at its start, a review)."""
    if "lora_" in name or ".modules_to_save." in name or "trainable_tokens_" in name:
        return True
    bias = getattr(cfg, "bias", "none")
    return name.endswith(".bias") and (bias == "all" or bias == "lora_only" and name.endswith("base_layer.bias"))


def _check_same_adapters(llm, lora: dict | None) -> None:
    """A stage's `lora` settings against the adapters the LLM already has (made by an earlier stage or loaded
    with its checkpoint): peft keeps those, so a setting naming another value would be ignored in silence."""
    cfg = llm.peft_config["default"]
    for key, want in (lora or {}).items():
        have = getattr(cfg, key, None)
        if key == "target_modules" and (isinstance(want, str) or have is None):
            continue                                        # 'all-linear' / a regex: stored expanded, not comparable
        if isinstance(want, (list, tuple)) and isinstance(have, (set, list, tuple)):   # peft keeps some as sets
            have, want = sorted(map(str, have)), sorted(map(str, want))
        if have != want:
            raise UserError(f"lora.{key}: the LLM already has LoRA adapters (from its checkpoint or an earlier "
                            f"stage) with {key}={have!r}, which a stage cannot change to {want!r}; give that "
                            f"value or no lora settings")


def checkpoint_activations(model) -> None:
    """Activation checkpointing of a transformers model's layers (non-reentrant), through the method
    transformers names it by (`gradient_checkpointing_enable` is deprecated since 5.x: a FutureWarning)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def lora_config_dict(llm) -> dict | None:
    from peft import PeftModel
    if not isinstance(llm, PeftModel):
        return None
    from peft import LoraConfig
    cfg, default = llm.peft_config["default"], LoraConfig()
    out = {}
    for f in dataclasses.fields(LoraConfig):
        value = getattr(cfg, f.name, None)
        if f.name in NOT_SAVED or f.name not in SAVED and value == getattr(default, f.name, None):
            continue
        value = sorted(value) if isinstance(value, set) else list(value) if isinstance(value, tuple) else value
        try:
            json.dumps(value)
        except TypeError:
            continue                 # not a setting a config.json can hold (a callable, a config object)
        out[f.name] = value
    return out


# LoraConfig fields a checkpoint's config.json keeps: the four always, every other one set away from peft's
# default (use_dora, bias, modules_to_save ...: each adds weights, and a checkpoint saved without them did not
# load, a review), except what describes the run rather than the adapters
SAVED = ("r", "lora_alpha", "lora_dropout", "target_modules")
NOT_SAVED = {"task_type", "peft_type", "base_model_name_or_path", "revision", "inference_mode"}


def merged_copy(llm):
    """A plain HF model with LoRA adapters merged in (for export); the input is left as it is."""
    from peft import PeftModel
    if not isinstance(llm, PeftModel):
        return llm
    return copy.deepcopy(llm).merge_and_unload()


@functools.lru_cache(maxsize=None)
def _cache_kwarg(cls) -> str:
    import inspect
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def cache_kwarg(module) -> str:
    """The KV-cache argument of a decoder's forward: `cache` in transformers >= 5.2x, `past_key_values` before."""
    return _cache_kwarg(type(module))


def config_dict(llm) -> dict:
    d = base_model(llm).config.to_dict()
    return json.loads(json.dumps(d, default=str))


def config_from_dict(d: dict):
    from transformers import AutoConfig
    d = dict(d)
    model_type = d.pop("model_type", None)
    require(model_type is not None, "LLM config has no model_type")
    cfg = AutoConfig.for_model(model_type, **d)
    cfg._attn_implementation = "sdpa"
    return cfg
