"""Benchmark registry: every benchmark is declared once, with its metadata, and listed by name.

    from benchmarks import list_benchmarks, get_benchmark
    list_benchmarks("sw-*")                 # [{'name', 'modality', 'description', 'type', ...}]
    bench = get_benchmark("sw-color")       # a Benchmark
    bench = get_benchmark("wds:/data/cifar10")  # any folder in the clip_benchmark `wds` layout

A benchmark names its task kind (`benchmarks.tasks`), its UniBench type and capability, the metric
it is ranked by, and where its data lies (a `DataRef`, resolved against the folders the user gives:
`--data` for synthetic-world, `--bench-root` for UniBench-style shard folders). Suites group
benchmarks. A duplicate name is an error.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlm.errors import UserError, read_text
from vlm.registry import Registry

# UniBench's benchmark types, plus the ones our own harnesses add.
TYPES = ("object recognition", "reasoning", "relation", "robustness", "non-natural", "texture", "corruption",
         "embedding", "generative", "audio", "music", "text", "custom")
KINDS = ("zeroshot", "relation", "retrieval", "mmeb", "vqa", "caption", "probe")

DEFAULT_SYNTHETIC_WORLD = "data/synthetic-world"
DEFAULT_BENCH_ROOT = "data/benchmarks"


@dataclass(frozen=True)
class DataRef:
    """Where a benchmark's samples are: `root` is 'synthetic-world', 'bench-root' or an absolute folder;
    `path` a folder under it; `split` the sub-folder of tar shards; `tasks` keeps samples whose json
    `task` is one of them (all samples when empty)."""

    root: str
    path: str = ""
    split: str = "test"
    tasks: tuple[str, ...] = ()
    train_split: str | None = None     # probes fit their head on this split

    def folder(self, roots: "Roots") -> Path:
        base = {"synthetic-world": roots.synthetic_world, "bench-root": roots.bench_root}.get(self.root)
        base = Path(base) if base is not None else Path(self.root)
        return base / self.path if self.path else base

    def describe(self) -> str:
        where = f"<{self.root}>" if self.root in ("synthetic-world", "bench-root") else self.root
        tasks = f" task in {list(self.tasks)}" if self.tasks else ""
        return f"{where}/{self.path + '/' if self.path else ''}{self.split}{tasks}"


@dataclass(frozen=True)
class Roots:
    """The folders benchmark data is resolved against (CLI flags, else environment, else defaults)."""

    synthetic_world: str = field(default_factory=lambda: os.environ.get("VLM_SYNTHETIC_WORLD", DEFAULT_SYNTHETIC_WORLD))
    bench_root: str = field(default_factory=lambda: os.environ.get("VLM_BENCH_ROOT", DEFAULT_BENCH_ROOT))


@dataclass(frozen=True)
class Benchmark:
    name: str
    kind: str                          # task kind, one of KINDS
    type: str                          # UniBench type, one of TYPES
    capability: str                    # what it probes: counting, spatial, character recognition ...
    metric: str                        # the headline metric key in the task's metrics
    data: DataRef
    modality: str = "image"
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)   # task-kind settings (prompt, mode, max_new_tokens ...)

    def row(self) -> dict[str, Any]:
        subsets = [d["subset"] for d in self.options.get("datasets", []) if "subset" in d]
        data = self.data.describe()
        if subsets:                      # MMEB-eval: <root>/MMEB-eval/<subset>/test-*.parquet, not a split of shards
            data = (data.rsplit("/", 1)[0] + f"/{subsets[0] if len(subsets) == 1 else '<subset>'}/"
                    f"{self.data.split}-*.parquet")
        return dict(name=self.name, modality=self.modality, description=self.description, kind=self.kind,
                    type=self.type, capability=self.capability, metric=self.metric, data=data)


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    benchmarks: tuple[str, ...]


# The built-in entries register when the package is imported (`benchmarks/__init__.py` imports suites).
BENCHMARKS: Registry[Benchmark] = Registry("benchmark")
SUITES: Registry[Suite] = Registry("suite")


def register_benchmark(bench: Benchmark) -> Benchmark:
    if bench.kind not in KINDS:
        raise ValueError(f"benchmark '{bench.name}': unknown task kind '{bench.kind}'; known: {KINDS}")
    if bench.type not in TYPES:
        raise ValueError(f"benchmark '{bench.name}': unknown type '{bench.type}'; known: {TYPES}")
    return BENCHMARKS.register(bench.name, bench)


def register_suite(suite: Suite) -> Suite:
    return SUITES.register(suite.name, suite)


def list_benchmarks(pattern: str | None = None) -> list[dict[str, Any]]:
    """Registered benchmarks (fnmatch `pattern` on the name), sorted by name, as listing rows."""
    return [b.row() for _, b in BENCHMARKS.items(pattern)]


def list_suites() -> list[dict[str, Any]]:
    return [dict(name=s.name, description=s.description, benchmarks=list(s.benchmarks)) for _, s in SUITES.items()]


def wds_benchmark(folder: str | os.PathLike, split: str = "test") -> Benchmark:
    """Any folder in the clip_benchmark `wds` layout: zero-shot classification, or image-text retrieval
    when its `dataset_type.txt` says `retrieval` (images + `txt` captions), as clip_benchmark reads it."""
    p = Path(folder).expanduser().resolve()
    kind_file = p / "dataset_type.txt"
    dataset_type = read_text(kind_file, "dataset type file").strip().lower() if kind_file.is_file() else "classification"
    if dataset_type == "retrieval":
        return Benchmark(name=f"wds:{p.name}", kind="retrieval", type="custom", capability="image-text retrieval",
                         metric="mean_recall", data=DataRef(root=str(p), split=split), description=f"retrieval over {p}")
    if dataset_type != "classification":
        raise UserError(f"{kind_file}: dataset type '{dataset_type}' is not supported (classification or retrieval)")
    return Benchmark(name=f"wds:{p.name}", kind="zeroshot", type="custom", capability="custom", metric="top1",
                     data=DataRef(root=str(p), split=split), description=f"zero-shot classification over {p}")


def audio_folder_benchmark(folder: str) -> Benchmark:
    """`audio-folder:DIR`: a probe of the frozen music encoder on DIR/labels.csv (`benchmarks.audio_folder`)."""
    from benchmarks.audio_folder import LABELS_FILE, read_labels
    if not folder:
        raise UserError("audio-folder: needs a folder, e.g. --bench audio-folder:/data/my-instruments")
    root = Path(folder).expanduser().resolve()
    read_labels(root)                           # the split evaluated (test, or --split) is checked before the run
    return Benchmark(name=f"audio-folder:{root.name}", kind="probe", type="music", capability="custom", metric="accuracy",
                     data=DataRef(root=str(root), split="test", train_split="train"), modality="music",
                     options={"format": "audio-folder"},
                     description=f"MARBLE probe of the frozen music encoder on {root / LABELS_FILE}")


def get_benchmark(name: str) -> Benchmark:
    """A registered benchmark, `wds:DIR` for a user's folder in the clip_benchmark layout, or
    `audio-folder:DIR` for a user's folder of labelled audio (music-encoder probes, `benchmarks.audio_folder`)."""
    if name.startswith("audio-folder:"):
        return audio_folder_benchmark(name[len("audio-folder:"):])
    if name.startswith("wds:"):
        if not name[4:]:
            raise UserError("wds: needs a folder, e.g. --bench wds:/data/cifar10")
        return wds_benchmark(name[4:])
    if name not in BENCHMARKS:
        close = BENCHMARKS.names(f"*{name}*")[:5]
        hint = f"; did you mean {close}?" if close else "; see `vlm eval list`"
        raise UserError(f"unknown benchmark '{name}'{hint}")
    return BENCHMARKS.get(name)


def get_suite(name: str) -> Suite:
    return SUITES.get(name)


def resolve(benches: list[str] | None = None, suite: str | list[str] | None = None) -> list[Benchmark]:
    """The benchmarks a command line asks for: the suites' (one name or several) and/or named ones, each
    once, in order (one folder spelled two ways, `audio-folder:a/` and `audio-folder:/abs/a`, is one benchmark)."""
    names: list[str] = []
    for s in [suite] if isinstance(suite, str) else suite or []:
        names += get_suite(s).benchmarks
    names += benches or []
    if not names:
        raise UserError("nothing to evaluate: give --suite NAME or --bench NAME")
    out: list[Benchmark] = []
    for n in dict.fromkeys(names):
        b = get_benchmark(n)
        if b not in out:
            out.append(b)
    return out
