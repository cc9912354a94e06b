"""Export a checkpoint to other stacks.

    vlm export runs/llava-tiny/final --to hf-llava --out exported/
    python -c "from transformers import LlavaForConditionalGeneration as L; L.from_pretrained('exported')"

`hf-llava` writes a folder that transformers' `LlavaForConditionalGeneration` loads and that gives
the same logits as our model: a CLIP / SigLIP vision tower from `hf:` (or the tiny presets built
on them), an `mlp2x_gelu` projector, and any LLM whose architecture transformers' Llava accepts
as `text_config` (Llama, Qwen2, Mistral, Gemma ...). Only the image path is exported.
"""
from __future__ import annotations

from pathlib import Path

import torch

from vlm import llm as llm_lib
from vlm.connectors.base import PlainRoute
from vlm.connectors.projector import ProjectorTokenizer
from vlm.errors import UserError, require
from vlm.model import MultimodalLM, write_folder

TARGETS = ("hf-llava",)


def to_hf_llava(model: MultimodalLM, out: str | Path) -> Path:
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration
    require(isinstance(model, MultimodalLM) and "image" in model.media, "hf-llava export needs an image encoder")
    tok = model.media["image"]
    require(type(tok) is ProjectorTokenizer, f"hf-llava export needs the projector connector for images, not "
            f"'{tok.settings()['type']}' (family '{model.config.family}'); hf-llava cannot express it")
    require(type(model.route) is PlainRoute, f"hf-llava export needs the plain LLM route, not "
            f"'{model.route.settings()['type']}' (family '{model.config.family}'); hf-llava cannot express it")
    enc, proj = tok.encoder, tok.projector
    require(hasattr(enc, "vision_model") and hasattr(enc, "hf_vision_config"),
            f"hf-llava export needs a Hugging Face CLIP/SigLIP vision tower, not '{enc.name}'")
    require(proj.kind == "mlp2x_gelu" and tok.pool == 1, "hf-llava export needs the mlp2x_gelu projector without pooling")
    causal = llm_lib.merged_copy(model.llm)
    causal = llm_lib.base_model(causal)
    text_cfg = causal.config
    cfg = LlavaConfig(vision_config=enc.hf_vision_config.to_dict(), text_config=text_cfg.to_dict(),
                      image_token_id=model.placeholder_id["image"], projector_hidden_act="gelu",
                      vision_feature_select_strategy=enc.feature_select, vision_feature_layer=enc.feature_layer,
                      image_seq_length=model.num_media_tokens("image", tok.blank()),
                      multimodal_projector_bias=True, tie_word_embeddings=text_cfg.tie_word_embeddings)
    hf = LlavaForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        _load(hf.model.vision_tower, enc.vision_model.state_dict(), "vision tower")
        _load(hf.model.multi_modal_projector, {k: v for k, v in proj.state_dict().items()}, "projector")
        _load(hf.model.language_model, causal.get_decoder().state_dict(), "language model")
        _load(hf.lm_head, causal.get_output_embeddings().state_dict(), "lm head")

    def write(tmp: Path) -> None:
        hf.save_pretrained(tmp, safe_serialization=True)
        model.tokenizer.save_pretrained(tmp)
        pre = enc.preprocess
        h, w = pre.size
        CLIPImageProcessor(size={"shortest_edge": min(h, w)}, crop_size={"height": h, "width": w},
                           image_mean=list(pre.mean), image_std=list(pre.std), do_convert_rgb=True,
                           resample=3 if pre.interpolation == "bicubic" else 2).save_pretrained(tmp)
    return write_folder(out, write)


def _load(module, state: dict, what: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"hf-llava export: the {what} does not map onto transformers' Llava "
                        f"({str(e).splitlines()[0]})") from None


def export(ckpt: str | Path, to: str, out: str | Path) -> Path:
    from vlm.loading import load
    require(to in TARGETS, f"unknown export target '{to}'; known: {list(TARGETS)}")
    return to_hf_llava(load(ckpt), out)
