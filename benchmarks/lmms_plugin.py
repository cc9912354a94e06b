"""lmms-eval plugin: our checkpoints as an lmms-eval 0.7.3 model, registered by entry point.

    lmms-eval --model vlm --model_args pretrained=runs/llava-tiny/final \\
        --tasks synthetic_world_vqa --include_path benchmarks/lmms_tasks --output_path runs/lmms

Registration (pyproject.toml): lmms-eval builds its model registry from the entry-point group
`lmms_eval.models`; each entry point loads to a `ModelManifest` (or an iterable of them, or a callable
returning one):

    [project.entry-points."lmms_eval.models"]
    vlm = "benchmarks.lmms_plugin:MANIFEST"

`generate_until` and `loglikelihood` run through `benchmarks.models.VLMModel`, the code path of
`vlm eval`, so both harnesses give the same answers on the same split. [Contract] lmms-eval 0.7.3's
`multiple_choice` picks `argmin` of the first value `loglikelihood` returns (its built-in models return
a loss), so we return the negative log-likelihood of the continuation (summed over its tokens and the
end of turn). (lmms-eval 0.7.3's own `loglikelihood` output type expects a (value, is_greedy) pair
where `multiple_choice` expects the value alone, and fails in its evaluator: not supported.) [Contract] its evaluator passes every response through
`unwrap_generation_output`, which turns a `(float, bool)` tuple into its string; a `GenerationResult`
hands its `text` through untouched, so each pair travels inside one.

A request whose image does not decode (a truncated file behind a PIL image), whose media the model's
preprocessing refuses (an audio clip too short for its log-mel) or whose prompt is past the model's context
is answered "" in generation (scored wrong, counted in `bad_images`, logged with its task and doc id; the
other requests of its batch are answered as alone) and is a one-line error in a likelihood (no honest score
without the image).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lmms_eval.api.instance import GenerationResult, Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from loguru import logger as eval_logger
from PIL import Image

from benchmarks.models import VLMModel, generate_each
from vlm.errors import UserError
from vlm.modalities import MediaError, to_rgb, upright

MANIFEST = ModelManifest(model_id="vlm", simple_class_path="benchmarks.lmms_plugin.VLMLmms", aliases=("vlm_suite",))


class BadImage(Exception):
    """A request's image does not decode (generate_until answers it "" and counts it)."""


