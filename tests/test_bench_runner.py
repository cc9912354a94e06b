"""The runner end to end on tiny shards and models: per-sample rows, aggregate, report and chart; a rerun
skips finished work; another output folder hits the feature cache; `vlm eval` bad input exits 2."""
from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import replace

import pandas as pd
import pytest
import torch

from benchmarks.fixtures import (
    fit_open_clip,
    tiny_open_clip_config,
    write_wds_classification,
)
from vlm.errors import UserError

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny synthetic-world (val + test), a fitted tiny CLIP, a random tiny llava checkpoint."""
    import vlm.families
    from vlm.data.synthetic import build_synthetic_world
    tmp = tmp_path_factory.mktemp("runner")
    world = tmp / "sw"
    build_synthetic_world(world, samples=30, seed=0, eval_per_task=4, splits=("val", "test"), workers=1)
    cfg = tiny_open_clip_config(tmp / "tiny-clip-runner.json")
    wds = write_wds_classification(tmp / "wds_colors", n_per_class=8, shards=2)
    clip = f"open_clip:{cfg}:{fit_open_clip(cfg, wds, tmp / 'clip.safetensors', steps=60)}"
    torch.manual_seed(0)
    llava = str(vlm.families.build("llava", "tiny").save_pretrained(tmp / "llava-tiny"))
    return dict(tmp=tmp, world=world, wds=wds, clip=clip, llava=llava)


def _benches(a):
    from benchmarks.registry import get_benchmark
    probe = get_benchmark("sw-probe-music-chord")
    probe = replace(probe, name="probe-chord-val", data=replace(probe.data, train_split="val"), options={"steps": 50})
    return [get_benchmark(f"wds:{a['wds']}"), *[get_benchmark(n) for n in (
        "sw-shapes", "sw-relation-spatial", "sw-relation-attribute", "sw-retrieval", "sw-mmeb", "sw-vqa-color",
        "sw-vqa-mc", "sw-caption")], probe]


def check_html_report(out, ok):
    """report.html: every benchmark and every sample of the run, media inlined, no external URL."""
    import re
    page = (out / "report.html").read_text()
    for bench in ok["benchmark"].unique():
        assert f"<summary>{bench} " in page, bench
    for rec_file in (out / "results").glob("*/*.json"):
        if json.loads(rec_file.read_text())["status"] == "ok":
            for key in pd.read_parquet(rec_file.with_suffix(".parquet"))["key"].astype(str):
                assert f"<code>{key}</code>" in page, (rec_file.name, key)
    assert "http://" not in page and "https://" not in page
    assert not re.findall(r"""(?:src|href)\s*=\s*(?!["']?(?:data:|#))""", page)
    assert "data:image/png;base64," in page and "data:image/jpeg;base64," in page        # chart, thumbnails
    assert "<audio controls" in page and 'name="show" value="disagree"' in page
    assert page.count('data-error="1"') > 0 and page.count('data-disagree="1"') > 0


def test_runner_end_to_end_rerun_and_cache(assets):
    from benchmarks.runner import RunConfig, evaluate
    a = assets
    benches = _benches(a)
    cfg = RunConfig(out=a["tmp"] / "out", data=str(a["world"]), cache_dir=a["tmp"] / "cache", progress=False)
    res = evaluate([a["clip"], a["llava"]], benches, cfg)
    t = res.table
    assert len(t) == 2 * len(benches)
    ok = t[t["status"] == "ok"]
    skipped = t[t["status"] == "skipped"]
    # CLIP cannot generate or probe audio; everything else runs for both
    assert set(skipped["benchmark"]) == {"sw-vqa-color", "sw-vqa-mc", "sw-caption", "probe-chord-val"}
    assert skipped["model"].nunique() == 1 and skipped["model"].iloc[0].startswith("open_clip:")
    assert ok["score"].notna().all()
    for rec_file in (a["tmp"] / "out" / "results").glob("*/*.json"):
        rec = json.loads(rec_file.read_text())
        if rec["status"] == "ok":
            rows = pd.read_parquet(rec_file.with_suffix(".parquet"))
            assert len(rows) > 0 and {"model", "benchmark", "key"} <= set(rows.columns)
            if "n" in rec["metrics"]:
                assert len(rows) == rec["metrics"]["n"]
    mmeb = json.loads(t[(t["benchmark"] == "sw-mmeb")].iloc[0]["metrics"])
    assert {"precision@1", "ind", "ood", "classification", "vqa", "retrieval", "grounding"} <= set(mmeb)
    out = a["tmp"] / "out"
    for f in ("aggregate.parquet", "aggregate.csv", "report.md", "chart.png"):
        assert (out / f).stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "## object recognition" in report and "| attributes |" in report and "Not applicable" in report
    check_html_report(out, ok)
    lookups = res.cache_hits + res.cache_misses

    # Rerun into the same folder: every benchmark is found done, nothing is computed.
    again = evaluate([a["clip"], a["llava"]], benches, cfg)
    assert again.reused == len(again.records) and again.cache_misses == 0 and again.cache_hits == 0
    assert again.table["score"].equals(t["score"])

    # Another folder, same cache: every cached computation is a hit, scores unchanged.
    cfg2 = replace(cfg, out=a["tmp"] / "out2")
    warm = evaluate([a["clip"], a["llava"]], benches, cfg2)
    assert warm.reused == 0 and warm.cache_misses == 0 and warm.cache_hits == lookups
    merged = warm.table.merge(t, on=["model", "benchmark"], suffixes=("", "_first"))
    assert (merged["score"].fillna(-1) == merged["score_first"].fillna(-1)).all()


def _cli(argv, capsys):
    from vlm.cli import main
    rc = main(argv)
    return rc, capsys.readouterr()


def test_cli_bad_input_exits_2(assets, tmp_path, capsys):
    a = assets
    out = str(tmp_path / "o")
    common = ["--out", out, "--cache-dir", str(tmp_path / "c"), "--quiet"]
    # missing split
    nosplit = tmp_path / "wds_nosplit"
    write_wds_classification(nosplit, n_per_class=1, shards=1, split="train")
    rc, cap = _cli(["eval", "--model", a["clip"], "--bench", f"wds:{nosplit}", *common], capsys)
    assert rc == 2 and "no 'test' split" in cap.err and len(cap.err.strip().splitlines()) == 1
    # shards without cls
    nocls = write_wds_classification(tmp_path / "wds_nocls", n_per_class=1, shards=1, with_cls=False)
    rc, cap = _cli(["eval", "--model", a["clip"], "--bench", f"wds:{nocls}", *common], capsys)
    assert rc == 2 and "has no 'cls'" in cap.err and len(cap.err.strip().splitlines()) == 1
    # unknown benchmark
    rc, cap = _cli(["eval", "--model", a["clip"], "--bench", "no-such-bench", *common], capsys)
    assert rc == 2 and "unknown benchmark 'no-such-bench'" in cap.err and len(cap.err.strip().splitlines()) == 1
    # a model path that is not a checkpoint
    (tmp_path / "not_a_ckpt").mkdir()
    rc, cap = _cli(["eval", "--model", str(tmp_path / "not_a_ckpt"), "--bench", f"wds:{a['wds']}", *common], capsys)
    assert rc == 2 and "not a vlm checkpoint" in cap.err and len(cap.err.strip().splitlines()) == 1
    # synthetic-world benchmarks without the data
    rc, cap = _cli(["eval", "--model", a["clip"], "--bench", "sw-shapes", "--data", str(tmp_path / "nowhere"), *common], capsys)
    assert rc == 2 and "data folder not found" in cap.err
    # settings that parse but mean nothing (--limit 0 used to mean no limit, a negative one scored 1 sample)
    for flag, value in (("--limit", "0"), ("--limit", "-3"), ("--batch-size", "0")):
        rc, cap = _cli(["eval", "--model", a["clip"], "--bench", f"wds:{a['wds']}", flag, value, *common], capsys)
        field = flag[2:].replace("-", "_")
        assert rc == 2 and f"'{field}': must be >= 1, got {value}" in cap.err, cap.err
    rc, cap = _cli(["eval", "--model", a["clip"], "--bench", f"wds:{a['wds']}", "--limit", "9" * 20, *common], capsys)
    assert rc == 2 and "'limit': must be <= 2**62" in cap.err, cap.err        # (an OverflowError after the whole run)
    rc, cap = _cli(["eval", "--model", a["clip"], "--bench", f"wds:{a['wds']}", "--split", "../x", *common], capsys)
    assert rc == 2 and "'split': a split name (val, test ...), not a path" in cap.err, cap.err   # read outside it
    (tmp_path / "afile").write_text("x")
    rc, cap = _cli(["eval", "--model", a["clip"], "--bench", f"wds:{tmp_path / 'afile'}", *common], capsys)
    assert rc == 2 and "a file, not a data folder" in cap.err, cap.err              # it said "not found"
    # a user's wds folder with odd text files (each was a traceback, or a class that could never win)
    import shutil
    odd = {"latin1": ("classnames.txt", "rouge\ncafé\n".encode("latin-1"), "not UTF-8 text"),
           "brace": ("zeroshot_classification_templates.txt", b"a {} photo of {c}\n", "has the field {}: only {c}"),
           "field": ("zeroshot_classification_templates.txt", b"{c} with {color}\n", "has the field {color}: only {c}"),
           # `{c.upper}` was "without {c}"; a lone brace
           "attr": ("zeroshot_classification_templates.txt", b"a {c.upper}\n", "uses {c.upper}: only {c} itself"),
           "lone": ("zeroshot_classification_templates.txt", b"a {c} }\n", "does not format (Single '}'"),
           "no c": ("zeroshot_classification_templates.txt", b"a photo\n", "has no {c} for the class name"),
           "twice": ("classnames.txt", b"red\nred\n", "listed twice"),
           "one": ("classnames.txt", b"red\n", "needs at least 2"),
           "zero": ("test/nshards.txt", b"0\n", "0 shards")}
    for name, (fname, data, message) in odd.items():
        d = tmp_path / f"odd_{name}"
        shutil.copytree(a["wds"], d)
        (d / fname).write_bytes(data)
        rc, cap = _cli(["eval", "--model", a["clip"], "--bench", f"wds:{d}", *common], capsys)
        assert rc == 2 and message in cap.err and len(cap.err.strip().splitlines()) == 1, (name, cap.err)
    (tmp_path / "afile").write_text("x")
    for flag in ("--out", "--cache-dir"):
        argv = ["eval", "--model", a["clip"], "--bench", f"wds:{a['wds']}", *common, flag, str(tmp_path / "afile")]
        rc, cap = _cli(argv, capsys)
        assert rc == 2 and "is a file, not a folder" in cap.err, cap.err


def test_cli_run_list_and_model_card(assets, tmp_path, capsys):
    import yaml
    a = assets
    card = tmp_path / "card.md"
    card.write_text("---\nlibrary_name: vlm-suite\ntags: [clip]\n---\n\n# tiny clip\n\nKept as written.\n")
    rc, cap = _cli(["eval", "--model", a["clip"], "--bench", f"wds:{a['wds']}", "--bench", "sw-colors",
                    "--data", str(a["world"]), "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c"), "--quiet",
                    "--model-card", str(card)], capsys)
    assert rc == 0 and "| type | capability |" in cap.out
    text = card.read_text()
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["tags"] == ["clip"] and "Kept as written." in text and "## Evaluation results" in text
    results = meta["model-index"][0]["results"]
    assert {r["dataset"]["name"] for r in results} == {"wds:wds_colors", "sw-colors"}
    assert all(0.0 <= r["metrics"][0]["value"] <= 1.0 for r in results)
    # the card's numbers come from the results file written beside it; `vlm card --check` catches an edit
    assert meta["vlm-results"] == ["results/card.jsonl"] and (tmp_path / "results" / "card.jsonl").exists()
    rc, cap = _cli(["card", "--check", str(card)], capsys)
    assert rc == 0, cap.out
    edited = text.replace(f"{results[0]['metrics'][0]['value']}", "0.9999", 1)
    card.write_text(edited)
    rc, cap = _cli(["card", "--check", str(card)], capsys)
    assert rc == 1 and "0.9999" in cap.out
    rc, cap = _cli(["card", str(card)], capsys)
    assert rc == 0 and card.read_text() == text
    # --model-card writes the run's results: not the other benchmarks the --out holds (they were added)
    other = tmp_path / "card2.md"
    other.write_text("---\nlibrary_name: vlm-suite\n---\n\n# again\n")
    rc, cap = _cli(["eval", "--model", a["clip"], "--bench", "sw-colors", "--data", str(a["world"]), "--out",
                    str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c"), "--quiet", "--model-card", str(other)], capsys)
    again = yaml.safe_load(other.read_text().split("---\n")[1])["model-index"][0]["results"]
    assert rc == 0 and [r["dataset"]["name"] for r in again] == ["sw-colors"]
    rc, cap = _cli(["eval", "list", "sw-vqa-*"], capsys)
    assert rc == 0 and "sw-vqa-color" in cap.out and "sw-shapes" not in cap.out
    rc, cap = _cli(["list", "benchmarks", "ub-*"], capsys)
    assert rc == 0 and "ub-cifar10" in cap.out
    rc, cap = _cli(["eval", "list", "--suites"], capsys)
    assert rc == 0 and "synthetic-world" in cap.out
    # a pattern narrows the suites too (it was ignored: every suite, exit 0)
    rc, cap = _cli(["eval", "list", "music*", "--suites"], capsys)
    assert rc == 0 and [ln.split()[0] for ln in cap.out.splitlines()] == ["music-probes"]
    rc, cap = _cli(["eval", "list", "nomatch*", "--suites"], capsys)
    assert rc == 1 and not cap.out and "no suite matches 'nomatch*'" in cap.err


def test_split_reads_another_split_under_its_own_name(assets, tmp_path, capsys):
    """`vlm eval --split val`: the val samples (not the test ones), results named BENCH@val; a missing
    split is a one-line error."""
    a = assets
    common = ["--model", a["llava"], "--bench", "sw-vqa-color", "--data", str(a["world"]), "--quiet",
              "--cache-dir", str(tmp_path / "c")]
    rc, _ = _cli(["eval", *common, "--split", "val", "--out", str(tmp_path / "val")], capsys)
    assert rc == 0
    rc, _ = _cli(["eval", *common, "--out", str(tmp_path / "test")], capsys)
    assert rc == 0
    val = pd.read_parquet(next((tmp_path / "val" / "results").glob("*/sw-vqa-color_val.parquet")))
    test = pd.read_parquet(next((tmp_path / "test" / "results").glob("*/sw-vqa-color.parquet")))
    assert len(val) > 0 and len(test) > 0 and set(val["key"]).isdisjoint(test["key"])
    rc, cap = _cli(["eval", *common, "--split", "val", "--out", str(tmp_path / "test")], capsys)   # both in one folder
    assert rc == 0
    rows = [r for r in cap.out.splitlines() if r.startswith("| ") and "sw-vqa-color" in r]
    assert len(rows) == 2 and any("@val | sw-vqa-color@val |" in r for r in rows), cap.out   # never averaged
    rc, cap = _cli(["eval", *common, "--split", "train", "--out", str(tmp_path / "train")], capsys)
    assert rc == 2 and len(cap.err.strip().splitlines()) == 1 and "train" in cap.err


def test_an_edited_classnames_file_is_a_new_question(assets, tmp_path):
    """The stored result of a wds benchmark answered again after classnames.txt changed (it said 'already done'
    with the old classes' score)."""
    import shutil

    from benchmarks.registry import get_benchmark
    from benchmarks.runner import RunConfig, evaluate
    wds = tmp_path / "colors"
    shutil.copytree(assets["wds"], wds)
    cfg = RunConfig(out=tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    first = evaluate([assets["clip"]], [get_benchmark(f"wds:{wds}")], cfg)
    names = (wds / "classnames.txt").read_text().splitlines()
    (wds / "classnames.txt").write_text("\n".join(reversed(names)) + "\n")
    again = evaluate([assets["clip"]], [get_benchmark(f"wds:{wds}")], cfg)
    assert again.reused == 0 and first.reused == 0
    assert again.table["score"].iloc[0] != first.table["score"].iloc[0]
    # fewer names than the cached labels need: one line naming a sample (an IndexError traceback: a review); a
    # blank line before the last name: refused (dropped, it shifted every later class silently)
    from vlm.errors import UserError
    (wds / "classnames.txt").write_text("\n".join(names[:-1]) + "\n")
    with pytest.raises(UserError, match=rf"sample .*: cls {len(names) - 1} outside the {len(names) - 1} classes"):
        evaluate([assets["clip"]], [get_benchmark(f"wds:{wds}")], cfg)
    (wds / "classnames.txt").write_text("\n".join([names[0], "", *names[1:]]) + "\n\n")
    with pytest.raises(UserError, match="classnames.txt: line 2 is blank"):
        evaluate([assets["clip"]], [get_benchmark(f"wds:{wds}")], cfg)
    (wds / "dataset_type.txt").write_bytes(b"classif\xe9cation")
    with pytest.raises(UserError, match="dataset_type.txt: not UTF-8 text"):
        get_benchmark(f"wds:{wds}")


def test_two_models_or_folders_of_one_name_keep_both_results(assets, tmp_path):
    """Two checkpoints named `model` and two `wds:colors` folders in one run: each keeps its own column / row
    (one result was dropped from the table, or one folder's file overwrote the other's)."""
    import shutil

    from benchmarks.registry import get_benchmark
    from benchmarks.runner import RunConfig, evaluate
    for d in ("a", "b"):
        shutil.copytree(assets["wds"], tmp_path / d / "colors")
    shutil.copytree(assets["llava"], tmp_path / "one" / "model")
    shutil.copytree(assets["llava"], tmp_path / "two" / "model")
    cfg = RunConfig(out=tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    res = evaluate([str(tmp_path / "one" / "model"), str(tmp_path / "two" / "model")],
                   [get_benchmark(f"wds:{tmp_path / d / 'colors'}") for d in ("a", "b")], cfg)
    assert len(res.table) == 4 and res.table["model"].nunique() == 2 and res.table["benchmark"].nunique() == 2
    assert set(res.table["benchmark"]) == {f"wds:{tmp_path / d / 'colors'}" for d in ("a", "b")}
    # two calls, one folder each: the second keeps its path as its name (it replaced the first's results), and
    # each folder asked again finds its own results
    cfg2 = RunConfig(out=tmp_path / "out2", cache_dir=tmp_path / "cache", progress=False)
    one = str(tmp_path / "one" / "model")
    a, b = (get_benchmark(f"wds:{tmp_path / d / 'colors'}") for d in ("a", "b"))
    evaluate([one], [a], cfg2)
    second = evaluate([one], [b], cfg2)
    assert second.records[0]["benchmark"] == f"wds:{tmp_path / 'b' / 'colors'}"
    assert set(second.table["benchmark"]) == {"wds:colors", f"wds:{tmp_path / 'b' / 'colors'}"}
    assert evaluate([one], [a], cfg2).reused == 1 and evaluate([one], [b], cfg2).reused == 1
    # two user folders are two rows of the capability table, each its own name, not one averaged "custom" row
    from benchmarks.report import capability_groups
    groups = {label: sorted(g["benchmark"].unique()) for _, label, g in capability_groups(res.table)}
    assert groups == {f"wds:{tmp_path / d / 'colors'}": [f"wds:{tmp_path / d / 'colors'}"] for d in ("a", "b")}


def test_a_name_another_call_gave_other_weights_keeps_both_and_shows_what_was_asked(assets, tmp_path):
    """Found by a review: two checkpoints both named `model`, evaluated by two calls into one --out, shared one
    column: the later call's result replaced the earlier one's in every view, and a third call re-asking the
    first model printed the second's score (the reused record was older). An earlier call's name is taken now
    (the new model takes its path, as within one call), and a reused record is the one shown."""
    import shutil

    import torch

    import vlm.families
    from benchmarks.registry import get_benchmark
    from benchmarks.runner import RunConfig, evaluate
    from benchmarks.store import latest, read_records
    one, two = tmp_path / "one" / "model", tmp_path / "two" / "model"
    shutil.copytree(assets["llava"], one)
    torch.manual_seed(1)
    vlm.families.build("llava", "tiny").save_pretrained(two)
    cfg = RunConfig(out=tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    bench = [get_benchmark(f"wds:{assets['wds']}")]
    first = evaluate([str(one)], bench, cfg).table
    second = evaluate([str(two)], bench, cfg)
    assert second.models[0].name == str(two)                      # "model" is one/model's in this folder
    third = evaluate([str(one)], bench, cfg)
    assert third.reused == 1 and third.models[0].name == "model"
    table = third.table.set_index("model")
    assert set(table.index) == {"model", str(two)} and table.loc["model", "model_spec"] == str(one)
    assert table.loc["model", "score"] == first.iloc[0]["score"]
    # one path, weights changed in place and back: the weights asked for last are the ones shown
    shutil.copy2(one / "model.safetensors", tmp_path / "kept.safetensors")          # bytes and times
    shutil.copy(two / "model.safetensors", one / "model.safetensors")
    evaluate([str(one)], bench, cfg)
    shutil.copy2(tmp_path / "kept.safetensors", one / "model.safetensors")
    again = evaluate([str(one)], bench, cfg)
    shown = [r for _, r in latest(read_records(cfg.out)) if r["model"] == "model"]
    assert again.reused == 1 and len(shown) == 1 and shown[0]["fingerprint"] == again.models[0].fingerprint


def test_result_file_names_of_long_names_alike_at_the_start_differ():
    from benchmarks.runner import slug
    a, b = (f"wds:/data/{'x' * 90}/{d}/colors" for d in ("a", "b"))
    assert slug(a) != slug(b) and len(slug(a)) == len(slug(b)) == 80
    assert slug(a) == slug(a) and slug("wds:/data/colors") == "wds_data_colors" and slug("///") == "model"


def test_an_undecodable_image_is_skipped_and_counted_not_the_end_of_the_benchmark(assets, tmp_path):
    import shutil

    import webdataset as wds

    from benchmarks.registry import get_benchmark
    from benchmarks.runner import RunConfig, evaluate
    d = tmp_path / "colors"
    shutil.copytree(assets["wds"], d)
    n = int((d / "test" / "nshards.txt").read_text())
    with wds.TarWriter(str(d / "test" / f"{n}.tar")) as w:
        w.write({"__key__": "zbad", "jpg": b"\xff\xd8 nine", "cls": b"0"})
    (d / "test" / "nshards.txt").write_text(f"{n + 1}\n")
    cfg = RunConfig(out=tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    res = evaluate([assets["clip"]], [get_benchmark(f"wds:{d}")], cfg)
    row = res.table.iloc[0]
    metrics = json.loads(row["metrics"])
    assert row["status"] == "ok" and metrics["skipped_bad_image"] == 1.0
    clean = evaluate([assets["clip"]], [get_benchmark(f"wds:{assets['wds']}")], replace(cfg, out=tmp_path / "o2"))
    assert row["score"] == clean.table.iloc[0]["score"] and metrics["n"] == json.loads(clean.table.iloc[0]["metrics"])["n"]
    # the skip and a --limit reach what is published: results rows and report.md (only stderr and the json had them)
    from benchmarks.model_card import results_rows
    from benchmarks.report import report_markdown
    limited = evaluate([assets["clip"]], [get_benchmark(f"wds:{d}")], replace(cfg, out=tmp_path / "o3", limit=3))
    rows = results_rows(res.table) + results_rows(limited.table)
    assert rows[0]["skipped"] == "bad_image 1" and "limit" not in rows[0] and rows[1]["limit"] == 3
    report = report_markdown(res.table)
    assert "## Items not scored" in report and "bad_image 1" in report
    # one table with both rows: counts stay counts (100.000 before)
    both = report_markdown(pd.concat([res.table, limited.table], ignore_index=True)).split("## Items not scored")[1]
    assert "| 3 | 3 | - |" in both and ".000 |" not in both.split("\n\n")[1], both
    assert "; not scored: bad_image 1" in (tmp_path / "out" / "report.html").read_text()
    assert "; scored under --limit 3" in (tmp_path / "o3" / "report.html").read_text()


def test_nothing_applicable_is_said_and_exits_2(assets, tmp_path, capsys):
    """Every benchmark not applicable to the model: the reason was only in report.md, and the exit code 0."""
    rc, cap = _cli(["eval", "--model", assets["clip"], "--bench", "sw-vqa-color", "--data", str(assets["world"]),
                    "--out", str(tmp_path / "o"), "--quiet", "--no-cache"], capsys)
    assert rc == 2 and "sw-vqa-color: not applicable (" in cap.err
    assert cap.err.strip().splitlines()[-1].startswith("vlm eval: error: nothing was evaluated")
    assert "chart.png" not in cap.err                 # (a chart that was not written was advertised)
    assert "feature cache: off" in cap.err            # (--no-cache printed hits and misses)


def test_repeated_suites_are_all_evaluated():
    """`--suite a --suite b` ran only b, without a word."""
    import argparse

    from benchmarks.config import EvalConfig
    from benchmarks.registry import get_suite, resolve
    from vlm.config import add_config_flags, config_from_args
    parser = argparse.ArgumentParser()
    add_config_flags(parser, EvalConfig)
    args = parser.parse_args(["--model", "m", "--suite", "synthetic-world-audio", "--suite", "synthetic-world-music",
                              "--out", "x"])
    cfg = config_from_args(EvalConfig, args)
    names = [b.name for b in resolve(cfg.benches, cfg.suite)]
    want = [*get_suite("synthetic-world-audio").benchmarks]
    want += [n for n in get_suite("synthetic-world-music").benchmarks if n not in want]
    assert names == want and len(names) > len(get_suite("synthetic-world-audio").benchmarks)
    assert [b.name for b in resolve(suite="synthetic-world-audio")] == list(get_suite("synthetic-world-audio").benchmarks)
    # an eval_config.yaml saved before (`suite: null` beside --bench, or one name) still reads
    from vlm.config import from_dict
    assert from_dict(EvalConfig, {"out": "x", "suite": None, "benches": ["sw-vqa"]}).suite is None
    assert [b.name for b in resolve(["sw-vqa"], None)] == ["sw-vqa"]
    # the same --bench twice (it ran twice, the second as 'sw-vqa#2' in the results) is one benchmark
    assert [b.name for b in resolve(["sw-vqa", "sw-colors", "sw-vqa"], None)] == ["sw-vqa", "sw-colors"]
    assert from_dict(EvalConfig, {"out": "x", "suite": "synthetic-world-audio"}).suite == ["synthetic-world-audio"]
    # `--bench a b`: b was called a bad override with a training recipe's example; it says to repeat the flag
    from vlm.errors import UserError
    with pytest.raises(UserError, match=r"^'sw-vqa-shape' is neither an option nor a key=value setting; a flag "
                                        r"takes one value, repeat it for several \(--model A --model B\)$"):
        config_from_args(EvalConfig, parser.parse_args(["--model", "m", "--bench", "sw-vqa", "sw-vqa-shape", "--out", "x"]))


def test_a_question_whose_image_does_not_decode_is_skipped_and_counted(tmp_path):
    """The generative and likelihood tasks stopped the whole evaluation at one undecodable image (exit 2),
    where the zero-shot tasks skip and count it."""
    import webdataset as wds

    import vlm
    from benchmarks.registry import get_benchmark
    from benchmarks.runner import RunConfig, evaluate
    from vlm.data.synthetic import build_synthetic_world
    world = tmp_path / "sw"
    build_synthetic_world(world, samples=20, seed=0, eval_per_task=3, splits=("test",), workers=1,
                          classification=False, tasks=["color"])
    shard = world / "test" / "shard-000000.tar"
    samples = list(wds.WebDataset(str(shard), shardshuffle=False))
    with wds.TarWriter(str(shard)) as w:
        for i, s in enumerate(samples):
            w.write({k: (b"\xff\xd8 not a jpeg" if k == "jpg" and i == 1 else v) for k, v in s.items()
                     if not k.startswith("__") or k == "__key__"})
    ckpt = vlm.build("llava", "tiny", audio=None, music=None, video=None).save_pretrained(tmp_path / "m")
    cfg = RunConfig(out=tmp_path / "out", data=str(world), cache=False, progress=False, batch_size=2)
    res = evaluate([str(ckpt)], [get_benchmark("sw-vqa-color"), get_benchmark("sw-vqa-mc")], cfg)
    for _, row in res.table.iterrows():
        metrics = json.loads(row["metrics"])
        assert row["status"] == "ok" and metrics["skipped_bad_media"] == 1.0 and metrics["n"] == 2.0, row.to_dict()


def test_media_the_models_preprocessing_refuses_is_skipped_and_counted_in_every_generative_mode(tmp_path):
    """An audio file that decodes but is too short for the encoder's log-mel (1 sample) ended the whole
    `vlm eval` run, every benchmark of it, without naming the sample (a review): the generative, likelihood and
    caption tasks answer the other samples and count that one as bad_media, named."""
    import io

    import soundfile as sf
    import webdataset as wds

    import vlm
    from benchmarks.registry import get_benchmark
    from benchmarks.runner import RunConfig, evaluate
    from vlm.data.synthetic import build_synthetic_world
    world = tmp_path / "sw"
    build_synthetic_world(world, samples=20, seed=0, eval_per_task=3, splits=("test",), workers=1,
                          classification=False, tasks=["audio_tone", "audio_caption"])
    one = io.BytesIO()
    sf.write(one, [0.5], 16000, format="FLAC")
    bad = {}
    for shard in sorted((world / "test").glob("*.tar")):
        samples = list(wds.WebDataset(str(shard), shardshuffle=False))
        with wds.TarWriter(str(shard)) as w:
            for s in samples:
                task = json.loads(s["json"])["task"]
                if "flac" in s and task not in bad:                # the first sample of each task: 1 sample long
                    bad[task] = s["__key__"]
                    s = {**s, "flac": one.getvalue()}
                w.write({k: v for k, v in s.items() if not k.startswith("__") or k == "__key__"})
    ckpt = vlm.build("llava", "tiny", vision=None, music=None, video=None).save_pretrained(tmp_path / "m")
    tone = get_benchmark("sw-vqa-audio-tone")
    benches = [tone, replace(tone, name="tone-loglik", options={**tone.options, "mode": "loglik"}),
               get_benchmark("sw-caption-audio")]
    res = evaluate([str(ckpt)], benches, RunConfig(out=tmp_path / "out", data=str(world), cache=False, progress=False,
                                                   batch_size=2))
    for rec, task in zip(res.records, ("audio_tone", "audio_tone", "audio_caption")):
        m = rec["metrics"]
        assert rec["status"] == "ok" and m["skipped_bad_media"] == 1.0 and m["n"] == 2.0, rec
        assert rec["tables"]["skipped_examples"]["bad_media"] == bad[task]


def test_a_prompt_past_the_models_context_is_skipped_as_too_long_not_scored(tmp_path):
    """`vlm chat` refused a prompt past the LLM's context; evaluation generated from it and scored the noise (a
    review: a dragonfly checkpoint with a short context). It is skipped and counted as too_long."""
    import vlm
    from benchmarks.models import generate_each, load_model
    from vlm.errors import UserError
    llm = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 40}
    ckpt = vlm.build("llava", "tiny", llm=llm, audio=None, music=None, video=None).save_pretrained(tmp_path / "m")
    m = load_model(str(ckpt))
    short, long = ("Hi?", {}), (" ".join(["red"] * 30) + "?", {})
    answers = generate_each(m, [short, long, short], 8, batch_size=3)
    assert isinstance(answers[0], str) and answers[0] == answers[2] == m.generate([short], 8)[0]
    assert isinstance(answers[1], UserError) and answers[1].reason == "too_long"
    assert "past the model's context of 40 tokens" in str(answers[1])
    with pytest.raises(UserError, match="past the model's context of 40 tokens"):
        m.loglikelihood([(*long, " red")])
    # a prompt that fits is answered, its answer cut at the context (lmms-eval tasks ask for hundreds of tokens)
    n, asked = len(m.prepare(*short).input_ids), []
    generate = m.model.generate
    m.model.generate = lambda *a, **kw: asked.append(kw["max_new_tokens"]) or generate(*a, **kw)
    assert isinstance(generate_each(m, [short], 500, batch_size=1)[0], str) and asked == [40 - n]
    m.model.generate = generate
    # a prompt near the context batched with short ones: the short ones keep the answers they get alone (the
    # batch's padded length cut every row's room to the long row's: a review)
    near = next(p for p in ((" ".join(["red"] * k) + "?", {}) for k in range(40))
                if 40 - 8 < len(m.prepare(*p).input_ids) < 40)
    together, alone = generate_each(m, [short, near, short], 8, batch_size=3), m.generate([short], 8)[0]
    assert together[0] == together[2] == alone and together[1] == m.generate([near], 8)[0]
    # a checkpoint that does not load is the run's error, raised once, not a skip of every sample
    broken = tmp_path / "broken"
    import shutil
    shutil.copytree(ckpt, broken)
    weights = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(weights[:len(weights) // 2])
    with pytest.raises(UserError, match="model.safetensors"):
        generate_each(load_model(str(broken)), [short, short], 8, batch_size=2)


def test_a_small_limit_skips_what_it_leaves_too_little_of_not_the_whole_run(assets, tmp_path):
    """Found by a review: `--suite synthetic-world --limit 2` ended the whole run at sw-mmeb ('dataset cls-shape
    has no queries'), with no report; without a limit such data is still an error."""
    from benchmarks.registry import get_benchmark
    from benchmarks.runner import RunConfig, evaluate
    benches = [get_benchmark(n) for n in ("sw-mmeb", "sw-shapes")]
    cfg = RunConfig(out=tmp_path / "out", cache_dir=tmp_path / "cache", progress=False, data=str(assets["world"]),
                    limit=1)
    res = evaluate([assets["clip"]], benches, cfg)
    rows = res.table.set_index("benchmark")
    assert rows.loc["sw-mmeb", "status"] == "skipped" and "under --limit 1: " in rows.loc["sw-mmeb", "reason"]
    assert rows.loc["sw-shapes", "status"] == "ok" and (tmp_path / "out" / "report.md").is_file()
    # the same data without the limit: scored
    whole = evaluate([assets["clip"]], benches[:1], replace(cfg, out=tmp_path / "o2", limit=None))
    assert whole.table.iloc[0]["status"] == "ok"
    # an error the limit does not cause (a shard that does not read) still ends the run under --limit: it
    # was "not applicable (under --limit 1: ...)", the other benchmarks scored and exit 0
    broken = tmp_path / "broken"
    shutil.copytree(assets["world"], broken)
    first = min((broken / "test").glob("*.tar"))
    first.write_bytes(first.read_bytes()[:700])
    with pytest.raises(UserError, match="unreadable tar shard"):
        evaluate([assets["clip"]], benches[:1], replace(cfg, out=tmp_path / "o3", data=str(broken)))


def test_eval_checks_the_card_first_lists_no_match_and_keeps_tables_whole(assets, tmp_path, capsys):
    """Found by a review: a model card with unpaired markers was refused only after the whole evaluation;
    `vlm eval list nomatch` printed nothing and exited 0; a model name with '|' broke report.md's tables; a
    killed run's temporary result files stayed."""
    from benchmarks.report import report_markdown
    from benchmarks.runner import RunConfig, evaluate
    from vlm.cli import main
    card = tmp_path / "lone.md"
    card.write_text("---\nx: 1\n---\n<!-- vlm-eval results: start -->\nmine\n")
    out = tmp_path / "out"
    assert main(["eval", "--model", assets["clip"], "--bench", f"wds:{assets['wds']}", "--out", str(out),
                 "--model-card", str(card), "--quiet"]) == 2
    assert "markers do not pair up" in capsys.readouterr().err and not (out / "results").exists()
    assert main(["eval", "list", "nomatch*"]) == 1 and "no benchmark matches 'nomatch*'" in capsys.readouterr().err
    (out / "results" / "x").mkdir(parents=True)
    gone = subprocess.Popen(["true"])
    gone.wait()
    torn = out / "results" / "x" / f".wds.json.tmp-{gone.pid}"
    torn.write_text("{")
    from benchmarks.registry import get_benchmark
    res = evaluate([assets["clip"]], [get_benchmark(f"wds:{assets['wds']}")],
                   RunConfig(out=out, cache_dir=tmp_path / "cache", progress=False))
    assert not torn.exists()
    table = res.table.assign(model="a|b\nc")
    lines = [ln for ln in report_markdown(table).splitlines() if ln.startswith("|")]
    columns = lines[1].count("|")                                      # the |---|---| line under the header
    assert all(ln.count("|") - ln.count("\\|") == columns for ln in lines[:3]), lines[:3]


def test_capability_rows_keep_kinds_apart_and_say_a_partial_mean():
    """Found by a review: a capability row averaged a probe's accuracy (the encoder alone) with a VQA accuracy
    (the model answering), and a model scored on one of a row's two benchmarks had its mean printed beside
    another model's mean over both, as if comparable."""
    from benchmarks.report import capability_table, report_markdown
    from benchmarks.report_html import _capability_html

    def row(model, bench, kind, score):
        return {"model": model, "model_spec": model, "benchmark": bench, "type": "music", "capability": "pitch",
                "kind": kind, "metric": "accuracy", "score": score, "status": "ok"}
    table = pd.DataFrame([row("a", "probe-pitch", "probe", 0.9), row("a", "vqa-pitch", "vqa", 0.3),
                          row("b", "vqa-pitch", "vqa", 0.5), row("a", "vqa-pitch-2", "vqa", 0.1)])
    lines = capability_table(table).splitlines()
    assert lines[2:] == ["| music | pitch (probe) | probe-pitch | 0.900 | n/a |",
                         "| music | pitch (vqa) | vqa-pitch, vqa-pitch-2 | 0.200 | 0.500 (1 of 2) |"]
    assert "\n".join(lines) in report_markdown(table)
    assert '0.500 <span class="muted">(1 of 2)</span>' in _capability_html(table, ["a", "b"])


def _rewrite_shard(shard, change) -> None:
    """Each sample of a tar shard through change(i, sample) -> sample or None (left out)."""
    import webdataset as wds
    samples = [{k: v for k, v in s.items() if not k.startswith("__") or k == "__key__"}
               for s in wds.WebDataset(str(shard), shardshuffle=False)]
    with wds.TarWriter(str(shard)) as w:
        for i, s in enumerate(samples):
            if (s := change(i, s)) is not None:
                w.write(s)


def test_a_sample_without_image_label_or_readable_json_is_skipped_by_reason_and_named(assets, tmp_path, capsys):
    """A sample with no image, a `cls` that is missing or not a number, json that does not parse or is not an
    object, a txt caption that is not UTF-8 ended the whole evaluation in one line (a review): each is skipped,
    counted by its reason and the first one's key named; the score is that of the data without them."""
    import webdataset as wds

    from benchmarks.registry import get_benchmark
    from benchmarks.runner import RunConfig, evaluate
    d = tmp_path / "colors"
    shutil.copytree(assets["wds"], d)
    n = int((d / "test" / "nshards.txt").read_text())
    jpg = next(iter(wds.WebDataset(str(d / "test" / "0.tar"), shardshuffle=False)))["jpg"]
    with wds.TarWriter(str(d / "test" / f"{n}.tar")) as w:
        w.write({"__key__": "znoimg", "cls": b"0", "txt": b"a caption"})
        w.write({"__key__": "zbadcls", "jpg": jpg, "cls": b"red"})
        w.write({"__key__": "znocls", "jpg": jpg})
        w.write({"__key__": "zbadimg", "jpg": b"\xff\xd8 nine", "cls": b"1"})
    (d / "test" / "nshards.txt").write_text(f"{n + 1}\n")
    common = ["--cache-dir", str(tmp_path / "c"), "--quiet"]
    rc, cap = _cli(["eval", "--model", assets["clip"], "--bench", f"wds:{d}", "--out", str(tmp_path / "o1"), *common],
                   capsys)
    assert rc == 0, cap.err
    assert ("skipped 4 sample(s): bad_image 1 (first: zbadimg), bad_label 1 (first: zbadcls), no_image 1 (first: "
            "znoimg), no_label 1 (first: znocls)") in cap.err, cap.err
    rc, cap = _cli(["eval", "--model", assets["clip"], "--bench", f"wds:{assets['wds']}", "--out", str(tmp_path / "o2"),
                    *common], capsys)
    scores = [pd.read_csv(tmp_path / o / "aggregate.csv")["score"].iloc[0] for o in ("o1", "o2")]
    assert rc == 0 and scores[0] == scores[1]
    (d / "test" / "nshards.txt").write_text(f"{n}\n")      # a stale count: read as clip_benchmark does, and said
    rc, cap = _cli(["eval", "--model", assets["clip"], "--bench", f"wds:{d}", "--out", str(tmp_path / "o4"), *common],
                   capsys)
    assert rc == 0 and f"says {n} shard(s); 1 other .tar file(s) in {d / 'test'} are not read" in cap.err, cap.err
    assert "skipped" not in cap.err
    # every sample unusable: one line with the counts and the commonest reason's message
    bad = write_wds_classification(tmp_path / "nocls", n_per_class=1, shards=1, with_cls=False)
    rc, cap = _cli(["eval", "--model", assets["clip"], "--bench", f"wds:{bad}", "--out", str(tmp_path / "o3"),
                    *common], capsys)
    assert rc == 2 and len(cap.err.strip().splitlines()) == 1
    assert "no usable sample (skipped no_label 6; e.g. " in cap.err and "has no 'cls'" in cap.err, cap.err

    # shards read by sample (retrieval, relation, VQA): json that does not parse or is a list, no image, a txt
    # caption that is not UTF-8, a question without a human turn: skipped and named, the rest scored as without them
    broken, clean = tmp_path / "sw-broken", tmp_path / "sw-clean"
    for w in (broken, clean):
        shutil.copytree(assets["world"], w)
    shard = min((broken / "test").glob("*.tar"))
    keys = [s["__key__"] for s in wds.WebDataset(str(shard), shardshuffle=False)]
    spoil = {keys[0]: lambda s: {**s, "json": b"{not json"}, keys[4]: lambda s: {**s, "json": b"[1, 2]"},  # 4 per task
             keys[8]: lambda s: {k: v for k, v in s.items() if k != "jpg"},
             keys[12]: lambda s: {**s, "txt": b"caf\xe9"},
             keys[1]: lambda s: {**s, "json": json.dumps({**json.loads(s["json"]), "conversations": "hi"}).encode()}}
    _rewrite_shard(shard, lambda i, s: spoil[s["__key__"]](s) if s["__key__"] in spoil else s)
    gone = {keys[i] for i in (0, 4, 8, 12)}               # what retrieval cannot use (the question is not read)
    _rewrite_shard(min((clean / "test").glob("*.tar")), lambda i, s: None if s["__key__"] in gone else s)
    benches = [get_benchmark(b) for b in ("sw-retrieval", "sw-relation-spatial", "sw-relation-attribute", "sw-mmeb")]
    cfg = RunConfig(out=tmp_path / "b", cache_dir=tmp_path / "c", progress=False)
    res = evaluate([assets["clip"]], benches, replace(cfg, data=str(broken)))
    got = res.table
    want = evaluate([assets["clip"]], benches[:1], replace(cfg, data=str(clean), out=tmp_path / "w")).table
    assert list(got["status"]) == ["ok"] * 4 and got["score"].iloc[0] == want["score"].iloc[0], got
    skipped = [json.loads(m) for m in got["metrics"]]
    assert all(m["skipped_bad_json"] == 2 for m in skipped), skipped          # once each, whatever its task
    assert skipped[0]["skipped_no_image"] == 1 and skipped[0]["skipped_bad_text"] == 1, skipped[0]
    # MMEB counts queries: the sample once per dataset that would have made one of it
    assert skipped[3]["skipped_no_image"] >= 1 and skipped[3]["skipped_bad_json"] == 2, skipped[3]
    assert res.records[3]["tables"]["skipped_examples"]["no_image"] == keys[8], res.records[3]["tables"]
    vqa = evaluate([assets["llava"]], [get_benchmark("sw-vqa-color"), get_benchmark("sw-caption")],
                   replace(cfg, data=str(broken), out=tmp_path / "v"))
    m = [json.loads(x) for x in vqa.table["metrics"]]
    assert list(vqa.table["status"]) == ["ok", "ok"] and m[0]["skipped_no_question"] == 1, m
    assert m[0]["skipped_bad_json"] == 2 == m[1]["skipped_bad_json"], m


def test_json_fields_of_another_type_are_skipped_and_counted_once_per_sample(assets, tmp_path):
    """Found by a review of the skips: a `task` that is a list, `choices: 5`, `labels` that is a list ended a run
    with a traceback (sw-mmeb, VQA, every task-filtered benchmark); one key in two shards was counted once; an
    unrelated bad sample turned another benchmark's "no samples" into a message about it; a sample attribute mode
    never reads was counted as skipped; `cls: -1` ended the run."""
    import webdataset as wds

    from benchmarks.registry import get_benchmark
    from benchmarks.runner import RunConfig, evaluate
    world = tmp_path / "sw"
    shutil.copytree(assets["world"], world)
    shard = min((world / "test").glob("*.tar"))
    keys = [s["__key__"] for s in wds.WebDataset(str(shard), shardshuffle=False)]     # 4 samples per task

    def with_json(**fields):
        return lambda s: {**s, "json": json.dumps({**json.loads(s["json"]), **fields}).encode()}
    spoil = {keys[1]: with_json(conversations="hi"), keys[9]: with_json(task=["count"]),
             keys[0]: lambda s: {k: v for k, v in s.items() if k != "jpg"},      # a one-object colour scene
             keys[5]: with_json(choices=5), keys[7]: with_json(labels=[1, 2])}
    _rewrite_shard(shard, lambda i, s: spoil[s["__key__"]](s) if s["__key__"] in spoil else s)
    first = next(s for s in wds.WebDataset(str(shard), shardshuffle=False) if s["__key__"] == keys[1])
    with wds.TarWriter(str(world / "test" / "shard-000099.tar")) as w:          # the same key in another shard
        w.write({k: v for k, v in first.items() if not k.startswith("__") or k == "__key__"})
    cfg = RunConfig(out=tmp_path / "o", cache_dir=tmp_path / "c", progress=False, data=str(world))
    res = evaluate([assets["clip"]], [get_benchmark(b) for b in ("sw-mmeb", "sw-relation-attribute")], cfg)
    assert list(res.table["status"]) == ["ok", "ok"], res.table
    mmeb, attr = (r["metrics"] for r in res.records)
    assert mmeb["skipped_bad_json"] == 1 and mmeb["skipped_bad_labels"] >= 2 and mmeb["skipped_no_image"] >= 1, mmeb
    assert attr["skipped_bad_json"] == 1 and attr["skipped_bad_labels"] == 1 and "skipped_no_image" not in attr, attr
    limited = evaluate([assets["clip"]], [get_benchmark("sw-mmeb")], replace(cfg, out=tmp_path / "l", limit=1))
    assert list(limited.table["status"]) in (["ok"], ["skipped"]), limited.table   # never the end of the run
    vqa = evaluate([assets["llava"]], [get_benchmark("sw-vqa-color"), get_benchmark("sw-vqa-shape")],
                   replace(cfg, out=tmp_path / "v"))
    color, shape = (r["metrics"] for r in vqa.records)
    assert color["skipped_no_question"] == 2 and color["skipped_bad_json"] == 1, color          # once per shard
    assert shape["n"] == 4 and "chance" not in shape, shape                       # choices: 5 scored, no chance
    with pytest.raises(UserError, match=r"no samples for benchmark sw-text-fact \(task in \['text_fact'\]\); 1 "
                                        r"sample\(s\) whose json does not read could not be told apart"):
        evaluate([assets["llava"]], [get_benchmark("sw-text-fact")], replace(cfg, out=tmp_path / "t"))


def test_a_folders_views_compare_one_set_of_weights_one_question_and_each_model_once(assets, tmp_path):
    """Found by a review: a path whose weights changed showed the old weights' scores of benchmarks the new
    weights were not asked on; a benchmark re-asked on other data or another --limit sat beside the old
    question's scores; one checkpoint asked for twice (or spelt otherwise by a later call) was a second column;
    --limit on a benchmark of several tasks took the first task's samples alone."""
    import shutil
    from dataclasses import replace

    import pandas as pd

    import vlm.families
    from benchmarks.registry import get_benchmark
    from benchmarks.runner import RunConfig, evaluate
    one, two = tmp_path / "one" / "model", tmp_path / "two" / "model"
    shutil.copytree(assets["llava"], one)
    shutil.copytree(assets["llava"], two)
    cfg = RunConfig(out=str(tmp_path / "out"), data=str(assets["world"]), cache_dir=str(tmp_path / "cache"),
                    progress=False)
    color, shape = get_benchmark("sw-vqa-color"), get_benchmark("sw-vqa-shape")
    first = evaluate([str(one)], [color, shape], cfg)
    assert first.not_shown == 0 and len(first.table) == 2
    torch.manual_seed(1)
    vlm.families.build("llava", "tiny").save_pretrained(tmp_path / "other")
    shutil.copy(tmp_path / "other" / "model.safetensors", one / "model.safetensors")     # other weights in place
    res = evaluate([str(one)], [shape], cfg)
    assert list(res.table["benchmark"]) == ["sw-vqa-shape"] and res.not_shown == 2       # the old weights' two
    # the same path twice, spelt otherwise: one model, evaluated once (found done)
    res = evaluate([str(one), str(one) + "/", str(tmp_path / "one" / ".." / "one" / "model")], [shape], cfg)
    assert len(res.models) == 1 and res.reused == 1 and len(res.records) == 1
    # another --limit for shape: the earlier full question's score is not shown beside the limited one
    res = evaluate([str(two)], [shape], replace(cfg, limit=2))
    assert list(res.table["model"]) == [str(two)] and res.not_shown == 3
    # a model two calls name otherwise keeps its first name: one column
    both = evaluate([str(one), str(two)], [color], replace(cfg, out=str(tmp_path / "out2")))
    names = [m.name for m in both.models]
    again = evaluate([str(two)], [color], replace(cfg, out=str(tmp_path / "out2")))
    assert again.models[0].name == names[1] and again.reused == 1 and set(again.table["model"]) == set(names)
    # --limit on a benchmark of several tasks draws from each task in turn
    res = evaluate([str(one)], [get_benchmark("sw-vqa")], replace(cfg, out=str(tmp_path / "out3"), limit=4))
    rows = pd.read_parquet(next((tmp_path / "out3" / "results").glob("*/sw-vqa.parquet")))
    assert len(rows) == 4 and rows["task"].nunique() == 4, rows["task"].tolist()


def test_a_model_or_benchmark_that_cannot_run_fails_before_any_work(assets, tmp_path):
    """Found by a review: a truncated second checkpoint, a tokenizer missing, or a benchmark whose task the data
    has none of failed when reached, after the first model's benchmarks had run (and no report was written)."""
    import os
    import shutil
    from dataclasses import replace

    from benchmarks.registry import get_benchmark
    from benchmarks.runner import RunConfig, evaluate
    from vlm.errors import UserError
    good, bad, notok = (tmp_path / n for n in ("good", "bad", "notok"))
    for d in (good, bad, notok):
        shutil.copytree(assets["llava"], d)
    data = (good / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    for f in notok.glob("tokenizer*"):
        os.remove(f)
    cfg = RunConfig(out=str(tmp_path / "out"), data=str(assets["world"]), cache_dir=str(tmp_path / "cache"),
                    progress=False)
    color = get_benchmark("sw-vqa-color")
    for second, why in ((bad, "corrupt weights"), (notok, "the tokenizer does not load")):
        with pytest.raises(UserError, match=why):
            evaluate([str(good), str(second)], [color], cfg)
        assert not list((tmp_path / "out").rglob("*.json"))                # nothing ran
    nothing = replace(color, name="sw-vqa-nothing", data=replace(color.data, tasks=("no_such_task",)))
    with pytest.raises(UserError, match=r"no samples for benchmark sw-vqa-nothing \(task in \['no_such_task'\]; .*index.json lists"):
        evaluate([str(good)], [color, nothing], cfg)
    assert not list((tmp_path / "out").rglob("*.json"))
    if os.path.isdir("/proc/self"):                  # a place no folder can be made: one line (a traceback before)
        with pytest.raises(UserError, match="eval config field 'out': cannot create the folder /proc/vlm-x/out"):
            evaluate([str(good)], [color], replace(cfg, out="/proc/vlm-x/out"))


def test_latest_hides_whole_rows_only_by_records_it_shows():
    """Found by a review: a benchmark's question was taken from its newest record even when that record was
    itself hidden (other weights under its model's name): every other model's row of it vanished."""
    from pathlib import Path

    from benchmarks.store import latest, not_shown

    def rec(model, fp, bench, sig, t):
        return Path(f"{model}-{fp}/{bench}.json"), {"model": model, "fingerprint": fp, "benchmark": bench,
                                                   "signature": sig, "finished": t}
    records = [rec("N", "n1", "X", "full", 1), rec("M", "f1", "X", "limit10", 2), rec("M", "f2", "Y", "y", 3)]
    shown = [(r["model"], r["benchmark"]) for _, r in latest(records)]
    assert shown == [("N", "X"), ("M", "Y")] and not_shown(records) == 1
    # N asked again on X under a limit: the full question's result is left out (one question per row)
    records.append(rec("N", "n1", "X2", "x", 4))
    records.append(rec("K", "k1", "X", "limit10", 5))
    assert [(r["model"], r["benchmark"]) for _, r in latest(records)] == [("M", "Y"), ("N", "X2"), ("K", "X")]


def test_limit_across_tasks_reads_no_further_than_the_index_lets_it_need(assets, monkeypatch):
    """Found by a review: a benchmark with a task the build lacks read the whole split under --limit (it waited
    for every task to give `limit`); the split's index says what each task can give. And a limited result of
    such a benchmark is another question than the first-task-only one stored before (its signature)."""
    import dataclasses
    import hashlib

    import benchmarks.tasks as T
    from benchmarks.registry import Roots, get_benchmark
    from benchmarks.runner import bench_signature
    color = get_benchmark("sw-vqa-color")
    both = dataclasses.replace(color, name="two", data=dataclasses.replace(color.data, tasks=("color", "no_such_task")))
    read = []
    real = T.iter_samples

    def counting(files):
        for s in real(files):
            read.append(s.key)
            yield s
    monkeypatch.setattr(T, "iter_samples", counting)
    ctx = T.Context(roots=Roots(str(assets["world"])), batch_size=4, workers=0, progress=False, limit=2)
    samples, _ = T.load_samples(both, ctx)
    assert [s.meta()["task"] for s in samples] == ["color", "color"]
    assert read[-1] == samples[-1].key                      # stopped at the second colour question
    def old(b, lim):                                        # the signature before the across-tasks limit
        return hashlib.sha256(json.dumps([dataclasses.asdict(b), lim, ""], sort_keys=True, default=str).encode()
                              ).hexdigest()[:16]
    assert bench_signature(color, 2) == old(color, 2) and bench_signature(both, 2) != old(both, 2)
    assert bench_signature(both, None) == old(both, None)


def test_split_train_says_it_measures_fit(assets, tmp_path, capsys):
    """A review: `--split train` on a VQA benchmark scored training data without a word (a probe refuses it)."""
    from dataclasses import replace

    from benchmarks.registry import get_benchmark
    from benchmarks.runner import RunConfig, evaluate
    from vlm.data.synthetic import build_synthetic_world
    from vlm.errors import UserError
    cfg = RunConfig(out=str(tmp_path / "o"), data=str(assets["world"]), progress=False, split="train", limit=2,
                    cache_dir=str(tmp_path / "c"))
    with pytest.raises(UserError, match="no 'train' split"):           # (this build has val and test only):
        evaluate([assets["llava"]], [get_benchmark("sw-vqa-color")], cfg)
    assert "note:" not in capsys.readouterr().err                      # the error alone, one line
    build_synthetic_world(tmp_path / "sw", samples=12, seed=0, splits=("train",), workers=1, tasks=["color"],
                          classification=False)
    res = evaluate([assets["llava"]], [get_benchmark("sw-vqa-color")], replace(cfg, data=str(tmp_path / "sw")))
    assert res.records[0]["status"] == "ok" and res.records[0]["benchmark"] == "sw-vqa-color@train"
    assert "note: --split train scores the samples a model may have trained on" in capsys.readouterr().err
