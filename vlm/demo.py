"""`vlm demo`: the main job on the built-in default, end to end on a laptop CPU.

    vlm demo                                  # data/synthetic-world, runs/demo
    vlm demo --out runs/demo2 --samples 2000 stages.1.steps=100

1. builds the `synthetic-world` data set if absent (`vlm data build synthetic-world`),
2. trains the `llava-tiny` recipe through its curriculum stages (`vlm train llava-tiny`),
3. evaluates the trained and the untrained model on the synthetic-world capability suite
   (`vlm eval --suite synthetic-world-quick`) and prints the capability table and where the plots are.
Each step is skipped when its output exists (a finished training run, finished benchmarks); a rerun into the same
--out with another data set, sample count, seed, recipe or recipe override is refused (`--suite` may change). Settings are
`DemoConfig` fields (flags, `--config FILE.yaml`, or KEY=value); any other key=value overrides the
recipe (e.g. stages.1.steps=100). The resolved settings are saved as OUT/demo_config.yaml.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from vlm.atomic import write_text
from vlm.config import add_config_flags, config_from_args, read_yaml, save_config
from vlm.errors import UserError


@dataclass
class DemoConfig:
    out: str = field(default="runs/demo", metadata={"help": "run folder (training, eval, plots)"})
    data: str = field(default="data/synthetic-world", metadata={"help": "synthetic-world folder (built if absent)"})
    samples: int = field(default=4000, metadata={"help": "training samples if the data set is built"})
    seed: int = 0
    suite: str = "synthetic-world-quick"
    recipe: str = field(default="llava-tiny", metadata={"help": "a built-in recipe or a YAML file"})
    recipe_overrides: list[str] = field(default_factory=list, metadata={"flag": None})


# settings that change the trained model: a rerun into the same --out with others would reuse that model
# (each step is skipped when its output exists) and label its results with the new settings
MODEL_FIELDS = ("data", "samples", "seed", "recipe", "recipe_overrides")


def check_same_run(cfg: DemoConfig, saved: Path) -> None:
    """Refuse a rerun into an --out whose demo was made with other model settings (the suite may change)."""
    if not saved.is_file():
        return
    before = read_yaml(saved, what="demo config")
    changed = [f"{k} ({before[k]!r} -> {getattr(cfg, k)!r})" for k in MODEL_FIELDS        # (a field an older
               if k in before and before[k] != getattr(cfg, k)]                              # version lacked: not compared)
    if changed:
        raise UserError(f"{saved.parent} already holds a demo made with other settings: {', '.join(changed)}; "
                        f"give another --out, or remove {saved.parent} to start again")


DATA_FILE = "demo_data.json"            # OUT/demo_data.json: the identity of the data set the model was trained on


def data_identity(data: Path) -> str:
    import hashlib
    return hashlib.sha256((data / "index.json").read_bytes()).hexdigest()[:16]


def check_same_data(data: Path, saved: Path, trained: bool) -> None:
    """The data set at --data rebuilt in place since the demo's model was trained on it (another seed or
    sample count given to `vlm data build`): refused, as other settings are; recorded on the first run."""
    import json
    now = data_identity(data)
    if saved.is_file():
        before = json.loads(saved.read_text()).get("index_sha256")
        if trained and before != now:
            raise UserError(f"{data} is not the data set the demo in {saved.parent} was trained on (its index.json "
                            f"changed since); give another --out, or remove {saved.parent} to start again")
        if before == now:
            return
    saved.parent.mkdir(parents=True, exist_ok=True)
    write_text(saved, json.dumps({"data": str(data), "index_sha256": now}))


def run(cfg: DemoConfig) -> int:
    from benchmarks.cli import check_something_applied, say_records
    from benchmarks.registry import resolve
    from benchmarks.report import capability_table
    from benchmarks.runner import RunConfig, evaluate
    from vlm.train.recipe import build_model, load_recipe
    from vlm.train.trainer import recipe_difference, train

    t0 = time.time()
    out, data = Path(cfg.out), Path(cfg.data)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: a file, not a folder")
    from vlm.data.cli import BuildConfig, build_if_absent
    overrides = [f"data.world.shards=[{data / 'train'}]", f"runtime.seed={cfg.seed}", *cfg.recipe_overrides]
    recipe = load_recipe(cfg.recipe, overrides, check_files=False)   # a bad recipe or override: said before
    benches = resolve(suite=cfg.suite)                         # minutes of building; a misspelt suite too
    check_same_run(cfg, out / "demo_config.yaml")
    run_dir = out / recipe.name
    final = run_dir / "final"
    if (final / "config.json").exists() and (run_dir / "recipe.yaml").is_file():
        where = recipe_difference(run_dir / "recipe.yaml", recipe)   # the recipe FILE edited since: same name
        if where is not None:
            raise UserError(f"{out} already holds a demo whose model was trained with another recipe: '{where[0]}' "
                            f"({where[1]!r} -> {where[2]!r}); give another --out, or remove {out} to start again")
    build_if_absent(BuildConfig(out=str(data), samples=cfg.samples, seed=cfg.seed))
    check_same_data(data, out / DATA_FILE, trained=(final / "config.json").exists())
    recipe = load_recipe(cfg.recipe, overrides)
    save_config(cfg, out / "demo_config.yaml")
    if not (final / "config.json").exists():
        print(f"[demo] training {recipe.name} into {run_dir}", flush=True)
        train(recipe, run_dir, resume=(run_dir / "checkpoints").exists())
    untrained = out / f"{recipe.name}-untrained"
    if not (untrained / "config.json").exists():
        build_model(recipe.model, seed=cfg.seed).save_pretrained(untrained)
    print(f"[demo] evaluating trained vs untrained on '{cfg.suite}'", flush=True)
    res = evaluate([str(final), str(untrained)], benches, RunConfig(out=str(out / "eval"), data=str(data)))
    from benchmarks.model_card import results_rows, write_results
    write_results(out / "eval" / "results.jsonl", results_rows(res.table, seed=cfg.seed))   # for model_cards/llava.md
    print()
    print(capability_table(res.table))
    print()
    say_records(res)
    check_something_applied(res)
    print(f"training curves : {run_dir / 'loss_lr.png'}  (metrics: {run_dir / 'metrics.jsonl'})")
    print(f"eval report     : {out / 'eval' / 'report.html'}  ({out / 'eval' / 'report.md'}, "
          f"results: {out / 'eval' / 'results.jsonl'})")
    print(f"checkpoint      : {final}  (vlm chat {final} \"<image>\\nWhat color is the circle?\" --image IMG)")
    print(f"[demo] done in {time.time() - t0:.0f} s")
    return 0


def cmd_demo(args) -> int:
    own = {f.name for f in fields(DemoConfig)}
    words = args.overrides
    args.overrides = [o for o in words if o.partition("=")[0].split(".")[0] in own]
    cfg = config_from_args(DemoConfig, args, what="demo config field")
    cfg.recipe_overrides += [o for o in words if o not in args.overrides]     # the rest: recipe overrides
    return run(cfg)


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="build synthetic-world, train llava-tiny, evaluate it (the main job)",
                       description=__doc__.split("\n\n")[0])
    add_config_flags(p, DemoConfig)
    p.set_defaults(func=cmd_demo)
