"""`synthetic-world`: the built-in data set, generated locally with exact ground truth.

    vlm data build synthetic-world --out data/synthetic-world [--samples 4000] [--seed 0]
    vlm data build synthetic-world --out data/sw-mmeb --tasks mmeb      # the MMEB-style pair tasks (VLM2Vec)
    vlm data build synthetic-world --out data/sw-v1 --world-version 1    # the generators of version 1 (music alike)

    from vlm.data.synthetic import build_synthetic_world
    index = build_synthetic_world("data/sw", samples=4000, seed=0)

Layout:
    <out>/train/shard-000000.tar ...   training mixture (captions, VQA, multi-turn, multi-image, audio, music, video)
    <out>/val/..., <out>/test/...      benchmark splits: every sample has task, question, answer, choices
    <out>/wds/shapes, <out>/wds/colors clip_benchmark / UniBench `wds` zero-shot classification sets
    <out>/index.json                   shards, counts per split / task / modality, seed, choices per task

The MMEB-style pair tasks (`pairs.py`: query / positive / negatives for contrastive training, the four
meta-tasks), the text-only tasks (`text.py`: facts, arithmetic, counting and word order, what the
base LLM learns before any media) and `fine_detail_hard` (a small object among distractors on a textured
canvas) are built only when asked for (`--tasks mmeb`, `--tasks text` or their names), so the default data
set stays what the chat recipes train on.

Same seed -> byte-identical shards (each sample draws from its own generator seeded by
(seed, split, index); tar members have fixed metadata; media are encoded without timestamps).
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from vlm.atomic import write_text
from vlm.data.synthetic import audio as synth_audio
from vlm.data.synthetic import images as synth_images
from vlm.data.synthetic import pairs as synth_pairs
from vlm.data.synthetic import text as synth_text
from vlm.data.synthetic import video as synth_video
from vlm.data.synthetic.common import COLOR_NAMES, SHAPES, rng_for
from vlm.data.writer import ShardWriter, encode_sample
from vlm.errors import UserError

NAME = "synthetic-world"
DEFAULT_SAMPLES = 4000
SHARD_SAMPLES = 500  # several shards even at the default size, so ranks x workers can split them
GENERATORS = {**synth_images.GENERATORS, **synth_audio.GENERATORS, **synth_video.GENERATORS,
              **synth_pairs.GENERATORS, **synth_text.GENERATORS}
# The generators of each version of the data set (index.json `world_version`; `--world-version` writes an older
# one's shards again). 2: every music clip played with its own performance (audio.Performance / ClickStyle).
WORLD_VERSION = 2
WORLD_GENERATORS = {1: {**GENERATORS, **synth_audio.GENERATORS_V1}, 2: GENERATORS}
MODALITY = {t: "image" for t in [*synth_images.GENERATORS, *synth_pairs.GENERATORS]}
MODALITY.update({t: "music" if t.startswith("music") else "audio" for t in synth_audio.GENERATORS})
MODALITY.update({t: "video" for t in synth_video.GENERATORS})
MODALITY.update({t: "text" for t in synth_text.GENERATORS})

# Relative share of each task in the training mixture (captions weigh most: the alignment stage).
TRAIN_WEIGHTS = {
    "caption": 10, "color": 7, "shape": 7, "count": 7, "spatial": 7, "digit": 6, "ocr": 6,
    "fine_detail": 3, "multi_turn": 4, "multi_image": 4,
    "audio_caption": 3, "audio_tone": 4, "audio_noise": 3, "audio_speech": 3,
    "music_caption": 3, "music_pitch": 4, "music_chord": 4, "music_instrument": 4, "music_tempo": 3,
    "video_caption": 2, "video": 2, "video_music": 1,
    "trailer_visual": 2, "trailer_music": 2, "trailer_merged": 2, "trailer_shape": 2, "trailer_instrument": 2,
}
# Benchmark tasks: one closed answer set each, so exact match and zero-shot classification both work.
EVAL_TASKS = ["color", "shape", "count", "spatial", "digit", "ocr", "fine_detail", "multi_image",
              "audio_tone", "audio_noise", "audio_speech", "music_pitch", "music_chord",
              "music_instrument", "music_tempo", "video", "trailer_shape", "trailer_instrument"]
# The union of the per-sample `choices` of each task with a closed answer set (a sample's own
# `choices` is the set for its question: fine_detail asks a colour or a shape, audio_tone a count or a direction).
TASK_CHOICES = {
    "color": COLOR_NAMES, "shape": SHAPES, "count": synth_images.COUNT_CHOICES, "spatial": synth_images.YES_NO,
    "digit": synth_images.DIGIT_CHOICES, "ocr": synth_images.WORDS, "fine_detail": COLOR_NAMES + SHAPES,
    "multi_image": ["first", "second"], "audio_tone": synth_audio.BEEP_CHOICES + ["rising", "falling"],
    "audio_noise": synth_audio.NOISES, "audio_speech": synth_audio.SPOKEN_WORDS,
    "music_pitch": synth_audio.NOTE_NAMES, "music_chord": list(synth_audio.CHORDS),
    "music_instrument": synth_audio.INSTRUMENTS, "music_tempo": list(synth_audio.TEMPI),
    "video": list(synth_video.DIRECTIONS), "video_music": list(synth_audio.CHORDS),
    "trailer_shape": SHAPES, "trailer_instrument": synth_audio.INSTRUMENTS,
    "text_fact": COLOR_NAMES, "text_arith": synth_text.ARITH_CHOICES, "text_count": synth_text.COUNT_CHOICES,
    "text_order": sorted(synth_text.LIST_WORDS), "fine_detail_hard": COLOR_NAMES + SHAPES,
}
# Built only when asked for (`--tasks mmeb` / `--tasks text` or by name): the MMEB-style pair tasks, their own
# mixture (in-distribution datasets, equal shares) and benchmark splits (every dataset, OOD ones included);
# the text tasks, in equal shares, each a benchmark; the hard fine-detail task (the fine_detail share).
OPT_IN = set(synth_pairs.GENERATORS) | set(synth_text.GENERATORS) | {"fine_detail_hard"}
TASK_GROUPS = {"mmeb": sorted(synth_pairs.GENERATORS), "text": sorted(synth_text.GENERATORS)}
ALL_TRAIN_WEIGHTS = {**TRAIN_WEIGHTS, **synth_pairs.TRAIN_WEIGHTS, **{t: 1 for t in synth_text.GENERATORS},
                     "fine_detail_hard": 3}
ALL_EVAL_TASKS = EVAL_TASKS + [name for name, *_ in synth_pairs.TASKS] + sorted(synth_text.GENERATORS) + [
    "fine_detail_hard"]
# Caption tasks whose samples also go to val / test (the captioning benchmarks of sound, music and video).
CAPTION_EVAL_TASKS = ["audio_caption", "music_caption", "trailer_visual", "trailer_merged"]
SPLITS = ("train", "val", "test")
CLASS_SETS = {
    "shapes": ("shape", SHAPES, ["a {c}.", "a drawing of a {c}.", "a {c} shape.", "a colored {c} on a plain background."]),
    "colors": ("color", COLOR_NAMES, ["a {c} shape.", "something {c}.", "a drawing of a {c} object.", "the color {c}."]),
}


def default_workers(samples: int) -> int:
    """Two processes for real builds (the bytes do not depend on it), one for tiny ones."""
    return 1 if samples < 500 else max(1, min(2, os.cpu_count() or 1))


def available_tasks() -> set[str]:
    """Tasks this machine can generate (spoken words need the espeak-ng binary)."""
    return {t for t in GENERATORS if t != "audio_speech" or synth_audio.speech_available()}


def select_tasks(names: Iterable[str] | None) -> set[str]:
    """The tasks to generate: `names` (each must exist and be generable here; a group such as `mmeb`
    stands for its tasks), or every available one but the opt-in pair tasks."""
    available = available_tasks()
    if names is None:
        return available - OPT_IN
    names = {t for n in names for t in TASK_GROUPS.get(n, [n])}
    for t in sorted(names):
        if t not in GENERATORS:
            raise UserError(f"unknown synthetic-world task {t!r}; choose from {', '.join(sorted(GENERATORS))} "
                            f"(or a group: {', '.join(TASK_GROUPS)})")
        if t not in available:
            raise UserError(f"task {t!r} cannot be generated here (spoken words need espeak-ng)")
    if not names:
        raise UserError("--tasks needs at least one task")
    return names


def task_schedule(weights: dict[str, float], n: int, seed: int, split: str) -> list[str]:
    """n task names in proportion to `weights` (largest remainder; each task at least once when n
    allows), in a seeded shuffled order so every shard mixes all tasks."""
    names = sorted(weights)
    if n >= len(names):
        counts = {t: 1 for t in names}
        rest = n - len(names)
    else:
        counts, rest = {t: 0 for t in names}, n
    total = sum(weights.values())
    exact = {t: rest * weights[t] / total for t in names}
    for t in names:
        counts[t] += int(exact[t])
    left = n - sum(counts.values())
    for t in sorted(names, key=lambda t: (-(exact[t] - int(exact[t])), t))[:left]:
        counts[t] += 1
    schedule = [t for t in names for _ in range(counts[t])]
    order = rng_for(seed, f"{split}-schedule", 0).permutation(len(schedule))
    return [schedule[int(i)] for i in order]


def make_sample(job: tuple[int, str, str, int, int]) -> dict[str, Any]:
    """One encoded sample (bytes per field) for (seed, split, task, index, world version); runs in worker
    processes."""
    seed, split, task, index, version = job
    fields = WORLD_GENERATORS[version][task](rng_for(seed, split, index), split)
    fields["json"].update(split=split, modality=MODALITY[task])
    return encode_sample({"__key__": f"{split}-{index:06d}", **fields})


def _generate(jobs: list[tuple[int, str, str, int]], workers: int) -> Iterator[dict[str, Any]]:
    """Samples in job order; with workers > 1, made by a fork pool (the order, hence the bytes, is unchanged)."""
    if workers <= 1:
        yield from map(make_sample, jobs)
        return
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers) as pool:
        yield from pool.imap(make_sample, jobs, chunksize=8)


def item_digest(sample: dict[str, Any]) -> str:
    """What a model sees of an encoded sample: its media bytes and its conversation (not its key, split or
    labels). Two samples of one digest are the same item to a model."""
    h = hashlib.sha1()
    for field in sorted(k for k in sample if k not in ("__key__", "json")):
        h.update(field.encode() + b"\0" + bytes(sample[field]) + b"\0")
    conversations = json.loads(sample["json"]).get("conversations") if "json" in sample else None
    h.update(json.dumps(conversations, sort_keys=True).encode())
    return h.hexdigest()


def _write_split(out: str, split: str, jobs: list, workers: int, meta: dict[str, Any]
                 ) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The split's shards; returns their index and, per task, the digests of its samples (`item_digest`)."""
    folder = os.path.join(out, split)
    os.makedirs(folder, exist_ok=True)        # the writer replaces a previous build's shards when it succeeds
    digests: dict[str, list[str]] = {}
    with ShardWriter(folder, prefix="shard", max_count=SHARD_SAMPLES, meta=meta) as w:
        for (_, _, task, *_), sample in zip(jobs, _generate(jobs, workers)):
            w.write(sample)
            digests.setdefault(task, []).append(item_digest(sample))
    return w.index, digests


