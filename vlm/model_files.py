"""Checkpoint folders of MultimodalLMs: read config.json, upgrade an older format (1, 2) to the current one
(3), rebuild the model and load its safetensors weights. `vlm.load` (vlm/loading.py) dispatches here for
every multimodal LM; families that start from a checkpoint (vlm2vec's `init`) use it directly (the
families cannot import vlm.loading, which imports them).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from vlm.atomic import recover_replaced
from vlm.errors import UserError, is_utf8, require, text_of
from vlm.modalities import short_error
from vlm.model import (
    CONFIG_FILE,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    ModelConfig,
    MultimodalLM,
    check_weights,
    load_error_line,
)


def read_config(p: Path) -> dict:
    if not p.exists():
        recover_replaced(p.parent, p.name)      # a save killed between its two renames: the old folder is whole
    require(p.is_dir(), f"checkpoint not found: {p}")
    require(is_utf8(str(p.absolute())), f"{text_of(str(p))}: the folder's path is not UTF-8 text (safetensors and "
                                        f"tokenizers read UTF-8 paths only); rename it")
    require((p / CONFIG_FILE).exists(), f"{p}: no {CONFIG_FILE} (not a vlm checkpoint folder)" + _where_model_is(p))
    require((p / CONFIG_FILE).is_file(), f"{p / CONFIG_FILE}: a folder, not a file")
    try:
        raw = json.loads((p / CONFIG_FILE).read_text())
    except (ValueError, RecursionError) as e:      # invalid JSON, bytes not UTF-8, nested or a number too long
        raise UserError(f"{p / CONFIG_FILE}: invalid JSON ({short_error(e)[:200]})") from None
    require(isinstance(raw, dict), f"{p / CONFIG_FILE}: not a JSON object")
    return raw


def _where_model_is(p: Path) -> str:
    """A hint when `p` is a run folder or one of its checkpoints rather than the model folder in it."""
    for sub in ("final", "model"):
        if (p / sub / CONFIG_FILE).is_file():
            return f"; the model is in {p / sub}"
    return ""


def format_version(p: Path, raw: dict) -> int:
    """The checkpoint config's format (1 when absent: the first format had none); a newer or odd one is refused
    (it loaded as if it were today's)."""
    version = raw.get("format_version", 1)
    require(isinstance(version, int) and not isinstance(version, bool) and 1 <= version <= FORMAT_VERSION,
            f"{p / CONFIG_FILE}: format_version {version!r}; this vlm-suite reads formats 1 to {FORMAT_VERSION} "
            f"(a newer one needs a newer vlm-suite)")
    return version


MERT_HEADS_CONFIG = "mert_pretraining.json"     # beside a mert checkpoint's HuBERT folder (vlm.families.mert)


def mert_notice(p: Path) -> None:
    """A mert checkpoint (a HuBERT folder with the pretraining heads beside it) where a model with an LLM is
    needed: one line saying what it is and what it is for."""
    if (p / MERT_HEADS_CONFIG).is_file():
        raise UserError(f"{p}: a mert music-encoder checkpoint, with no language model; probe it (`vlm eval --suite "
                        f"music-probes --model {p}`) or use it as a family's music encoder (`music: mert:{p}`)")


def load_multimodal(p: Path, raw: dict) -> MultimodalLM:
    from huggingface_hub.errors import StrictDataclassError
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    if "family" not in raw and isinstance(raw.get("model_type"), str):       # vlm export's output, a hub download
        mert_notice(p)
        raise UserError(f"{p}: a transformers {raw['model_type']!r} folder, not a vlm checkpoint; use the checkpoint "
                        f"it was exported from (or load it with transformers)")
    require("family" in raw and "llm" in raw, f"{p / CONFIG_FILE}: not a vlm checkpoint config (needs 'family' and 'llm')")
    pickled = sorted(x.name for x in p.glob("*.bin")) + sorted(x.name for x in p.glob("*.pt"))
    require((p / WEIGHTS_FILE).exists(), f"{p}: no {WEIGHTS_FILE}" + (
        f" ({pickled[0]} is there: pickled weights are not loaded, they can run code; save them as safetensors)"
        if pickled else ""))
    try:
        state = load_file(str(p / WEIGHTS_FILE))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{p / WEIGHTS_FILE}: corrupt weights ({str(e).splitlines()[0]})") from None
    if (version := format_version(p, raw)) < FORMAT_VERSION:
        try:
            raw, state = upgrade(raw, state)
        except (KeyError, TypeError, AttributeError, ValueError) as e:     # a config of another shape labelled so
            raise UserError(f"{p / CONFIG_FILE}: not a format-{version} config (format_version {version}; "
                            f"{type(e).__name__}: {short_error(e)[:200]}); was it edited by hand?") from None
    config = checked_config(p / CONFIG_FILE, raw)
    tok = load_tokenizer(p)
    try:
        model = MultimodalLM.from_config(config, tok)
    except UserError as e:                       # an unknown projector, route, encoder ... named, with the file
        raise UserError(f"{p / CONFIG_FILE}: {e}") from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, ZeroDivisionError, RuntimeError,
            AssertionError, StrictDataclassError) as e:      # (AssertionError: torch's padding_idx past the table)
        raise UserError(f"{p / CONFIG_FILE}: does not build a model ({type(e).__name__}: {short_error(e)[:300]}); "
                        f"was it edited by hand?") from None
    own = model.state_dict()
    check_weights(p / WEIGHTS_FILE, state, own)
    tied = {}                                   # one parameter stored under two names with other values: the config
    for k in state:                             # ties what the weights do not (tie_word_embeddings edited)
        if k in own and own[k].numel():         # (empty tensors may share an address without being tied)
            first = tied.setdefault(own[k].data_ptr(), k)
            require(first == k or torch.equal(state[first], state[k]),
                    f"{p / CONFIG_FILE}: {first} and {k} are one tensor in the model config.json describes (tied, "
                    f"e.g. llm.tie_word_embeddings) but two different ones in {WEIGHTS_FILE}")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:                    # torch: a heading line, then one line per tensor that does not fit
        raise UserError(f"{p / WEIGHTS_FILE}: weights do not fit config.json ({load_error_line(e)[:300]})") from None
    # a tied tensor (an LLM's tie_word_embeddings: the LM head is the token table) is stored once under one of its
    # names (safetensors' save_model); the others are loaded with it
    own = model.state_dict()
    loaded = {own[k].data_ptr() for k in own if k in state}
    missing = [k for k in missing if own[k].data_ptr() not in loaded]
    require(not missing and not unexpected,
            f"{p / WEIGHTS_FILE}: weights do not match config.json (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})")
    return model


