"""Export a checkpoint to other stacks.

    vlm export runs/llava-tiny/final --to hf-llava --out exported/
    python -c "from transformers import LlavaForConditionalGeneration as L; L.from_pretrained('exported')"

`hf-llava` writes a folder that transformers' `LlavaForConditionalGeneration` loads and that gives
the same logits as our model: a CLIP / SigLIP vision tower from `hf:` (or the tiny presets built
on them), an `mlp2x_gelu` projector, and any LLM whose architecture transformers' Llava accepts
as `text_config` (Llama, Qwen2, Mistral, Gemma ...). Only the image path is exported.

The folder's image processor (`preprocessor_config.json`, a `CLIPImageProcessor`: size, resize,
crop, mean / std) gives, through `AutoProcessor.from_pretrained(folder)`, the pixels our encoder's
preprocess gives, bit for bit, for square, wide and tall images: HF towers preprocess as
transformers' default (torchvision) backend does (`encoders.base.ImagePreprocess`, backend "hf").
"""
from __future__ import annotations

from pathlib import Path

import torch

from vlm import llm as llm_lib
from vlm.atomic import write_folder
from vlm.connectors.base import PlainRoute
from vlm.connectors.projector import ProjectorTokenizer
from vlm.errors import UserError, require
from vlm.model import MultimodalLM

TARGETS = ("hf-llava",)


def to_hf_llava(model: MultimodalLM, out: str | Path) -> Path:
    from transformers import LlavaConfig, LlavaForConditionalGeneration
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
    cap = getattr(text_cfg, "final_logit_softcapping", None)
    scaled = llm_lib.logit_scale(text_cfg) != 1.0
    require(not cap and not scaled, f"hf-llava export: the LLM ({text_cfg.model_type}) "
            f"{'caps its logits (final_logit_softcapping ' + str(cap) + ')' if cap else 'scales its logits'}, which "
            "transformers' Llava does not apply: the exported model's logits would differ from this one's; "
            "evaluate it with vlm eval / the lmms-eval plugin instead")
    cfg = LlavaConfig(vision_config=enc.hf_vision_config.to_dict(), text_config=text_cfg.to_dict(),
                      image_token_id=model.placeholder_id["image"], projector_hidden_act="gelu",
                      vision_feature_select_strategy=enc.feature_select, vision_feature_layer=enc.feature_layer,
                      image_seq_length=model.num_media_tokens("image", tok.blank()),
                      multimodal_projector_bias=True, tie_word_embeddings=text_cfg.tie_word_embeddings)
    hf = LlavaForConditionalGeneration(cfg).eval()
    # generation ends where our chat turns end (<|im_end|>), as `vlm chat` stops; the tokenizer's own eos (</s>)
    # alone made transformers' generate run past every answer
    stop = [model.tokenizer.convert_tokens_to_ids("<|im_end|>"), model.tokenizer.eos_token_id]
    hf.generation_config.eos_token_id = [t for t in stop if t is not None]
    hf.generation_config.pad_token_id = model.tokenizer.pad_token_id
    with torch.no_grad():
        _load(hf.model.vision_tower, enc.vision_model.state_dict(), "vision tower")
        _load(hf.model.multi_modal_projector, {k: v for k, v in proj.state_dict().items()}, "projector")
        _load(hf.model.language_model, causal.get_decoder().state_dict(), "language model")
        _load(hf.lm_head, causal.get_output_embeddings().state_dict(), "lm head")

    def write(tmp: Path) -> None:
        from transformers import LlavaProcessor
        hf.save_pretrained(tmp, safe_serialization=True)
        processor = LlavaProcessor(image_processor=hf_image_processor(enc.preprocess), tokenizer=model.tokenizer,
                                   patch_size=enc.hf_vision_config.patch_size,
                                   vision_feature_select_strategy=enc.feature_select,
                                   num_additional_image_tokens=1 if enc.family == "clip" else 0,
                                   chat_template=chat_template(model.config.system))
        tk = model.tokenizer                    # batched generate() needs left padding (right: wrong answers)
        side, kwargs = tk.padding_side, dict(tk.init_kwargs)
        tk.padding_side, tk.init_kwargs["padding_side"] = "left", "left"     # saved from init_kwargs
        try:
            processor.save_pretrained(tmp)
        finally:
            tk.padding_side, tk.init_kwargs = side, kwargs
    return write_folder(out, write)


def chat_template(system: str | None) -> str:
    """Our ChatML (`vlm.data.template`) as a Jinja chat template: `apply_chat_template` gives the text our
    processor tokenises, content as a string or as parts ({"type": "image"} -> '<image>\n', as our prompts
    and llava-hf's templates put it; {"type": "text"})."""
    default = "" if not system else (
        "{% if messages[0]['role'] != 'system' %}<|im_start|>system\n" + system.replace("{", "{{ '{' }}")
        + "<|im_end|>\n{% endif %}")
    return (default + "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
            "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for p in m['content'] %}"
            "{% if p['type'] == 'image' %}<image>\n{% elif p['type'] == 'text' %}{{ p['text'] }}{% endif %}"
            "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3}


def hf_image_processor(pre):
    """transformers' CLIPImageProcessor doing what an encoder's ImagePreprocess does (backend "hf": the
    same pixels; a "pil" preprocess differs by the resize kernel, up to one intensity level)."""
    import math

    from transformers import CLIPImageProcessor
    h, w = pre.size
    if pre.crop:
        size, crop = {"shortest_edge": int(math.floor(min(h, w) / pre.crop_pct))}, {"height": h, "width": w}
    else:
        size, crop = {"height": h, "width": w}, None
    return CLIPImageProcessor(size=size, do_center_crop=pre.crop, crop_size=crop or {"height": h, "width": w},
                              image_mean=list(pre.mean), image_std=list(pre.std), do_convert_rgb=True,
                              resample=_RESAMPLE[pre.interpolation])


def _load(module, state: dict, what: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"hf-llava export: the {what} does not map onto transformers' Llava "
                        f"({str(e).splitlines()[0]})") from None


def export(ckpt: str | Path, to: str, out: str | Path) -> Path:
    from vlm.loading import load
    require(to in TARGETS, f"unknown export target '{to}'; known: {list(TARGETS)}")
    out = Path(out)          # never replaced: it could be the checkpoint itself, or a folder of the user's
    require(not out.exists() or (out.is_dir() and not any(out.iterdir())),
            f"--out {out}: {'a file' if not out.is_dir() else 'a folder with files in it'}; export into a new or "
            f"empty folder")
    return to_hf_llava(load(ckpt), out)
