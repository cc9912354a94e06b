"""Recipes: one typed schema for a whole training run, read from YAML, overridden by `key=value`.

    vlm recipe show llava-tiny > my.yaml                   # copy a built-in one and edit it
    vlm train my.yaml stages.0.steps=20 runtime.seed=3     # dotted paths, YAML values
    recipe = load_recipe("llava-tiny", ["runtime.seed=3"])  # typed + validated, or a one-line UserError

A recipe field is declared once, here: the YAML, the command-line overrides and the resolved
`recipe.yaml` saved in the run folder are all this schema. Built-in recipes are addressed as
`FAMILY-SIZE` and live with their family (`Family.recipes[size]`, e.g. `vlm/families/llava.py`).

Validation runs before any model is built: unknown field, wrong type, a bad choice, a shard pattern
that matches no file, an empty stage list, an unknown data source in a stage mixture, a stage with
nothing trainable, an unknown family / size / builder setting, an unknown objective or a bad setting
of it. The typed parsing is `vlm.config` (shared with every other command's config). Trainable patterns and encoder
names are checked against a weightless (meta-device) skeleton of the model (`check_model`).
"""
from __future__ import annotations

import copy
import dataclasses
import fnmatch
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vlm.atomic import write_text
from vlm.config import apply_override, from_dict, read_yaml, to_yaml
from vlm.data.filters import SampleFilter, check_filter_fields
from vlm.errors import UserError

LLMMode = Literal["frozen", "full", "lora"]
ScheduleName = Literal["cosine", "wsd", "constant"]
Precision = Literal["auto", "fp32", "bf16"]
Strategy = Literal["none", "ddp", "fsdp2"]


# ---------------------------------------------------------------------------------------------
# the schema
# ---------------------------------------------------------------------------------------------
@dataclass
class ModelSpec:
    family: str = "llava"
    size: str | None = "tiny"                       # a named preset of the family; None: settings only
    settings: dict[str, Any] = field(default_factory=dict)  # builder arguments over the preset's


@dataclass
class Source:
    shards: list[str]                               # tar files, globs, brace ranges, folders or URLs (vlm.data.remote)
    weight: float = 1.0                             # share in a mixture (relative)
    # synthetic-world build settings (`vlm data build` fields: samples, tasks, seed, classification ...): when
    # the shards (one folder: OUT/train, OUT/val or OUT/test) hold no file, `vlm train` builds OUT first
    build: dict[str, Any] | None = None


@dataclass
class Stage:
    name: str
    trainable: list[str] = field(default_factory=list)  # fnmatch over named_parameters(), e.g. connectors.*
    llm: LLMMode = "frozen"                         # applied before the patterns: full / lora add the LLM
    lora: dict[str, Any] | None = None              # peft LoraConfig settings (r, lora_alpha ...)
    data: dict[str, float] = field(default_factory=dict)  # source -> weight; {} = every source, own weight
    filter: SampleFilter = field(default_factory=SampleFilter)
    steps: int | None = None                        # budget: optimizer steps ...
    tokens: int | None = None                       # ... or tokens (non-padding, all ranks)
    objective: str = "next_token"                   # what the stage minimises (vlm.train.objectives)
    objective_settings: dict[str, Any] = field(default_factory=dict)   # that objective's typed settings
    lr: float = 1e-3
    lr_scale: dict[str, float] = field(default_factory=dict)  # pattern (as in trainable) -> LR multiplier, e.g.
                                                    # {"encoders.*": 4.0}; a parameter takes its first match, else 1
    weight_decay: float = 0.0                       # never on norms, biases, nn.Embedding / timm's no_weight_decay()
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8                               # AdamW epsilon
    schedule: ScheduleName = "cosine"               # warmup + cosine | warmup-stable-decay | constant
    warmup: float = 0.03                            # fraction of the budget
    decay: float = 0.2                              # wsd: fraction of the budget spent decaying
    min_lr_ratio: float = 0.0                       # the LR the decay ends at, as a fraction of lr
    batch_size: int = 8                             # samples (rows if packing) per optimizer step, all ranks
    grad_accum: int = 1                             # micro-steps per optimizer step
    max_len: int = 512
    packing: bool = False
    grad_clip: float = 1.0                          # max global grad norm; 0 = off


