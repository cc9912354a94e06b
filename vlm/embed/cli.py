"""`vlm embed`, `vlm index` and `vlm search`: typed configs (flags, --config FILE.yaml, key=value).

    vlm embed --model runs/vlm2vec-tiny/final --input data/synthetic-world/test --out runs/emb \
        [--instruction "Represent the given image."] [--modality image] [--modality text] [--batch-size 64]
    torchrun --nproc_per_node 2 -m vlm.cli embed --model ... --input ... --out runs/emb
    vlm index runs/emb [--memory 4G] [--kind auto|flat|hnsw|ivfpq]
    vlm search runs/emb (--text T | --image FILE | --audio FILE) [-k 10] [--instruction T] [--target image]
    vlm search runs/emb --recall [--instruction T]          # caption -> image Recall@1/5/10 of the export

The resolved settings are saved beside the output (`embed_config.yaml`, `index/index_config.yaml`). Bad
input (a model that is not an embedder, an empty input, a query of a modality the model cannot embed, a
query whose dimension does not match the index) is one line on stderr and exit code 2 (`vlm.cli`).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from vlm.config import add_config_flags, config_from_args, from_dict, save_config


@dataclass
class EmbedConfig:
    """`vlm embed`: which model embeds which input into which folder (saved as OUT/embed_config.yaml)."""
    model: str = field(metadata={"help": "a checkpoint folder (any of ours, e.g. a vlm2vec run) or open_clip:ARCH[:CKPT]"})
    input: str = field(metadata={"help": "tar shards (a folder, glob, brace pattern or file) or a folder of media files"})
    out: str = field(metadata={"help": "output folder (img_emb/, text_emb/, metadata/, stats/, run.json)"})
    instruction: str | None = field(default=None, metadata={"help": "instruction put in every prompt (VLM2Vec)"})
    modality: list[str] = field(default_factory=lambda: ["image"], metadata={
        "repeat": True, "metavar": "MODALITY",
        "help": "what to embed per sample: image | text (its caption) | audio | music | video; repeat for several"})
    batch_size: int = 64
    part_size: int = field(default=10_000, metadata={"help": "samples per part file (a shard is cut into parts)"})
    num_workers: int = field(default=1, metadata={"help": "processes reading and preparing batches"})
    device: str = "auto"
    dtype: str = field(default="float32", metadata={"help": "compute dtype: float32 | bfloat16 | float16"})
    out_dtype: str = field(default="float16", metadata={"help": "stored vectors: float16 (as clip-retrieval) | float32"})
    progress: bool = field(default=True, metadata={"flag": "--quiet", "help": "no progress bar"})


@dataclass
class IndexConfig:
    """`vlm index DIR`: a FAISS index per *_emb folder of an export."""
    dir: str = field(metadata={"flag": None})
    memory: str = field(default="4G", metadata={"help": "memory budget of an index (e.g. 4G, 512M)"})
    kind: str = field(default="auto", metadata={"help": "auto | flat | hnsw | ivfpq"})
    exact_max: int = field(default=50_000, metadata={"help": "auto: exact (Flat) search up to this many vectors"})
    target_recall: float = field(default=0.97, metadata={"help": "search depth raised until recall@10 vs exact"})


@dataclass
class SearchConfig:
    """`vlm search DIR`: the nearest rows of an indexed export for one query (or --recall)."""
    dir: str = field(metadata={"flag": None})
    text: str | None = None
    image: str | None = field(default=None, metadata={"metavar": "FILE"})
    audio: str | None = field(default=None, metadata={"metavar": "FILE"})
    music: str | None = field(default=None, metadata={"metavar": "FILE"})
    k: int = field(default=10, metadata={"flag": "-k"})
    instruction: str | None = field(default=None, metadata={"help": "instruction put before the query (VLM2Vec)"})
    target: str | None = field(default=None, metadata={"help": "which index to search (default: another modality than the query's)"})
    recall: bool = field(default=False, metadata={"help": "caption -> image Recall@1/5/10 over the export's captions"})
    model: str | None = field(default=None, metadata={"help": "embed the query with this model (default: the export's)"})
    device: str = "auto"


def export_embeddings(model: str, input: str, out: str, **settings: Any):
    """`vlm embed` from Python (an `ExportResult`): `settings` are EmbedConfig's other fields (instruction,
    modality, batch_size, part_size, num_workers, device, dtype, out_dtype, progress), checked by name and type."""
    import os

    from vlm.embed.export import export
    paths = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in
             {"model": model, "input": input, "out": out}.items()}          # Path objects as the CLI's strings
    return export(from_dict(EmbedConfig, {**paths, **settings}, what="embed setting"))


def cmd_embed(args: argparse.Namespace) -> int:
    import sys

    from vlm.embed.export import export
    cfg = config_from_args(EmbedConfig, args, what="embed config field")
    res = export(cfg)
    save_config(cfg, f"{cfg.out}/embed_config.yaml")
    for damage in res.redone:
        print(f"embedded again, a finished part was damaged: {damage}", file=sys.stderr)
    import json
    summary = json.loads((res.out / "stats" / "summary.json").read_text()) if (res.out / "stats" / "summary.json").exists() else {}

    def by_reason(counts: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(f"embedded {res.rows:,} samples into {len(res.written)} part(s) of {res.parts} in {res.seconds:.1f} s "
          f"({res.items_per_s:,.0f} items/s, {res.model_seconds / max(res.seconds, 1e-9):.0%} of the time in the model); "
          f"skipped {res.skipped}" + (f" ({by_reason(res.skipped_by_reason)}; listed in {cfg.out}/stats/)" if res.skipped else "")
          + (f"; {summary['left_out_files']} file(s) left out beside a sample's own (left_out_files in {cfg.out}/stats/)"
             if summary.get("left_out_files") else "")
          + (f"; {summary['not_read']} folder(s) / file(s) of no media kind not read (not_read in "
             f"{cfg.out}/stats/summary.json)" if summary.get("not_read") else ""))
    reasons = by_reason(summary.get("skipped_by_reason", {}))             # the whole export's, this run's parts and earlier
    if summary and summary["parts_done"] == summary["parts"] and summary["rows"] == 0:   # finished, nothing in it
        from vlm.errors import UserError
        raise UserError(f"{cfg.input}: nothing could be embedded, every sample was skipped ({reasons or 'none read'}; "
                        f"listed in {cfg.out}/stats/)")
    if summary:
        print(f"{cfg.out}: {summary['rows']:,} rows in {summary['parts_done']} of {summary['parts']} parts"
              + (f", {summary['skipped']:,} skipped ({reasons})" if summary.get("skipped") else ""), file=sys.stderr)
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from vlm.embed.index import build_index
    args.cfg_dir = args.dir
    cfg = config_from_args(IndexConfig, args, what="index config field")
    build_index(cfg.dir, cfg.memory, cfg.kind, cfg.exact_max, cfg.target_recall)
    save_config(cfg, f"{cfg.dir}/index/index_config.yaml")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from vlm.embed.index import caption_recall, open_index
    from vlm.errors import UserError
    args.cfg_dir = args.dir
    cfg = config_from_args(SearchConfig, args, what="search config field")
    from vlm.errors import is_utf8, text_of
    for flag, value in (("--text", cfg.text), ("--instruction", cfg.instruction)):
        if value is not None and not is_utf8(value):      # (argv bytes that are not UTF-8: named by the flag)
            raise UserError(f"{flag} {text_of(value)!r}: not UTF-8 text")
    from vlm.embed.api import Embedder
    index = open_index(cfg.dir)
    emb = Embedder.load(cfg.model, device=cfg.device) if cfg.model else index.embedder(cfg.device)
    if cfg.recall:
        r = caption_recall(cfg.dir, cfg.instruction, cfg.target or "image", embedder=emb)
        print(f"caption -> {cfg.target or 'image'} over {cfg.dir}: {int(r['queries'])} distinct captions, "
              f"{int(r['rows'])} rows")
        print("| R@1 | R@5 | R@10 |\n|---|---|---|\n" + f"| {r['recall@1']:.3f} | {r['recall@5']:.3f} | {r['recall@10']:.3f} |")
        warn_other_model(cfg, index, emb)
        return 0
    if cfg.text is None and not any((cfg.image, cfg.audio, cfg.music)):
        raise UserError("give a query: --text T, --image FILE, --audio FILE or --music FILE (or --recall)")
    if cfg.text is not None and not cfg.text.strip():
        raise UserError("--text: an empty query")
    hits = index.query(text=cfg.text, image=cfg.image, audio=cfg.audio, music=cfg.music, k=cfg.k,
                       instruction=cfg.instruction, target=cfg.target, embedder=emb)
    for h in hits:
        print(f"{h['rank']:>3}  {h['score']:.4f}  {h['key']}  {h['caption']}")
    warn_other_model(cfg, index, emb)
    return 0


def warn_other_model(cfg: SearchConfig, index, emb) -> None:
    """--model given and not the weights file the export was made with (a moved copy of the same weights is
    fine; other weights give scores in another space): said on stderr after the results."""
    recorded = index.run.get("fingerprint")
    if cfg.model and recorded and not emb.matches(recorded, index.run.get("content")):
        import sys
        print(f"warning: --model {cfg.model} is not the weights / tokenizer {cfg.dir} was exported with "
              f"({index.run.get('model')}); the scores mean something only for the same weights", file=sys.stderr)


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="embed shards or a media folder into clip-retrieval's layout",
                       description="Embeddings of every sample (image, caption, audio ...) of shards or a media folder, "
                                   "written as img_emb/text_emb/... .npy parts + metadata parquet; resumable; "
                                   "data-parallel under torchrun. Every setting is a flag, --config key or key=value.")
    add_config_flags(p, EmbedConfig)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("index", help="build FAISS indexes over a `vlm embed` output",
                       description="One FAISS index per *_emb folder: exact for small sets, HNSW or IVF-PQ for large "
                                   "ones (chosen from the count and a memory budget; the choice is printed).")
    p.add_argument("dir", help="a `vlm embed` output folder")
    add_config_flags(p, IndexConfig)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="query an indexed `vlm embed` output",
                       description="Embed a query with the export's model and print the nearest rows: rank, score, "
                                   "key, caption. --recall: caption -> image Recall@1/5/10 over the export.")
    p.add_argument("dir", help="a `vlm embed` output folder with an index (vlm index)")
    add_config_flags(p, SearchConfig)
    p.set_defaults(func=cmd_search)
