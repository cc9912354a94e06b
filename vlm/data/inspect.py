"""`vlm data inspect SHARDS...`: what is in a set of shards, and what is wrong with it.

    vlm data inspect data/train-{000000..000009}.tar
    vlm data inspect data/train/ --model runs/llava-tiny/final --samples 5 --json

Counts per extension and sample layout (`jpg+json`), modality, source and task; a token-length
histogram (the shipped tiny tokenizer with every placeholder counted as ONE token, or a checkpoint's
processor with `--model`, which counts media tokens exactly and runs the media preprocessing); a few
decoded samples; and the samples that would be skipped, by reason (the same checks the training
pipeline makes). Contrastive pair samples (json `query` / `positive` / `negatives`, the `pairs` format) are
read as that format reads them: each side a prompt with its instruction, the length the longest side's.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
from collections import Counter
from typing import Any

from vlm.data.decode import RawSample, SampleError, decode_sample, read_meta
from vlm.data.filters import check_for_model, sample_modalities
from vlm.data.reader import DataStats, FileCache, expand_shards, read_fields, scan_shard
from vlm.data.writer import PAIR_SHAPE, pair_sides
from vlm.modalities import MODALITIES

BINS = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]


def _ext(field: str) -> str:
    return re.sub(r"^\d+\.", "", field)  # 0.jpg -> jpg


def _describe_media(raw: RawSample) -> list[str]:
    out = []
    for m, items in raw.media.items():
        for x in items:
            if m == "image":
                out.append(f"image {x.size[0]}x{x.size[1]}")
            elif MODALITIES[m].files == "audio":
                wave, sr = x
                out.append(f"{m} {wave.shape[1] / sr:.2f} s, {sr} Hz, {wave.shape[0]} ch")
            else:
                out.append(f"{m} {len(x)} bytes")
    return out


def _check_video(raw: RawSample) -> None:
    """Without a model, at least make sure decord opens the videos (the model would decode them)."""
    import decord

    for data in raw.media.get("video", []):
        try:
            if len(decord.VideoReader(io.BytesIO(data), num_threads=1)) == 0:
                raise SampleError("bad_video", "video has no frames")
        except SampleError:
            raise
        except Exception as e:
            raise SampleError("bad_video", f"cannot decode video: {str(e).splitlines()[0]}") from None


def _pair_sides(fields: dict[str, bytes]) -> list[tuple[str, str]] | None:
    """(side, prompt) of a pair sample's query, positive and negatives, each side's instruction put in as the
    `pairs` format puts it; None when the sample is not a pair (it has conversations, or no query)."""
    from vlm.data.decode import read_meta
    from vlm.data.formats import with_instruction
    meta = read_meta(fields)
    if "conversations" in meta or "query" not in meta:
        return None
    sides, why = pair_sides(meta)
    if why is not None:
        raise SampleError("bad_pair", f"{why} {PAIR_SHAPE}")
    return [("negative" if name.startswith("negatives.") else name, with_instruction(s["text"], s.get("instruction")))
            for name, s in sides]


def _inspect_pair(ref, fields: dict[str, bytes], sides: list[tuple[str, str]], processor, template
                  ) -> tuple[RawSample, int]:
    """A pair sample decoded as training decodes it; its length is its longest side (tokens)."""
    from vlm.data.decode import decode_media, read_meta
    from vlm.data.formats import PairFormat
    from vlm.modalities import placeholder_modalities
    orders = [placeholder_modalities(text) for _, text in sides]
    if processor is not None:
        pair, _ = PairFormat(processor, max_len=10**9, negatives=len(sides) - 2).make(ref.key, fields, ref.shard)
        n_tokens = len(pair)
        media = decode_media([m for o in orders for m in o], fields)
    else:
        media = decode_media([m for o in orders for m in o], fields)
        n_tokens = max(len(template.tokenize([{"role": "user", "text": text}], [1] * len(order)).input_ids)
                       for (_, text), order in zip(sides, orders))
    turns = [{"role": name, "text": text} for name, text in sides]
    return RawSample(ref.key, ref.shard, turns, media, meta=read_meta(fields), caption=False), n_tokens


def histogram(lengths: list[int]) -> list[tuple[int, int, int]]:
    """(low, high, count) bins by powers of two, empty bins left out."""
    rows, lo = [], 0
    for hi in BINS + [max(lengths, default=0) + 1]:
        n = sum(lo < x <= hi for x in lengths)
        if n:
            rows.append((lo + 1, hi, n))
        lo = hi
        if hi >= max(lengths, default=0):
            break
    return rows


def clip_format(processor):
    """The `clips` format as masked_prediction reads a music encoder's data, with its default settings."""
    from vlm.data.formats import FORMATS
    modality = "music" if "music" in processor.preprocess else next(iter(processor.preprocess))
    return FORMATS.get("clips")(processor, 0, modality=modality)


