"""One model interface for every benchmark: open_clip models and our checkpoints.

    m = load_model("open_clip:ViT-B-32")                       # random init (seed 0)
    m = load_model("open_clip:ViT-B-32:/ckpt/vitb32.safetensors")
    m = load_model("open_clip:local-dir:/ckpt/my-clip")         # open_clip_config.json + weights
    m = load_model("open_clip:/cfg/tiny.json:/ckpt/tiny.safetensors")   # an architecture config file
    m = load_model("runs/llava-tiny/final")                     # a vlm checkpoint folder (vlm.load)

Embeddings are L2-normalised [N, D] float32. For our checkpoints an embedding is the final layer's
hidden state at the last non-pad token of the prompt (VLM2Vec), so the embedding tasks run on them
too; they also generate, score continuations (log-likelihood) and give per-layer audio/music
features for probes. Weights are loaded on first use: a run whose features are all cached never
builds the model. `fingerprint` identifies the weights for the feature cache.
"""
from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vlm.errors import UserError

IMAGE_EMBED_PROMPT = "<image>\nRepresent the given image in one word:"


@dataclass
class Query:
    """One item to embed: text, an image (PIL), or both; `instruction` (VLM2Vec / MMEB task instruction)
    conditions instruction-following embedders and is ignored by CLIP-style models."""

    text: str | None = None
    image: Any = None
    instruction: str | None = None

    def prompt(self) -> str:
        body = "\n".join(x for x in (self.instruction, self.text) if x)
        if self.image is None:
            return body
        return f"<image>\n{body}" if body else IMAGE_EMBED_PROMPT


def _file_id(p: Path) -> str:
    st = p.stat()
    return f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