@dataclass
class EvalSpec:
    """Evaluation during training (vlm.train.evaluation); off while `benchmarks` is empty."""
    benchmarks: list[str] = field(default_factory=list)  # benchmark or suite names (`vlm eval list`)
    every: int = 0                                  # optimizer steps between evaluations; 0 = at stage ends only
    split: str = "val"                              # the split scored: choose on val, report test
    data: str | None = None                         # synthetic-world folder; default: the one the data lives in
    limit: int | None = None                        # at most N samples per benchmark
    metric: str = "mean"                            # best/ by: the mean of the scores, or one benchmark's name
    patience: int = 0                               # stop after this many evaluations without a better score; 0 = never


@dataclass
class Runtime:
    precision: Precision = "auto"                   # auto: bf16 autocast on a GPU, fp32 on the CPU
    strategy: Strategy = "none"                     # under torchrun: ddp | fsdp2
    device: str = "auto"                            # auto | cpu | cuda
    checkpoint_every: int = 100                     # optimizer steps; 0 = only at stage ends
    keep_last: int = 2                              # checkpoints kept (the newest K)
    output_dir: str = "runs/{name}"                 # {name}: the recipe name
    seed: int = 0
    num_workers: int = 0                            # data-loader workers per rank
    shuffle_buffer: int = 1000
    remote_timeout: float = 30.0                    # remote shards (http(s)://, s3://, pipe:): seconds a read may
    remote_retries: int = 3                         # stall; failed attempts in a row before the rest of a shard
    remote_backoff: float = 1.0                     # is skipped (counted); seconds before the first retry
    compile: bool = False
    activation_checkpointing: bool = False
    max_nan_steps: int = 5                          # consecutive non-finite steps before stopping
    max_error_rate: float = 0.05                    # bad samples (undecodable ...) of those read before stopping
    log_every: int = 1
    log_samples: bool = False                       # samples-rank<R>.jsonl: the sample keys of every step
    wandb: bool = False
    wandb_project: str = "vlm"
    eval: EvalSpec = field(default_factory=EvalSpec)   # benchmarks scored during training; best/ checkpoint


@dataclass
class Recipe:
    name: str
    model: ModelSpec
    data: dict[str, Source]
    stages: list[Stage]
    runtime: Runtime = field(default_factory=Runtime)
    description: str = ""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {"name": d.pop("name"), "description": d.pop("description"), **d}

    def to_yaml(self) -> str:
        return to_yaml(self.to_dict())

    def output_dir(self) -> Path:
        return Path(self.runtime.output_dir.format(name=self.name))


# ---------------------------------------------------------------------------------------------
# built-in recipes
# ---------------------------------------------------------------------------------------------
def builtin_recipes() -> dict[str, dict]:
    """{'FAMILY-SIZE': raw recipe mapping} over the registered families."""
    from vlm.families import FAMILIES
    out = {}
    for _, fam in FAMILIES.items():
        for size, raw in sorted(fam.recipes.items()):
            out[f"{fam.name}-{size}"] = {"name": f"{fam.name}-{size}", **copy.deepcopy(raw)}
    return out


def trained_modalities(recipe: Recipe) -> list[str]:
    """The modalities a recipe trains: its model's, narrowed by its stages' modality filters."""
    from vlm.families import get_family
    have = get_family(recipe.model.family).modalities(recipe.model.size, recipe.model.settings)
    wanted: set[str] = set()
    for st in recipe.stages:
        wanted |= set(have) if st.filter.modalities is None else set(st.filter.modalities)
    return [m for m in have if m in wanted]


def list_recipes(pattern: str | None = None) -> list[dict]:
    """Rows for `vlm list recipes`: name, the modalities it trains, description and stages."""
    rows = []
    for name, raw in builtin_recipes().items():
        if pattern is not None and not fnmatch.fnmatchcase(name, pattern):
            continue
        recipe = from_dict(Recipe, raw)
        stages = " -> ".join(s.name for s in recipe.stages)
        rows.append(dict(name=name, modality="+".join(trained_modalities(recipe)) or "text",
                         description=f"{recipe.description} [{stages}]".strip()))
    return rows