def inspect_shards(shards: list[str], processor=None, samples: int = 3, limit: int | None = None) -> dict[str, Any]:
    """Scan the shards (one pass, in order) -> a JSON-able report."""
    from vlm.data.pipeline import SampleProcessor

    stats = DataStats()
    counts = {k: Counter() for k in ("extensions", "layouts", "modalities", "sources", "tasks")}
    lengths: list[int] = []
    examples: list[dict] = []
    clips = None
    if processor is not None and processor.tokenizer is None:     # an audio encoder (mert): read as it trains
        clips = clip_format(processor)
    elif processor is not None:
        sp = SampleProcessor(processor, max_len=10**9)
    else:
        from vlm.data.template import ChatTemplate
        from vlm.llm import add_special_tokens, tiny_tokenizer
        tok = tiny_tokenizer()
        add_special_tokens(tok)
        template = ChatTemplate(tok)
    files = FileCache()
    try:
        for shard in shards:
            for ref in scan_shard(shard):
                if limit is not None and stats.samples >= limit:
                    break
                stats.samples += 1
                try:
                    if ref.error:
                        raise SampleError(ref.error, ref.message)
                    fields = read_fields(ref, files)
                    counts["extensions"].update(_ext(f) for f in fields)
                    counts["layouts"]["+".join(sorted({_ext(f) for f in fields}))] += 1
                    if processor is not None and clips is None:    # as a training stage drops it, from the
                        check_for_model(sample_modalities(read_meta(fields), list(fields)),    # json, before any
                                        set(processor.preprocess), getattr(processor, "trains_text", True))  # decoding
                    pair = None if clips else _pair_sides(fields)
                    if clips is not None:              # the `clips` batch format: 75 Hz frames of the crop
                        clip, converted = clips.make(ref.key, fields, ref.shard)
                        stats.converted.update(converted)
                        n_tokens = clip.length * 75 // clips.sample_rate
                        raw = RawSample(ref.key, ref.shard, [], {clips.modality: [(clip.wave[None, :clip.length],
                                                                                   clips.sample_rate)]},
                                        read_meta(fields))
                    elif pair is not None:             # a contrastive pair sample (the `pairs` batch format)
                        raw, n_tokens = _inspect_pair(ref, fields, pair, processor, None if processor else template)
                    elif processor is not None:
                        raw = decode_sample(ref.key, fields, ref.shard)
                        p, converted = sp.process(raw)
                        stats.converted.update(converted)
                        n_tokens = len(p)
                    else:
                        raw = decode_sample(ref.key, fields, ref.shard)
                        _check_video(raw)
                        n_media = sum(len(v) for v in raw.media.values())
                        n_tokens = len(template.tokenize(raw.turns, [1] * n_media).input_ids)
                except SampleError as e:
                    stats.skip(e.reason, ref.shard, f"{ref.key}: {e}" if ref.key else str(e))
                    continue
                counts["modalities"].update(raw.media.keys() or ["text"])
                counts["sources"][str(raw.meta.get("source", "-"))] += 1
                counts["tasks"][str(raw.meta.get("task", "caption" if raw.caption else "-"))] += 1
                lengths.append(n_tokens)
                if len(examples) < samples:
                    examples.append({"key": ref.key, "shard": ref.shard, "media": _describe_media(raw),
                                     "tokens": n_tokens, "turns": [f"{t['role']}: {t['text']}" for t in raw.turns]})
    finally:
        files.close()
    lengths.sort()
    pct = (lambda q: lengths[min(len(lengths) - 1, int(q * len(lengths)))]) if lengths else (lambda q: 0)
    return {"shards": len(shards), "samples": stats.samples, "ok": len(lengths),
            **{k: dict(v.most_common()) for k, v in counts.items()},
            "tokens": {"counted_with": (f"75 Hz frames of the model's clips (masked_prediction's default "
                                        f"{clips.clip / clips.sample_rate:g} s crops, at least "
                                        f"{clips.min / clips.sample_rate:g} s)" if clips else
                                        "model" if processor is not None else "tiny tokenizer, 1 token per placeholder"),
                       "min": lengths[0] if lengths else 0, "p50": pct(0.5), "p95": pct(0.95),
                       "max": lengths[-1] if lengths else 0,
                       "mean": round(sum(lengths) / len(lengths), 1) if lengths else 0.0,
                       "histogram": [list(r) for r in histogram(lengths)]},
            "examples": examples, "errors": stats.to_dict()}