class EvalModel:
    """What the task kinds call. Subclasses implement what their model can do."""

    spec: str
    name: str
    fingerprint: str
    can_generate = False
    can_probe = False
    modalities: tuple[str, ...] = ("image",)

    def load(self) -> None:
        """Build / read the weights now (they are otherwise loaded on first use)."""

    # -- embeddings
    def preprocess_image(self, image) -> torch.Tensor:
        raise UserError(f"{self.name} does not embed images")

    def encode_image_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """[B, ...] preprocessed images -> [B, D] L2-normalised."""
        raise UserError(f"{self.name} does not embed images")

    def encode_texts(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        raise UserError(f"{self.name} does not embed text")

    def embed(self, queries: list[Query], batch_size: int = 32) -> torch.Tensor:
        """Queries of text and/or image -> [N, D] L2-normalised."""
        raise UserError(f"{self.name} does not embed queries")

    # -- generation
    def generate(self, prompts: list[tuple[str, dict]], max_new_tokens: int = 16, batch_size: int = 8) -> list[str]:
        raise UserError(f"{self.name} cannot generate text (give a vlm checkpoint)")

    def loglikelihood(self, requests: list[tuple[str, dict, str]], batch_size: int = 8) -> list[tuple[float, bool]]:
        raise UserError(f"{self.name} cannot score continuations (give a vlm checkpoint)")

    # -- probes
    def layer_features(self, modality: str, clips: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
        raise UserError(f"{self.name} has no {modality} encoder")


# ------------------------------------------------------------------------------------------------ open_clip
def parse_open_clip(spec: str) -> tuple[str, str | None]:
    """'open_clip:ARCH[:CKPT]' -> (arch, ckpt); ARCH may be 'local-dir:DIR' or a config .json file."""
    rest = spec[len("open_clip:"):]
    if not rest:
        raise UserError("open_clip: needs an architecture, e.g. open_clip:ViT-B-32[:/path/weights.safetensors]")
    if rest.startswith("local-dir:"):
        return rest, None
    if rest.startswith("hf-hub:"):
        raise UserError(f"{spec}: hub models need the network; give a local checkpoint (open_clip:ARCH:FILE)")
    arch, _, ckpt = rest.partition(":")
    return arch, ckpt or None


class OpenClipModel(EvalModel):
    """An open_clip CLIP: image and text towers, the model's own preprocessing and tokenizer, fp32."""

    def __init__(self, spec: str, seed: int = 0, device: str = "cpu"):
        import open_clip
        self.spec, self.device, self.seed = spec, device, seed
        arch, ckpt = parse_open_clip(spec)
        if arch.endswith(".json"):
            cfg = Path(arch)
            if not cfg.is_file():
                raise UserError(f"open_clip config not found: {cfg}")
            open_clip.add_model_config(cfg)
            arch = cfg.stem
        if arch.startswith("local-dir:"):
            folder = Path(arch[len("local-dir:"):])
            if not (folder / "open_clip_config.json").is_file():
                raise UserError(f"{folder}: no open_clip_config.json (not an open_clip local-dir)")
            config, ident = (folder / "open_clip_config.json").read_text(), [_file_id(p) for p in sorted(folder.iterdir())]
        else:
            config = open_clip.get_model_config(arch)
            if config is None:
                raise UserError(f"unknown open_clip architecture '{arch}' (see open_clip.list_models(), "
                                "or give a config file: open_clip:/path/arch.json[:CKPT])")
            config = json.dumps(config, sort_keys=True)
            if ckpt is not None and not Path(ckpt).is_file():
                raise UserError(f"open_clip checkpoint not found: {ckpt} (pretrained tags need the network; "
                                "give a local file)")
            ident = [_file_id(Path(ckpt))] if ckpt else [f"random-init seed {seed}"]
        self.arch, self.ckpt = arch, ckpt
        self.name = spec if len(spec) < 60 else f"open_clip:{arch}"
        self.fingerprint = _digest("open_clip", arch, config, *ident)
        self._model = self._preprocess = self._tokenizer = None
        self._lock = threading.Lock()

    def _load(self) -> None:
        """Build the model once. Image preprocessing runs in decoding threads, so the first calls can race:
        the lock keeps it to one build (two interleaved random inits would draw different weights)."""
        import open_clip
        with self._lock:
            if self._model is not None:
                return
            torch.manual_seed(self.seed)          # random-init models are the same on every run
            try:
                model, _, pre = open_clip.create_model_and_transforms(self.arch, pretrained=self.ckpt, device=self.device)
            except RuntimeError as e:
                raise UserError(f"{self.spec}: weights do not fit the architecture ({str(e).splitlines()[0][:200]})") from None
            self._tokenizer = open_clip.get_tokenizer(self.arch)
            self._preprocess = pre
            self._model = model.eval()

    def load(self) -> None:
        self._load()

    @property
    def model(self):
        self._load()
        return self._model

    def preprocess_image(self, image) -> torch.Tensor:
        self._load()
        return self._preprocess(image)                                 # [3, H, W]

    @torch.inference_mode()
    def encode_image_batch(self, batch: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_image(batch.to(self.device)).float(), dim=-1)   # [B, D]

    @torch.inference_mode()
    def encode_texts(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """[N, D] normalised. Texts run sorted by length and cut to their batch's longest token row when
        the text tower is causal with EOT pooling (the positions after EOT cannot change it)."""
        self._load()
        tokens = self._tokenizer(texts)                                # [N, ctx]
        lengths = (tokens != 0).int().cumsum(1).argmax(1) + 1          # last non-pad position + 1
        order = torch.argsort(lengths, descending=True, stable=True)
        parts = _causal_text_parts(self._model)
        out: torch.Tensor | None = None
        for i in range(0, len(texts), batch_size):
            idx = order[i:i + batch_size]
            tok = tokens[idx].to(self.device)
            if parts is not None:
                feats = _encode_text_trimmed(parts, tok[:, :int(lengths[idx].max())])   # [b, D]
            else:
                feats = self._model.encode_text(tok)
            if out is None:
                out = torch.empty(len(texts), feats.shape[-1], dtype=torch.float32)
            out[idx] = F.normalize(feats.float(), dim=-1).cpu()
        return out if out is not None else torch.empty(0, 0)

    def embed(self, queries: list[Query], batch_size: int = 64) -> torch.Tensor:
        """Text -> text tower, image -> image tower, both -> the normalised sum of the two."""
        out: list[torch.Tensor] = []
        for i in range(0, len(queries), batch_size):
            chunk = queries[i:i + batch_size]
            img = [q for q in chunk if q.image is not None]
            txt = [q for q in chunk if q.text is not None]
            e_img = self.encode_image_batch(torch.stack([self.preprocess_image(q.image) for q in img])) if img else None
            e_txt = self.encode_texts([q.text for q in txt]) if txt else None
            it_i = it_t = 0
            for q in chunk:
                v = torch.zeros(0)
                if q.image is not None:
                    v, it_i = e_img[it_i], it_i + 1
                if q.text is not None:
                    v, it_t = (e_txt[it_t] if v.numel() == 0 else v + e_txt[it_t]), it_t + 1
                out.append(F.normalize(v, dim=-1))
        return torch.stack(out)


@dataclass
class _TextParts:
    token_embedding: Any
    positional_embedding: torch.Tensor
    transformer: Any
    attn_mask: torch.Tensor
    ln_final: Any
    text_projection: Any
    pool_type: str
    eos_id: int | None


def _causal_text_parts(model) -> _TextParts | None:
    """The text tower's parts when it is causal, pools at EOT/argmax and has no CLS or pad mask."""
    t = getattr(model, "text", None)
    if t is not None and hasattr(t, "token_embedding"):          # CustomTextCLIP with a TextTransformer
        if getattr(t, "cls_emb", None) is not None or getattr(t, "use_pad_mask", False):
            return None
        p = _TextParts(t.token_embedding, t.positional_embedding, t.transformer, t.attn_mask, t.ln_final,
                       t.text_projection, t.pool_type, getattr(t, "eos_id", None))
    elif hasattr(model, "token_embedding") and hasattr(model, "attn_mask"):   # CLIP
        p = _TextParts(model.token_embedding, model.positional_embedding, model.transformer, model.attn_mask,
                       model.ln_final, model.text_projection, model.text_pool_type, getattr(model, "text_eos_id", None))
    else:
        return None
    if p.attn_mask is None or p.pool_type not in ("argmax", "eos"):
        return None
    return p


def _encode_text_trimmed(p: _TextParts, text: torch.Tensor) -> torch.Tensor:
    """open_clip's encode_text on [B, L] tokens with L < context length (causal towers only)."""
    from open_clip.transformer import text_global_pool
    L = text.shape[1]
    cast = p.transformer.get_cast_dtype()
    x = p.token_embedding(text).to(cast) + p.positional_embedding[:L].to(cast)      # [B, L, W]
    x = p.transformer(x, attn_mask=p.attn_mask[:L, :L])
    x = p.ln_final(x)
    x = text_global_pool(x, text, p.pool_type, eos_token_id=p.eos_id)              # [B, W]
    if p.text_projection is None:
        return x
    return p.text_projection(x) if isinstance(p.text_projection, torch.nn.Module) else x @ p.text_projection


# ------------------------------------------------------------------------------------------------ vlm checkpoints


class VLMModel(EvalModel):
    """A `vlm.load` checkpoint: generation, log-likelihood, VLM2Vec-style embeddings, encoder probes."""

    can_generate = True
    can_probe = True

    def __init__(self, path: str, device: str = "cpu"):
        p = Path(path)
        if not p.is_dir():
            raise UserError(f"model not found: {path} (a checkpoint folder or open_clip:ARCH[:CKPT])")
        if not (p / "config.json").is_file() or not (p / "model.safetensors").is_file():
            raise UserError(f"{path}: not a vlm checkpoint (needs config.json and model.safetensors)")
        self.spec, self.path, self.device = path, p, device
        self.name = p.name if p.name not in ("final", "last") else f"{p.parent.name}/{p.name}"
        config = (p / "config.json").read_text()
        self.fingerprint = _digest("vlm", config, _file_id(p / "model.safetensors"))
        try:
            raw = json.loads(config)
            self.modalities = tuple(raw.get("media") or raw.get("encoders") or {})    # format 2 | 1
        except (json.JSONDecodeError, AttributeError):
            raise UserError(f"{p / 'config.json'}: not a vlm checkpoint config") from None
        self._model = None
        self._lock = threading.Lock()

    @property
    def model(self):
        with self._lock:                          # decoding threads may ask first (see OpenClipModel._load)
            if self._model is None:
                from vlm.loading import load
                self._model = load(self.path, device=self.device)
        return self._model

    def load(self) -> None:
        self.model  # noqa: B018  (the property loads)

    @property
    def pad_id(self) -> int:
        tok = self.model.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def preprocess_image(self, image) -> torch.Tensor:
        return self.model.processor.preprocess_media("image", image)

    def _collate(self, items, left_pad: bool) -> dict:
        from vlm.data.collate import collate
        return collate(items, self.pad_id, left_pad=left_pad)

    @torch.inference_mode()
    def _embed(self, items) -> torch.Tensor:
        """The model's embedding of each processed prompt (its last real token, normalised). [B, D]"""
        m = self.model
        b = self._collate(items, left_pad=False)
        return m.embed(b["input_ids"].to(m.device), b["attention_mask"].to(m.device), b["media"]).cpu()

    def embed(self, queries: list[Query], batch_size: int = 16) -> torch.Tensor:
        proc = self.model.processor
        out = []
        for i in range(0, len(queries), batch_size):
            items = [proc.prompt(q.prompt(), {"image": [q.image]} if q.image is not None else None)
                     for q in queries[i:i + batch_size]]
            out.append(self._embed(items))
        return torch.cat(out)

    def encode_image_batch(self, batch: torch.Tensor) -> torch.Tensor:
        proc = self.model.processor
        items = [proc.from_turns([{"role": "user", "text": IMAGE_EMBED_PROMPT}], {"image": [x]},
                                 add_generation_prompt=True, preprocessed=True) for x in batch]
        return self._embed(items)

    def encode_texts(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        return self.embed([Query(text=t) for t in texts], batch_size)

    @torch.inference_mode()
    def generate(self, prompts: list[tuple[str, dict]], max_new_tokens: int = 16, batch_size: int = 8,
                 **sampling: Any) -> list[str]:
        """Answers to single user turns (text with placeholders, raw media per modality): greedy, unless
        `sampling` asks otherwise (do_sample, temperature, top_k, top_p, as `MultimodalLM.generate`)."""
        m, proc = self.model, self.model.processor
        sampling = {k: v for k, v in sampling.items() if k in ("do_sample", "temperature", "top_k", "top_p")}
        if not sampling.get("do_sample") or not sampling.get("temperature", 1.0):
            sampling = {}                                              # temperature 0 means greedy
        out: list[str] = []
        for i in range(0, len(prompts), batch_size):
            items = [proc.prompt(text, media) for text, media in prompts[i:i + batch_size]]
            b = self._collate(items, left_pad=True)
            new = m.generate(b["input_ids"], media=b["media"], attention_mask=b["attention_mask"],
                             max_new_tokens=max_new_tokens, **sampling)
            out += [m.tokenizer.decode(t, skip_special_tokens=True).strip() for t in new]
        return out

    @torch.inference_mode()
    def loglikelihood(self, requests: list[tuple[str, dict, str]], batch_size: int = 8) -> list[tuple[float, bool]]:
        """(prompt, media, continuation) -> (log p(continuation + end of turn | prompt), whether greedy
        decoding would produce exactly it). The prompt is one user turn; the continuation the answer."""
        m, proc = self.model, self.model.processor
        res: list[tuple[float, bool]] = []
        for i in range(0, len(requests), batch_size):
            items = [proc.from_turns([{"role": "user", "text": p}, {"role": "assistant", "text": c}], media, key="request")
                     for p, media, c in requests[i:i + batch_size]]
            b = self._collate(items, left_pad=False)
            logits = m.logits(b["input_ids"].to(m.device), b["attention_mask"].to(m.device),
                              media=b["media"])[:, :-1].float()             # [B, L-1, V]
            target = b["labels"][:, 1:].to(m.device)                         # [B, L-1]
            sel = target != -100
            greedy = (logits.argmax(-1) == target) | ~sel                    # [B, L-1]
            token_logp = -F.cross_entropy(logits.transpose(1, 2), target.clamp(min=0), reduction="none")
            logp = (token_logp * sel).sum(1)
            res += [(float(lp), bool(g)) for lp, g in zip(logp.tolist(), greedy.all(1).tolist())]
        return res

    @torch.inference_mode()
    def layer_features(self, modality: str, clips: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
        encoders = self.model.encoders
        if modality not in encoders:
            raise UserError(f"{self.name} has no {modality} encoder")
        return encoder_layer_features(encoders[modality], clips)


def num_layers(encoder: torch.nn.Module) -> int | None:
    """Blocks of an encoder: its `num_layers`, its HF config's `num_hidden_layers`, else the longest
    ModuleList of same-class modules."""
    n = getattr(encoder, "num_layers", None) or getattr(getattr(getattr(encoder, "model", None), "config", None),
                                                        "num_hidden_layers", None)
    if n:
        return int(n)
    stacks = [len(m) for m in encoder.modules()
              if isinstance(m, torch.nn.ModuleList) and len(m) and len({type(x) for x in m}) == 1]
    return max(stacks) if stacks else None


@torch.inference_mode()
def encoder_layer_features(encoder, clips: list[tuple[torch.Tensor, int]], batch_size: int = 16) -> torch.Tensor:
    """MARBLE features: the hidden state after the embedding and after every block, each averaged over
    time. [N, L + 1, D]. Runs the encoder's own `encode` once per layer (its `feature_layer` picks the
    layer and `encode` drops padded frames), so no encoder internals are assumed beyond the block stack."""
    n = num_layers(encoder)
    if n is None:
        raise UserError(f"encoder {getattr(encoder, 'name', type(encoder).__name__)} has no stack of layers to probe")
    items = [encoder.preprocess(w, sr) for w, sr in clips]
    saved = encoder.feature_layer
    per_layer = []
    try:
        for k in range(n + 1):
            encoder.feature_layer = k
            feats = []
            for i in range(0, len(items), batch_size):
                feats += [f.float().mean(0) for f in encoder.encode(items[i:i + batch_size])]   # [D] each
            per_layer.append(torch.stack(feats))                                             # [N, D]
    finally:
        encoder.feature_layer = saved
    return torch.stack(per_layer, dim=1)                                                      # [N, L + 1, D]


class EncoderModel(EvalModel):
    """A music encoder alone: a mert checkpoint (`vlm train mert-*`) or any transformers HuBERT folder,
    loaded as `mert:FOLDER` (SpecAugment off, eval mode). It can be probed, nothing else."""

    can_probe = True
    modalities = ("music",)

    def __init__(self, path: str, device: str = "cpu"):
        p = Path(path)
        if not (p / "model.safetensors").is_file():
            raise UserError(f"{path}: no model.safetensors (a mert / HuBERT folder needs its weights)")
        self.spec, self.path, self.device = path, p, device
        self.name = p.name if p.name not in ("final", "last") else f"{p.parent.name}/{p.name}"
        self.fingerprint = _digest("encoder", (p / "config.json").read_text(), _file_id(p / "model.safetensors"))
        self._encoder = None
        self._lock = threading.Lock()

    @property
    def encoder(self):
        with self._lock:
            if self._encoder is None:
                from encoders import build_encoder
                self._encoder = build_encoder(f"mert:{self.path}").to(self.device).eval()
        return self._encoder

    def load(self) -> None:
        self.encoder  # noqa: B018  (the property loads)

    @torch.inference_mode()
    def layer_features(self, modality: str, clips: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
        if modality != "music":
            raise UserError(f"{self.name} is a music encoder; it has no {modality} encoder")
        return encoder_layer_features(self.encoder, clips)


def _is_encoder_folder(p: Path) -> bool:
    try:
        return p.is_dir() and json.loads((p / "config.json").read_text()).get("model_type") == "hubert"
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def load_model(spec: str, device: str = "cpu") -> EvalModel:
    """`open_clip:ARCH[:CKPT]`, a vlm checkpoint folder, or a music encoder folder (a mert checkpoint or a
    transformers HuBERT folder: probes only); bad input is a one-line UserError."""
    if spec.startswith("open_clip:"):
        return OpenClipModel(spec, device=device)
    if _is_encoder_folder(Path(spec)):
        return EncoderModel(spec, device=device)
    return VLMModel(spec, device=device)
