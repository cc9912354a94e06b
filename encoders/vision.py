"""Image encoders: timm models, open_clip visual towers, HF CLIP / SigLIP vision towers.

    build_encoder("timm:vit_small_patch16_224.augreg_in21k", weights="/ckpt/model.safetensors")
    build_encoder("open_clip:ViT-B-32", weights="/ckpt/open_clip_model.safetensors")
    build_encoder("tiny-clip")          # HF CLIPVisionModel, 32 px, for tests and LLaVA export

Token features [B, T, D]; ``feature_layer`` picks the block (-1: the model's final output).
"""

from __future__ import annotations

import copy
import re
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from encoders.base import Encoder, GridTokens, ImagePreprocess, TokenCount, preprocess_from_dict
from encoders.registry import check_config_options, register_encoder
from vlm.errors import UserError
from vlm.hub import offline, open_clip_hub_names, require_local

if TYPE_CHECKING:
    from transformers import PretrainedConfig

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


def resolve_layer(feature_layer: int, num_layers: int, what: str) -> int:
    """Check ``feature_layer`` against ``num_layers`` choices (negative counts from the end)."""
    if not -num_layers <= feature_layer < num_layers:
        raise UserError(f"feature_layer {feature_layer} out of range for {what} ({num_layers} choices)")
    return feature_layer


# ----------------------------------------------------------------------------- timm
def timm_tokens(model: nn.Module, x: Tensor, feature_layer: int, keep_prefix: bool) -> Tensor:
    """Token features of a timm model: ``forward_features`` for -1, else the output of block
    ``feature_layer`` (not normed); conv feature maps are flattened to tokens."""
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    if feature_layer == -1:
        feats = model.forward_features(x)  # [B, T, D] (ViT) or [B, C, h, w] (conv)
        if feats.dim() == 4:
            return feats.flatten(2).transpose(1, 2)  # [B, h*w, C]
        return feats if keep_prefix else feats[:, prefix:]
    if prefix or hasattr(model, "num_prefix_tokens"):
        out = model.forward_intermediates(
            x, indices=[feature_layer], output_fmt="NLC", intermediates_only=True, return_prefix_tokens=prefix > 0
        )[0]
        if prefix:
            patches, pre = out  # [B, N, D], [B, P, D]
            return torch.cat([pre, patches], dim=1) if keep_prefix else patches  # [B, P+N, D]
        return out  # [B, N, D]
    fmap = model.forward_intermediates(x, indices=[feature_layer], intermediates_only=True)[0]  # [B, C, h, w]
    return fmap.flatten(2).transpose(1, 2)  # [B, h*w, C]


class TimmEncoder(Encoder, kind="timm"):
    """Any timm model (``pretrained=False, num_classes=0``); tokens from ``forward_features``."""

    modality = "image"

    def __init__(
        self,
        name: str,
        model_name: str,
        model_kwargs: dict[str, Any] | None = None,
        preprocess: ImagePreprocess | None = None,
        feature_layer: int = -1,
        keep_prefix: bool = True,
    ) -> None:
        super().__init__()
        import timm
        import timm.data

        self.name = name
        self.model_name = model_name
        self.model_kwargs = dict(model_kwargs or {})
        try:
            self.model = timm.create_model(model_name, pretrained=False, num_classes=0, **self.model_kwargs)
        except RuntimeError as err:
            raise UserError(f"unknown timm model {model_name!r}: {err}") from err
        except TypeError as err:  # a keyword the model's constructor lacks: a misspelt option
            bad = re.search(r"unexpected keyword argument '(\w+)'", str(err))
            if bad is None:
                raise
            raise UserError(f"unknown option {bad.group(1)!r} for encoder {name!r}: timm's {model_name!r} does "
                            f"not take it") from None
        if preprocess is None:
            cfg = timm.data.resolve_data_config({}, model=self.model)
            size = self.model_kwargs.get("img_size", cfg["input_size"][-2:])  # kwargs resize the model
            preprocess = ImagePreprocess(
                size=size,
                mean=cfg["mean"],
                std=cfg["std"],
                interpolation=cfg["interpolation"] or "bicubic",
                crop=cfg.get("crop_mode", "center") != "squash",
                crop_pct=cfg.get("crop_pct", 1.0),
            )
        self.preprocess = preprocess
        self.keep_prefix = keep_prefix
        # -1: forward_features (after the final norm); else the output of that block / stage.
        self.feature_layer = feature_layer
        self._block = -1
        if feature_layer != -1:
            blocks = getattr(self.model, "blocks", None) or getattr(self.model, "stages", None)
            if blocks is None:
                raise UserError(f"timm model {model_name!r} has no blocks to pick feature_layer {feature_layer} from")
            self._block = resolve_layer(feature_layer, len(blocks), f"timm model {model_name!r}") % len(blocks)
        self.output_dim = int(getattr(self.model, "num_features", 0) or self.model.embed_dim)
        self.num_prefix_tokens = int(getattr(self.model, "num_prefix_tokens", 0)) if keep_prefix else 0

    def forward(self, x: Tensor) -> Tensor:
        return timm_tokens(self.model, x, self._block, self.keep_prefix)  # [B, T, D]

    def patch_grid(self, item: Tensor) -> tuple[int, int] | None:
        pe = getattr(self.model, "patch_embed", None)
        if pe is None or not hasattr(self.model, "num_prefix_tokens"):
            return None
        ph, pw = pe.patch_size
        return item.shape[-2] // ph, item.shape[-1] // pw

    def token_count(self) -> TokenCount:
        pe = getattr(self.model, "patch_embed", None)
        if pe is None or not hasattr(self.model, "num_prefix_tokens"):
            return super().token_count()
        return GridTokens(tuple(pe.patch_size), self.num_prefix_tokens)

    def weights_module(self) -> nn.Module:
        return self.model

    def spec_args(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "model_kwargs": self.model_kwargs, "keep_prefix": self.keep_prefix}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> TimmEncoder:
        return cls(
            spec["name"],
            spec["model_name"],
            spec["model_kwargs"],
            preprocess_from_dict(spec["preprocess"]),  # type: ignore[arg-type]
            spec["feature_layer"],
            spec["keep_prefix"],
        )