def write_class_set(out: str, name: str, per_class: int, seed: int) -> dict[str, Any]:
    """A zero-shot classification set in the clip_benchmark `wds` layout: classnames.txt,
    zeroshot_classification_templates.txt, dataset_type.txt, test/nshards.txt, test/0.tar (cls + jpg)."""
    by, classes, templates = CLASS_SETS[name]
    folder = os.path.join(out, "wds", name)
    os.makedirs(os.path.join(folder, "test"), exist_ok=True)
    for fname, lines in (("classnames.txt", classes), ("zeroshot_classification_templates.txt", templates),
                         ("dataset_type.txt", ["classification"])):
        with open(os.path.join(folder, fname), "w") as f:
            f.write("\n".join(lines) + "\n")
    counts = {c: 0 for c in classes}
    with ShardWriter(os.path.join(folder, "test"), pattern="%d.tar", max_count=10**9,
                     meta={"name": f"{NAME}/{name}", "seed": seed}) as w:
        i = 0
        while min(counts.values()) < per_class:  # draw until every class has per_class images
            img, label = synth_images.gen_class_image(rng_for(seed, f"wds-{name}", i), by)
            i += 1
            if counts[label] >= per_class:
                continue
            counts[label] += 1
            w.write({"__key__": f"{name}-{i:06d}", "cls": classes.index(label), "jpg": img})
    with open(os.path.join(folder, "test", "nshards.txt"), "w") as f:
        f.write(f"{len(w.index['shards'])}\n")
    return {"path": f"wds/{name}", "classes": list(classes), "per_class": per_class,
            "num_samples": w.index["num_samples"]}


