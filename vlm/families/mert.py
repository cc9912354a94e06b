"""MERT family: the shared music encoder, pretrained by masked prediction (objective `masked_prediction`).

    model = vlm.build("mert", "tiny")                 # HuBERT-shaped, 24 kHz -> 75 Hz frames, random init
    vlm train mert-tiny                               # CPU: synthetic-world's music clips (vlm data build ...)
    vlm train mert-95m data.world.shards=[/data/music/train]   # GPU, MERT-v1-95M's settings
    model.save_pretrained("ckpt")                     # a transformers HuBERT folder + the prediction heads

The model is transformers' `HubertModel` (conv front end with stride 320 at 24 kHz, a transformer
encoder, the learned mask embedding `masked_spec_embed`) plus MERT's prediction heads: per codebook a
projection compared by cosine similarity with learned code embeddings at temperature 0.1 (HuBERT's
logits), and a linear regression head for the CQT frames. A saved folder is a plain HuBERT folder
(config.json + model.safetensors + preprocessor_config.json) that `transformers.AutoModel` loads with
no remote code; the heads sit beside it (`mert_heads.safetensors`, `mert_pretraining.json`).
"""
from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from encoders.base import AudioPreprocess, ConvFrames, normalize_waveform
from vlm.atomic import write_folder
from vlm.data.processor import Processor
from vlm.errors import UserError, require
from vlm.families.base import SYNTHETIC_WORLD, Family, check_count, register_family
from vlm.modalities import short_error
from vlm.model import load_safetensors
from vlm.model_files import MERT_HEADS_CONFIG

HEADS_FILE, HEADS_CONFIG = "mert_heads.safetensors", MERT_HEADS_CONFIG
SAMPLE_RATE = 24000
CONV_KERNEL, CONV_STRIDE = (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)      # 320 samples per frame


@dataclass
class MertConfig:
    hubert: dict                                   # transformers HubertConfig fields
    codebooks: list[int] = field(default_factory=lambda: [64, 64])   # units per codebook of the teacher
    final_dim: int = 64                            # projection per codebook (MERT: 64)
    logit_temp: float = 0.1
    regression_dim: int = 336                      # CQT bins
    sample_rate: int = SAMPLE_RATE
    feature_grad_mult: float = 1.0                 # gradient scale into the conv front end (MERT / fairseq: 0.1)