class VLMLmms(lmms):
    """A `vlm.load` checkpoint in lmms-eval: images from `doc_to_visual`, one user turn per request."""

    is_simple = True

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> VLMLmms:
        """lmms-eval passes its own --batch_size (default 1) and --device beside `model_args`: a key in both was
        a TypeError ("multiple values"); `model_args` wins, as it is the more specific."""
        from lmms_eval import utils
        args = utils.simple_parse_args_string(arg_string)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in args}
        return cls(**args, **extra)

    def __init__(self, pretrained: str, device: str | None = "cpu", batch_size: int | str = 1,
                 max_new_tokens: int | None = None, max_batch_size: int | None = None, **unknown: Any) -> None:
        super().__init__()
        if unknown:      # a misspelt key (devcie=cuda) or one we do not have (dtype) ran silently as the default
            name = min(unknown)
            why = (" (evaluation runs in float32, as vlm eval does)" if name in ("dtype", "torch_dtype")
                   else "")
            raise UserError(f"vlm: unknown model_args key {name!r}{why}; the keys are pretrained, device, "
                            f"batch_size, max_new_tokens")
        size = str(batch_size).strip()
        if size.startswith("auto"):                          # lmms-eval's `auto[:N]`: one request at a time
            self.batch_size = 1
        elif size.isdigit() and int(size) > 0:
            self.batch_size = int(size)
        else:
            raise UserError(f"vlm: batch_size must be a positive integer (or auto), got {batch_size!r}")
        # given in model_args it wins over the tasks' generation_kwargs (every shipped task sets one: it was
        # ignored, a review); otherwise a task's, or 32 for a task without one
        self.max_new_given = max_new_tokens is not None
        self.max_new_tokens = self._max_new(32 if max_new_tokens is None else max_new_tokens)
        self.bad_images = 0                                  # requests answered "" because an image did not decode
        self.model = VLMModel(str(pretrained), device=device or "cpu")      # (after the settings: said at once)
        self.model.load()                                    # now: a bad checkpoint fails before any task runs

    @staticmethod
    def _max_new(value: Any) -> int:
        try:
            n = int(value)
        except (TypeError, ValueError):
            n = -1
        if n < 0 or isinstance(value, bool):
            raise UserError(f"vlm: max_new_tokens must be a count >= 0, got {value!r}")
        return n

    # ------------------------------------------------------------------ helpers
    def _doc(self, task: str, split: str, doc_id: int) -> dict:
        return self.task_dict[task][split][doc_id]

    def _media(self, ctx: str, visuals: list | None) -> tuple[str, dict[str, list]]:
        """The request's media by modality, from what lmms-eval tasks hand models: PIL images, audio as
        {"array", "sampling_rate"} (HF `Audio`; an optional "modality" says audio or music), videos as
        file paths. An audio item without "modality" takes the kind of its placeholder in the text, else
        the one audio-file modality the model has (audio before music). Placeholders go before the text,
        in item order, only when it has none."""
        from vlm.modalities import MODALITIES, placeholder_modalities
        items = [v for v in (visuals or []) if v is not None]
        if not items:
            return ctx, {}
        wanted = [m for m in placeholder_modalities(ctx) if MODALITIES[m].files == "audio"]
        have = set(self.model.modalities)
        default_audio = next((m for m in ("audio", "music") if m in have), "audio")
        kinds, media = [], {}
        for item in items:
            if isinstance(item, dict) and "array" in item:
                kind = item.get("modality") or (wanted.pop(0) if wanted else default_audio)
                wave = torch.as_tensor(np.asarray(item["array"], dtype=np.float32))
                raw: Any = (wave.unsqueeze(0) if wave.dim() == 1 else wave, int(item["sampling_rate"]))
            elif isinstance(item, (str, Path)):
                kind, raw = "video", str(item)
            elif isinstance(item, Image.Image):
                try:       # decoded here (it may open lazily); then as decoding bytes does it: EXIF orientation
                    item.load()                                  # applied, 16-bit / float scaled to 8 bits
                    kind, raw = "image", to_rgb(upright(item))
                except (OSError, ValueError, SyntaxError, MediaError) as e:   # truncated / corrupt file behind it
                    raise BadImage(f"{type(e).__name__}: {e}") from None
            else:
                raise UserError(f"vlm: cannot read a {type(item).__name__} from doc_to_visual "
                                "(expected a PIL image, an audio dict or a video path)")
            if kind not in have:
                reads = {"audio": "audio", "music": "music", "video": "video", "trailer": "video"}  # task -> encoder
                tasks = [f"synthetic_world_av_vqa_{t}" for t, m in reads.items() if m in have]
                hint = (f"; the pooled synthetic_world_av_* tasks need every one: run the per-modality tasks "
                        f"({', '.join(tasks)}, and their _captions_ twins)" if tasks and kind != "image" else "")
                raise UserError(f"vlm: this model has no {kind} encoder (it reads {', '.join(sorted(have))}){hint}")
            kinds.append(kind)
            media.setdefault(kind, []).append(raw)
        if not placeholder_modalities(ctx):
            ctx = "".join(MODALITIES[k].placeholder + "\n" for k in kinds) + ctx
        return ctx, media

    @staticmethod
    def _visuals(doc_to_visual, doc) -> list:
        """The task's media of a doc; a file its `doc_to_visual` cannot decode (ours decode the shard's bytes
        there) is a BadImage, skipped and counted like one that fails here (it ended the whole run)."""
        if not doc_to_visual:
            return []
        try:
            return doc_to_visual(doc)
        except (MediaError, OSError, SyntaxError) as e:
            raise BadImage(f"{type(e).__name__}: {e}") from None

    @staticmethod
    def _cut(text: str, until: list[str]) -> str:
        for u in until:
            if u and u in text:
                text = text[:text.index(u)]
        return text

    # ------------------------------------------------------------------ lmms API
    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Greedy (or sampled, per gen_kwargs) answers, in request order; batches share gen_kwargs."""
        from tqdm.auto import tqdm
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(json.dumps(r.args[1], sort_keys=True, default=str), []).append(i)
        pbar = tqdm(total=len(requests), disable=self.rank != 0, desc="vlm generate")
        for idx in groups.values():
            gen = dict(requests[idx[0]].args[1])
            until = gen.pop("until", [])
            until = [until] if isinstance(until, str) else list(until or [])
            task_max = self._max_new(gen.pop("max_new_tokens", self.max_new_tokens))
            max_new = self.max_new_tokens if self.max_new_given else task_max
            for j in range(0, len(idx), self.batch_size):
                batch, chunk, prompts = idx[j:j + self.batch_size], [], []
                for i in batch:
                    ctx, _, doc_to_visual, doc_id, task, split = requests[i].args
                    try:
                        prompts.append(self._media(ctx, self._visuals(doc_to_visual, self._doc(task, split, doc_id))))
                    except BadImage as e:             # skipped: answered "" (scored wrong), counted, said
                        self.bad_images += 1
                        eval_logger.warning(f"vlm: {task} doc {doc_id}: its image does not decode ({e}); answered "
                                            f"'' ({self.bad_images} such request(s) so far)")
                        continue
                    chunk.append(i)
                texts = generate_each(self.model, prompts, max_new, len(chunk), **gen) if chunk else []
                for i, t in zip(chunk, texts):
                    if isinstance(t, Exception):      # media its preprocessing refuses, a prompt past the context:
                        self.bad_images += 1          # as an image that does not decode (it ended the whole run)
                        _, _, _, doc_id, task, _ = requests[i].args
                        eval_logger.warning(f"vlm: {task} doc {doc_id}: cannot be answered ({t}); answered "
                                            f"'' ({self.bad_images} such request(s) so far)")
                        continue
                    out[i] = self._cut(t, until)
                pbar.update(len(batch))
        pbar.close()
        return [o or "" for o in out]

    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        """(negative log-likelihood of the continuation, whether greedy decoding gives it) per request;
        the continuation is the assistant's answer, leading whitespace (lmms' target delimiter) dropped."""
        reqs = []
        for r in requests:
            ctx, cont, doc_to_visual, doc_id, task, split = r.args
            doc = self._doc(task, split, doc_id)
            cont = cont if isinstance(cont, str) else cont(doc)
            try:
                ctx, media = self._media(ctx, self._visuals(doc_to_visual, doc))
            except BadImage as e:                     # no honest likelihood without the image: one line
                raise UserError(f"vlm: {task} doc {doc_id}: its image does not decode ({e})") from None
            reqs.append((ctx, media, str(cont).lstrip()))
        try:
            res = self.model.loglikelihood(reqs, batch_size=self.batch_size)
        except UserError as e:                        # (a prompt past the context: no honest score either)
            tasks = sorted({str(r.args[4]) for r in requests})
            raise UserError(f"vlm: loglikelihood requests of {', '.join(tasks)}: {e}") from None
        return [GenerationResult(text=(-lp, greedy)) for lp, greedy in res]    # type: ignore[arg-type]

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("vlm: multi-round generation is not supported; use generate_until tasks")
