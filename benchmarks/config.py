"""The settings of an evaluation run: one typed schema for `vlm eval` (flags, YAML, key=value), the
runner and the scripts that call it. Imports nothing heavy: `vlm eval --help` stays instant.

    cfg = RunConfig(out="runs/eval", data="data/synthetic-world", limit=40)
    cfg = EvalConfig(out="runs/eval", models=["runs/llava-tiny/final"], suite="synthetic-world")
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.registry import Roots


def default_cache_dir() -> Path:
    base = os.environ.get("VLM_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "vlm")
    return Path(base).expanduser() / "features"


@dataclass
class RunConfig:
    """How a run evaluates (the `vlm eval` flags beyond which models and benchmarks: `EvalConfig`)."""
    out: str = field(metadata={"help": "output folder (results/, aggregate.parquet, results.jsonl, report.md, report.html, chart.png)"})
    data: str | None = field(default=None, metadata={
        "help": "synthetic-world folder (default $VLM_SYNTHETIC_WORLD or data/synthetic-world)"})
    bench_root: str | None = field(default=None, metadata={
        "help": "folder of user-supplied benchmark shards (default $VLM_BENCH_ROOT or data/benchmarks)"})
    cache: bool = field(default=True, metadata={"flag": "--no-cache", "help": "do not read or write the feature cache"})
    cache_dir: str | None = field(default=None, metadata={
        "help": "feature cache folder (default $VLM_CACHE/features or ~/.cache/vlm/features)"})
    batch_size: int = 64
    workers: int = field(default=2, metadata={"help": "image decoding threads"})
    limit: int | None = field(default=None, metadata={"help": "at most N samples per benchmark (quick runs)"})
    split: str | None = field(default=None, metadata={
        "help": "read this split of each benchmark's data (e.g. val, to choose settings); results are named BENCH@SPLIT"})
    redo: bool = field(default=False, metadata={"help": "rerun benchmarks already done in --out"})
    progress: bool = field(default=True, metadata={"flag": "--quiet", "help": "no progress bars"})
    device: str = "cpu"
    report: bool = field(default=True, metadata={"flag": None})

    def check(self) -> None:
        """Settings that parse but mean nothing: a one-line UserError naming the field."""
        from vlm.errors import UserError
        for name, low in (("batch_size", 1), ("workers", 0), ("limit", 1)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise UserError(f"eval config field '{name}': must be >= {low}, got {value}")
            if value is not None and value > 2**62:         # (the results' parquet files hold 64-bit integers)
                raise UserError(f"eval config field '{name}': must be <= 2**62, got {value}")
        if self.split is not None and (not self.split.strip() or "/" in self.split or "\\" in self.split
                                       or self.split in (".", "..")):   # a split is a folder name, not a path
            raise UserError(f"eval config field 'split': a split name (val, test ...), not a path: {self.split!r}")
        for name in ("out", "cache_dir"):              # folders the run writes: an existing file is not one
            value = getattr(self, name)
            if value and Path(value).exists() and not Path(value).is_dir():
                raise UserError(f"eval config field '{name}': {value} is a file, not a folder")

    @property
    def roots(self) -> Roots:
        default = Roots()
        return Roots(self.data or default.synthetic_world, self.bench_root or default.bench_root)

    @property
    def feature_cache(self) -> Path | None:
        """Where features are cached; None: no feature cache."""
        return (Path(self.cache_dir) if self.cache_dir else default_cache_dir()) if self.cache else None




@dataclass
class EvalConfig(RunConfig):
    """`vlm eval`: which models on which benchmarks, and how (RunConfig)."""
    models: list[str] = field(default_factory=list, metadata={
        "flag": "--model", "repeat": True, "metavar": "MODEL",
        "help": "checkpoint folder, open_clip:ARCH[:CKPT] or features:log-mel / features:mfcc (audio probes); repeat for several"})
    suite: list[str] | None = field(default_factory=list, metadata={      # None: an older eval_config.yaml
        "flag": "--suite", "repeat": True, "metavar": "NAME",
        "help": "a suite name (see `vlm eval list --suites`); repeat for several"})
    benches: list[str] = field(default_factory=list, metadata={
        "flag": "--bench", "repeat": True, "metavar": "BENCH", "help": "a benchmark name or wds:DIR; repeat for several"})
    model_card: str | None = field(default=None, metadata={
        "help": "also write this run's results beside this model card (results/<card>.jsonl) and regenerate its "
                "model-index and results section from them"})