class GradMultiply(torch.autograd.Function):
    """Identity forward, gradient x `scale` backward (fairseq's GradMultiply)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


class MertModel(nn.Module):
    def __init__(self, config: MertConfig):
        super().__init__()
        from transformers import HubertConfig, HubertModel
        self.config = config
        hc = HubertConfig(**config.hubert)
        require(hc.apply_spec_augment and hc.mask_time_prob > 0,
                "a mert model needs apply_spec_augment and mask_time_prob > 0 (that creates the mask embedding)")
        self.encoder = HubertModel(hc)
        H, K = hc.hidden_size, len(config.codebooks)
        self.final_proj = nn.Linear(H, config.final_dim * K)
        self.label_embs = nn.Parameter(torch.empty(sum(config.codebooks), config.final_dim).uniform_())
        self.regression_head = nn.Linear(H, config.regression_dim)
        self.preprocess = AudioPreprocess(config.sample_rate, "waveform", normalize=True)
        self._frames = ConvFrames(tuple(hc.conv_kernel), tuple(hc.conv_stride))
        if config.feature_grad_mult != 1.0:        # the conv features' gradient scaled on the way back
            scale = config.feature_grad_mult
            self.encoder.feature_extractor.register_forward_hook(lambda m, i, out: GradMultiply.apply(out, scale))

    # ---------------------------------------------------------------- what the objective uses
    @property
    def codebook_sizes(self) -> list[int]:
        return list(self.config.codebooks)

    @property
    def regression_dim(self) -> int:
        return self.config.regression_dim

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    def frames(self, n_samples: int) -> int:
        return self._frames.count((n_samples,))

    def forward(self, audio: torch.Tensor, audio_lengths: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, N] waveform at the model's rate (normalised here, per clip) -> last hidden states [B, T, H];
        `mask` [B, T] frames replaced by the learned mask embedding (none when omitted)."""
        x = normalize_waveform(audio.float(), audio_lengths)
        if mask is None:   # always pass a mask: without one HF would draw its own SpecAugment mask in training
            mask = torch.zeros(x.shape[0], self.frames(x.shape[1]), dtype=torch.bool, device=x.device)
        return self.encoder(x, mask_time_indices=mask).last_hidden_state

    def codebook_logits(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        """[M, H] -> per codebook [M, V_k]: cosine(projection_k, code embeddings_k) / logit_temp (as a
        product of unit vectors: no [M, V_k, d] intermediate)."""
        K, d = len(self.config.codebooks), self.config.final_dim
        proj = F.normalize(self.final_proj(hidden).unflatten(-1, (K, d)), dim=-1, eps=1e-8)          # [M, K, d]
        embs = F.normalize(self.label_embs, dim=-1, eps=1e-8).split(self.config.codebooks)        # K x [V_k, d]
        return [proj[:, k] @ e.T / self.config.logit_temp for k, e in enumerate(embs)]              # K x [M, V_k]

    def regression(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.regression_head(hidden)                                                  # [M, R]

    # ---------------------------------------------------------------- what the trainer uses
    @property
    def processor(self) -> Processor:
        return Processor(None, {"music": self.preprocess}, {"music": self._frames})

    def set_llm_mode(self, mode: str, lora: dict | None = None) -> None:
        require(mode == "frozen", f"the mert family has no LLM (stage llm: {mode}); list what trains in `trainable`")

    def set_distributed(self, on: bool = True) -> None:
        """Every rank runs every module every step already."""

    def enable_activation_checkpointing(self) -> None:
        from vlm.llm import checkpoint_activations
        checkpoint_activations(self.encoder)

    def fsdp_units(self) -> list[tuple[nn.Module, tuple[str, ...]]]:
        return [(layer, ()) for layer in self.encoder.encoder.layers]

    # ---------------------------------------------------------------- save / load
    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """A transformers HuBERT folder (+ preprocessor_config.json) with the heads beside it."""
        from safetensors.torch import save_file

        def write(tmp: Path) -> None:
            self.encoder.save_pretrained(tmp, safe_serialization=True)
            (tmp / "preprocessor_config.json").write_text(json.dumps({
                "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1, "padding_side": "right",
                "padding_value": 0.0, "return_attention_mask": False, "do_normalize": True,
                "sampling_rate": self.config.sample_rate}, indent=2))
            heads = {k: v.detach().contiguous() for k, v in self.state_dict().items() if not k.startswith("encoder.")}
            save_file(heads, str(tmp / HEADS_FILE))
            cfg = {k: v for k, v in asdict(self.config).items() if k != "hubert"}
            (tmp / HEADS_CONFIG).write_text(json.dumps({"family": "mert", **cfg}, indent=2))
        return write_folder(path, write)

    def load_weights(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        load_safetensors(self.encoder, folder / "model.safetensors")
        heads = nn.Module()
        heads.final_proj, heads.regression_head = self.final_proj, self.regression_head
        heads.register_parameter("label_embs", self.label_embs)
        load_safetensors(heads, folder / HEADS_FILE)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> "MertModel":
        folder = Path(folder)
        try:
            hubert = json.loads((folder / "config.json").read_text())
            heads = json.loads((folder / HEADS_CONFIG).read_text())
        except (OSError, ValueError, RecursionError) as e:     # (ValueError: invalid JSON, bytes not UTF-8)
            raise UserError(f"{folder}: not a mert checkpoint ({short_error(e)[:200]})") from None
        require(isinstance(hubert, dict) and hubert.get("model_type") == "hubert",
                f"{folder / 'config.json'}: not a HuBERT config")
        where = folder / HEADS_CONFIG
        require(isinstance(heads, dict), f"{where}: not a JSON object of the heads' settings")
        known = {f.name for f in fields(MertConfig)} - {"hubert"}
        unknown = sorted(set(heads) - known - {"family"})
        if unknown:
            raise UserError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")
        settings = {k: v for k, v in heads.items() if k != "family"}
        if "codebooks" in settings:
            check_codebooks(settings["codebooks"], f"{where}: codebooks")
        for name in ("final_dim", "regression_dim", "sample_rate"):
            if name in settings:
                check_count(f"{where}: {name}", settings[name], none=False)
        for name, low in (("logit_temp", "> 0"), ("feature_grad_mult", ">= 0")):   # (they loaded, then divided by 0)
            v = settings.get(name, 1.0)
            require(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    and (v > 0 if low == "> 0" else v >= 0), f"{where}: {name}: a number {low}, got {v!r}")
        keep = {k: v for k, v in hubert.items() if k not in ("architectures", "transformers_version", "model_type")}
        from huggingface_hub.errors import StrictDataclassError
        try:
            model = cls(MertConfig(hubert=keep, **settings))
        except (TypeError, ValueError, ZeroDivisionError, RuntimeError, StrictDataclassError) as e:
            raise UserError(f"{folder}: does not build a mert model ({type(e).__name__}: "
                            f"{short_error(e)[:200]})") from None
        model.load_weights(folder)
        return model


def check_codebooks(cb, name: str, given=None) -> None:
    """Units per codebook: a non-empty list of integers >= 2."""
    require(isinstance(cb, list) and bool(cb) and all(isinstance(c, int) and not isinstance(c, bool) and c >= 2
                                                      for c in cb),
            f"{name}: a non-empty list of code counts >= 2 (one per codebook of the teacher), got "
            f"{cb if given is None else given!r}")


def build_mert(hidden_size: int = 64, num_hidden_layers: int = 2, num_attention_heads: int = 4,
               intermediate_size: int = 128, conv_dim: int = 32, conv_pos: int = 16, conv_pos_groups: int = 4,
               codebooks: list[int] | None = None, final_dim: int = 64, regression_dim: int = 336,
               dropout: float = 0.0, feature_grad_mult: float = 1.0, seed: int | None = 0) -> MertModel:
    """A HuBERT-shaped music encoder (24 kHz, 320-sample frames) with MERT's prediction heads.
    `codebooks`: units per codebook of the acoustic teacher (default: the mel_kmeans teacher's 2 x 64).
    Dropout draws from each rank's own RNG: keep it 0 where runs must match across rank counts."""
    cb = [64, 64] if codebooks is None else codebooks
    check_codebooks(cb, "codebooks", codebooks)
    for name, value in (("hidden_size", hidden_size), ("num_attention_heads", num_attention_heads),
                        ("conv_dim", conv_dim), ("final_dim", final_dim), ("regression_dim", regression_dim)):
        check_count(name, value, none=False)
    if seed is not None:
        torch.manual_seed(seed)
    hubert = dict(hidden_size=hidden_size, num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                  intermediate_size=intermediate_size, conv_dim=[conv_dim] * 7, conv_kernel=list(CONV_KERNEL),
                  conv_stride=list(CONV_STRIDE), conv_bias=False, feat_extract_norm="group", do_stable_layer_norm=False,
                  num_conv_pos_embeddings=conv_pos, num_conv_pos_embedding_groups=conv_pos_groups,
                  apply_spec_augment=True, mask_time_prob=0.05, mask_time_length=5, layerdrop=0.0,
                  hidden_dropout=dropout, attention_dropout=dropout, activation_dropout=dropout,
                  feat_proj_dropout=dropout, final_dropout=dropout)
    return MertModel(MertConfig(hubert, list(cb), final_dim, 0.1, regression_dim,
                                feature_grad_mult=feature_grad_mult))


# MERT-v1-95M's shape (HuBERT base: 768 x 12 layers, 12 heads, FFN 3072, conv 512 x 7, conv positions 128 / 16)
# with EnCodec's 8 codebooks of 1024 units.
SIZE_95M = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, conv_dim=512,
                conv_pos=128, conv_pos_groups=16, codebooks=[1024] * 8, dropout=0.1, feature_grad_mult=0.1)

# ---------------------------------------------------------------------------------------------
# recipes
# ---------------------------------------------------------------------------------------------
PREDICTION_HEADS = ["final_proj.*", "label_embs", "regression_head.*"]
TRAINABLE = ["encoder.*", *PREDICTION_HEADS]
# everything but the conv front end (encoder.feature_extractor), which then keeps its random initialisation
ALL_BUT_CONV = ["encoder.masked_spec_embed", "encoder.feature_projection.*", "encoder.encoder.*", *PREDICTION_HEADS]
MUSIC_ONLY = {"modalities": ["music"]}          # music questions / captions (and any music-only shards)

# CPU: the tiny encoder widened for pretraining (128 wide, 4 layers, FFN 256; conv 32 x 7 as `tiny`) on
# synthetic-world's music clips (2 s notes and chords, 4 s click tracks; ~770 clips in the default 4,000-sample
# build), with the mel_kmeans teacher (2 x 64 units of log-mel and chroma frames), the CQT teacher at weight 50
# and the noise mixture. The conv front end stays at its random initialisation (not in `trainable`; MERT scales
# its gradient by 0.1). Chosen on synthetic-world's val split (model_cards/mert.md, "How the recipe was
# chosen"): training the conv front end (gradient x 0.1 or x 1), the rvq teacher, CQT weights of 5-20 and the
# 64-wide 2-layer `tiny` shape all left the pitch probe at or below random weights. ~15 min at 1 thread.
TINY_PRETRAIN = {"hidden_size": 128, "num_hidden_layers": 4, "intermediate_size": 256, "codebooks": [64, 64]}
MERT_TINY_RECIPE = {
    "description": "MERT pretraining of a 128 x 4 tiny music encoder on synthetic-world's music clips (CPU; "
                   "mel_kmeans teacher 2 x 64, CQT, noise mixture; conv front end frozen)",
    "model": {"family": "mert", "size": "tiny", "settings": dict(TINY_PRETRAIN)},
    "data": copy.deepcopy(SYNTHETIC_WORLD),
    "stages": [{
        "name": "pretrain", "trainable": ALL_BUT_CONV, "llm": "frozen", "filter": dict(MUSIC_ONLY),
        "steps": 1200, "lr": 2e-3, "batch_size": 16, "betas": [0.9, 0.98], "eps": 1e-6, "weight_decay": 0.01,
        "schedule": "cosine", "warmup": 0.08, "grad_clip": 10.0, "max_len": 8,
        "objective": "masked_prediction",
        "objective_settings": {"teacher": "mel_kmeans", "codebook_size": 64, "teacher_settings": {},
                               "teacher_frames": 20000, "regression_weight": 50.0, "mask_prob": 0.8,
                               "mask_span": 5, "noise_prob": 0.5, "clip_seconds": 2.0, "min_seconds": 1.5,
                               "target_cache_mb": 512},
    }],
    "runtime": {"checkpoint_every": 400, "keep_last": 2, "output_dir": "runs/{name}", "seed": 0, "num_workers": 1,
                "log_every": 10},
}

# GPU: MERT-v1-95M's settings (mert-notes: Y95 / RUN) - 5 s crops, mask 0.8 / 5, Adam (0.9, 0.98) eps 1e-6,
# wd 0.01, lr 5e-4, 8 % warmup, clip 10, loss = sum of 8 codebook CEs + linear-magnitude CQT MSE, noise
# mixture p 0.5 with 0.5-1 s segments; batch 120 clips (15 per GPU x 8). The acoustic teacher here is the rvq
# autoencoder with 8 x 1024 codes (trained first); MERT-v1's EnCodec: objective_settings.teacher=encodec
# objective_settings.teacher_settings='{path: /models/encodec_24khz, bandwidth: 6.0}'. MERT drops clips under
# 3 s; synthetic-world's music is 2 s (click tracks 4 s), so they are zero-padded to 5 s here: for your own
# music shards set min_seconds: 3. The budget is yours: MERT ran 400k steps.
MERT_95M_RECIPE = {
    "description": "MERT-v1-95M settings (GPU; point data.* at your music shards): rvq 8 x 1024 teacher or a local "
                   "EnCodec, CQT, noise mixture",
    "model": {"family": "mert", "size": "95m", "settings": {}},
    "data": copy.deepcopy(SYNTHETIC_WORLD),
    "stages": [{
        "name": "pretrain", "trainable": TRAINABLE, "llm": "frozen", "filter": dict(MUSIC_ONLY),
        "steps": 400000, "lr": 5e-4, "batch_size": 120, "betas": [0.9, 0.98], "eps": 1e-6, "weight_decay": 0.01,
        "schedule": "cosine", "warmup": 0.08, "grad_clip": 10.0, "max_len": 8,
        "objective": "masked_prediction",
        "objective_settings": {"teacher": "rvq", "codebook_size": 1024,
                               "teacher_settings": {"codebooks": 8, "steps": 3000, "batch_clips": 64},
                               "teacher_frames": 300000, "mask_prob": 0.8, "mask_span": 5, "min_masks": 2,
                               "noise_prob": 0.5, "noise_segments": [1, 3], "noise_seconds": [0.5, 1.0],
                               "cqt_log": False, "clip_seconds": 5.0, "min_seconds": 1.5},
    }],
    "runtime": {"checkpoint_every": 2000, "keep_last": 3, "output_dir": "runs/{name}", "num_workers": 4,
                "strategy": "ddp", "log_every": 50},
}

register_family(Family(
    name="mert",
    description="MERT: HuBERT-shaped music encoder pretrained by masked prediction of acoustic codes and the CQT",
    builder=build_mert,
    sizes={"tiny": {}, "95m": SIZE_95M},
    test_widths={"95m": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                             conv_dim=32, conv_pos=16, conv_pos_groups=4)},
    recipes={"tiny": MERT_TINY_RECIPE, "95m": MERT_95M_RECIPE},
    modalities_of=lambda settings: ("music",),
    loads=lambda path, config: (path / HEADS_CONFIG).is_file(),
    load=MertModel.from_folder,
))
