"""`vlm data`: build the built-in data set, convert common layouts to shards, inspect shards.

    vlm data build synthetic-world --out data/synthetic-world [--samples 4000] [--seed 0] [--workers 2]
        [--tasks fine_detail color ...] [--config build.yaml] [key=value ...]
    vlm data convert llava-json --json data.json --images IMAGES/ --out shards/sft
    vlm data convert caption-folder FOLDER --out shards/captions
    vlm data convert class-folder FOLDER --out wds/mine [--templates templates.txt]
    vlm data convert media-folder FOLDER --captions captions.csv --kind audio|music|video --out shards/audio
    vlm data convert mmeb MMEB-train --out shards/mmeb-train [--subsets A-OKVQA ...] [--split original]
    vlm data convert hf-dataset PATH --out shards/sft [--split train] [--image-column images]
        [--conversations-column messages] [--image-root DIR]                (vlm.data.convert_hf)
    vlm data convert mmtrail ANNOTATIONS.json --videos VIDEOS/ --out shards/mmtrail
    vlm data inspect SHARDS ...                                           (vlm.data.inspect)
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vlm.config import add_config_flags, config_from_args, save_config
from vlm.errors import UserError, read_text
from vlm.modalities import MODALITIES

Split = Literal["train", "val", "test"]


@dataclass
class BuildConfig:
    """`vlm data build`: the built-in data set and how much of it (saved as OUT/build_config.yaml)."""
    out: str = field(metadata={"help": "output folder (train/, val/, test/, wds/, index.json)"})
    dataset: Literal["synthetic-world"] = field(default="synthetic-world", metadata={"flag": None})
    samples: int = field(default=4000, metadata={"help": "training samples"})
    seed: int = field(default=0, metadata={"help": "random seed: same seed, same bytes"})
    splits: list[Split] = field(default_factory=lambda: ["train", "val", "test"], metadata={"help": "splits to write"})
    eval_per_task: int | None = field(default=None, metadata={"help": "val/test samples per benchmark task"})
    workers: int | None = field(default=None, metadata={"help": "generator processes (default 2, 1 for tiny builds)"})
    tasks: list[str] | None = field(default=None, metadata={
        "help": "only these tasks (e.g. fine_detail color shape), mixed by their usual weights; default all",
        "metavar": "TASK"})
    classification: bool = field(default=True, metadata={"flag": "--no-classification",
                                                         "help": "skip the wds/ zero-shot classification sets (built for "
                                                                 "the shape and color tasks, when built)"})
    world_version: int | None = field(default=None, metadata={
        "help": "the generators' version (default the newest, 2: every music clip played its own way); 1 "
                "writes the same shards as builds whose index.json has no world_version"})


def check_build(cfg: BuildConfig, error=None) -> None:
    """The values `build` would refuse, checked before anything is written; `error(field, text)` makes the
    exception (default: naming the flag; a recipe's `build` settings name their field)."""
    from vlm.data.synthetic import check_build_args
    kw = {"error": error} if error is not None else {}
    check_build_args(cfg.samples, cfg.seed, cfg.eval_per_task, cfg.world_version, cfg.tasks, **kw)


def build(cfg: BuildConfig) -> dict:
    """Build the data set a BuildConfig describes; returns its index (also OUT/index.json)."""
    from vlm.data.synthetic import build_synthetic_world
    index = build_synthetic_world(cfg.out, samples=cfg.samples, seed=cfg.seed, splits=cfg.splits,
                                  eval_per_task=cfg.eval_per_task, workers=cfg.workers, tasks=cfg.tasks,
                                  classification=cfg.classification, world_version=cfg.world_version)
    save_config(cfg, Path(cfg.out) / "build_config.yaml")
    return index


def build_if_absent(cfg: BuildConfig) -> Path:
    """The data set at cfg.out, built first when it has no index.json (the demo's and the studies' data). A
    folder with other things in it (a user's own data) is not built over (the build refuses it), unless they
    are what a build that did not finish left. A build there is used as it is, unless cfg asks for another
    `world_version` than it has (refused: a study would train on the other generators' data)."""
    out = Path(cfg.out)
    if not (out / "index.json").exists():
        if out.exists() and not out.is_dir():
            raise UserError(f"{out}: a file, not a folder")
        check_build(cfg)                # before saying it builds (it printed "building ... (-5 training samples)")
        if out.is_dir():                # a folder of other data: refused before "building ..." is said
            from vlm.data.synthetic import check_out_folder
            check_out_folder(str(out))
        print(f"building {cfg.dataset} ({cfg.samples} training samples) in {out}", flush=True)
        build(cfg)
    elif cfg.world_version is not None:
        try:
            have = json.loads(read_text(out / "index.json", "data set index")).get("world_version", 1)
        except (ValueError, AttributeError):
            raise UserError(f"{out / 'index.json'}: not a data set index (not a JSON object)") from None
        if have != cfg.world_version:
            raise UserError(f"{out}: a synthetic-world version {have} build, not the version {cfg.world_version} "
                            f"asked for; give another folder or remove this one")
    return out


def _build(args: argparse.Namespace) -> int:
    from vlm.data.synthetic import format_counts

    args.cfg_dataset = args.dataset
    cfg = config_from_args(BuildConfig, args, what="data build field")
    start = time.perf_counter()
    index = build(cfg)
    print(format_counts(index))
    print(f"built {cfg.dataset} in {cfg.out} in {time.perf_counter() - start:.1f} s (seed {cfg.seed})")
    return 0


def _read_templates(path: str | None) -> list[str] | None:
    if path is None:
        return None
    lines = [line.strip() for line in read_text(path, "templates file").splitlines() if line.strip()]
    if not lines:
        raise UserError(f"{path}: no templates")
    return lines


def _convert(args: argparse.Namespace) -> int:
    from vlm.data import convert

    if not 0 <= args.max_bad <= 1:
        raise UserError(f"--max-bad is a fraction of the samples in [0, 1], got {args.max_bad}")
    common = {"max_bad": args.max_bad}
    if args.format == "llava-json":
        report = convert.convert_llava_json(args.json, args.images, args.out, source=args.source,
                                            max_count=args.max_count, **common)
    elif args.format == "caption-folder":
        report = convert.convert_caption_folder(args.folder, args.out, source=args.source,
                                                max_count=args.max_count, **common)
    elif args.format == "mmeb":
        from vlm.data.mmeb import convert_mmeb_train
        report = convert_mmeb_train(args.root, args.out, subsets=args.subsets, split=args.split, images=args.images,
                                    max_per_subset=args.max_per_subset, max_count=args.max_count, source=args.source,
                                    **common)
    elif args.format == "hf-dataset":
        from vlm.data.convert_hf import convert_hf_dataset
        report = convert_hf_dataset(args.path, args.out, split=args.split, image_column=args.image_column,
                                    conversations_column=args.conversations_column, image_root=args.image_root,
                                    source=args.source, max_count=args.max_count, **common)
    elif args.format == "class-folder":
        report = convert.convert_class_folder(args.folder, args.out, templates=_read_templates(args.templates),
                                              split=args.split, **common)
    else:
        report = convert.convert_media_folder(args.folder, args.captions, args.out, kind=args.kind,
                                              source=args.source, max_count=args.max_count, **common)
    print(report.summary())
    return 0


def _convert_mmtrail(args: argparse.Namespace) -> int:
    from vlm.data.mmtrail import convert_mmtrail
    report = convert_mmtrail(args.annotations, args.videos, args.out, fps=args.fps, size=args.size,
                             max_seconds=args.max_seconds, audio_optional=args.audio_optional, max_count=args.max_count,
                             max_bad=args.max_bad)
    print(report.summary())
    return 0


def _common_convert_args(p: argparse.ArgumentParser, shards: bool = True) -> None:
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--max-bad", type=float, default=0.1,
                   help="stop when more than this fraction of samples is bad (default 0.1); fewer are skipped and counted")
    if shards:
        p.add_argument("--source", default=None, help="the `source` field of every sample (default: the input's name)")
        p.add_argument("--max-count", type=int, default=1000, help="samples per shard (default 1000)")
    p.set_defaults(func=_convert)


