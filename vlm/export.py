"""Export a checkpoint to other stacks.

    vlm export runs/llava-tiny/final --to hf-llava --out exported/
    python -c "from transformers import LlavaForConditionalGeneration as L; L.from_pretrained('exported')"

`hf-llava` writes a folder that transformers' `LlavaForConditionalGeneration` loads and that gives
the same logits as our model: a CLIP / SigLIP vision tower from `hf:` (or the tiny presets built
on them), an `mlp2x_gelu` projector, and any LLM whose architecture transformers' Llava accepts
as `text_config` (Llama, Qwen2, Mistral, Gemma ...). Only the image path is exported.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from vlm import llm as llm_lib
from vlm.errors import UserError, require
from vlm.model import MultimodalLM, blank_item, replace_dir

TARGETS = ("hf-llava",)


def to_hf_llava(model: MultimodalLM, out: str | Path) -> Path:
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration
    enc = model.encoders["image"] if "image" in model.encoders else None
    require(enc is not None, "hf-llava export needs an image encoder")
    require(hasattr(enc, "vision_model") and hasattr(enc, "hf_vision_config"),
            f"hf-llava export needs a Hugging Face CLIP/SigLIP vision tower, not '{enc.name}'")
    proj = model.connectors["image"]
    require(getattr(proj, "kind", None) == "mlp2x_gelu" and proj.pool == 1,
            "hf-llava export needs the mlp2x_gelu projector without pooling")
    changed = [h for h in ("run_backbone", "embed_tokens", "head", "encode_modality", "media_preprocess")
               if getattr(type(model), h) is not getattr(MultimodalLM, h)]
    require(not changed, f"family '{model.config.family}' changes {', '.join(changed)}; hf-llava cannot express it")
    causal = llm_lib.merged_copy(model.llm)
    causal = llm_lib.base_model(causal)
    text_cfg = causal.config
    cfg = LlavaConfig(vision_config=enc.hf_vision_config.to_dict(), text_config=text_cfg.to_dict(),
                      image_token_id=model.placeholder_id["image"], projector_hidden_act="gelu",
                      vision_feature_select_strategy=enc.feature_select, vision_feature_layer=enc.feature_layer,
                      image_seq_length=model.num_media_tokens("image", blank_item(enc.preprocess)),
                      multimodal_projector_bias=True, tie_word_embeddings=text_cfg.tie_word_embeddings)
    hf = LlavaForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        _load(hf.model.vision_tower, enc.vision_model.state_dict(), "vision tower")
        _load(hf.model.multi_modal_projector, {k: v for k, v in proj.state_dict().items()}, "projector")
        _load(hf.model.language_model, causal.get_decoder().state_dict(), "language model")
        _load(hf.lm_head, causal.get_output_embeddings().state_dict(), "lm head")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        hf.save_pretrained(tmp, safe_serialization=True)
        model.tokenizer.save_pretrained(tmp)
        pre = enc.preprocess
        h, w = pre.size
        CLIPImageProcessor(size={"shortest_edge": min(h, w)}, crop_size={"height": h, "width": w},
                           image_mean=list(pre.mean), image_std=list(pre.std), do_convert_rgb=True,
                           resample=3 if pre.interpolation == "bicubic" else 2).save_pretrained(tmp)
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _load(module, state: dict, what: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"hf-llava export: the {what} does not map onto transformers' Llava "
                        f"({str(e).splitlines()[0]})") from None


def export(ckpt: str | Path, to: str, out: str | Path) -> Path:
    from vlm.model import load
    require(to in TARGETS, f"unknown export target '{to}'; known: {list(TARGETS)}")
    return to_hf_llava(load(ckpt), out)