def format_report(r: dict[str, Any]) -> str:
    lines = [(f"{r['samples']} samples in {r['shards']} shard(s); {r['ok']} usable, "
              f"{r['samples'] - r['ok']} would be skipped")]
    for k in ("extensions", "layouts", "modalities", "sources", "tasks"):
        lines.append(f"{k}: " + ", ".join(f"{name} {n}" for name, n in r[k].items()))
    t = r["tokens"]
    lines.append(f"tokens ({t['counted_with']}): min {t['min']}, p50 {t['p50']}, p95 {t['p95']}, "
                 f"max {t['max']}, mean {t['mean']}")
    top = max((n for _, _, n in t["histogram"]), default=1)
    for lo, hi, n in t["histogram"]:
        lines.append(f"  {lo:>6}-{hi:<6} {n:>7}  {'#' * max(1, round(40 * n / top))}")
    errors = r["errors"]
    if errors["skipped"]:
        lines.append("skipped:")
        for reason, n in sorted(errors["skipped"].items(), key=lambda x: -x[1]):
            lines.append(f"  {reason}: {n}  e.g. {errors['first'].get(reason, '')}")
        for shard, c in errors["by_shard"].items():
            lines.append(f"  in {shard}: " + ", ".join(f"{k}={v}" for k, v in c.items()))
    if errors.get("converted"):
        lines.append("converted: " + ", ".join(f"{k} {v}" for k, v in errors["converted"].items()))
    for folder, c in (r.get("skipped_when_converted") or {}).items():   # not in the shards: from index.json
        lines.append(f"skipped when {folder} was converted (not in its shards): "
                     + ", ".join(f"{k} {v}" for k, v in c["by_reason"].items())
                     + (f"; e.g. {c['first']}" if c["first"] else ""))
    for ex in r["examples"]:
        lines.append(f"--- {ex['key']} ({ex['shard']}): {', '.join(ex['media']) or 'text only'}; {ex['tokens']} tokens")
        lines += ["  " + turn[:200].replace("\n", "\\n") for turn in ex["turns"]]
    return "\n".join(lines)


def conversion_skips(specs: list[str]) -> dict[str, dict[str, Any]]:
    """{folder: {"by_reason", "first"}} of the records a conversion into `folder` skipped, as its index.json
    keeps them (`vlm data convert`): they are not in the shards, so a scan of the shards cannot show them."""
    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        try:
            with open(os.path.join(spec, "index.json")) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            continue
        reasons = meta.get("skipped_by_reason") if isinstance(meta, dict) else None
        if isinstance(reasons, dict) and reasons:
            examples = meta.get("skipped_examples") or []
            out[spec] = {"by_reason": reasons, "first": examples[0] if examples else ""}
    return out


def run(args: argparse.Namespace) -> int:
    processor = None
    if args.model:
        from vlm.loading import load
        processor = load(args.model).processor
    report = inspect_shards(expand_shards(args.shards), processor, args.samples, args.limit)
    report["skipped_when_converted"] = conversion_skips(args.shards)
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    if not report["ok"]:                   # nothing a model could train on: not a success for a script either
        if set(report["errors"]["skipped"]) == {"class_label_only"}:    # (`vlm data convert class-folder`'s layout)
            print(f"vlm data inspect: all {report['samples']} sample(s) read are classification samples (cls + media, "
                  f"no text): a zero-shot benchmark's (`vlm eval --bench wds:DIR`), nothing to train on")
            return 0
        print(f"vlm data inspect: error: no usable sample among the {report['samples']} read", file=sys.stderr)
        return 2
    return 0
