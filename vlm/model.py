"""MultimodalLM: encoders -> connectors -> LLM, with the loss inside and KV-cache generation.

    model = vlm.families.build("llava", "tiny")
    x = model.processor(sample, media={"image": [img]})           # input_ids with expanded placeholders
    out = model(**collate([x]))                                   # out["loss"]: mean over assistant tokens
    ids = model.generate(**model.processor.prompt("<image>\\nColour?", {"image": [img]}).batch())

A media item occupies exactly as many placeholder tokens in `input_ids` as it has features after
its connector ([Contract] of `vlm.data.template`); `embed` writes the features over them in order,
per modality, so any number of items of any modality may come in any order within a batch.
Families change the parts through the hooks `encode_modality`, `run_backbone` and `head`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vlm import llm as llm_lib
from vlm.connectors import build_connector
from vlm.data.template import IGNORE
from vlm.errors import UserError, require
from vlm.llm import PLACEHOLDERS
from vlm.processor import Processor

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
FORMAT_VERSION = 1


@dataclass
class MediaContext:
    """What a connector may look at besides the media: the batch's tokens and which row each item is in."""
    input_ids: torch.Tensor                     # [B, L]
    labels: torch.Tensor | None                 # [B, L]; -100 off the answers (None when generating)
    attention_mask: torch.Tensor | None         # [B, L]
    text_embeds: torch.Tensor                   # [B, L, D_lm] token embeddings before media are written
    rows: list[int]                             # batch row of each item

    def prompt_mean(self, row: int, placeholder_ids) -> torch.Tensor:
        """Mean embedding of a row's prompt tokens (not media, not padding, not the answers). [D_lm]"""
        keep = ~torch.isin(self.input_ids[row], torch.tensor(list(placeholder_ids), device=self.input_ids.device))
        if self.attention_mask is not None:
            keep &= self.attention_mask[row].bool()
        if self.labels is not None:
            keep &= self.labels[row] == IGNORE
        return self.text_embeds[row][keep].mean(0)


@dataclass
class ModelConfig:
    family: str
    llm: dict                                   # the LLM's HF config (to_dict), rebuilt without its folder
    encoders: dict[str, dict]                   # modality -> encoder spec (encoders.build_encoder_from_spec)
    connectors: dict[str, dict]                 # modality -> connector settings (type, pool ...)
    llm_mode: str = "frozen"
    lora: dict | None = None                    # peft LoRA settings when the LLM is LoRA-wrapped
    system: str | None = None                   # default system prompt
    extra: dict = field(default_factory=dict)   # family-specific settings

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