def raw_recipe(spec: str) -> tuple[dict, str]:
    """The raw mapping of a built-in name or a YAML file, and where it came from."""
    builtins = builtin_recipes()
    if spec in builtins:
        return builtins[spec], f"built-in recipe {spec}"
    p = Path(spec)
    if p.suffix in (".yaml", ".yml") or p.exists():
        raw = read_yaml(p, "recipe")
        if not raw:
            raise UserError(f"{p}: an empty recipe (a recipe has model, data and stages: `vlm recipe show "
                            f"llava-tiny` prints one to start from)")
        raw.setdefault("name", p.stem)
        return raw, str(p)
    raise UserError(f"unknown recipe '{spec}': not a built-in ({', '.join(builtins) or 'none'}) nor a .yaml file")


def load_recipe(spec: str, overrides: list[str] = (), world_size: int = 1, check_files: bool = True) -> Recipe:
    """A built-in name or YAML file + overrides -> a validated Recipe (UserError naming the field)."""
    raw, _ = raw_recipe(spec)
    raw = copy.deepcopy(raw)
    for item in overrides:
        apply_override(raw, item)
    recipe = from_dict(Recipe, raw)
    validate(recipe, world_size, check_files)
    return recipe


def smoke_recipe(spec: str, out: str | os.PathLike, steps: int = 2, batch: int = 2, overrides: list[str] = ()) -> Recipe:
    """A recipe shrunk for a quick run on a CPU: its model's parts at test widths, of the same kinds
    (`Family.test_settings`: encoders, LLM, connectors as shipped), `steps` steps per stage at
    `batch` x grad_accum samples, one process, a checkpoint at every stage end into `out`; the stages,
    filters, data, objectives and LLM modes are the recipe's own. The every-recipe test runs each
    built-in recipe this way."""
    from vlm.families import get_family
    raw, _ = raw_recipe(spec)
    raw = copy.deepcopy(raw)
    model = raw.setdefault("model", {})
    fam = get_family(model.get("family", ModelSpec.family))
    settings = base_llm_skeleton(model.get("settings", {}))          # a pretrained: base LLM: its own LLM, untrained
    model["settings"] = {**settings, **fam.test_settings(model.get("size", ModelSpec.size), settings)}
    from vlm.train.objectives import OBJECTIVES
    for st in raw.get("stages", []):
        st.update(steps=steps, tokens=None, batch_size=batch * int(st.get("grad_accum", 1)))
        objective = st.get("objective", Stage.objective)
        if objective in OBJECTIVES.names():
            st["objective_settings"] = OBJECTIVES.get(objective).smoke_settings(st.get("objective_settings") or {})
    raw["runtime"] = {**raw.get("runtime", {}), "strategy": "none", "device": "cpu", "precision": "fp32",
                      "num_workers": 0, "compile": False, "checkpoint_every": 0, "log_every": 1,
                      "keep_last": len(raw.get("stages", [])) + 1, "output_dir": os.fspath(out), "wandb": False}
    for item in overrides:
        apply_override(raw, item)
    recipe = from_dict(Recipe, raw)
    validate(recipe)
    return recipe


# ---------------------------------------------------------------------------------------------
# validation (no model built)
# ---------------------------------------------------------------------------------------------
def _require(cond: bool, field_path: str, message: str) -> None:
    if not cond:
        raise UserError(f"recipe field '{field_path}': {message}")


def _stage_field_error(e: UserError, stage_path: str) -> UserError:
    """'lora.r: why' (vlm.llm's errors name the stage setting first) -> "recipe field 'stages.N.lora.r': why"."""
    field, sep, why = str(e).partition(": ")
    if sep and re.fullmatch(r"[A-Za-z_][\w.]*", field):
        return UserError(f"recipe field '{stage_path}.{field}': {why}")
    return UserError(f"recipe field '{stage_path}': {e}")      # no field first ("... (asked: full)" is not one)


