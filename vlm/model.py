"""MultimodalLM: per-modality media tokenizers -> an LLM route; a loss-free forward, embeddings, generation.

    model = vlm.build("llava", "tiny")
    x = model.processor(sample, media={"image": [img]})            # input_ids with expanded placeholders
    hidden = model(**collate([x], pad_id))                         # [B, L, D]; losses are objectives'
    logits = model.head(hidden)                                    # [B, L, V]
    vec = model.embed(**batch)                                     # [B, D]: last non-pad token, L2-normalised
    p = model.processor.prompt("<image>\\nColour?", {"image": [img]})
    ids = model.generate(torch.tensor([p.input_ids]), media=p.media)

A model is parts, not a subclass per family: named `encoders` (built once; tokenizers may share one),
`media[m]` (a `vlm.connectors.MediaTokenizer`: encoder + projector, the zoom, or the audio-visual
interleaver) for each modality, and `route` (a `vlm.connectors.Route`: plain, or inner adaptors). A
family (`vlm.families`) only chooses them; `ModelConfig` records them, so `vlm.load` rebuilds any model
from its config.json.

A media item occupies exactly as many placeholder tokens in `input_ids` as its tokenizer's token
count says ([Contract] of `vlm.data.template`); `embed_inputs` writes the features over them in
order, per modality, so any number of items of any modality may come in any order within a batch.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vlm import llm as llm_lib
from vlm.atomic import write_folder
from vlm.connectors import MediaContext, build_media, build_route
from vlm.data.processor import Processor
from vlm.errors import UserError, require
from vlm.modalities import PLACEHOLDERS, short_error

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
FORMAT_VERSION = 3


@dataclass
class ModelConfig:
    family: str
    llm: dict                                   # the LLM's HF config (to_dict), rebuilt without its folder
    encoders: dict[str, dict]                   # name -> encoder spec (encoders.build_encoder_from_spec)
    media: dict[str, dict]                      # modality -> connector: {"type", the encoder name per slot, settings}
    route: dict = field(default_factory=lambda: {"type": "plain"})
    llm_mode: str = "frozen"
    lora: dict | None = None                    # peft LoRA settings when the LLM is LoRA-wrapped
    system: str | None = None                   # default system prompt

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


class TooLong(UserError):
    """A prompt past the LLM's context (the model would read noise); `reason` is the counter a task skips it under."""
    reason = "too_long"


def check_context(n_tokens: int, context: int | None, room: int = 0) -> None:
    """A TooLong when a prompt of `n_tokens` with `room` tokens to generate does not fit the LLM's `context`."""
    if context and n_tokens + room > context:
        raise TooLong(f"the prompt is {n_tokens} tokens (media included)" + (f" and {room} to generate" if room else "")
                      + f": past the model's context of {context} tokens")


def media_groups(model, has: list[bool]) -> list[list[int]]:
    """The indices of rows to batch together, in order: for a route whose path is chosen per batch (IAA), the
    rows with media apart from the rows without (a text-only row in a batch with an image took the adaptor path,
    and its answer depended on its neighbours); for any other route, all rows as one group."""
    if not getattr(getattr(model, "route", None), "path_per_batch", False):
        return [list(range(len(has)))]
    return [g for g in ([i for i, h in enumerate(has) if h], [i for i, h in enumerate(has) if not h]) if g]


def has_media(media: dict | None) -> bool:
    return bool(media) and any(bool(v) for v in media.values())