class MultimodalLM(nn.Module):
    CE_CHUNK = 2**28  # logits elements (1 GiB in fp32) above which the loss is computed in chunks
    def __init__(self, config: ModelConfig, llm, tokenizer, encoders: dict[str, nn.Module]):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        llm_lib.add_special_tokens(tokenizer)
        llm_lib.resize_embeddings(llm, len(tokenizer))
        if config.lora:
            llm = llm_lib.set_llm_mode(llm, "lora", config.lora)
        self.llm = llm_lib.set_llm_mode(llm, config.llm_mode, config.lora)
        self.encoders = nn.ModuleDict(encoders)
        d_lm = llm_lib.base_model(self.llm).config.get_text_config().hidden_size
        self.connectors = nn.ModuleDict({
            m: build_connector(config.connectors.get(m, {}), enc.output_dim, d_lm) for m, enc in encoders.items()})
        vocab = tokenizer.get_vocab()
        self.placeholder_id = {m: vocab[p] for m, p in PLACEHOLDERS.items()}
        # Under DDP/FSDP every rank must run the same modules every step: with this on, a modality
        # absent from the batch runs its encoder on a blank item and adds 0 x its output.
        self.run_all_encoders = False
        self._processor: Processor | None = None

    # ---------------------------------------------------------------- parts
    @property
    def parts(self) -> llm_lib.LLMParts:
        return llm_lib.llm_parts(self.llm)

    @property
    def processor(self) -> Processor:
        if self._processor is None:
            self._processor = Processor(self.tokenizer, {m: self.media_preprocess(m) for m in self.encoders},
                                        self.num_media_tokens, self.config.system)
        return self._processor

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def num_media_tokens(self, modality: str, item: torch.Tensor) -> int:
        """LLM tokens one preprocessed media item becomes."""
        return self.connectors[modality].num_tokens(self.encoders[modality].num_tokens(item))

    def set_llm_mode(self, mode: str, lora: dict | None = None) -> None:
        self.llm = llm_lib.set_llm_mode(self.llm, mode, lora)
        self.config.llm_mode = mode
        self.config.lora = llm_lib.lora_config_dict(self.llm)

    # ---------------------------------------------------------------- media
    def encode_modality(self, modality: str, items: list[torch.Tensor], context: "MediaContext | None" = None
                        ) -> list[torch.Tensor]:
        """Hook: preprocessed items -> one [T_i, D_lm] tensor per item. `context` tells which row each item
        sits in and that row's prompt, for connectors that look at the text (text-conditioned zoom)."""
        feats = self.encoders[modality].encode(items)                    # list of [T_i, D_enc]
        conn = self.connectors[modality]
        return [conn(f[None])[0] for f in feats] if len({f.shape for f in feats}) > 1 else \
            list(conn(torch.stack(feats)).unbind(0))                     # [N, T, D_lm]

    def _blank_item(self, modality: str) -> torch.Tensor:
        return blank_item(self.encoders[modality].preprocess)

    def media_preprocess(self, modality: str):
        """Hook: raw item -> preprocessed tensor (the encoder's own preprocess unless a family zooms or tiles)."""
        return self.encoders[modality].preprocess

    def embed(self, input_ids: torch.Tensor, media: dict[str, list[torch.Tensor]] | None = None,
              labels: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with media features written over their placeholder tokens. [B, L, D_lm]"""
        media = media or {}
        embeds = self.embed_tokens(input_ids, any(media.values()))       # [B, L, D_lm]
        text_embeds = embeds
        for m, pid in self.placeholder_id.items():
            mask = input_ids == pid
            items = media.get(m) or []
            if not items:
                require(not mask.any(), f"{int(mask.sum())} <{m}> tokens in input_ids but no {m} items")
                if self.run_all_encoders and m in self.encoders:
                    blank = self.encode_modality(m, [self._blank_item(m).to(embeds.device)])[0]
                    embeds = embeds + 0.0 * blank.sum()
                continue
            require(m in self.encoders, f"the batch has {m} items but the model has no {m} encoder")
            items = [x.to(embeds.device) for x in items]
            ctx = MediaContext(input_ids, labels, attention_mask, text_embeds, self._item_rows(m, mask, items))
            feats = torch.cat(self.encode_modality(m, items, ctx))      # [N_tok, D_lm]
            n = int(mask.sum())
            require(n == feats.shape[0], f"{n} <{m}> placeholder tokens but {feats.shape[0]} {m} features")
            embeds = embeds.masked_scatter(mask[..., None], feats.to(embeds.dtype))
        return embeds

    def _item_rows(self, modality: str, mask: torch.Tensor, items: list[torch.Tensor]) -> list[int]:
        """The batch row of each item: items fill their placeholder runs in row-major order."""
        rows = mask.nonzero()[:, 0].tolist()                             # row of each placeholder token
        out, pos = [], 0
        for it in items:
            out.append(rows[min(pos, len(rows) - 1)] if rows else 0)
            pos += self.num_media_tokens(modality, it)
        return out

    # ---------------------------------------------------------------- LLM hooks
    def embed_tokens(self, input_ids: torch.Tensor, has_media: bool = True) -> torch.Tensor:
        """Hook: token ids -> embeddings. [B, L] -> [B, L, D_lm]"""
        return self.parts.embed_tokens(input_ids)

    def run_backbone(self, inputs_embeds, attention_mask=None, position_ids=None, past_key_values=None,
                     use_cache=False, has_media=True):
        """Hook: the decoder stack. Returns (last hidden state [B, L, D], cache)."""
        backbone = self.parts.backbone
        kw = {llm_lib.cache_kwarg(backbone): past_key_values} if past_key_values is not None else {}
        out = backbone(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                       use_cache=use_cache, **kw)
        cache = getattr(out, "cache", None)
        return out.last_hidden_state, cache if cache is not None else getattr(out, "past_key_values", None)

    def head(self, hidden: torch.Tensor, has_media: bool = True) -> torch.Tensor:
        """Hook: hidden states -> logits."""
        logits = self.parts.lm_head(hidden)
        cap = getattr(llm_lib.base_model(self.llm).config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    # ---------------------------------------------------------------- training
    def forward(self, input_ids, labels=None, attention_mask=None, position_ids=None, media=None,
                reduction: str = "mean", return_logits: bool = False, **_):
        """Loss on the label tokens (assistant turns). reduction: mean | sum | none (per position [B, L-1])."""
        has_media = any(media.values()) if media else False
        embeds = self.embed(input_ids, media, labels, attention_mask)
        hidden, _ = self.run_backbone(embeds, attention_mask, position_ids, has_media=has_media)
        out = {}
        if return_logits or labels is None:
            out["logits"] = self.head(hidden, has_media)
        if labels is not None:
            target = labels[:, 1:]                                       # [B, L-1]
            sel = target != IGNORE
            # Only label positions go through the LM head: no [B, L, V] logits tensor in training.
            tok_loss = self.token_losses(hidden[:, :-1][sel], target[sel], has_media)  # [N]
            n = sel.sum()
            out["n_tokens"] = n
            if reduction == "none":
                full = torch.zeros(target.shape, dtype=tok_loss.dtype, device=tok_loss.device)
                out["loss"] = full.masked_scatter(sel, tok_loss)
            elif reduction == "sum":
                out["loss"] = tok_loss.sum()
            else:
                out["loss"] = tok_loss.sum() / n.clamp(min=1)
        return out

    def token_losses(self, hidden: torch.Tensor, target: torch.Tensor, has_media: bool = True) -> torch.Tensor:
        """Cross-entropy per token of hidden [N, D] against target [N]. Past CE_CHUNK logits elements the
        head + loss run in recomputed chunks, so the fp32 [N, V] logits never exist at once (a 152k
        vocabulary at 8k label tokens would be 5 GB, plus its gradient)."""
        def ce(h, t):
            return F.cross_entropy(self.head(h, has_media).float(), t, reduction="none")
        vocab = self.parts.lm_head.weight.shape[0]
        if hidden.shape[0] * vocab <= self.CE_CHUNK or not torch.is_grad_enabled():
            return ce(hidden, target)
        from torch.utils.checkpoint import checkpoint
        step = max(1, self.CE_CHUNK // vocab)
        return torch.cat([checkpoint(ce, hidden[i:i + step], target[i:i + step], use_reentrant=False)
                          for i in range(0, hidden.shape[0], step)])

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
        has_media = any(media.values()) if media else False
        embeds = self.embed(input_ids, media, None, mask)
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
                    hidden, cache = self.run_backbone(step_embeds, mask, pos, cache, True, has_media)
                else:
                    hidden, cache = self.run_backbone(step_embeds, mask, pos[:, -1:], cache, True, has_media)
            else:
                hidden, _ = self.run_backbone(embeds, mask, pos, None, False, has_media)
            logits = self.head(hidden[:, -1], has_media).float()        # [B, V]
            nxt = self._pick(logits, do_sample, temperature, top_k, top_p, generator)
            nxt = torch.where(done, eos[0], nxt)
            new.append(nxt)
            done |= torch.isin(nxt, eos)
            if done.all():
                break
            step_embeds = self.embed_tokens(nxt[:, None], has_media)     # [B, 1, D]
            embeds = torch.cat([embeds, step_embeds], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        out = torch.stack(new, 1).tolist() if new else [[] for _ in range(B)]
        eos_set = set(eos.tolist())
        return [row[:next((i for i, t in enumerate(row) if t in eos_set), len(row))] for row in out]

    @staticmethod
    def _pick(logits, do_sample, temperature, top_k, top_p, generator):
        if not do_sample:
            return logits.argmax(-1)
        logits = logits / max(temperature, 1e-5)
        if top_k:
            kth = logits.topk(min(top_k, logits.shape[-1])).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if top_p < 1.0:
            sorted_l, idx = logits.sort(-1, descending=True)
            cum = sorted_l.softmax(-1).cumsum(-1)
            drop = cum - sorted_l.softmax(-1) > top_p                    # keep the smallest set reaching top_p
            logits = logits.scatter(-1, idx, sorted_l.masked_fill(drop, float("-inf")))
        return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]

    def chat(self, text: str, media: dict[str, list] | None = None, **gen) -> str:
        """One user turn -> the model's answer as text."""
        p = self.processor.prompt(text, media)
        ids = self.generate(torch.tensor([p.input_ids]), media=p.media, **gen)[0]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    # ---------------------------------------------------------------- save / load
    def config_dict(self) -> dict:
        self.config.llm = llm_lib.config_dict(self.llm)
        self.config.encoders = {m: e.spec() for m, e in self.encoders.items()}
        self.config.lora = llm_lib.lora_config_dict(self.llm)
        return {"format_version": FORMAT_VERSION, **asdict(self.config)}

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """config.json + model.safetensors + tokenizer, written to a temporary folder then renamed."""
        from safetensors.torch import save_model
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            (tmp / CONFIG_FILE).write_text(json.dumps(self.config_dict(), indent=2))
            save_model(self, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
            self.tokenizer.save_pretrained(tmp)
            replace_dir(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return path

    @classmethod
    def from_config(cls, config: ModelConfig, tokenizer) -> "MultimodalLM":
        """The architecture the config describes, with random weights, building nothing from a folder."""
        from encoders import build_encoder_from_spec
        llm = llm_lib.from_config(llm_lib.config_from_dict(config.llm))
        encs = {m: build_encoder_from_spec(s) for m, s in config.encoders.items()}
        return cls(config, llm, tokenizer, encs)


def blank_item(pre) -> torch.Tensor:
    """A preprocessed all-black image / silent second / black clip for any encoder's preprocess."""
    from PIL import Image
    if hasattr(pre, "num_frames"):
        return pre([Image.new("RGB", (64, 64))] * pre.num_frames)
    if hasattr(pre, "sample_rate"):
        return pre(torch.zeros(pre.sample_rate), pre.sample_rate)
    return pre(Image.new("RGB", (64, 64)))


def replace_dir(src: Path, dst: Path) -> None:
    """Put folder src at dst atomically enough: dst is either the old or the new folder, never a mix."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> MultimodalLM:
    """Restore a checkpoint folder saved by `save_pretrained`, with no recipe; safetensors only."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model
    from transformers import AutoTokenizer
    from vlm.families import family_class
    p = Path(path)
    require(p.is_dir(), f"checkpoint not found: {p}")
    require((p / CONFIG_FILE).exists(), f"{p}: no {CONFIG_FILE} (not a vlm checkpoint folder)")
    require((p / WEIGHTS_FILE).exists(), f"{p}: no {WEIGHTS_FILE}")
    try:
        raw = json.loads((p / CONFIG_FILE).read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{p / CONFIG_FILE}: invalid JSON ({e})") from None
    require(isinstance(raw, dict) and "family" in raw and "llm" in raw,
            f"{p / CONFIG_FILE}: not a vlm checkpoint config (needs 'family' and 'llm')")
    config = ModelConfig.from_dict(raw)
    tok = AutoTokenizer.from_pretrained(p, local_files_only=True)
    model = family_class(config.family).from_config(config, tok)
    try:
        missing, unexpected = load_model(model, str(p / WEIGHTS_FILE), strict=False)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise UserError(f"{p / WEIGHTS_FILE}: corrupt or mismatched weights ({str(e).splitlines()[0]})") from None
    require(not missing and not unexpected,
            f"{p / WEIGHTS_FILE}: weights do not match config.json (missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    return model.to(device).eval()
