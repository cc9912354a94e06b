"""The package's shape: no import cycles, arrows pointing down, and the extension points a user needs
(a family, an objective) usable from one new file each through the public API."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("vlm", "encoders", "benchmarks")


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports, at the top or inside functions (a lazy import is an arrow)."""
    mods: dict[str, Path] = {}
    for pkg in PACKAGES:
        for f in (REPO / pkg).rglob("*.py"):
            parts = f.relative_to(REPO).with_suffix("").parts
            if "studies" in parts or not all((REPO.joinpath(*parts[:i]) / "__init__.py").exists()
                                             for i in range(1, len(parts))):
                continue                                   # scripts, not package modules
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = f

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = defaultdict(set)
    for name, f in mods.items():
        is_pkg = f.name == "__init__.py"
        for node in ast.walk(ast.parse(f.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = ".".join(here[:len(here) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                r = resolve(t)
                if r and r != name:
                    graph[name].add(r)
    return {m: graph[m] for m in mods}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("low, high", [
    ("vlm.model", "vlm.families"),              # the base model never imports the families
    ("vlm.model", "vlm.train"),
    ("vlm.connectors", "vlm.families"),
    ("vlm.data", "vlm.model"),                  # data knows the modality table, not the model
    ("vlm.data", "vlm.families"),
    ("vlm.data", "vlm.train"),
    ("encoders", "vlm.model"),
    ("benchmarks", "vlm.train"),                # benchmarks use the public API, never the trainer
])
def test_arrows_point_down(low, high):
    graph = import_graph()
    bad = sorted((m, t) for m, ts in graph.items() if m == low or m.startswith(low + ".")
                 for t in ts if t == high or t.startswith(high + "."))
    assert not bad, bad


def test_only_data_building_imports_the_synthetic_generator():
    graph = import_graph()
    users = sorted(m for m, ts in graph.items() if any(t.startswith("vlm.data.synthetic") for t in ts)
                   and not m.startswith("vlm.data.synthetic"))
    assert users == ["vlm.data.cli"], users


def test_a_new_family_and_objective_from_one_file_each_train_from_a_recipe(tmp_path, capsys):
    import json

    import test_train_common as C
    import toy_family
    import toy_objective  # noqa: F401  (registers toy_hidden_norm)
    import vlm
    from vlm.cli import main
    world = C.write_image_world(tmp_path / "world", n=24)
    model = {"family": "toy", "size": "tiny", "settings": {}}
    recipe = C.write_recipe(tmp_path / "toy.yaml", world, [
        C.stage("align", ["media.*.projector.*", "encoders.image.*"], steps=2),
        C.stage("norm", ["media.*"], llm="full", steps=2, objective="toy_hidden_norm",
                objective_settings={"weight": 0.5})], model=model, checkpoint_every=0)
    assert main(["list", "families", "toy"]) == 0
    assert capsys.readouterr().out.split()[0:2] == ["toy", "image"]
    assert main(["train", str(recipe), "--out", str(tmp_path / "run")]) == 0
    rows = C.step_rows(tmp_path / "run")
    assert sorted(rows) == [1, 2, 3, 4]
    assert all(r["loss"] is not None and "label_tokens" in r for s, r in rows.items() if s <= 2)
    assert all(r["loss"] is not None and r["tokens_seen"] > 0 for s, r in rows.items() if s > 2)
    stages = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e["stage"] for e in stages if e.get("event") == "stage_start"] == ["align", "norm"]
    loaded = vlm.load(tmp_path / "run" / "final")
    assert isinstance(loaded.media["image"].encoder, toy_family.PatchColours)
    assert loaded.media["image"].encoder is loaded.encoders["image"]
    assert loaded.config.family == "toy" and loaded.route.settings() == {"type": "plain"}


def test_list_filters_by_pattern_and_recipes_show_what_they_train(capsys):
    from vlm.cli import main
    assert main(["list", "families", "iaa"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].split()[0] == "iaa"
    assert main(["list", "recipes", "*-tiny"]) == 0
    rows = {ln.split()[0]: ln.split()[1] for ln in capsys.readouterr().out.strip().splitlines()}
    assert rows == {"llava-tiny": "image", "iaa-tiny": "image", "dragonfly-tiny": "image",
                    "llava-audio-tiny": "audio", "llava-music-tiny": "music", "llava-video-tiny": "video",
                    "omni-tiny": "video", "vlm2vec-tiny": "image", "llava-text-tiny": "text",
                    "mert-tiny": "music"}
    assert main(["list", "recipes", "tiny"]) == 1                      # nothing matches: said, not a blank output
    out = capsys.readouterr()
    assert out.out == "" and "no recipes match 'tiny'" in out.err and "'*tiny*'" in out.err


def test_the_processor_pickles_without_the_model():
    """Data-loader workers get the processor: tokenizer, preprocess settings and shape-only token counts."""
    import pickle

    import helpers_media as M
    import vlm
    for family in ("llava", "dragonfly"):
        model = vlm.build(family, "tiny")
        blob = pickle.dumps(model.processor)
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        assert len(blob) < weights / 4, (family, len(blob), weights)
        proc = pickle.loads(blob)
        conv = {"conversations": [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "red"}]}
        a, b = model.processor(conv, media={"image": [M.image()]}), proc(conv, media={"image": [M.image()]})
        assert a.input_ids == b.input_ids and a.labels == b.labels
