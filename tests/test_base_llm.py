"""`llm: pretrained:RECIPE` (vlm.train.base_llm): the tiny recipes start from the text-pretrained LLM, trained
once per seed, cached, bit-identical when rebuilt, and the run that asks for it is the same whether it was
cached or trained just now. A text recipe shrunk to a few steps on a small text-only build stands in for
llava-text-tiny; the cache is a temporary folder (VLM_CACHE)."""
from __future__ import annotations

import json

import pytest
import test_train_common as C
import torch
import yaml

from vlm.errors import UserError


@pytest.fixture(scope="module")
def text_recipe(tmp_path_factory):
    """llava-text-tiny at 6 steps on a 200-sample text-only build (made by the base's own `build` settings)."""
    from vlm.train.recipe import load_recipe
    tmp = tmp_path_factory.mktemp("base")
    raw = load_recipe("llava-text-tiny", ["stages.0.steps=6", "stages.0.batch_size=4", "data.world.build.samples=200",
                                          "data.world.build.splits=[train]", "runtime.num_workers=0",
                                          "runtime.checkpoint_every=0", "runtime.log_every=1"],
                      check_files=False).to_dict()
    path = tmp / "text.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VLM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "base-llm"


def llm_state(model) -> dict:
    return {k: v.clone() for k, v in model.llm.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    """Every tensor of `b` equals `a`'s of the same name, bit for bit."""
    return all(torch.equal(a[k], v) for k, v in b.items())


def test_builds_once_per_seed_and_rebuilds_bit_identical(text_recipe, cache, monkeypatch, tmp_path):
    from vlm.train import base_llm
    from vlm.train.recipe import build_model, load_recipe
    spec = f"pretrained:{text_recipe}"
    recipe = load_recipe("llava-tiny", [f"model.settings.llm={spec}"], check_files=False)
    model = build_model(recipe.model, seed=1)
    folders = sorted(p for p in cache.iterdir() if p.is_dir())
    assert len(folders) == 1 and folders[0].name.startswith("llava-text-tiny-s1-")
    done = json.loads((folders[0] / base_llm.DONE).read_text())
    assert done["seed"] == 1 and (folders[0] / "data-world" / "index.json").exists()    # built from `build`
    # the model's LLM is the cached checkpoint's, trained (it moved away from the random tiny LLM)
    from vlm.model_files import load_multimodal, read_config
    final = folders[0] / "run" / "final"
    base = load_multimodal(final, read_config(final))
    got = llm_state(model)
    assert same(got, base.llm.state_dict())
    random = build_model(load_recipe("llava-tiny", ["model.settings.llm=tiny:llama"], check_files=False).model, seed=1)
    assert not same(got, random.llm.state_dict())
    # cached: a second model trains nothing (the log is untouched), same seed -> same LLM
    log = (folders[0] / "build.log").stat().st_mtime_ns
    again = build_model(recipe.model, seed=1)
    assert (folders[0] / "build.log").stat().st_mtime_ns == log
    assert same(got, llm_state(again))
    # another seed: another base
    other = build_model(recipe.model, seed=2)
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 2
    assert not same(got, llm_state(other))
    # deterministic per seed: a fresh cache trains the same weights, bit for bit
    monkeypatch.setenv("VLM_CACHE", str(tmp_path / "fresh"))
    rebuilt = build_model(recipe.model, seed=1)
    assert same(got, llm_state(rebuilt))


def test_key_follows_the_base_recipe(text_recipe, cache, tmp_path):
    from vlm.train import base_llm
    folder, _, _ = base_llm._plan(f"pretrained:{text_recipe}", 0)
    changed = tmp_path / "changed.yaml"
    raw = yaml.safe_load(text_recipe.read_text())
    raw["stages"][0]["lr"] = 1e-3
    changed.write_text(yaml.safe_dump(raw))
    other, _, _ = base_llm._plan(f"pretrained:{changed}", 0)
    assert folder != other and folder.parent == other.parent == cache
    # a stage field added later (lr_scale) leaves the key alone at its default, so older caches stay valid
    raw = yaml.safe_load(text_recipe.read_text())
    for value, same_key in (({}, True), ({"llm.*": 2.0}, False)):
        raw["stages"][0]["lr_scale"] = value
        changed.write_text(yaml.safe_dump(raw))
        assert (base_llm._plan(f"pretrained:{changed}", 0)[0] == folder) is same_key
    _, _, key_doc = base_llm._plan(f"pretrained:{text_recipe}", 0)
    assert "lr_scale" not in key_doc["recipe"]["stages"][0]


def test_run_is_the_same_cached_or_not(text_recipe, cache, tmp_path):
    """The base trains in its own process: the asking run's losses do not depend on whether it was cached."""
    world = tmp_path / "world"
    C.run_vlm("data", "build", "synthetic-world", "--out", str(world), "--samples", "120", "--splits", "train",
              "--workers", "1", "--tasks", "color", "shape", "caption")
    overrides = [f"data.world.shards=[{world / 'train'}]", f"model.settings.llm=pretrained:{text_recipe}",
                 "model.settings.audio=null", "model.settings.music=null", "model.settings.video=null",
                 "runtime.checkpoint_every=0", "runtime.log_every=1", "runtime.num_workers=0",
                 "stages.1.filter.tasks=[color, shape]", "stages.2.filter.tasks=[color, shape]"]
    for i in range(3):
        overrides += [f"stages.{i}.steps=2", f"stages.{i}.batch_size=4"]
    env = {**C.env(), "VLM_CACHE": str(cache.parent)}
    runs = {}
    for name in ("cold", "warm"):
        p = C.subprocess.run(C.vlm_cmd("train", "llava-tiny", "--out", str(tmp_path / name), *overrides), cwd=C.REPO,
                             env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-2000:]
        assert ("[base-llm] training" in p.stdout) == (name == "cold")
        runs[name] = [(r["loss"], r["grad_norm"]) for _, r in sorted(C.step_rows(tmp_path / name).items())]
    assert len(runs["cold"]) == 6 and runs["cold"] == runs["warm"]


@pytest.mark.parametrize("name", ["llava-tiny", "iaa-tiny", "dragonfly-tiny", "omni-tiny", "llava-audio-tiny",
                                  "llava-music-tiny", "llava-video-tiny"])
def test_tiny_recipes_start_from_it_and_skeletons_train_nothing(name, cache):
    from vlm.train.recipe import base_llm_skeleton, check_model, load_recipe
    recipe = load_recipe(name, check_files=False)
    settings = recipe.model.settings
    assert (settings.get("llm") or settings["base_settings"]["llm"]) == "pretrained:llava-text-tiny"
    shaped = base_llm_skeleton(settings)               # smoke recipes and skeletons: llava-text-tiny's own LLM
    assert (shaped.get("llm") or shaped["base_settings"]["llm"]) == "tiny:llama"
    check_model(recipe)                                # the meta-device skeleton
    assert not cache.exists()


def test_vlm2vec_tiny_starts_from_random_weights(cache):
    """The embedder trains from scratch (its val split preferred the random tiny Llama to llava-text-tiny's,
    model_cards/vlm2vec.md): building it trains no base LLM."""
    from vlm.train.recipe import build_model, load_recipe
    recipe = load_recipe("vlm2vec-tiny", check_files=False)
    assert "llm" not in recipe.model.settings["base_settings"]
    model = build_model(recipe.model, seed=0)
    assert model.llm.config.model_type == "llama" and not cache.exists()


def test_bad_specs_name_the_field(tmp_path):
    from vlm.train.recipe import load_recipe
    with pytest.raises(UserError, match=r"recipe field 'model.settings.llm': unknown recipe 'nope'"):
        load_recipe("llava-tiny", ["model.settings.llm=pretrained:nope"], check_files=False)
    with pytest.raises(UserError, match=r"model.settings.base_settings.llm.*itself starts from"):
        load_recipe("vlm2vec-tiny", ["model.settings.base_settings.llm=pretrained:llava-tiny"], check_files=False)
    with pytest.raises(UserError, match=r"recipe field 'data.world.build.sample' is unknown; BuildConfig has: "):
        load_recipe("llava-text-tiny", ["data.world.build.sample=3"], check_files=False)
    with pytest.raises(UserError, match=r"recipe field 'data.world.shards': a source with build settings"):
        load_recipe("llava-text-tiny", [f"data.world.shards=[{tmp_path}/x/*.tar]"], check_files=False)
    with pytest.raises(UserError, match="name the recipe that trains the LLM"):
        load_recipe("llava-tiny", ["model.settings.llm='pretrained:'"], check_files=False)
    # a base recipe over a user's shards that are not there: named when the model is built, nothing trains
    from vlm.train.recipe import build_model
    raw = load_recipe("llava-text-tiny", [f"data.world.shards=[{tmp_path}/none/*.tar]", "data.world.build=null"],
                      check_files=False).to_dict()
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(raw))
    spec = load_recipe("llava-tiny", [f"model.settings.llm=pretrained:{base}"], check_files=False).model
    with pytest.raises(UserError, match=rf"base LLM 'pretrained:{base}': .*{tmp_path}/none"):
        build_model(spec, seed=0)


def test_missing_build_source_is_built_by_train(tmp_path):
    """`vlm train llava-text-tiny` on a fresh checkout: the text-only data set is built first."""
    out = tmp_path / "text-data"
    C.run_vlm("train", "llava-text-tiny", "--out", str(tmp_path / "run"), f"data.world.shards=[{out / 'train'}]",
              "data.world.build.samples=100", "data.world.build.splits=[train]", "stages.0.steps=2",
              "stages.0.batch_size=2", "runtime.num_workers=0", "runtime.checkpoint_every=0")
    assert (out / "index.json").exists() and (tmp_path / "run" / "final" / "config.json").exists()