def _check_tag_has_weights(name: str, tag: str | None, weights: str | None) -> None:
    """A pretrained-weights tag (`.openai`, `.augreg_in21k`) without a local weights file: refused (nothing is
    downloaded, so the encoder would have random weights under a name that says otherwise)."""
    if tag and not weights:
        raise UserError(f"{name}: '.{tag}' names pretrained weights, which are not downloaded; give them as "
                        f"weights=<file.safetensors>, or drop '.{tag}' for random weights")


@register_encoder(
    "timm:", "image", "any timm model, random init or weights=<file.safetensors>: timm:<model_name>[.<tag>]"
)
def build_timm(target: str, *, weights: str | None = None, feature_layer: int | None = None, **kw: Any) -> Encoder:
    if target.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        raise UserError(f"timm:{target}: a hub or local-dir name makes timm download or read its config; build the "
                        f"architecture by name (timm:<model_name>) with weights=<file.safetensors>")
    _check_tag_has_weights(f"timm:{target}", target.partition(".")[2], weights)   # timm ignores the tag
    keep_prefix = kw.pop("keep_prefix", True)
    enc = TimmEncoder(f"timm:{target}", target, kw, None, -1 if feature_layer is None else feature_layer, keep_prefix)
    if weights:
        enc.load_weights(weights)
    return enc


@register_encoder("tiny-vit", "image", "timm ViT, 32 px, patch 8, embed 64, 2 layers (tests)")
def tiny_vit(*, weights: str | None = None, feature_layer: int | None = None, **kw: Any) -> Encoder:
    args = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2) | kw
    keep_prefix = args.pop("keep_prefix", True)
    enc = TimmEncoder(
        "tiny-vit", "vit_tiny_patch16_224", args, None, -1 if feature_layer is None else feature_layer, keep_prefix
    )
    if weights:
        enc.load_weights(weights)
    return enc


# ------------------------------------------------------------------------ open_clip
def openclip_from_cfg(model_cfg: dict[str, Any], name: str = "") -> nn.Module:
    """An open_clip model from its config dict, random weights (what ``create_model`` builds
    with ``pretrained=None`` in fp32, without any hub access)."""
    from open_clip.coca_model import CoCa
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = copy.deepcopy(model_cfg)
    cfg.pop("preprocess_cfg", None)
    vision_cfg, text_cfg = cfg["vision_cfg"], cfg["text_cfg"]
    if "timm_model_name" in vision_cfg:
        vision_cfg["timm_model_pretrained"] = False
    if "hf_model_name" in text_cfg:
        text_cfg["hf_model_pretrained"] = False
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in text_cfg
    model_class = (CoCa if "multimodal_cfg" in cfg else CustomTextCLIP) if custom_text else CLIP
    names = open_clip_hub_names(cfg)
    names.pop("tokenizer", None)                        # the model alone: its tokenizer is not built here
    what = f"open_clip model {name}" if name else "open_clip model"
    require_local(what, names)
    try:
        with offline():
            return model_class(**cfg)
    except OSError as err:     # cached, but not whole (a file the text tower needs is missing)
        raise UserError(f"{what}: its text tower's files are not all local: {str(err).splitlines()[0]}") from err