def validate(recipe: Recipe, world_size: int = 1, check_files: bool = True) -> None:
    """Everything checkable without weights; the first problem raises a UserError naming its field."""
    _require(bool(recipe.name) and recipe.name not in (".", "..") and not any(c in recipe.name for c in "/\\"),
             "name", f"a plain folder name (runs go to runtime.output_dir with it), got {recipe.name!r}")
    _validate_model(recipe.model)
    _require(bool(recipe.data), "data", "no data sources (name: {shards: [...], weight: 1.0})")
    for name, src in recipe.data.items():
        _require(src.weight > 0, f"data.{name}.weight", f"must be > 0, got {src.weight}")
        _require(bool(src.shards), f"data.{name}.shards", "empty shard list")
        if src.build is not None:
            _check_build(src, f"data.{name}")
        if check_files and not unbuilt(src):
            for i, pattern in enumerate(src.shards):
                _check_shards(pattern, f"data.{name}.shards.{i}")
    _require(bool(recipe.stages), "stages", "empty stage list; a recipe needs at least one stage")
    seen = set()
    for i, st in enumerate(recipe.stages):
        _validate_stage(st, f"stages.{i}", recipe, world_size)
        _require(st.name not in seen, f"stages.{i}.name", f"duplicate stage name '{st.name}'")
        seen.add(st.name)
        names = st.data or recipe.data
        if check_files and st.filter != SampleFilter() and not any(unbuilt(recipe.data[n]) for n in names):
            from vlm.data.filters import check_filter
            check_filter([s for n in names for s in recipe.data[n].shards], st.filter, f"stages.{i}.filter")
    _validate_runtime(recipe.runtime)
    if recipe.runtime.eval.benchmarks:
        _validate_eval(recipe, check_files)
    else:                   # evaluation off: a setting of it would be ignored (every: -1 trained, exit 0: a review)
        default = EvalSpec()
        given = [f.name for f in dataclasses.fields(EvalSpec)
                 if getattr(recipe.runtime.eval, f.name) != getattr(default, f.name)]
        _require(not given, f"runtime.eval.{given[0] if given else ''}", "evaluation is off while "
                 "runtime.eval.benchmarks is empty: name the benchmarks, or drop the setting")


EVAL_SPLITS = ("val", "test", "train")


def _validate_eval(recipe: Recipe, check_files: bool) -> None:
    from benchmarks.registry import Roots
    from benchmarks.runner import check_data
    from vlm.train.evaluation import default_data, eval_benchmarks
    ev, p = recipe.runtime.eval, "runtime.eval"
    _require(ev.every >= 0, f"{p}.every", f"must be >= 0, got {ev.every}")
    _require(ev.patience >= 0, f"{p}.patience", f"must be >= 0, got {ev.patience}")
    _require(ev.limit is None or ev.limit >= 1, f"{p}.limit", f"must be >= 1 or null, got {ev.limit}")
    _require(ev.split in EVAL_SPLITS, f"{p}.split", f"one of {', '.join(EVAL_SPLITS)} (a synthetic-world build's "
             f"splits), got {ev.split!r}")
    try:
        names, benches = eval_benchmarks(ev)
    except UserError as e:
        raise UserError(f"recipe field '{p}.benchmarks': {e}") from None
    _require(ev.metric == "mean" or ev.metric in names, f"{p}.metric",
             f"'mean' or one of the benchmarks ({', '.join(names)}), got {ev.metric!r}")
    if not check_files:
        return
    data = ev.data or default_data(recipe)
    roots = Roots(data or Roots().synthetic_world, Roots().bench_root)
    for b in benches:
        try:
            check_data(b, roots)
        except UserError as e:
            raise UserError(f"recipe field '{p}.data': {e}") from None


PER_STAGE = {"llm_mode": "stages.N.llm", "lora": "stages.N.lora"}    # builder settings a recipe's stages own


