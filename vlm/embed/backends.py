"""The two kinds of model that embed: our checkpoints (any MultimodalLM, VLM2Vec-style) and open_clip CLIPs.

    backend = load_backend("runs/vlm2vec-tiny/final")          # or "open_clip:ViT-B-32[:CKPT]"
    prepare = backend.preparer()       # picklable, no weights: [Item] -> a CPU batch (data-loader workers)
    vectors = backend.forward(prepare(items))                  # [B, D] float32, L2-normalised, CPU

The split into `preparer()` (decode, preprocess, tokenise: CPU work that runs in worker processes or
threads) and `forward()` (the model) is what lets `vlm embed` overlap the two and compare against a bare
forward loop over the same prepared batches. Every embedding of the suite comes from here: the
benchmarks (`benchmarks.models`), `Embedder.embed`, `vlm embed` and `vlm search`.

open_clip spec: `open_clip:ARCH[:CKPT]` (random init with seed 0 when no checkpoint: pretrained tags need
the network), `open_clip:/path/arch.json[:CKPT]` (an architecture config file), `open_clip:local-dir:DIR`.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from encoders.weights import read_safetensors
from vlm.embed.items import Item, read_media
from vlm.errors import UserError
from vlm.hub import offline, open_clip_hub_names, require_local
from vlm.modalities import short_error
from vlm.model_files import TOKENIZER_FILES

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def file_id(p: Path) -> str:
    st = p.stat()
    return f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def content_id(p: Path, chunk: int = 8 << 20) -> str:
    """A file by content, not place: the SHA-256 of all its bytes (a moved or copied checkpoint is the same
    model, any changed weight another; about 1.7 GB/s here: 8 s for 14 GB). A sample of the file would call two
    checkpoints of one run the same when only their middle tensors differ (a review)."""
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r}: no GPU is available")
    try:
        return torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r} (auto | cpu | cuda[:N])") from None


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    return DTYPES[dtype]


class Backend:
    """What embeds: `spec`, `name`, `fingerprint` (identifies the weights, for caches), `modalities` it
    takes (besides text), `dim`, `preparer()` and `forward(batch)`."""

    spec: str
    name: str
    fingerprint: str
    modalities: tuple[str, ...] = ()

    def __init__(self, device: str = "cpu", dtype: str = "float32"):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self._lock = threading.Lock()

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    identity: tuple[str, tuple[Path, ...]] = ("", ())   # (its config, the weight / tokenizer files): `content`

    def matches(self, recorded: str, content: str | None = None) -> bool:
        """Whether a fingerprint recorded by an export (run.json) is this model's: its own, or the one an
        earlier version of the suite gave the same files (`legacy_fingerprint`, where the formula changed), or
        (`content`, recorded beside it) the same files by content, moved or copied since (a copy of the
        export's model was called "not the weights": a review)."""
        return recorded in (self.fingerprint, getattr(self, "legacy_fingerprint", None)) or (
            content is not None and content == self.content)

    @functools.cached_property
    def content(self) -> str:
        """The weights and tokenizer by content (`content_id` of each file, its name beside it), not place;
        computed where it is asked for (an export's run.json; a search whose fingerprint differs)."""
        config, files = self.identity
        return digest(type(self).__name__, config, *(f"{f.name}|{content_id(f)}" for f in files))

    def check(self, item: Item) -> None:
        for m in item.media:
            if m not in self.modalities:
                have = ", ".join(["text", *self.modalities])
                raise UserError(f"{self.name} cannot embed {m} (it embeds {have})")

    def groups(self, items: list[Item]) -> list[list[int]]:
        """The indices of items that may share a batch (`vlm.model.media_groups`): all of them, unless the model
        takes a path per batch."""
        return [list(range(len(items)))]

    # subclasses
    @property
    def dim(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def load(self) -> None:
        """Build / read the weights now (otherwise on first use)."""

    def preparer(self, within_context: bool = False):  # pragma: no cover - interface
        """`within_context`: refuse (ItemTooLong) an item longer than the model reads, where it has a limit."""
        raise NotImplementedError

    def forward(self, batch: Any) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


# ------------------------------------------------------------------------------------------------ our checkpoints
class ItemTooLong(UserError):
    """An item whose prompt does not fit the LLM's context (`vlm embed` skips it as `too_long`)."""

    reason = "too_long"


class VLMPreparer:
    """[Item] -> a right-padded prompt batch (`vlm.data.collate`); media preprocessed unless they are
    tensors already. Picklable: the processor holds no weights."""

    def __init__(self, processor, context: int | None = None):
        from vlm.data.decode import draft_size_of
        from vlm.data.pipeline import fast_processor
        self.pad_id = processor.pad_id
        self.context = context                  # the LLM's context: a longer prompt is refused (ItemTooLong)
        self.processor = fast_processor(processor)
        # JPEGs may decode straight at the smallest scale the image preprocess still resizes down from
        self.draft_size = draft_size_of(processor.preprocess.get("image"))

    def __call__(self, items: list[Item], defer: bool = False) -> dict:
        """`defer`: images stay the uint8 crops of their preprocess (`ImagePreprocess.pixels`) until
        `finish` normalises them: what a loader worker sends, a quarter of the bytes; `finish(self(items,
        defer=True))` is `self(items)` bit for bit."""
        from vlm.data.collate import collate
        proc, rows = self.processor, []
        todo: dict[str, list[tuple[int, Any]]] = {}             # modality -> (item, raw) still to preprocess
        for i, it in enumerate(items):
            for m, x in it.media.items():
                if not isinstance(x, torch.Tensor):
                    todo.setdefault(m, []).append((i, read_media(m, x, self.draft_size)))
        done = {(m, i): t for m, pairs in todo.items()
                for (i, _), t in zip(pairs, self._preprocess(m, [raw for _, raw in pairs], defer))}
        for i, it in enumerate(items):
            media = {m: [done.get((m, i), x)] for m, x in it.media.items()}
            rows.append(proc.from_turns([{"role": "user", "text": it.prompt()}], media, add_generation_prompt=True,
                                        key="item", preprocessed=True))
            if self.context and len(rows[-1].input_ids) > self.context:   # (a 10-minute clip: 15,000 tokens)
                raise ItemTooLong(f"its prompt is {len(rows[-1].input_ids)} tokens (media included), past the "
                                  f"model's context of {self.context} tokens")
        return collate(rows, self.pad_id)

    def _preprocess(self, m: str, raws: list, defer: bool) -> list[torch.Tensor]:
        pre = self.processor.preprocess.get(m)
        if defer and hasattr(pre, "pixels"):                    # images (ImagePreprocess); the rest as they are
            return pre.pixels(raws)
        return self.processor.preprocess_media_batch(m, raws)

    def finish(self, batch: dict) -> dict:
        """A deferred batch ready for the model: its uint8 image crops normalised, in place (a batch
        without any passes through as it is)."""
        for m, items in (batch.get("media") or {}).items():
            pre = self.processor.preprocess.get(m)
            crops = [i for i, t in enumerate(items) if t.dtype == torch.uint8]
            if crops and hasattr(pre, "normalize"):
                items = batch["media"][m] = list(items)
                for i, t in zip(crops, pre.normalize(torch.stack([items[i] for i in crops])).unbind(0)):
                    items[i] = t
        return batch


# what else the tokenizer reads when a folder has it: part of the fingerprint with the two above
TOKENIZER_EXTRAS = ("special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json")


def tokenizer_ids(folder: Path) -> list[str]:
    """`file_id`s of the tokenizer files a folder has: part of a model's fingerprint."""
    return [file_id(f) for f in tokenizer_files(folder)]


def tokenizer_files(folder: Path) -> list[Path]:
    return [folder / f for f in (*TOKENIZER_FILES, *TOKENIZER_EXTRAS) if (folder / f).is_file()]


class VLMBackend(Backend):
    """A checkpoint folder (`vlm.load`): the final layer's hidden state at each prompt's last token,
    L2-normalised (`MultimodalLM.embed`). Weights load on first use."""

    def __init__(self, path: str | Path, device: str = "cpu", dtype: str = "float32"):
        super().__init__(device, dtype)
        p = Path(path)
        if p.is_file():
            raise UserError(f"{path}: a file, not a checkpoint folder (give the folder with config.json and "
                            f"model.safetensors, or open_clip:ARCH[:CKPT])")
        if not p.is_dir():
            raise UserError(f"model not found: {path} (a checkpoint folder or open_clip:ARCH[:CKPT])")
        missing = [f for f in ("config.json", "model.safetensors") if not (p / f).is_file()]
        if missing:
            raise UserError(f"{path}: not a checkpoint folder (needs config.json and model.safetensors; "
                            f"no {' or '.join(missing)})")
        try:
            config = (p / "config.json").read_text()
            raw = json.loads(config)
        except ValueError:                             # invalid JSON, or not text at all
            raise UserError(f"{p / 'config.json'}: invalid JSON") from None
        if not isinstance(raw, dict):
            raise UserError(f"{p / 'config.json'}: not a JSON object")
        if "llm" not in raw:
            family, model_type = raw.get("family"), raw.get("model_type")
            if isinstance(model_type, str) and not family:     # an exported / downloaded transformers folder
                from vlm.model_files import mert_notice
                mert_notice(p)
                raise UserError(f"{path}: a transformers {model_type!r} folder, not a vlm checkpoint; use the "
                                "checkpoint it was exported from, or open_clip:ARCH[:CKPT] to embed")
            what = f"a {family} checkpoint" if isinstance(family, str) and family else "this checkpoint"
            raise UserError(f"{path}: {what} is not an embedder (it has no LLM to embed prompts with)")
        # what would fail at the first use, found now: a truncated weights file (its header read alone, as a
        # weightless skeleton reads it), no tokenizer (it loads later)
        with torch.device("meta"):
            read_safetensors(p / "model.safetensors")
        if not any((p / n).is_file() for n in TOKENIZER_FILES):
            raise UserError(f"{p}: the tokenizer does not load: no {' or '.join(TOKENIZER_FILES)}")
        self.spec, self.path = str(path), p
        self.name = p.name if p.name not in ("final", "last") else f"{p.parent.name}/{p.name}"
        # the tokenizer is part of what a text embeds to: a swapped tokenizer.json is another model (cached
        # features and exports of the old one are not reused for it)
        self.fingerprint = digest("vlm", config, file_id(p / "model.safetensors"), *tokenizer_ids(p))
        self.identity = (config, (p / "model.safetensors", *tokenizer_files(p)))
        # what exports written before the tokenizer counted recorded (`matches`: they still search and resume)
        self.legacy_fingerprint = digest("vlm", config, file_id(p / "model.safetensors"))
        self.modalities = tuple(raw.get("media") or raw.get("encoders") or {})    # format 2 | 1
        self.config = raw
        self._model = None

    @property
    def model(self):
        with self._lock:                  # decoding threads may ask first: build it once
            if self._model is None:
                from vlm.loading import load
                model = load(self.path, device=self.device)     # (a broken tokenizer: one line, vlm.model_files)
                if not hasattr(model, "embed") or not hasattr(model, "processor"):
                    raise UserError(f"{self.spec}: a {type(model).__name__} is not an embedder (no embed())")
                self._model = model
        return self._model

    def load(self) -> None:
        self.model  # noqa: B018  (the property loads)

    @property
    def dim(self) -> int:
        from vlm.llm import base_model
        return int(base_model(self.model.llm).config.get_text_config().hidden_size)

    def preparer(self, within_context: bool = False) -> VLMPreparer:
        """`within_context`: an item whose prompt exceeds the LLM's context is refused (ItemTooLong; `vlm embed`
        skips it as too_long); otherwise it is embedded as the API and the benchmarks always have."""
        context = self.model.context_length if within_context else None
        return VLMPreparer(self.model.processor, context)

    def groups(self, items: list[Item]) -> list[list[int]]:
        from vlm.model import media_groups
        return media_groups(self.model, [bool(it.media) for it in items])

    @torch.inference_mode()
    def forward(self, batch: dict) -> torch.Tensor:
        m = self.model
        with self.autocast():
            e = m.embed(batch["input_ids"].to(m.device), batch["attention_mask"].to(m.device), batch["media"])
        return e.float().cpu()                                              # [B, D]


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


class OpenClipPreparer:
    """[Item] -> {images [Bi, 3, H, W], image_rows, tokens [Bt, ctx], text_rows, n}. Picklable."""

    draft_size = None

    def __init__(self, preprocess, tokenizer):
        self.preprocess, self.tokenizer = preprocess, tokenizer

    def __call__(self, items: list[Item]) -> dict:
        img_rows = [i for i, it in enumerate(items) if it.image is not None]
        txt_rows = [i for i, it in enumerate(items) if it.text]
        images = [items[i].image if isinstance(items[i].image, torch.Tensor)
                  else self.preprocess(read_media("image", items[i].image)) for i in img_rows]
        return {"n": len(items), "image_rows": img_rows, "text_rows": txt_rows,
                "images": torch.stack(images) if images else None,
                "tokens": self.tokenizer([items[i].text for i in txt_rows]) if txt_rows else None}


def open_clip_config(arch: str, file: Path | None = None) -> dict | None:
    """An open_clip architecture's config as `open_clip.get_model_config` gives it, read from `file` or from
    the installed package's model_configs/ WITHOUT importing open_clip (seconds of imports: a run whose
    features are all cached never needs the package). None if there is no such architecture."""
    import importlib.util
    if file is None:
        spec = importlib.util.find_spec("open_clip")
        if spec is None or not spec.submodule_search_locations:
            raise UserError("open_clip is not installed (pip install open_clip_torch)")
        file = Path(spec.submodule_search_locations[0]) / "model_configs" / f"{arch}.json"
        if not file.is_file():
            return None
    try:
        config = json.loads(Path(file).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"open_clip config {file}: {type(e).__name__}: {e}") from None
    if not (isinstance(config, dict) and all(k in config for k in ("embed_dim", "vision_cfg", "text_cfg"))):
        raise UserError(f"open_clip config {file}: needs embed_dim, vision_cfg and text_cfg")
    return config


_REGISTERED: dict[str, str] = {}


def registered_config(name: str, config: str) -> str:
    """Register an open_clip architecture config (JSON text) under `name` (written to a temporary folder:
    open_clip names an architecture by its file's stem) and return the name; once per name and process."""
    import atexit
    import shutil
    import tempfile

    import open_clip
    if name not in _REGISTERED:
        folder = tempfile.mkdtemp(prefix="vlm-open-clip-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        copy = Path(folder) / f"{name}.json"
        copy.write_text(config)
        open_clip.add_model_config(copy)
        _REGISTERED[name] = str(copy)
    return name


class OpenClipBackend(Backend):
    """An open_clip CLIP: its own preprocessing and tokenizer, fp32 weights. Text -> text tower, image ->
    image tower, both -> the normalised sum of the two (MMEB's CLIP baselines); instructions are ignored."""

    modalities = ("image",)

    def __init__(self, spec: str, device: str = "cpu", dtype: str = "float32", seed: int = 0):
        super().__init__(device, dtype)
        self.spec, self.seed = spec, seed
        arch, ckpt = parse_open_clip(spec)
        self.config_file = None
        if arch.endswith(".json"):
            cfg = Path(arch)
            if not cfg.is_file():
                raise UserError(f"open_clip config not found: {cfg}")
            self.config_file, arch = cfg, cfg.stem
        if arch.startswith("local-dir:"):
            folder = Path(arch[len("local-dir:"):])
            if not (folder / "open_clip_config.json").is_file():
                raise UserError(f"{folder}: no open_clip_config.json (not an open_clip local-dir)")
            config, ident = (folder / "open_clip_config.json").read_text(), [file_id(p) for p in sorted(folder.iterdir())]
            files = tuple(p for p in sorted(folder.iterdir()) if p.is_file())
            try:
                raw = json.loads(config)
                local_cfg = raw.get("model_cfg", raw)           # as open_clip reads it
            except (ValueError, AttributeError):
                local_cfg = {}
            local_cfg = local_cfg if isinstance(local_cfg, dict) else {}
            require_local(spec, open_clip_hub_names(local_cfg))   # its text tower may name the hub too
        else:
            config = open_clip_config(arch, self.config_file)
            if config is None:
                raise UserError(f"unknown open_clip architecture '{arch}' (see open_clip.list_models(), "
                                "or give a config file: open_clip:/path/arch.json[:CKPT])")
            hub_names = open_clip_hub_names(config)
            require_local(spec, hub_names)                 # before open_clip would try the network
            tok = hub_names.get("tokenizer")
            tok_ids = tokenizer_ids(Path(tok)) if tok and Path(tok).is_dir() else []   # part of it
            config = json.dumps(config, sort_keys=True)
            if self.config_file is not None:
                # open_clip's registry is keyed by file stem and process-wide: a file named like a built-in
                # (RN50.json) or like another config file would replace that architecture for every later
                # model of the process. The file is registered under a name of its own (registered_config).
                self._registered = (f"{cfg.stem}-{digest(config)}", config)
            if ckpt is not None and not Path(ckpt).is_file():
                raise UserError(f"open_clip checkpoint not found: {ckpt} (pretrained tags need the network; "
                                "give a local file)")
            ident = [file_id(Path(ckpt))] if ckpt else [f"random-init seed {seed}"]
            ident += tok_ids
            files = (*([Path(ckpt)] if ckpt else []), *(tokenizer_files(Path(tok)) if tok_ids else []))
        self.arch, self.ckpt = arch, ckpt
        self.name = spec if len(spec) < 60 else f"open_clip:{arch}"
        self.fingerprint = digest("open_clip", arch, config, *ident)
        self.identity = (f"{arch}|{config}|seed {seed if not ckpt else '-'}", files)
        self._model = self._preprocess = self._tokenizer = None

    def load(self) -> None:
        """Build the model once. Image preprocessing runs in decoding threads, so the first calls can race:
        the lock keeps it to one build (two interleaved random inits would draw different weights)."""
        import open_clip
        with self._lock:
            if self._model is not None:
                return
            arch = self.arch
            if self.config_file is not None:
                arch = registered_config(*self._registered)
            with torch.random.fork_rng(devices=[]), offline():
                torch.manual_seed(self.seed)          # random-init models are the same on every run
                try:
                    model, _, pre = open_clip.create_model_and_transforms(arch, pretrained=self.ckpt,
                                                                          device=self.device)
                except RuntimeError as e:
                    if "size mismatch" in str(e) or "Missing key" in str(e) or "Unexpected key" in str(e):
                        raise UserError(f"{self.spec}: weights do not fit the architecture "
                                        f"({str(e).splitlines()[0][:200]})") from None
                    raise UserError(f"{self._unreadable()} ({short_error(e)[:200]})") from None
                except Exception as e:  # noqa: BLE001  unpickling, safetensors and OS errors of a damaged file
                    raise UserError(f"{self._unreadable()} ({type(e).__name__}: {short_error(e)[:200]})") from None
            with offline():
                self._tokenizer = open_clip.get_tokenizer(arch)
            self._preprocess = pre
            self._model = model.eval()

    def _unreadable(self) -> str:
        """The start of the message when open_clip cannot build the model (its checkpoint, if one is given)."""
        return f"{self.ckpt}: not a readable open_clip checkpoint" if self.ckpt else \
            f"{self.spec}: not a readable open_clip model"

    @property
    def model(self):
        self.load()
        return self._model

    @property
    def dim(self) -> int:
        return int(self.encode_image(torch.zeros(1, 3, *self._image_size())).shape[-1])

    def _image_size(self) -> tuple[int, int]:
        size = getattr(self.model.visual, "image_size", 224)
        return tuple(size) if isinstance(size, (tuple, list)) else (size, size)

    def preprocess_image(self, image) -> torch.Tensor:
        self.load()
        return self._preprocess(image)                                      # [3, H, W]

    def preparer(self, within_context: bool = False) -> OpenClipPreparer:
        self.load()                    # (open_clip's tokenizer cuts a text at its context itself)
        return OpenClipPreparer(self._preprocess, self._tokenizer)

    @torch.inference_mode()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self._image(images).cpu()                                   # [B, D]

    @torch.inference_mode()
    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self._text(tokens).cpu()                                    # [B, D]

    def _image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_image(images.to(self.device)).float(), dim=-1)

    def _text(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, ctx] token ids -> [B, D] normalised; causal towers run only up to the batch's longest row
        (the positions after EOT cannot change the pooled feature)."""
        parts = _causal_text_parts(self.model)
        tok = tokens.to(self.device)
        if parts is not None:
            length = int(((tok != 0).int().cumsum(1).argmax(1) + 1).max())      # last non-pad position + 1
            feats = _encode_text_trimmed(parts, tok[:, :length])
        else:
            feats = self.model.encode_text(tok)
        return F.normalize(feats.float(), dim=-1)

    @torch.inference_mode()
    def forward(self, batch: dict) -> torch.Tensor:
        with self.autocast():
            return self.embed_batch(batch).cpu()

    def embed_batch(self, batch: dict) -> torch.Tensor:
        """A prepared batch -> [B, D] normalised, with a graph when grad is on (training an open_clip model
        on pairs: benchmarks/studies/vlm2vec_compare.py)."""
        img = self._image(batch["images"]) if batch["images"] is not None else None
        txt = self._text(batch["tokens"]) if batch["tokens"] is not None else None
        out: list[torch.Tensor | None] = [None] * batch["n"]
        for k, i in enumerate(batch["image_rows"]):
            out[i] = img[k]
        for k, i in enumerate(batch["text_rows"]):
            out[i] = txt[k] if out[i] is None else out[i] + txt[k]
        if any(v is None for v in out):
            raise UserError(f"{self.name}: an item with neither text nor an image has nothing to embed")
        return F.normalize(torch.stack(out), dim=-1)                              # [B, D]


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


def load_backend(spec: str, device: str = "cpu", dtype: str = "float32") -> Backend:
    """`open_clip:ARCH[:CKPT]` or a checkpoint folder; bad input is a one-line UserError."""
    if not isinstance(spec, str) or not spec:
        raise UserError("no model given: a checkpoint folder or open_clip:ARCH[:CKPT]")
    if spec.startswith("open_clip:"):
        return OpenClipBackend(spec, device, dtype)
    return VLMBackend(spec, device, dtype)