def openclip_preprocess(model_cfg: dict[str, Any], tag_cfg: dict[str, Any] | None) -> ImagePreprocess:
    """open_clip's eval transform: defaults < the arch's preprocess_cfg < the weights tag's."""
    cfg: dict[str, Any] = {
        "mean": OPENAI_MEAN,
        "std": OPENAI_STD,
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
    for source in (model_cfg.get("preprocess_cfg") or {}, tag_cfg or {}):
        cfg.update({k: v for k, v in source.items() if k in cfg})
    # "longest" (pad to square) has no torchvision eval equivalent here; squash is the closest.
    return ImagePreprocess(
        size=model_cfg["vision_cfg"].get("image_size", 224),
        mean=cfg["mean"],
        std=cfg["std"],
        interpolation=cfg["interpolation"],
        crop=cfg["resize_mode"] == "shortest",
    )


class OpenClipEncoder(Encoder, kind="open_clip"):
    """An open_clip visual tower; ``clip_model`` holds the full model (text tower included)
    for zero-shot benchmarks unless ``keep_text=False``."""

    modality = "image"

    def __init__(
        self,
        name: str,
        model_cfg: dict[str, Any],
        preprocess: ImagePreprocess,
        feature_layer: int = -1,
        keep_text: bool = True,
    ) -> None:
        super().__init__()
        from open_clip.transformer import VisionTransformer

        self.name = name
        self.model_cfg = copy.deepcopy(model_cfg)
        self.preprocess = preprocess
        self.keep_text = keep_text
        model = openclip_from_cfg(self.model_cfg, name)
        if keep_text:
            self.clip_model: nn.Module | None = model
        else:
            self.clip_model = None
            self.visual_tower = model.visual
        visual = self.visual
        # What open_clip.create_model records, so open_clip's own helpers see the same transform.
        visual.preprocess_cfg = {
            "size": preprocess.size, "mode": "RGB", "mean": preprocess.mean, "std": preprocess.std,
            "interpolation": preprocess.interpolation, "resize_mode": "shortest" if preprocess.crop else "squash",
            "fill_color": 0,
        }  # fmt: skip
        if isinstance(visual, VisionTransformer):
            visual.output_tokens = True  # forward -> (pooled, tokens)
            self._timm = False
            n_layers = len(visual.transformer.resblocks)
            self.output_dim = int(visual.transformer.width)
        elif hasattr(visual, "trunk") and hasattr(visual.trunk, "forward_features"):
            self._timm = True  # open_clip TimmModel: tokens from the timm trunk
            n_layers = len(getattr(visual.trunk, "blocks", []) or [None])
            self.output_dim = int(visual.trunk.num_features)
            self.num_prefix_tokens = int(getattr(visual.trunk, "num_prefix_tokens", 0))
        else:
            raise UserError(f"open_clip model {name!r}: its visual tower ({type(visual).__name__}) has no token output")
        # -1: the tower's token output (after ln_post); else the output of that block.
        self.feature_layer = resolve_layer(feature_layer, n_layers, f"open_clip model {name!r}")
        self._block = -1 if feature_layer == -1 else feature_layer % n_layers

    @property
    def visual(self) -> nn.Module:
        return self.clip_model.visual if self.clip_model is not None else self.visual_tower

    def forward(self, x: Tensor) -> Tensor:
        if self._timm:
            return timm_tokens(self.visual.trunk, x, self._block, keep_prefix=True)  # [B, T, D]
        if self._block == -1:
            _, tokens = self.visual(x)  # [B, N, D] patch tokens after ln_post
            return tokens
        out = self.visual.forward_intermediates(x, indices=[self._block], intermediates_only=True, output_fmt="NLC")
        return out["image_intermediates"][0]  # [B, N, D] patch tokens of that block

    def token_count(self) -> TokenCount:
        if self._timm:
            return super().token_count()
        return GridTokens(tuple(self.visual.patch_size))

    def patch_grid(self, item: Tensor) -> tuple[int, int] | None:
        if self._timm:
            return None
        ph, pw = self.visual.patch_size
        return item.shape[-2] // ph, item.shape[-1] // pw

    def tokenize(self, texts: list[str]) -> Tensor:
        """Text -> token ids [N, context_length] for ``clip_model.encode_text`` (zero-shot)."""
        from open_clip.tokenizer import SimpleTokenizer

        text_cfg = self.model_cfg["text_cfg"]
        if "hf_tokenizer_name" in text_cfg:
            raise UserError(f"open_clip model {self.name!r} uses an HF tokenizer; load it from a local folder")
        return SimpleTokenizer(context_length=text_cfg.get("context_length", 77))(texts)  # [N, L]

    def weights_module(self) -> nn.Module:
        return self.clip_model if self.clip_model is not None else self.visual_tower

    def spec_args(self) -> dict[str, Any]:
        return {"model_cfg": self.model_cfg, "keep_text": self.keep_text}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> OpenClipEncoder:
        pre = preprocess_from_dict(spec["preprocess"])
        return cls(spec["name"], spec["model_cfg"], pre, spec["feature_layer"], spec["keep_text"])  # type: ignore[arg-type]


def _openclip_encoder(
    name: str,
    model_cfg: dict[str, Any],
    tag_cfg: dict[str, Any] | None,
    weights: str | None,
    feature_layer: int | None,
    **kw: Any,
) -> Encoder:
    keep_text = kw.pop("keep_text", True)
    if kw:
        raise UserError(f"unknown options for open_clip encoder {name!r}: {sorted(kw)}")
    pre = openclip_preprocess(model_cfg, tag_cfg)
    enc = OpenClipEncoder(name, model_cfg, pre, -1 if feature_layer is None else feature_layer, keep_text)
    if weights:
        enc.load_weights(weights)
    return enc


@register_encoder(
    "open_clip:",
    "image",
    "open_clip visual tower (+ clip_model), random init or weights=<file>: open_clip:<ARCH>[.<tag>]",
)
def build_open_clip(target: str, *, weights: str | None = None, feature_layer: int | None = None, **kw: Any) -> Encoder:
    import open_clip

    arch, tag = target, None
    if open_clip.get_model_config(arch) is None and "." in target:
        arch, tag = target.rsplit(".", 1)
    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        raise UserError(f"unknown open_clip architecture {arch!r} (see open_clip.list_models())")
    tag_cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else None
    if tag and not tag_cfg:
        raise UserError(f"unknown open_clip weights tag {tag!r} for {arch!r}")
    _check_tag_has_weights(f"open_clip:{target}", tag, weights)         # the tag gives the preprocessing only
    return _openclip_encoder(f"open_clip:{target}", model_cfg, tag_cfg, weights, feature_layer, **kw)


TINY_OPENCLIP_CFG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@register_encoder(
    "tiny-openclip", "image", "open_clip CLIP, 32 px, patch 8, width 64, 2 layers, tiny text tower (tests)"
)
def tiny_openclip(*, weights: str | None = None, feature_layer: int | None = None, **kw: Any) -> Encoder:
    return _openclip_encoder("tiny-openclip", TINY_OPENCLIP_CFG, None, weights, feature_layer, **kw)


# ------------------------------------------------------------------ HF CLIP / SigLIP
# model_type -> (config class name, model class name, has CLS token, default mean, std, crop)
_HF_VISION: dict[str, tuple[str, str, bool, tuple[float, ...], tuple[float, ...], bool]] = {
    "clip": ("CLIPVisionConfig", "CLIPVisionModel", True, OPENAI_MEAN, OPENAI_STD, True),
    "siglip": ("SiglipVisionConfig", "SiglipVisionModel", False, HALF, HALF, False),
}


class HFVisionEncoder(Encoder, kind="hf_vision"):
    """A transformers CLIP / SigLIP vision tower. Features are ``hidden_states[feature_layer]``
    as LLaVA takes them; ``feature_select="default"`` drops the CLS token, ``"full"`` keeps it.
    ``vision_model`` and ``hf_vision_config`` let the lead export to LlavaForConditionalGeneration."""

    modality = "image"

    def __init__(
        self,
        name: str,
        family: str,
        config: dict[str, Any] | PretrainedConfig,
        preprocess: ImagePreprocess | None = None,
        feature_layer: int = -1,
        feature_select: str | None = None,
    ) -> None:
        super().__init__()
        import transformers

        if family not in _HF_VISION:
            raise UserError(f"unsupported HF vision family {family!r}; use one of {sorted(_HF_VISION)}")
        cfg_cls, model_cls, has_cls, mean, std, crop = _HF_VISION[family]
        if isinstance(config, dict):
            config = getattr(transformers, cfg_cls).from_dict(config)
        self.name = name
        self.family = family
        self.vision_model = getattr(transformers, model_cls)(config)
        self.hf_vision_config = self.vision_model.config
        feature_select = feature_select or ("default" if has_cls else "full")
        if feature_select not in ("default", "full"):
            raise UserError(f"feature_select must be 'default' or 'full', got {feature_select!r}")
        self.feature_select = feature_select
        self._drop_cls = has_cls and feature_select == "default"
        self.num_prefix_tokens = int(has_cls and not self._drop_cls)
        n_states = config.num_hidden_layers + 1  # embeddings + every layer
        self.feature_layer = resolve_layer(feature_layer, n_states, f"HF {family} tower {name!r}")
        self.output_dim = int(config.hidden_size)
        self.preprocess = preprocess or ImagePreprocess(config.image_size, mean, std, "bicubic", crop, backend="hf")

    def forward(self, x: Tensor) -> Tensor:
        out = self.vision_model(pixel_values=x, output_hidden_states=True)
        feats = out.hidden_states[self.feature_layer]  # [B, (1 +) N, D]
        return feats[:, 1:] if self._drop_cls else feats  # [B, T, D]

    def patch_grid(self, item: Tensor) -> tuple[int, int] | None:
        p = self.hf_vision_config.patch_size
        return item.shape[-2] // p, item.shape[-1] // p

    def token_count(self) -> GridTokens:
        p = self.hf_vision_config.patch_size
        return GridTokens((p, p), self.num_prefix_tokens)

    def weights_module(self) -> nn.Module:
        return self.vision_model

    def spec_args(self) -> dict[str, Any]:
        return {"family": self.family, "config": self.hf_vision_config.to_dict(), "feature_select": self.feature_select}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> HFVisionEncoder:
        pre = preprocess_from_dict(spec["preprocess"])
        return cls(spec["name"], spec["family"], spec["config"], pre, spec["feature_layer"], spec["feature_select"])  # type: ignore[arg-type]


def _hf_preset(
    name: str,
    family: str,
    config: dict[str, Any],
    default_layer: int,
    weights: str | None,
    feature_layer: int | None,
    **kw: Any,
) -> Encoder:
    import transformers

    feature_select = kw.pop("feature_select", None)
    check_config_options(name, getattr(transformers, _HF_VISION[family][0]), kw)
    config = config | kw  # remaining kwargs override the config (e.g. image_size=64)
    layer = default_layer if feature_layer is None else feature_layer
    enc = HFVisionEncoder(name, family, config, None, layer, feature_select)
    if weights:
        enc.load_weights(weights)
    return enc


_TINY_VIT_CFG = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
}