def _validate_model(m: ModelSpec) -> None:
    import inspect

    from vlm.families import get_family
    try:
        fam = get_family(m.family)
    except UserError as e:
        raise UserError(f"recipe field 'model.family': {e}") from None
    if m.size is not None:
        _require(m.size in fam.sizes, "model.size", f"family '{m.family}' has no size '{m.size}'; "
                 f"known: {sorted(fam.sizes)}")
    from vlm.config import check_value, checkable_types
    params = inspect.signature(fam.builder).parameters
    types = checkable_types(fam.builder)
    for k, v in m.settings.items():
        _require(k in params, f"model.settings.{k}", f"not a setting of family '{m.family}'; "
                 f"known: {', '.join(params)}")
        if k in PER_STAGE:
            raise UserError(f"recipe field 'model.settings.{k}': a recipe sets it per stage ({PER_STAGE[k]}): "
                            "each stage's would replace this one (it was ignored, a review)")
        if k in types:                                  # the builder's annotation: a wrong type is one line here
            m.settings[k] = check_value(types[k], v, f"model.settings.{k}")    # '1e-4' read as a number
    base_llm_skeleton(m.settings)                      # a pretrained: LLM names a recipe that has its own LLM


def unbuilt(src: Source) -> bool:
    """A source with `build` settings whose data set is not there yet (`build_sources` makes it)."""
    return src.build is not None and not (Path(src.shards[0]).parent / "index.json").exists()


def _build_config(src: Source, path: str = ""):
    """The `vlm data build` config of a source's `build` settings: the data set above its split folder
    (`path`: where the settings are, for an error naming the field)."""
    from vlm.data.cli import BuildConfig
    return from_dict(BuildConfig, {"out": str(Path(src.shards[0]).parent), **src.build}, path)


def _check_build(src: Source, p: str) -> None:
    _require(len(src.shards) == 1 and Path(src.shards[0]).name in ("train", "val", "test"), f"{p}.shards",
             f"a source with build settings reads one split folder of the data set it builds (OUT/train), got {src.shards}")
    from vlm.data.cli import check_build
    cfg = _build_config(src, f"{p}.build")               # and the values the build would refuse only after the checks
    check_build(cfg, error=lambda name, text: UserError(f"recipe field '{p}.build.{name}': {text}"))


def build_sources(recipe: Recipe) -> None:
    """Build every source's data set that has `build` settings and is not there yet (synthetic-world)."""
    from vlm.data.cli import build_if_absent
    for src in recipe.data.values():
        if unbuilt(src):
            build_if_absent(_build_config(src))


def _check_shards(pattern: str, field_path: str) -> None:
    """The shards exist, and each local one starts as a tar: a whole shard that does not read (a .tar.gz named
    .tar) is one bad_tar among thousands of samples, which the error rate never notices."""
    from vlm.data.reader import expand_shards
    from vlm.data.tar import TarBroken, check_header
    try:
        paths = expand_shards(pattern)
    except UserError as e:
        raise UserError(f"recipe field '{field_path}': {e}") from None
    for path in paths:
        if "://" in path or path.startswith("pipe:"):
            continue
        try:
            with open(path, "rb") as f:
                check_header(f.read(512), 0)
        except TarBroken as e:
            raise UserError(f"recipe field '{field_path}': {path}: {e}") from None
        except OSError as e:
            raise UserError(f"recipe field '{field_path}': {path}: cannot read ({e.strerror})") from None


FLOAT32_MAX = 3.4e38          # torch's optimizers step in the parameters' float32
MAX_BATCH = 2 ** 20           # samples per optimizer step, all ranks (CLIP-scale contrastive batches are 32k)


