"""`vlm demo` (the README's main job) at a tiny budget: builds the data set, trains, evaluates, prints the
capability table of its own results and reuses them on a rerun; the table in the README is in exactly the
format the demo prints (re-rendered from its numbers by the demo's own table function)."""
from __future__ import annotations

import os
import re
import sys

import pandas as pd

sys.path.insert(0, os.path.dirname(__file__))
import test_train_common as C

README = C.REPO / "README.md"


def test_demo_end_to_end_at_a_tiny_budget(tmp_path):
    from benchmarks.report import capability_table
    from benchmarks.runner import aggregate
    out, data = tmp_path / "demo", tmp_path / "sw"
    args = ["demo", "--out", str(out), "--data", str(data), "--samples", "60",
            *[f"stages.{i}.steps=2" for i in range(3)], "runtime.checkpoint_every=0"]
    first = C.run_vlm(*args, timeout=900)
    assert (data / "index.json").is_file() and (out / "llava-tiny" / "final" / "config.json").is_file()
    table = capability_table(aggregate(out / "eval"))
    assert table in first.stdout                                       # what it prints is its own results
    assert table.splitlines()[0] == "| type | capability | benchmarks | llava-tiny/final | llava-tiny-untrained |"
    assert (out / "eval" / "results.jsonl").is_file() and (out / "eval" / "report.html").is_file()
    again = C.run_vlm(*args, timeout=900)                              # everything done: nothing trains again
    assert "[demo] training" in first.stdout and "[demo] training" not in again.stdout
    assert table in again.stdout


def readme_demo_table() -> list[str]:
    text = README.read_text()
    start = text.index("| type | capability | benchmarks | llava-tiny/final | llava-tiny-untrained |")
    lines = []
    for line in text[start:].splitlines():
        if not line.startswith("|"):
            break
        lines.append(line)
    return lines


def test_the_readme_demo_table_is_what_the_demo_prints():
    """Rebuilt from the README's own numbers through the demo's `capability_table`: the same text."""
    from benchmarks.report import capability_table
    lines = readme_demo_table()
    models = [c.strip() for c in lines[0].strip("|").split("|")][3:]
    rows = []
    for line in lines[2:]:
        typ, cap, benches, *scores = [c.strip() for c in line.strip("|").split("|")]
        assert re.fullmatch(r"\d\.\d{3}", scores[0]), line
        for m, s in zip(models, scores):
            for b in benches.split(", "):
                rows.append({"model": m, "benchmark": b, "type": typ, "capability": cap, "score": float(s), "status": "ok"})
    assert capability_table(pd.DataFrame(rows)) == "\n".join(lines)


def test_a_bad_recipe_override_stops_the_demo_before_it_builds_data(tmp_path, capsys):
    from vlm.cli import main
    rc = main(["demo", "--out", str(tmp_path / "demo"), "--data", str(tmp_path / "sw"), "--samples", "40",
               "stages.9.lr=1"])
    err = capsys.readouterr().err
    assert rc == 2 and "stages.9" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "sw").exists()                               # nothing built first


def test_a_rerun_into_the_same_out_with_another_seed_is_refused(tmp_path, capsys):
    """The steps are skipped when their outputs exist: a rerun with another seed (or recipe override) would
    reuse the model trained with the first and label its results with the second. Refused, before any work;
    another suite is an evaluation only and goes on to the data step."""
    from vlm.cli import main
    from vlm.config import save_config
    from vlm.demo import DemoConfig
    out, data = tmp_path / "demo", tmp_path / "sw"
    save_config(DemoConfig(out=str(out), data=str(data), samples=40, recipe_overrides=["stages.0.steps=2"]),
                out / "demo_config.yaml")
    for extra, field in ((["--seed", "1"], "seed (0 -> 1)"), (["stages.0.steps=3"], "recipe_overrides")):
        rc = main(["demo", "--out", str(out), "--data", str(data), "--samples", "40", *extra])
        err = capsys.readouterr().err
        assert rc == 2 and field in err and "another --out" in err and len(err.strip().splitlines()) == 1, err
    assert not data.exists()                                            # refused before the data step


def test_a_demo_refuses_before_any_work_what_would_reuse_or_overwrite_the_wrong_thing(tmp_path, capsys):
    """Found by a review: an edited --recipe FILE (same name) reused the model trained with the old one; --data
    naming a user's own folder (no index.json) had synthetic-world built over its shards; a misspelt --suite was
    said after the whole training; --out naming a file was a traceback on the rerun."""
    from vlm.cli import main
    from vlm.config import save_config
    from vlm.demo import DemoConfig
    from vlm.train.recipe import load_recipe, save_resolved
    out, data = tmp_path / "demo", tmp_path / "sw"
    my = tmp_path / "my.yaml"
    my.write_text(load_recipe("llava-tiny", check_files=False).to_yaml())          # `vlm recipe show` > my.yaml
    args = ["demo", "--out", str(out), "--data", str(data), "--recipe", str(my)]
    save_config(DemoConfig(out=str(out), data=str(data), recipe=str(my)), out / "demo_config.yaml")
    recipe = load_recipe(str(my), [f"data.world.shards=[{data / 'train'}]", "runtime.seed=0"], check_files=False)
    (out / recipe.name / "final").mkdir(parents=True)
    save_resolved(recipe, out / recipe.name)                           # what the trained model was trained with
    (out / recipe.name / "final" / "config.json").write_text("{}")
    my.write_text(my.read_text().replace("steps: 500", "steps: 400", 1))    # the file edited since
    mine = tmp_path / "mine"
    (mine / "train").mkdir(parents=True)
    (mine / "train" / "shard-000000.tar").write_bytes(b"precious")
    (tmp_path / "afile").write_text("x")
    cases = [(args, "trained with another recipe: 'stages."),
             (["demo", "--out", str(tmp_path / "d2"), "--data", str(mine)], "not a synthetic-world build (no index.json)"),
             (["demo", "--out", str(tmp_path / "d3"), "--data", str(data), "--suite", "synthetic-world-quik"],
              "synthetic-world-quik"),
             (["demo", "--out", str(tmp_path / "afile"), "--data", str(data)], "a file, not a folder")]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
    assert not data.exists() and (mine / "train" / "shard-000000.tar").read_bytes() == b"precious"


def test_a_demo_whose_data_set_was_rebuilt_in_place_is_refused(tmp_path, capsys):
    """Found by a review: `vlm data build` into the demo's --data with another seed, then a demo rerun: the
    model trained on the old data was reused and its results printed as the new data's."""
    import json

    from vlm.cli import main
    from vlm.data.cli import BuildConfig, build_if_absent
    from vlm.demo import DATA_FILE, check_same_data
    out, data = tmp_path / "demo", tmp_path / "sw"
    build_if_absent(BuildConfig(out=str(data), samples=40, seed=0, eval_per_task=2))
    check_same_data(data, out / DATA_FILE, trained=False)                  # what the first run records
    recorded = json.loads((out / DATA_FILE).read_text())["index_sha256"]
    check_same_data(data, out / DATA_FILE, trained=True)                   # the same data: fine
    (out / "llava-tiny" / "final").mkdir(parents=True)
    (out / "llava-tiny" / "final" / "config.json").write_text("{}")
    (data / "index.json").write_text((data / "index.json").read_text().replace('"seed": 0', '"seed": 1'))
    assert main(["demo", "--out", str(out), "--data", str(data), "--samples", "40"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not the data set the demo" in err[0], err
    assert json.loads((out / DATA_FILE).read_text())["index_sha256"] == recorded