@register_encoder(
    "tiny-clip", "image", "HF CLIPVisionModel, 32 px, patch 8, hidden 64, 2 layers; feature_layer -2 as LLaVA (tests)"
)
def tiny_clip(*, weights: str | None = None, feature_layer: int | None = None, **kw: Any) -> Encoder:
    return _hf_preset("tiny-clip", "clip", _TINY_VIT_CFG, -2, weights, feature_layer, **kw)


@register_encoder("tiny-siglip", "image", "HF SiglipVisionModel, 32 px, patch 8, hidden 64, 2 layers (tests)")
def tiny_siglip(*, weights: str | None = None, feature_layer: int | None = None, **kw: Any) -> Encoder:
    return _hf_preset("tiny-siglip", "siglip", _TINY_VIT_CFG, -1, weights, feature_layer, **kw)


@register_encoder(
    "clip-vit-l-336", "image", "HF CLIP ViT-L/14 at 336 px, feature_layer -2 (LLaVA-1.5); random unless weights="
)
def clip_vit_l_336(*, weights: str | None = None, feature_layer: int | None = None, **kw: Any) -> Encoder:
    cfg = {
        "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
        "image_size": 336, "patch_size": 14, "projection_dim": 768, "hidden_act": "quick_gelu",
    }  # fmt: skip
    return _hf_preset("clip-vit-l-336", "clip", cfg, -2, weights, feature_layer, **kw)
