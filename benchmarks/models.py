"""One model interface for every benchmark: open_clip models and our checkpoints.

    m = load_model("open_clip:ViT-B-32")                       # random init (seed 0)
    m = load_model("open_clip:ViT-B-32:/ckpt/vitb32.safetensors")
    m = load_model("open_clip:local-dir:/ckpt/my-clip")         # open_clip_config.json + weights
    m = load_model("open_clip:/cfg/tiny.json:/ckpt/tiny.safetensors")   # an architecture config file
    m = load_model("runs/llava-tiny/final")                     # a vlm checkpoint folder (vlm.load)
    m = load_model("features:log-mel")                          # hand-crafted audio features (probes only)

Embeddings are L2-normalised [N, D] float32. For our checkpoints an embedding is the final layer's
hidden state at the last non-pad token of the prompt (VLM2Vec), so the embedding tasks run on them
too; they also generate, score continuations (log-likelihood) and give per-layer audio/music
features for probes. Weights are loaded on first use: a run whose features are all cached never
builds the model. `fingerprint` identifies the weights for the feature cache.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vlm.embed.api import Embedder
from vlm.embed.backends import (  # noqa: F401
    OpenClipBackend,
    VLMBackend,
    digest,
    file_id,
    parse_open_clip,
)
from vlm.embed.items import MEDIA_ONLY_PROMPT, Item
from vlm.errors import UserError

# One item to embed: text, an image (PIL), or both; `instruction` (VLM2Vec / MMEB task instruction)
# conditions instruction-following embedders and is ignored by CLIP-style models. The library's Item.
Query = Item
IMAGE_EMBED_PROMPT = "<image>\n" + MEDIA_ONLY_PROMPT.format(modality="image")


def _file_id(p: Path) -> str:
    return file_id(p)


def _digest(*parts: str) -> str:
    return digest(*parts)


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
class OpenClipModel(EvalModel):
    """An open_clip CLIP (`vlm.embed.backends.OpenClipBackend`): image and text towers, the model's own
    preprocessing and tokenizer, fp32."""

    def __init__(self, spec: str, seed: int = 0, device: str = "cpu"):
        self.backend = OpenClipBackend(spec, device, seed=seed)
        self.spec, self.device, self.seed = spec, device, seed
        self.arch, self.ckpt = self.backend.arch, self.backend.ckpt
        self.name, self.fingerprint = self.backend.name, self.backend.fingerprint
        self.embedder = Embedder(self.backend)

    def load(self) -> None:
        self.backend.load()

    @property
    def model(self):
        return self.backend.model

    def preprocess_image(self, image) -> torch.Tensor:
        return self.backend.preprocess_image(image)                      # [3, H, W]

    def encode_image_batch(self, batch: torch.Tensor) -> torch.Tensor:
        return self.backend.encode_image(batch)                          # [B, D]

    def encode_texts(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        return self.embedder.embed_items([Query(text=t) for t in texts], batch_size)

    def embed(self, queries: list[Query], batch_size: int = 64) -> torch.Tensor:
        """Text -> text tower, image -> image tower, both -> the normalised sum of the two."""
        return self.embedder.embed_items(queries, batch_size)


# ------------------------------------------------------------------------------------------------ vlm checkpoints


class VLMModel(EvalModel):
    """A `vlm.load` checkpoint: generation, log-likelihood, VLM2Vec-style embeddings (`vlm.embed`),
    encoder probes."""

    can_generate = True
    can_probe = True

    def __init__(self, path: str, device: str = "cpu"):
        p = Path(path)
        if not p.is_dir():
            raise UserError(f"model not found: {path} (a checkpoint folder or open_clip:ARCH[:CKPT])")
        if not (p / "config.json").is_file() or not (p / "model.safetensors").is_file():
            raise UserError(f"{path}: not a vlm checkpoint (needs config.json and model.safetensors)")
        self.backend = VLMBackend(path, device)
        self.spec, self.path, self.device = path, p, device
        self.name, self.fingerprint, self.modalities = self.backend.name, self.backend.fingerprint, self.backend.modalities
        route = self.backend.config.get("route")
        route = route.get("type") if isinstance(route, dict) else None
        from vlm.connectors.base import ROUTES
        if isinstance(route, str) and route in ROUTES and ROUTES.get(route).path_per_batch:
            # its rows with media are batched apart from those without since 2026-12-05: features cached before
            # (a text row embedded through the adaptors beside an image row) are not reused
            self.fingerprint = _digest(self.fingerprint, "rows-by-media")
        self.embedder = Embedder(self.backend)

    @property
    def model(self):
        return self.backend.model

    def load(self) -> None:
        self.backend.load()

    @property
    def pad_id(self) -> int:
        tok = self.model.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def preprocess_image(self, image) -> torch.Tensor:
        return self.model.processor.preprocess_media("image", image)

    def _collate(self, items, left_pad: bool) -> dict:
        from vlm.data.collate import collate
        return collate(items, self.pad_id, left_pad=left_pad)

    def embed(self, queries: list[Query], batch_size: int = 16) -> torch.Tensor:
        return self.embedder.embed_items(queries, batch_size)

    def encode_image_batch(self, batch: torch.Tensor) -> torch.Tensor:
        return self.embedder.embed_items([Query(image=x) for x in batch], len(batch))

    def encode_texts(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        return self.embedder.embed_items([Query(text=t) for t in texts], batch_size)

    def prepare(self, prompt: str, media: dict) -> Any:
        """One user turn, templated and its media preprocessed (`generate_prepared` takes it); a prompt with no
        room left in the LLM's context for an answer is a UserError with reason `too_long` (the model would
        answer noise: it was scored). The errors of this input, before any model runs."""
        item = self.model.processor.prompt(prompt, media)
        self._check_context(item, 1)
        return item

    @torch.inference_mode()
    def generate(self, prompts: list[tuple[str, dict]], max_new_tokens: int = 16, batch_size: int = 8,
                 **sampling: Any) -> list[str]:
        """Answers to single user turns (text with placeholders, raw media per modality): greedy, unless
        `sampling` asks otherwise (do_sample, temperature, top_k, top_p, as `MultimodalLM.generate`)."""
        return self.generate_prepared([self.prepare(*p) for p in prompts], max_new_tokens, batch_size, **sampling)

    @torch.inference_mode()
    def generate_prepared(self, items: list, max_new_tokens: int = 16, batch_size: int = 8,
                          **sampling: Any) -> list[str]:
        """`generate` of `prepare`d turns. A route that takes a path per batch (IAA) has its rows with media
        batched apart from the rows without; each batch generates at most what the context has room for."""
        from vlm.model import has_media
        m = self.model
        sampling = sampling_settings(sampling)
        if not sampling.get("do_sample") or not sampling.get("temperature", 1.0):
            sampling = {}                                              # temperature 0 means greedy
        context = m.context_length

        def answer(batch: list) -> list[str]:
            tight = [k for k, it in enumerate(batch) if context and len(it.input_ids) > context - max_new_tokens]
            if tight and len(batch) > 1:
                # a row near the context generates alone: the batch's padded length would cut its neighbours'
                # room (a review: a short prompt beside a 2,044-token one answered 3 words instead of 7)
                out: list = [None] * len(batch)
                roomy = [k for k in range(len(batch)) if k not in tight]
                for group in ([roomy] if roomy else []) + [[k] for k in tight]:
                    for k, text in zip(group, answer([batch[k] for k in group])):
                        out[k] = text
                return out
            b = self._collate(batch, left_pad=True)
            new = max_new_tokens if not context else min(max_new_tokens, context - b["input_ids"].shape[1])
            ids = m.generate(b["input_ids"], media=b["media"], attention_mask=b["attention_mask"],
                             max_new_tokens=new, **sampling)
            return [m.tokenizer.decode(t, skip_special_tokens=True).strip() for t in ids]
        return self._in_batches(items, [has_media(it.media) for it in items], batch_size, answer)

    def _in_batches(self, rows: list, has: list[bool], batch_size: int, run) -> list:
        """`run(batch)` over batches of `rows` (a route that takes a path per batch has its rows with media
        batched apart from the rows without: `media_groups`), the results in the rows' order."""
        from vlm.model import media_groups
        out: list = [None] * len(rows)
        for group in media_groups(self.model, has):
            for i in range(0, len(group), batch_size):
                idx = group[i:i + batch_size]
                for r, v in zip(idx, run([rows[r] for r in idx])):
                    out[r] = v
        return out

    @torch.inference_mode()
    def loglikelihood(self, requests: list[tuple[str, dict, str]], batch_size: int = 8) -> list[tuple[float, bool]]:
        """(prompt, media, continuation) -> (log p(continuation + end of turn | prompt), whether greedy
        decoding would produce exactly it). The prompt is one user turn; the continuation the answer."""
        from vlm.model import has_media
        return self._in_batches(requests, [has_media(media) for _, media, _ in requests], batch_size,
                                self._loglik_batch)

    def _check_context(self, item: Any, room: int = 0) -> None:
        """A templated turn (with `room` tokens to spare) within the LLM's context: past it the model reads noise,
        which was scored (a review). A `vlm.model.TooLong` (reason `too_long`: the tasks skip and count it)."""
        from vlm.model import check_context
        check_context(len(item.input_ids), self.model.context_length, room)

    def _loglik_batch(self, requests: list[tuple[str, dict, str]]) -> list[tuple[float, bool]]:
        """`loglikelihood` of one batch."""
        m, proc = self.model, self.model.processor
        items = [proc.from_turns([{"role": "user", "text": p}, {"role": "assistant", "text": c}], media, key="request")
                 for p, media, c in requests]
        for it in items:
            self._check_context(it)
        b = self._collate(items, left_pad=False)
        # a text-conditioned zoom reads the prompt, what generation reads: every token from the answer on is
        # marked an answer token for it (the candidate steered each choice's crops: a review)
        from_answer = (b["labels"] != -100).cumsum(1) > 0
        logits = m.logits(b["input_ids"].to(m.device), b["attention_mask"].to(m.device), media=b["media"],
                          labels=torch.where(from_answer, 0, -100).to(m.device))[:, :-1].float()   # [B, L-1, V]
        target = b["labels"][:, 1:].to(m.device)                         # [B, L-1]
        sel = target != -100
        greedy = (logits.argmax(-1) == target) | ~sel                    # [B, L-1]
        token_logp = -F.cross_entropy(logits.transpose(1, 2), target.clamp(min=0), reduction="none")
        logp = (token_logp * sel).sum(1)
        return [(float(lp), bool(g)) for lp, g in zip(logp.tolist(), greedy.all(1).tolist())]

    @torch.inference_mode()
    def layer_features(self, modality: str, clips: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
        encoders = self.model.encoders
        if modality not in encoders:
            raise UserError(f"{self.name} has no {modality} encoder")
        return encoder_layer_features(encoders[modality], clips)


def _flag(value: Any) -> bool:
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    if isinstance(value, (bool, int, float)) and value in (0, 1):
        return bool(value)
    raise ValueError(value)


# generation settings `generate` reads (as lmms-eval tasks and `--gen_kwargs` give them: values may be strings)
SAMPLING: dict[str, tuple[Any, str]] = {"do_sample": (_flag, "true or false"), "temperature": (float, "a number"),
                                        "top_k": (int, "an integer"), "top_p": (float, "a number")}
_WARNED: set[str] = set()


def sampling_settings(gen: dict[str, Any]) -> dict[str, Any]:
    """do_sample / temperature / top_k / top_p of `gen`, typed; None, "None" or "null" is the default (lmms-eval
    tasks write `top_p: null`); a value that does not convert is a UserError naming it. Beam search is not
    done here: num_beams > 1 is said once and decoding stays greedy / sampled."""
    out: dict[str, Any] = {}
    for key, (convert, what) in SAMPLING.items():
        value = gen.get(key)
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
            continue
        try:
            out[key] = convert(value)
        except (TypeError, ValueError):
            raise UserError(f"generation setting {key}={value!r}: expected {what}") from None
    beams = gen.get("num_beams")
    if beams not in (None, 1, "1", "None", "none") and "num_beams" not in _WARNED:
        import sys
        _WARNED.add("num_beams")
        print(f"warning: num_beams={beams}: beam search is not supported; decoding greedily (or sampling, per "
              f"do_sample)", file=sys.stderr)
    return out


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
    time. [N, L + 1, D]. The encoder's own `encode_layers` (features at each `feature_layer`), so no encoder
    internals are assumed beyond the block stack."""
    n = num_layers(encoder)
    if n is None:
        raise UserError(f"encoder {getattr(encoder, 'name', type(encoder).__name__)} has no stack of layers to probe")
    items = [encoder.preprocess(w, sr) for w, sr in clips]
    feats = []
    for i in range(0, len(items), batch_size):
        feats += [torch.stack([layer.float().mean(0) for layer in f])                          # [L + 1, D] each
                  for f in encoder.encode_layers(items[i:i + batch_size], n)]
    out = torch.stack(feats)                                                                   # [N, L + 1, D]
    finite = torch.isfinite(out).all(-1)                                                      # [N, L + 1]
    if not finite.all():          # NaN / inf weights (the clips are checked finite before): a probe would fit noise
        layers = [i for i in range(out.shape[1]) if not finite[:, i].all()]
        raise UserError(f"encoder {getattr(encoder, 'name', type(encoder).__name__)}: non-finite features at layer(s) "
                        f"{', '.join(map(str, layers))} for {int((~finite.all(1)).sum())} of {len(out)} clip(s) (NaN or "
                        f"inf in its weights?); not probed")
    return out


class EncoderModel(EvalModel):
    """A music encoder alone: a mert checkpoint (`vlm train mert-*`) or any transformers HuBERT folder,
    loaded as `mert:FOLDER` (SpecAugment off, eval mode). It can be probed, nothing else."""

    can_probe = True
    modalities = ("music",)

    def __init__(self, path: str, device: str = "cpu"):
        p = Path(path)
        from vlm.families.mert import HEADS_FILE
        # the encoder's weights: model.safetensors or a sharded folder's shards (a mert checkpoint's heads are not read)
        weights = sorted(w for w in p.glob("*.safetensors") if w.name != HEADS_FILE)
        if not weights:
            raise UserError(f"{path}: no .safetensors weights (a mert / HuBERT folder needs its weights; pickled "
                            f".bin files are not loaded)")
        self.spec, self.path, self.device = path, p, device
        self.name = p.name if p.name not in ("final", "last") else f"{p.parent.name}/{p.name}"
        # what the features depend on: the architecture, the weights, and the input's sample rate / normalisation
        extra = [(p / name).read_text() for name in ("preprocessor_config.json", "model.safetensors.index.json")
                 if (p / name).is_file()]
        self.fingerprint = _digest("encoder", (p / "config.json").read_text(), *map(_file_id, weights), *extra)
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


# ------------------------------------------------------------------------------------------------ features
FEATURES = ("log-mel", "mfcc")
FEATURE_RATES = {"music": 24000, "audio": 16000}     # the rates the suite's music / audio encoders read


class FeatureModel(EvalModel):
    """Hand-crafted audio features, the reference row of a MARBLE-style probe table (MARBLE reports MFCC):
    what a probe reads from the signal itself, with nothing learned. `features:log-mel` is the log-mel
    spectrogram (128 bands at 24 kHz for music, 80 at 16 kHz for audio; 75 frames a second for music, MERT's
    rate, 100 for audio), `features:mfcc` 20 MFCCs and their deltas from those bands; either in dB, summarised
    per clip by its mean and standard deviation over time: one "layer" [N, 1, 2 x bands]. No weights, no
    seed: the probe's own fit is the only training. Probes only."""

    can_probe = True
    modalities = ("music", "audio")

    def __init__(self, spec: str, device: str = "cpu"):
        kind = spec.split(":", 1)[1]
        if kind not in FEATURES:
            raise UserError(f"{spec}: unknown features {kind!r}; choose from "
                            + ", ".join(f"features:{k}" for k in FEATURES))
        self.spec, self.kind, self.device = spec, kind, device
        self.name = f"features:{kind}"
        self.fingerprint = _digest("features", kind, "v1")
        self._transforms: dict[str, torch.nn.Module] = {}

    def _transform(self, modality: str) -> torch.nn.Module:
        import torchaudio
        if modality not in self._transforms:
            sr = FEATURE_RATES[modality]
            music = modality == "music"
            mel = {"n_fft": 2048 if music else 1024, "hop_length": sr // (75 if music else 100), "n_mels": 128 if music else 80}
            if self.kind == "mfcc":
                t = torchaudio.transforms.MFCC(sr, n_mfcc=20, log_mels=False, melkwargs=mel)
            else:
                t = torch.nn.Sequential(torchaudio.transforms.MelSpectrogram(sr, **mel),
                                        torchaudio.transforms.AmplitudeToDB("power", top_db=80))
            self._transforms[modality] = t
        return self._transforms[modality]

    @torch.inference_mode()
    def layer_features(self, modality: str, clips: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
        if modality not in FEATURE_RATES:
            raise UserError(f"{self.name} reads audio and music; it has no {modality} features")
        import torchaudio.functional as AF

        from encoders.base import resample_ratio, scale_loud
        sr, t = FEATURE_RATES[modality], self._transform(modality)
        n_fft = t[0].n_fft if isinstance(t, torch.nn.Sequential) else t.MelSpectrogram.n_fft
        out = []
        for wave, rate in clips:
            x = torch.as_tensor(wave, dtype=torch.float32).reshape(-1, wave.shape[-1]).mean(0)     # mono [N]
            if int(rate) != sr:
                x = AF.resample(x, *resample_ratio(int(rate), sr))
            x = torch.nn.functional.pad(x, (0, max(0, n_fft - x.numel())))   # the STFT's reflect padding needs n_fft
            x = scale_loud(x)                                                 # a peak > 1e6 overflows the power
            f = t(x)                                                          # [bands, frames], dB
            if self.kind == "mfcc":
                f = torch.cat([f, AF.compute_deltas(f)])
            out.append(torch.cat([f.mean(1), f.std(1, correction=0)])[None])            # [1, 2 x bands]
        return torch.stack(out)                                                        # [N, 1, D]


def generate_each(model: EvalModel, prompts: list[tuple[str, dict]], max_new_tokens: int, batch_size: int,
                  **sampling: Any) -> list[str | Exception]:
    """`model.generate` over the prompts, each prepared on its own first (`prepare`): an input the model's
    preprocessing refuses (an audio clip too short for its log-mel, a sample rate no audio has ...) or with no
    room in its context gets its exception in place of an answer, and the others are generated in batches as
    ever. The evaluation tasks and the lmms-eval plugin skip and count those (one such sample ended the whole
    run). A model that does not load is an error, raised."""
    from vlm.modalities import MediaError
    sampling_settings(sampling)          # settings that do not parse are the caller's error, not an input's
    model.load()                         # a model that does not load is the run's error, not each sample's
    prepare = getattr(model, "prepare", None)
    if prepare is None:
        return list(model.generate(prompts, max_new_tokens, batch_size=batch_size, **sampling))
    out: list[Any] = [None] * len(prompts)
    for i, prompt in enumerate(prompts):      # each input prepared on its own: its problems are its own
        try:
            out[i] = prepare(*prompt)
        except (UserError, MediaError) as e:
            out[i] = e
    ok = [i for i, x in enumerate(out) if not isinstance(x, Exception)]
    for i, answer in zip(ok, model.generate_prepared([out[i] for i in ok], max_new_tokens, batch_size, **sampling)
                         if ok else []):
        out[i] = answer
    return out


def _hf_model_type(p: Path) -> str | None:
    """The model_type of a transformers folder's config.json; None for anything else (a vlm checkpoint has
    none: its config names an llm and media instead)."""
    try:
        cfg = json.loads((p / "config.json").read_text()) if p.is_dir() else None
    except (OSError, ValueError):
        return None
    return cfg.get("model_type") if isinstance(cfg, dict) and "llm" not in cfg else None


def load_model(spec: str, device: str = "cpu") -> EvalModel:
    """`open_clip:ARCH[:CKPT]`, a vlm checkpoint folder, a music encoder folder (a mert checkpoint or a
    transformers HuBERT folder: probes only) or `features:log-mel` / `features:mfcc` (hand-crafted audio
    features: probes only); bad input is a one-line UserError."""
    if spec.startswith("open_clip:"):
        return OpenClipModel(spec, device=device)
    if spec.startswith("features:"):
        return FeatureModel(spec, device=device)
    model_type = _hf_model_type(Path(spec))
    if model_type == "hubert":
        return EncoderModel(spec, device=device)
    if model_type is not None:
        raise UserError(f"{spec}: a transformers {model_type!r} folder; `vlm eval` takes a vlm checkpoint, a mert / "
                        f"HuBERT music encoder folder (probes) or open_clip:ARCH[:CKPT]")
    return VLMModel(spec, device=device)