def _task_info(tasks: Iterable[str]) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for t in sorted(tasks):
        info[t] = {"modality": MODALITY[t], "benchmark": t in ALL_EVAL_TASKS + CAPTION_EVAL_TASKS}
        if t in TASK_CHOICES:
            info[t]["choices"] = TASK_CHOICES[t]
    return info


BUILDING = ".building"          # a build's mark while it runs: a folder holding it is a build a kill interrupted


def check_out_folder(out: str) -> None:
    """Refuse to build over another data set: `out` must be new, empty, a synthetic-world build (its
    index.json says so) or one a kill interrupted (its `.building` mark)."""
    index = os.path.join(out, "index.json")
    if os.path.exists(os.path.join(out, BUILDING)):      # a build a kill interrupted (its index may be torn)
        return
    if os.path.exists(index):
        try:
            with open(index, encoding="utf-8") as f:
                name = json.load(f).get("name")
        except (OSError, ValueError, AttributeError):
            name = None
        if name != NAME:
            raise UserError(f"{out}: holds another data set (its index.json is not a {NAME} build's); give a new "
                            f"or empty folder, or a {NAME} build to rebuild")
    elif os.listdir(out):
        raise UserError(f"{out}: not a {NAME} build (no index.json) and not empty; give a {NAME} folder, or a "
                        f"new or empty one to build it in")