def _validate_stage(st: Stage, p: str, recipe: Recipe, world_size: int) -> None:
    _require(bool(st.name), f"{p}.name", "empty stage name")
    if st.llm == "lora":
        from vlm.llm import lora_config
        try:
            lora_config(st.lora)
        except UserError as e:
            raise _stage_field_error(e, p) from None
    _require(not st.lora or st.llm == "lora", f"{p}.lora",          # (it trained without adapters, exit 0)
             f"LoRA settings on a stage whose llm is '{st.llm}': only an llm: lora stage reads them")
    _require(bool(st.trainable) or st.llm != "frozen", f"{p}.trainable",
             f"stage '{st.name}' trains nothing (no trainable patterns and llm: frozen)")
    for name, w in st.data.items():
        _require(name in recipe.data, f"{p}.data.{name}", f"unknown data source; known: {sorted(recipe.data)}")
        _require(w > 0, f"{p}.data.{name}", f"weight must be > 0, got {w}")
    _require((st.steps is None) != (st.tokens is None), f"{p}.steps",
             "give exactly one budget: steps or tokens")
    budget = st.steps if st.steps is not None else st.tokens
    _require(budget > 0, f"{p}.{'steps' if st.steps is not None else 'tokens'}", f"must be > 0, got {budget}")
    _require(st.lr > 0, f"{p}.lr", f"must be > 0, got {st.lr}")
    for pat, scale in st.lr_scale.items():
        _require(scale > 0, f"{p}.lr_scale.{pat}", f"an LR multiplier > 0, got {scale!r}")   # a float: typed
    top = st.lr * max([1.0, *st.lr_scale.values()])
    _require(top < FLOAT32_MAX, f"{p}.lr", f"{st.lr:g} (x its largest lr_scale: {top:g}) is past float32's range, "
             "where the optimizer step fails mid-run")
    _require(st.weight_decay >= 0, f"{p}.weight_decay", f"must be >= 0, got {st.weight_decay}")
    _require(len(st.betas) == 2 and all(0 <= b < 1 for b in st.betas), f"{p}.betas", "two values in [0, 1)")
    _require(st.eps > 0, f"{p}.eps", f"must be > 0, got {st.eps}")
    _require(0 <= st.warmup < 1, f"{p}.warmup", f"a fraction of the budget in [0, 1), got {st.warmup}")
    _require(0 <= st.decay <= 1 and st.warmup + (st.decay if st.schedule == "wsd" else 0) <= 1,
             f"{p}.decay", "a fraction in [0, 1], with warmup + decay <= 1")
    _require(0 <= st.min_lr_ratio <= 1, f"{p}.min_lr_ratio", f"must be in [0, 1], got {st.min_lr_ratio}")
    _require(st.max_len >= 8, f"{p}.max_len", f"must be >= 8, got {st.max_len}")
    _require(st.grad_accum >= 1, f"{p}.grad_accum", f"must be >= 1, got {st.grad_accum}")
    _require(st.grad_clip >= 0, f"{p}.grad_clip", f"must be >= 0, got {st.grad_clip}")
    per = world_size * st.grad_accum
    _require(st.batch_size <= MAX_BATCH, f"{p}.batch_size", f"{st.batch_size:.4g} samples per step: at most "
             f"{MAX_BATCH:,} (one that large filled memory silently, a review)")
    _require(st.batch_size >= 1 and st.batch_size % per == 0, f"{p}.batch_size",
             f"{st.batch_size} (samples per optimizer step, all ranks) must be a positive multiple of "
             f"world size x grad_accum = {world_size} x {st.grad_accum}")
    check_filter_fields(st.filter, f"{p}.filter")
    from vlm.train.objectives import check_settings
    check_settings(st.objective, st.objective_settings, f"{p}", st, world_size)


def _validate_runtime(rt: Runtime) -> None:
    _require(0 <= rt.seed < 2**31, "runtime.seed", f"must be in [0, 2**31), got {rt.seed}")
    _require(rt.checkpoint_every >= 0, "runtime.checkpoint_every", f"must be >= 0, got {rt.checkpoint_every}")
    _require(rt.keep_last >= 1, "runtime.keep_last", f"must be >= 1, got {rt.keep_last}")
    _require(rt.num_workers >= 0, "runtime.num_workers", f"must be >= 0, got {rt.num_workers}")
    _require(rt.shuffle_buffer >= 0, "runtime.shuffle_buffer", f"must be >= 0 (0: no shuffling), got {rt.shuffle_buffer}")
    _require(rt.remote_timeout > 0, "runtime.remote_timeout", f"must be > 0, got {rt.remote_timeout}")
    _require(rt.remote_retries >= 0, "runtime.remote_retries", f"must be >= 0, got {rt.remote_retries}")
    _require(rt.remote_backoff >= 0, "runtime.remote_backoff", f"must be >= 0, got {rt.remote_backoff}")
    _require(rt.max_nan_steps >= 1, "runtime.max_nan_steps", f"must be >= 1, got {rt.max_nan_steps}")
    _require(0 <= rt.max_error_rate <= 1, "runtime.max_error_rate", f"a fraction in [0, 1], got {rt.max_error_rate}")
    _require(rt.log_every >= 1, "runtime.log_every", f"must be >= 1, got {rt.log_every}")
    _require(rt.device in ("auto", "cpu", "cuda") or rt.device.startswith("cuda:"), "runtime.device",
             f"auto | cpu | cuda[:N], got {rt.device!r}")
    _require(bool(rt.output_dir.strip()), "runtime.output_dir", "empty; name the run folder (default runs/{name})")
    try:
        rt.output_dir.format(name="x")
        _require(rt.output_dir.replace("{name}", "") == rt.output_dir.format(name=""), "runtime.output_dir",
                 f"only the plain {{name}} may be substituted in {rt.output_dir!r}")
    except (KeyError, IndexError, ValueError, AttributeError):
        raise UserError(f"recipe field 'runtime.output_dir': only {{name}} may be substituted in "
                        f"{rt.output_dir!r}") from None