_JSON_NAMES = {str: "a string", dict: "an object", type(None): "null"}
# config.json's fields and the JSON types they hold (None: may be null)
CONFIG_TYPES = {"family": (str,), "llm": (dict,), "encoders": (dict,), "media": (dict,), "route": (dict,),
                "llm_mode": (str,), "lora": (dict, type(None)), "system": (str, type(None))}


def checked_config(f: Path, raw: dict) -> ModelConfig:
    """config.json's fields, each of the JSON type it must be, as a ModelConfig; one line naming the field
    otherwise (a hand-edited `"media": ["image"]` or `"system": 5` was a traceback wherever the model loaded; a
    misspelt `"sytem"` loaded without its system prompt). Other unknown keys (a note someone added) pass."""
    for key, types in CONFIG_TYPES.items():
        if key in raw:
            require(isinstance(raw[key], types), f"{f}: field '{key}' must be "
                    f"{' or '.join(_JSON_NAMES[t] for t in types)}, got {raw[key]!r:.60}")
    import difflib
    known = [*ModelConfig.__dataclass_fields__, "format_version", "architecture"]
    for key in raw:                   # a misspelt field would be dropped and its default used without a word
        near = difflib.get_close_matches(str(key), known, n=1, cutoff=0.75) if key not in known else None
        require(not near, f"{f}: '{key}' is not a config field (did you mean '{near[0]}'?)" if near else "")
    context = raw["llm"].get("max_position_embeddings") if isinstance(raw.get("llm"), dict) else None
    require(context is None or (isinstance(context, int) and not isinstance(context, bool) and context >= 1),
            f"{f}: field 'llm.max_position_embeddings' must be a whole number >= 1 (the context), got {context!r}")
    from vlm.modalities import PLACEHOLDER_RE
    found = PLACEHOLDER_RE.search(raw.get("system") or "")      # every prompt then had a placeholder no file fills
    require(not found, f"{f}: field 'system' holds a media placeholder ({found.group(0) if found else ''}); the "
                       f"system prompt is text only")
    for key in ("encoders", "media"):
        require(key in raw, f"{f}: field '{key}' is missing")
        for name, spec in raw[key].items():
            require(isinstance(spec, dict), f"{f}: field '{key}.{name}' must be an object, got {spec!r:.60}")
    return ModelConfig.from_dict(raw)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def load_tokenizer(p: Path):
    """The checkpoint folder's tokenizer; a missing or damaged file is one line naming the folder or file
    (transformers and the tokenizers library raise any kind of exception, some of them bare `Exception`)."""
    from transformers import AutoTokenizer
    for name in TOKENIZER_FILES:
        f = p / name
        if f.is_file():
            try:
                raw = json.loads(f.read_text())
            except ValueError as e:                    # invalid JSON, or not text at all
                raise UserError(f"{f}: invalid JSON ({short_error(e)}); the tokenizer does not load") from None
            require(isinstance(raw, dict), f"{f}: not a JSON object; the tokenizer does not load")
    try:
        return AutoTokenizer.from_pretrained(p, local_files_only=True, trust_remote_code=False)   # never its code
    except Exception as e:  # noqa: BLE001
        missing = " or ".join(n for n in TOKENIZER_FILES if not (p / n).is_file())
        raise UserError(f"{p}: the tokenizer does not load: " + (f"no {missing}" if missing else
                                                                  f"{type(e).__name__}: {short_error(e)}")) from None