class MultimodalLM(nn.Module):
    def __init__(self, config: ModelConfig, llm, tokenizer, encoders: dict[str, nn.Module]):
        """encoders: name -> built encoder; the media tokenizers (which use them) and the route come from `config`."""
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        llm_lib.add_special_tokens(tokenizer)
        llm_lib.resize_embeddings(llm, len(tokenizer))
        if config.lora:
            llm = llm_lib.set_llm_mode(llm, "lora", config.lora)
        self.llm = llm_lib.set_llm_mode(llm, config.llm_mode, config.lora)
        d_lm = llm_lib.base_model(self.llm).config.get_text_config().hidden_size
        self.encoders = nn.ModuleDict(encoders)
        self.media = nn.ModuleDict({m: build_media(cfg, m, self.encoders, d_lm) for m, cfg in config.media.items()})
        self.route = build_route(config.route, self.parts)
        require(config.llm_mode in self.route.llm_modes and not (config.lora and "lora" not in self.route.llm_modes),
                f"route '{config.route.get('type')}' keeps the LLM {'/'.join(self.route.llm_modes)} "
                f"(asked: {config.llm_mode})")
        vocab = tokenizer.get_vocab()
        self.placeholder_id = {m: vocab[p] for m, p in PLACEHOLDERS.items()}
        self.run_all_encoders = False           # set_distributed
        self._multimodal = False                # the path of the latest forward: `head` takes the same
        self._processor: Processor | None = None

    # ---------------------------------------------------------------- parts
    @property
    def parts(self) -> llm_lib.LLMParts:
        return llm_lib.llm_parts(self.llm)

    @property
    def processor(self) -> Processor:
        if self._processor is None:
            self._processor = Processor(self.tokenizer, {m: t.preprocess for m, t in self.media.items()},
                                        {m: t.token_count() for m, t in self.media.items()}, self.config.system,
                                        trains_text=not getattr(self.route, "path_per_batch", False))
        return self._processor

    @property
    def context_length(self) -> int | None:
        """The LLM's context in tokens (its config's `max_position_embeddings`; None where it has none)."""
        return getattr(self.llm.config, "max_position_embeddings", None)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def num_media_tokens(self, modality: str, item: torch.Tensor) -> int:
        """LLM tokens one preprocessed media item becomes."""
        return self.processor.num_media_tokens(modality, item)

    def set_llm_mode(self, mode: str, lora: dict | None = None) -> None:
        require(mode in self.route.llm_modes,
                f"route '{self.config.route.get('type')}' keeps the LLM {'/'.join(self.route.llm_modes)} (asked: {mode})")
        self.llm = llm_lib.set_llm_mode(self.llm, mode, lora)
        self.config.llm_mode = mode
        self.config.lora = llm_lib.lora_config_dict(self.llm)

    def set_distributed(self, on: bool = True) -> None:
        """Under DDP / FSDP2 every rank must run the same modules every step: a modality absent from a
        rank's batch then runs its tokenizer on a blank item and adds 0 x its output."""
        self.run_all_encoders = on

    def enable_activation_checkpointing(self) -> None:
        require(self.route.recomputable, f"activation checkpointing does not work with the "
                f"'{self.route.settings()['type']}' route (its layers would be recomputed on the wrong path)")
        llm_lib.checkpoint_activations(llm_lib.base_model(self.llm))

    def fsdp_units(self) -> list[tuple[nn.Module, tuple[str, ...]]]:
        """Modules FSDP2 shards on their own (bottom-up), each with the methods the model calls on it. An
        encoder several tokenizers share stays in the root unit: a rank may run it for real items where
        another runs it on a blank one, and its own unit's collectives would then come in another order."""
        units: dict[int, list] = {}
        for tok in self.media.values():
            for module, methods in tok.fsdp_units():
                entry = units.setdefault(id(module), [module, set(), 0])
                entry[1].update(methods)
                entry[2] += 1
        return [(layer, ()) for layer in self.parts.layers] + \
            [(m, tuple(sorted(ms))) for m, ms, uses in units.values() if uses == 1]

    def replace_encoder(self, name: str, encoder: nn.Module) -> None:
        """Put `encoder` in place of the model's encoder `name`, for every tokenizer that uses it."""
        require(name in self.encoders, f"the model has no encoder '{name}' (it has {sorted(self.encoders)})")
        self.encoders[name] = encoder
        for tok in self.media.values():
            for slot, used in tok.slot_names.items():
                if used == name:
                    tok.bind(slot, encoder)
        self._processor = None

    # ---------------------------------------------------------------- media
    def embed_inputs(self, input_ids: torch.Tensor, media: dict[str, list[torch.Tensor]] | None = None,
                     labels: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                     position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with media features written over their placeholder tokens. [B, L, D_lm]
        Call inside `route.path(...)` (forward, embed and generate do). `position_ids` of a packed batch let
        a tokenizer tell the samples of a row apart (`MediaContext.prompt_mean`)."""
        media = media or {}
        embeds = self.route.embed(self.parts, input_ids)                 # [B, L, D_lm]
        text_embeds = embeds
        for m, pid in self.placeholder_id.items():
            mask = input_ids == pid
            items = media.get(m) or []
            if not items:
                require(not mask.any(), f"{int(mask.sum())} <{m}> tokens in input_ids but no {m} items")
                if self.run_all_encoders and m in self.media:
                    blank = self.media[m]([self.media[m].blank().to(embeds.device)])[0]
                    embeds = embeds + 0.0 * blank.sum()
                continue
            require(m in self.media, f"the batch has {m} items but the model has no {m} encoder")
            items = [x.to(embeds.device) for x in items]
            rows, columns = self._item_places(m, mask, items)
            ctx = MediaContext(input_ids, labels, attention_mask, text_embeds, rows,
                               tuple(self.placeholder_id.values()), columns, position_ids)
            feats = torch.cat(self.media[m](items, ctx))                 # [N_tok, D_lm]
            n = int(mask.sum())
            require(n == feats.shape[0], f"{n} <{m}> placeholder tokens but {feats.shape[0]} {m} features")
            embeds = embeds.masked_scatter(mask[..., None], feats.to(embeds.dtype))
        return embeds

    def _item_places(self, modality: str, mask: torch.Tensor, items: list[torch.Tensor]) -> tuple[list[int], list[int]]:
        """(batch row, column of its first placeholder token) of each item: items fill their placeholder runs
        in row-major order."""
        where = mask.nonzero().tolist()                                  # [row, column] of each placeholder token
        rows, columns, pos = [], [], 0
        for it in items:
            r, c = where[min(pos, len(where) - 1)] if where else (0, 0)
            rows.append(r)
            columns.append(c)
            pos += self.num_media_tokens(modality, it)
        return rows, columns

    # ---------------------------------------------------------------- the LLM
    def run_backbone(self, inputs_embeds, attention_mask=None, position_ids=None, past_key_values=None,
                     use_cache=False):
        """The decoder stack (with the route's hooks). Returns (last hidden state [B, L, D], cache)."""
        backbone = self.parts.backbone
        kw = {llm_lib.cache_kwarg(backbone): past_key_values} if past_key_values is not None else {}
        out = backbone(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                       use_cache=use_cache, **kw)
        cache = getattr(out, "cache", None)
        return out.last_hidden_state, cache if cache is not None else getattr(out, "past_key_values", None)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states -> logits: the route's head on the path of the latest forward (or generation),
        with the LLM's logit scaling and soft-capping if it has them (`vlm.llm.finish_logits`)."""
        with self.route.path(self._multimodal):
            logits = self.route.head(self.parts, hidden)
        return llm_lib.finish_logits(llm_lib.base_model(self.llm).config, logits)

    def forward(self, input_ids, attention_mask=None, position_ids=None, media=None, labels=None, **_):
        """Last hidden states [B, L, D_lm] (no loss: that is an objective's, `vlm.train.objectives`).
        `labels` only tell media tokenizers which tokens are answers (text-conditioned zoom ignores them)."""
        self._multimodal = has_media(media)
        with self.route.path(self._multimodal):
            embeds = self.embed_inputs(input_ids, media, labels, attention_mask, position_ids)
            hidden, _ = self.run_backbone(embeds, attention_mask, position_ids)
        return hidden

    def logits(self, input_ids, attention_mask=None, position_ids=None, media=None, labels=None, **_) -> torch.Tensor:
        """Full logits [B, L, V] (evaluation; training never builds them). `labels` as in `forward`: scoring a
        candidate answer, its tokens stay out of a text-conditioned zoom's query, as in training."""
        return self.head(self(input_ids, attention_mask, position_ids, media, labels))

    def embed(self, input_ids, attention_mask=None, media=None, **_) -> torch.Tensor:
        """One vector per row: the final layer's hidden state at the row's last non-pad token,
        L2-normalised (VLM2Vec). Left or right padding. [B, D_lm]"""
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        hidden = self(input_ids, attention_mask=mask, media=media)                  # [B, L, D]
        last = mask.shape[1] - 1 - mask.flip(1).long().argmax(1)                    # [B]
        return F.normalize(hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float(), dim=-1)

    # ---------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, input_ids, media=None, attention_mask=None, max_new_tokens: int = 32, do_sample: bool = False,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, use_cache: bool = True,
                 eos_token_id: int | list[int] | None = None, generator: torch.Generator | None = None, **_):
        """Greedy or sampled continuation of left-padded prompts; returns the new tokens of each row (eos cut)."""
        input_ids = torch.as_tensor(input_ids, device=self.device)
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        mask = torch.ones_like(input_ids) if attention_mask is None else torch.as_tensor(attention_mask).to(input_ids)
        eos = eos_token_id if eos_token_id is not None else [self.tokenizer.convert_tokens_to_ids("<|im_end|>"),
                                                               self.tokenizer.eos_token_id]
        eos = torch.tensor([e for e in ([eos] if isinstance(eos, int) else eos) if e is not None], device=self.device)
        self._multimodal = has_media(media)
        with self.route.path(self._multimodal):
            return self._decode(input_ids, mask, media, eos, max_new_tokens, use_cache,
                                lambda logits: self._pick(logits, do_sample, temperature, top_k, top_p, generator))

    def _decode(self, input_ids, mask, media, eos, max_new_tokens, use_cache, pick):
        embeds = self.embed_inputs(input_ids, media, None, mask)
        B = input_ids.shape[0]
        done = torch.zeros(B, dtype=torch.bool, device=self.device)
        new = []
        cache = None
        step_embeds = embeds
        for _ in range(max_new_tokens):
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            if use_cache:
                from transformers import DynamicCache
                if cache is None:
                    cache = DynamicCache()
                    hidden, cache = self.run_backbone(step_embeds, mask, pos, cache, True)
                else:
                    hidden, cache = self.run_backbone(step_embeds, mask, pos[:, -1:], cache, True)
            else:
                hidden, _ = self.run_backbone(embeds, mask, pos, None, False)
            nxt = pick(self.head(hidden[:, -1]).float())                 # [B]
            nxt = torch.where(done, eos[0], nxt)
            new.append(nxt)
            done |= torch.isin(nxt, eos)
            if done.all():
                break
            step_embeds = self.route.embed(self.parts, nxt[:, None])     # [B, 1, D]
            embeds = torch.cat([embeds, step_embeds], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        out = torch.stack(new, 1).tolist() if new else [[] for _ in range(B)]
        eos_set = set(eos.tolist())
        return [row[:next((i for i, t in enumerate(row) if t in eos_set), len(row))] for row in out]

    @staticmethod
    def _pick(logits, do_sample, temperature, top_k, top_p, generator):
        if not do_sample:
            return logits.argmax(-1)
        logits = logits / max(1.0 if temperature is None else temperature, 1e-5)      # None: the default, as in HF
        if top_k:
            kth = logits.topk(min(top_k, logits.shape[-1])).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if top_p is not None and top_p < 1.0:
            sorted_l, idx = logits.sort(-1, descending=True)
            cum = sorted_l.softmax(-1).cumsum(-1)
            drop = cum - sorted_l.softmax(-1) > top_p                    # keep the smallest set reaching top_p
            logits = logits.scatter(-1, idx, sorted_l.masked_fill(drop, float("-inf")))
        return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]

    def chat(self, text: str, media: dict[str, list] | None = None, **gen) -> str:
        """One user turn -> the model's answer as text. A prompt that with `max_new_tokens` does not fit the
        LLM's context is a one-line error (past it the model answers noise)."""
        p = self.processor.prompt(text, media)
        check_context(len(p.input_ids), self.context_length, int(gen.get("max_new_tokens", 32)))
        ids = self.generate(torch.tensor([p.input_ids]), media=p.media, **gen)[0]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    # ---------------------------------------------------------------- save / load
    def config_dict(self) -> dict:
        self.config.llm = llm_lib.config_dict(self.llm)
        self.config.encoders = {name: e.spec() for name, e in self.encoders.items()}
        self.config.media = {m: t.settings() for m, t in self.media.items()}
        self.config.route = self.route.settings()
        self.config.lora = llm_lib.lora_config_dict(self.llm)
        return {"format_version": FORMAT_VERSION, "architecture": "MultimodalLM", **asdict(self.config)}

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """config.json + model.safetensors + tokenizer, written to a temporary folder then renamed."""
        from safetensors.torch import save_model

        def write(tmp: Path) -> None:
            (tmp / CONFIG_FILE).write_text(json.dumps(self.config_dict(), indent=2))
            save_model(self, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
            self.tokenizer.save_pretrained(tmp)
        return write_folder(path, write)

    def load_weights(self, folder: str | os.PathLike) -> None:
        """A `save_pretrained` folder's weights into this model (strict: the same architecture and modes)."""
        load_safetensors(self, Path(folder) / WEIGHTS_FILE)

    @classmethod
    def from_config(cls, config: ModelConfig, tokenizer) -> "MultimodalLM":
        """The architecture the config describes, with random weights, building nothing from a folder."""
        from encoders import build_encoder_from_spec
        llm = llm_lib.from_config(llm_lib.config_from_dict(config.llm))
        encs = {name: build_encoder_from_spec(spec) for name, spec in config.encoders.items()}
        return cls(config, llm, tokenizer, encs)


def load_error_line(e: BaseException) -> str:
    """One line of a weights-loading error: torch's load_state_dict error is a heading ("Error(s) in loading
    state_dict for ...:") and a line per tensor that does not fit, so the first tensor's line; any other error,
    its own first line."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else short_error(e)


def load_safetensors(module: nn.Module, path: Path) -> None:
    """`path` into `module`, strictly; a corrupt or mismatched file, or weights no trained model has (`check_weights`),
    is a one-line UserError."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_model
    try:
        missing, unexpected = load_model(module, str(path), strict=False)
        with safe_open(str(path), "pt") as f:
            names = f.keys()                            # (the file's header only: no tensor is read)
            integer = {k for k in names if not f.get_slice(k).get_dtype().startswith(("F", "BF"))}
    except (SafetensorError, OSError, RuntimeError) as e:
        raise UserError(f"{path}: cannot load the weights ({load_error_line(e)[:200]})") from None
    require(not missing and not unexpected, f"{path}: weights do not match the model (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})")
    own = module.state_dict()
    check_weights(path, {k: v for k, v in own.items() if k not in integer}, own, integer=integer)


def check_weights(path: Path, tensors: dict[str, torch.Tensor], own: dict[str, torch.Tensor],
                  integer: set[str] = frozenset()) -> None:
    """Weights that load but are no trained model's: a tensor the model holds in floating point stored as integers
    (cast, an LM head of int64 zeros answered nothing) or values that are NaN / Inf (a diverged run's: every answer
    empty, sampling a traceback). One line naming the first tensor."""
    ints = sorted(k for k in (*integer, *(k for k, t in tensors.items() if not t.is_floating_point()))
                  if k in own and own[k].is_floating_point())
    require(not ints, f"{path}: tensor {ints[0] if ints else ''} is stored as integers; the model holds it in "
                      f"floating point (not this model's weights)")
    bad = next((k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
    require(bad is None, f"{path}: tensor {bad} holds NaN or Inf values (a diverged or damaged save); not loaded")