# ---------------------------------------------------------------------------------------------
# `llm: pretrained:RECIPE`: the LLM another recipe trains (vlm.train.base_llm builds and caches it)
# ---------------------------------------------------------------------------------------------
PRETRAINED = "pretrained:"


def is_pretrained(spec: Any) -> bool:
    return isinstance(spec, str) and spec.startswith(PRETRAINED)


def base_llm_architecture(spec: str) -> Any:
    """The LLM setting of RECIPE's own model: what `pretrained:RECIPE` is shaped like, untrained."""
    from vlm.families import get_family
    name = spec[len(PRETRAINED):]
    if not name:
        raise UserError(f"{spec!r}: name the recipe that trains the LLM, e.g. 'pretrained:llava-text-tiny'")
    model = raw_recipe(name)[0].get("model", {})
    fam = get_family(model.get("family", ModelSpec.family))
    llm = fam.settings(model.get("size", ModelSpec.size), model.get("settings") or {}).get("llm")
    if llm is None:
        raise UserError(f"{spec!r}: recipe's model has no 'llm' setting to start from")
    if is_pretrained(llm):
        raise UserError(f"{spec!r}: that recipe itself starts from {llm!r}; a base recipe needs its own LLM")
    return llm


def map_llm(settings: dict, fn, where: str = "model.settings") -> dict:
    """`settings` with every `llm` value that is a `pretrained:` spec replaced by fn(spec), at any depth
    (vlm2vec's `base_settings.llm` too); a UserError names the field (`where`.path.llm)."""
    out = {}
    for k, v in settings.items():
        if k == "llm" and is_pretrained(v):
            try:
                out[k] = fn(v)
            except UserError as e:
                raise UserError(f"recipe field '{where}.{k}': {e}") from None
        elif isinstance(v, dict):
            out[k] = map_llm(v, fn, f"{where}.{k}")
        else:
            out[k] = v
    return out


def base_llm_skeleton(settings: dict) -> dict:
    """Builder settings with each `pretrained:RECIPE` LLM as RECIPE's own (untrained) LLM setting: smoke
    recipes and validation train nothing."""
    return map_llm(settings, base_llm_architecture)


# ---------------------------------------------------------------------------------------------
# the model skeleton: encoder names, trainable patterns (meta device, no weights)
# ---------------------------------------------------------------------------------------------
def build_model(spec: ModelSpec, seed: int | None = None):
    """The recipe's model; `seed` (runtime.seed) seeds the family builder unless settings give one (and
    picks the base LLM a `pretrained:RECIPE` setting trains: vlm.train.base_llm, trained once, cached)."""
    import inspect

    from vlm.families import build, get_family
    settings = dict(spec.settings)
    if seed is not None and "seed" in inspect.signature(get_family(spec.family).builder).parameters:
        settings.setdefault("seed", seed)
    return build(spec.family, spec.size, **settings)


def model_skeleton(spec: ModelSpec):
    """The model's structure on the meta device: parameter names and shapes, no memory, no init.

    An unknown encoder or LLM name raises a UserError naming the `model.settings` field it came from.
    """
    import torch

    from vlm.families.base import SettingsDoNotBuild
    state = torch.random.get_rng_state()
    try:
        with torch.device("meta"):
            return build_model(spec)
    except SettingsDoNotBuild as e:  # values transformers / torch refuse (hidden_size -4, heads that do not divide)
        raise UserError(f"recipe field 'model': {e}") from None
    except UserError as e:
        field, msg = _field_of(spec, str(e)), str(e)
        key = field.rsplit(".", 1)[-1]
        raise UserError(f"recipe field '{field}': {msg[len(key) + 2:] if msg.startswith(f'{key}: ') else msg}") from None
    finally:
        torch.random.set_rng_state(state)