def add_cli(subparsers) -> None:
    """Add `vlm data` (build, convert, and inspect when `vlm.data.inspect` exists)."""
    data = subparsers.add_parser("data", help="build, convert and inspect WebDataset shards",
                                 description="Build the built-in data set, convert common layouts to shards, inspect shards.")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    sub.required = True

    b = sub.add_parser("build", help="generate a built-in data set (synthetic-world)",
                       description="Generate a built-in data set locally, deterministically for a seed. Every "
                                   "setting is a flag, a key of --config FILE.yaml, or key=value.")
    b.add_argument("dataset", choices=["synthetic-world"], help="which data set")
    add_config_flags(b, BuildConfig)
    b.set_defaults(func=_build)

    c = sub.add_parser("convert", help="convert a folder or LLaVA JSON to shards",
                       description="Convert common on-disk layouts to the suite's WebDataset shards.")
    formats = c.add_subparsers(dest="format", metavar="FORMAT")
    formats.required = True
    p = formats.add_parser("llava-json", help="LLaVA JSON (id, image, conversations) + image folder",
                           description="LLaVA-format JSON + image folder -> conversation shards.")
    p.add_argument("--json", required=True, help="the LLaVA JSON file (a list of records), or JSON Lines (.jsonl); "
                   "records' turns under conversations or messages, from/value or role/content (text or parts)")
    p.add_argument("--images", required=True, help="the folder the records' `image` paths are relative to")
    _common_convert_args(p)
    p = formats.add_parser("caption-folder", help="images with same-stem .txt captions",
                           description="Image folder with captions (a.jpg + a.txt) -> caption shards.")
    p.add_argument("folder")
    _common_convert_args(p)
    p = formats.add_parser("class-folder", help="class sub-folders -> clip_benchmark wds layout",
                           description="FOLDER/<class>/*.jpg -> OUT/classnames.txt, templates, OUT/<split>/0.tar (cls + image).")
    p.add_argument("folder")
    p.add_argument("--templates", default=None, help="a file with one template per line containing {c}")
    p.add_argument("--split", default="test", help="the split folder to write (default test)")
    _common_convert_args(p, shards=False)
    p = formats.add_parser("media-folder", help="audio/music/video files + captions JSON or CSV",
                           description="A folder of audio (flac/wav ...), music or mp4 files + captions -> caption shards.")
    p.add_argument("folder")
    p.add_argument("--captions", required=True,
                   help="JSON ({file: caption or [captions]} or [{file, caption}]) or CSV: rows file,caption, or a "
                        "header naming a file column (file, file_name, path ...) and caption columns (caption, "
                        "caption_1 ... as Clotho's: a sample per caption)")
    p.add_argument("--kind", choices=[m for m in MODALITIES if m != "image"], default="audio",
                   help="placeholder to use (default audio)")
    _common_convert_args(p)
    p = formats.add_parser("mmeb", help="a local copy of MMEB-train (VLM2Vec) -> pair shards",
                           description="TIGER-Lab/MMEB-train (<root>/<subset>/<split>-*.parquet, images under the copy) "
                                       "-> pair shards (query / positive / negative) for the contrastive objective.")
    p.add_argument("root", help="the local copy (git clone of the HF dataset, images unzipped)")
    p.add_argument("--subsets", nargs="+", default=None, help="subsets to convert (default: every one present)")
    p.add_argument("--split", default="original", help="original | diverse_instruction (default original)")
    p.add_argument("--images", default=None, help="the folder image paths are relative to (default: root)")
    p.add_argument("--max-per-subset", type=int, default=None, help="at most N rows per subset (VLM2Vec: 50000)")
    _common_convert_args(p)
    p = formats.add_parser("hf-dataset", help="a local Hugging Face dataset (parquet or save_to_disk), streamed",
                           description="A local parquet folder or save_to_disk folder -> conversation shards: LLaVA "
                                       "`conversations`, ShareGPT `messages` or the_cauldron `texts`; images as bytes "
                                       "or paths (vlm.data.convert_hf).")
    p.add_argument("path", help="parquet folder / file, or a save_to_disk folder")
    p.add_argument("--split", default=None, help="which split (default: train, or the only one)")
    p.add_argument("--image-column", default=None, help="default: images or image, if present")
    p.add_argument("--conversations-column", default=None, help="default: conversations, messages or texts")
    p.add_argument("--image-root", default=None, help="folder image paths are relative to (default: PATH)")
    _common_convert_args(p)
    p = formats.add_parser("mmtrail", help="MMTrail metadata + local videos -> trailer clip shards",
                           description="MMTrail records (JSON list or JSON lines) -> clips cut by their frame ranges "
                                       "from the videos under --videos, with visual / music / merged captions and "
                                       "quality scores (vlm.data.mmtrail).")
    p.add_argument("annotations", help="the metadata file (e.g. MMTrail2M_sample1w.json)")
    p.add_argument("--videos", required=True, help="the folder the records' video_path are relative to")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--fps", type=float, default=4.0, help="frames per second kept (default 4)")
    p.add_argument("--size", type=int, default=224, help="short side of the kept frames, at most (default 224)")
    p.add_argument("--max-seconds", type=float, default=30.0, help="a clip's length cap (default 30)")
    p.add_argument("--audio-optional", action="store_true", help="keep clips without an audio track")
    p.add_argument("--max-count", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument("--max-bad", type=float, default=0.1, help="stop when more than this fraction of the records is "
                   "skipped (default 0.1; missing videos count); fewer are skipped and counted")
    p.set_defaults(func=_convert_mmtrail)

    p = sub.add_parser("inspect", help="counts, token lengths, examples and errors of shards",
                       description="What is in a set of shards, and what is wrong with it (vlm.data.inspect).")
    p.add_argument("shards", nargs="+", help="tar files, brace patterns, globs or shard folders")
    p.add_argument("--model", default=None, help="a checkpoint folder: count tokens with its processor")
    p.add_argument("--samples", type=int, default=3, help="decoded samples to show")
    p.add_argument("--limit", type=int, default=None, help="stop after this many samples")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_inspect)


def _inspect(args: argparse.Namespace) -> int:
    from vlm.data.inspect import run
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    if args.samples < 0:
        raise UserError(f"--samples must be >= 0, got {args.samples}")
    return run(args)