def _flag_error(name: str, text: str) -> UserError:
    return UserError(f"--{name.replace('_', '-')} {text}")


def check_build_args(samples: int, seed: int, eval_per_task: int | None, world_version: int | None,
                     tasks: Iterable[str] | None, error: Callable[[str, str], Exception] = _flag_error) -> set[str]:
    """The values a build refuses, before anything is written; returns the tasks to generate. `error(field,
    text)` makes the exception (default: naming the `vlm data build` flag; a recipe's `build` names its field)."""
    if seed < 0:
        raise error("seed", f"must be >= 0 (got {seed})")
    if samples < 1:
        raise error("samples", f"must be >= 1 (got {samples})")
    if eval_per_task is not None and eval_per_task < 1:
        raise error("eval_per_task", f"must be >= 1 (got {eval_per_task}); leave it out for the default, "
                                     f"max(2, samples // 100)")
    if world_version is not None and world_version not in WORLD_GENERATORS:
        raise error("world_version", f"{world_version}: choose from {', '.join(map(str, WORLD_GENERATORS))}")
    try:
        return select_tasks(tasks)
    except UserError as e:
        if error is _flag_error:
            raise
        raise error("tasks", str(e)) from None


def build_synthetic_world(out: str | os.PathLike, samples: int = DEFAULT_SAMPLES, seed: int = 0,
                          splits: Iterable[str] = SPLITS, eval_per_task: int | None = None,
                          workers: int | None = None, classification: bool = True,
                          tasks: Iterable[str] | None = None, world_version: int | None = None) -> dict[str, Any]:
    """Generate synthetic-world under `out`; returns (and writes) `<out>/index.json`.

    world_version: which generators (`WORLD_GENERATORS`, default the newest; an older one rebuilds what
    earlier code built).

    tasks: only these tasks (e.g. a fine-detail study), still mixed by their TRAIN_WEIGHTS; default all.

    samples: training samples (tasks mixed by TRAIN_WEIGHTS); val and test get `eval_per_task`
    samples per benchmark task (default max(2, samples // 100)). workers > 1 generates in a
    process pool; the bytes do not depend on it.
    """
    out = os.fspath(out)
    splits = list(splits)
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise UserError(f"unknown split {bad[0]!r}; choose from {', '.join(SPLITS)}")
    splits = [s for s in SPLITS if s in splits]          # train first: val / test are compared with it
    tasks = check_build_args(samples, seed, eval_per_task, world_version, tasks)
    world_version = WORLD_VERSION if world_version is None else world_version
    eval_per_task = eval_per_task or max(2, samples // 100)
    workers = workers or default_workers(samples)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {out}: {e.strerror}") from e
    check_out_folder(out)
    with open(os.path.join(out, BUILDING), "w") as f:                # removed once index.json is written
        f.write(f"{NAME}\n")
    if os.path.exists(os.path.join(out, "index.json")):
        os.remove(os.path.join(out, "index.json"))  # rewritten last: present = complete
    index: dict[str, Any] = {"name": NAME, "version": 1, "world_version": world_version, "seed": seed,
                             "samples": samples, "selected": sorted(tasks),
                             "eval_per_task": eval_per_task, "splits": {}, "speech": "audio_speech" in tasks}
    for split in splits:
        if split == "train":
            weights = {t: w for t, w in ALL_TRAIN_WEIGHTS.items() if t in tasks}
            if not weights:
                raise UserError(f"none of the tasks {sorted(tasks)} has training samples; leave 'train' out of --splits")
            names = task_schedule(weights, samples, seed, split)
        else:
            names = [t for t in ALL_EVAL_TASKS + CAPTION_EVAL_TASKS if t in tasks for _ in range(eval_per_task)]
            if not names:
                print(f"{split}: not written: none of the tasks {sorted(tasks)} has benchmark questions",
                      file=sys.stderr)
                continue
        jobs = [(seed, split, t, i, world_version) for i, t in enumerate(names)]
        sidx, digests = _write_split(out, split, jobs, workers, {"name": f"{NAME}/{split}", "seed": seed})
        index["splits"][split] = {"shards": [f"{split}/{s['file']}" for s in sidx["shards"]],
                                  "shard_samples": [s["samples"] for s in sidx["shards"]],
                                  "num_samples": sidx["num_samples"], "tasks": sidx["tasks"],
                                  "modalities": sidx["modalities"]}
        if split == "train":
            train_digests = {t: set(ds) for t, ds in digests.items()}
        elif "train" in splits:
            # val / test samples that are train items too (the same media and conversation): what a model can
            # answer from memory. Small spaces repeat (single-digit sums; version 1: one note on one instrument)
            index["splits"][split]["seen_in_train"] = {
                t: sum(d in train_digests.get(t, ()) for d in ds) for t, ds in sorted(digests.items())}
    index["tasks"] = _task_info(tasks)
    # a class set where its task is built (the shapes set with `shape`): none in a music or text build
    class_sets = [name for name, (by, *_) in CLASS_SETS.items() if by in tasks] if classification else []
    if class_sets:
        per_class = max(2, samples // 100)
        index["wds"] = {name: write_class_set(out, name, per_class, seed) for name in class_sets}
    # what an earlier build left that this one does not have: benchmarks find their data by folder, so a
    # val/ of another seed would be scored as this build's
    stale_sets = [f"wds/{name}" for name in CLASS_SETS if name not in class_sets] if class_sets else ["wds"]
    for stale in [*(sp for sp in SPLITS if sp not in index["splits"]), *stale_sets]:
        if os.path.isdir(os.path.join(out, stale)):
            shutil.rmtree(os.path.join(out, stale))
            print(f"{stale}/: removed (an earlier build's; not in this one)", file=sys.stderr)
    write_text(os.path.join(out, "index.json"), json.dumps(index, indent=1, sort_keys=True) + "\n")
    os.remove(os.path.join(out, BUILDING))
    return index


def format_counts(index: dict[str, Any]) -> str:
    """A short table of samples per split and task, for the CLI."""
    lines = []
    for split, info in index["splits"].items():
        lines.append(f"{split}: {info['num_samples']} samples in {len(info['shards'])} shard(s)")
        lines += [f"  {t:<22}{n}" for t, n in sorted(info["tasks"].items())]
        seen = {t: n for t, n in info.get("seen_in_train", {}).items() if n}
        if seen:
            lines.append("  also in train (the same media and conversation: answerable from memory): " + ", ".join(
                f"{t} {n} of {info['tasks'][t]}" for t, n in seen.items()))
    for name, info in index.get("wds", {}).items():
        lines.append(f"wds/{name}: {info['num_samples']} images, {len(info['classes'])} classes")
    if set(GENERATORS) - OPT_IN - set(index.get("selected", GENERATORS)) == {"audio_speech"}:  # all asked, no speech
        lines.append("audio_speech skipped: espeak-ng is not installed")
    return "\n".join(lines)