def _field_of(spec: ModelSpec, message: str) -> str:
    """The settings key whose value an error message quotes (e.g. an unknown encoder name)."""
    from vlm.families import get_family
    fam = get_family(spec.family)
    merged = {**(fam.sizes.get(spec.size, {}) if spec.size else {}), **spec.settings}
    for k, v in merged.items():
        name = (v.get("name") or v.get("model_type")) if isinstance(v, dict) else v   # an encoder / an LLM
        if message.startswith(f"{k}: "):                          # a builder naming its own setting
            return f"model.settings.{k}"
        if isinstance(name, str) and (f"'{name}'" in message or f'"{name}"' in message):
            return f"model.settings.{k}"
        path = name.split(":", 1)[-1] if isinstance(name, str) else ""
        if "/" in path and path in message:                       # an encoder given by path (mert:DIR, hf:DIR)
            return f"model.settings.{k}"
        if path and path != name and (f"'{path}'" in message or f'"{path}"' in message):  # timm:NAME, tiny:TYPE
            return f"model.settings.{k}"
        if isinstance(v, dict) and str(v) in message:
            return f"model.settings.{k}"
    return "model"


def apply_stage(model, stage: Stage) -> list[str]:
    """Freeze everything, set the stage's LLM mode (full: the LLM, lora: its adapters), then unfreeze
    the parameters its patterns match; returns the names of the trainable parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    model.set_llm_mode(stage.llm, stage.lora)
    for n, p in model.named_parameters():
        if any(fnmatch.fnmatchcase(n, pat) for pat in stage.trainable):
            p.requires_grad_(True)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def check_model(recipe: Recipe):
    """Every stage's patterns against the meta-device skeleton: each pattern must match, each stage train;
    and the runtime settings the model must support."""
    model = model_skeleton(recipe.model)
    if recipe.runtime.activation_checkpointing:
        try:
            model.enable_activation_checkpointing()
        except UserError as e:
            raise UserError(f"recipe field 'runtime.activation_checkpointing': {e}") from None
    from vlm.train.objectives import build_objective
    for i, st in enumerate(recipe.stages):
        # (a later stage's lora settings other than the adapters' - made by an earlier stage or loaded with an
        # init checkpoint - are refused by apply_stage below, naming stages.i.lora.KEY: peft keeps the first)
        context = getattr(model, "context_length", None)                  # (a music encoder has none)
        _require(not isinstance(context, int) or st.max_len <= context, f"stages.{i}.max_len",
                 f"{st.max_len} tokens, past the LLM's context of {context} (max_position_embeddings)")
        try:           # before any stage trains: a later stage's objective that cannot train this model
            build_objective(st.objective, st.objective_settings).check_model(model)
        except UserError as e:
            raise UserError(f"recipe field 'stages.{i}.objective': {e}") from None
        try:
            trained = apply_stage(model, st)
        except UserError as e:                         # peft on this LLM: lora.target_modules matching nothing
            raise _stage_field_error(e, f"stages.{i}") from None
        names = [n for n, _ in model.named_parameters()]
        for j, pat in enumerate(st.trainable):
            _require(any(fnmatch.fnmatchcase(n, pat) for n in names), f"stages.{i}.trainable.{j}",
                     f"pattern {pat!r} matches no parameter (names look like {names[0]!r})")
        _require(bool(trained), f"stages.{i}.trainable", f"stage '{st.name}' trains nothing")
        for pat in st.lr_scale:
            _require(any(fnmatch.fnmatchcase(n, pat) for n in trained), f"stages.{i}.lr_scale.{pat}",
                     f"pattern {pat!r} matches no trainable parameter of stage '{st.name}'")
    return model


def save_resolved(recipe: Recipe, run_dir: Path) -> Path:
    return write_text(Path(run_dir) / "recipe.yaml", recipe.to_yaml())