def upgrade(raw: dict, state: dict) -> tuple[dict, dict]:
    """An older checkpoint as format 3. Format 1: one model class per family (encoders / connectors /
    extra); format 2: each modality's encoder inside its media tokenizer (`media.{m}.encoder.*`)."""
    version = raw.get("format_version", 1)
    if version == 1:
        extra = raw.get("extra") or {}
        media = {}
        for m in raw.get("encoders") or {}:
            old = (raw.get("connectors") or {}).get(m, {})
            projector = old.get("type", "mlp2x_gelu")
            if raw["family"] == "dragonfly" and m == "image":
                media[m] = {"type": "zoom", "encoder": m, "projector": projector, **extra}
            else:
                media[m] = {"type": "projector", "encoder": m, "projector": projector, "pool": old.get("pool", 1)}
        route = {"type": "inner_adaptor", "adaptor_layers": extra.get("adaptor_layers")} if raw["family"] == "iaa" \
            else {"type": "plain"}
        renames = [(r"^connectors\.([^.]+)\.", r"media.\1.projector."), (r"^zoom\.", "media.image.zoom."),
                   (r"^iaa\.", "route.")]
        keep = {k: v for k, v in raw.items() if k not in ("connectors", "extra")}
        raw = {**keep, "media": media, "route": route}
    else:                                   # format 2
        encoders = {m: part["encoder"] for m, part in raw["media"].items()}
        media = {m: {**part["connector"], "encoder": m} for m, part in raw["media"].items()}
        renames = [(r"^media\.([^.]+)\.encoder\.", r"encoders.\1.")]
        raw = {**raw, "encoders": encoders, "media": media}
    new_state = {}
    for k, v in state.items():
        for pattern, repl in renames:
            k, n = re.subn(pattern, repl, k)
            if n:
                break
        new_state[k] = v
    return {**raw, "format_version": FORMAT_VERSION}, new_state
