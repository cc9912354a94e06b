"""Every committed model card's `model-index` and results section are what its results files give:
`vlm card --check` regenerates each card from the files its front matter names and fails on a
difference (benchmarks.model_card). A card with no results files fails too: its numbers would be typed in.

    vlm card model_cards/NAME.md      # after changing a results file: regenerate, then commit both
"""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.model_card import _files_of, _split, check, read_results, summarize

CARDS = sorted((Path(__file__).resolve().parents[1] / "model_cards").glob("*.md"))


@pytest.mark.parametrize("card", CARDS, ids=[c.stem for c in CARDS])
def test_committed_card_is_regenerated_from_its_results_without_a_diff(card):
    meta, _, _ = _split(card.read_text(), str(card))
    files = _files_of(card, meta)                   # names its results files, and they exist
    assert all(f.is_file() and f.resolve().is_relative_to(card.parent.resolve()) for f in files)
    models, benches = summarize(read_results(files))
    assert models and benches
    diff = check(card)
    assert not diff, "\n".join(diff[:40])


def test_a_card_checks_alike_from_its_own_folder(monkeypatch):
    """`cd model_cards && vlm card --check llava.md` found a difference (the card's generated line named the
    folder as the path was written: none)."""
    monkeypatch.chdir(CARDS[0].parent)
    assert not check(Path(CARDS[0].name))


def test_attach_keeps_the_other_results_files_a_card_names(tmp_path):
    """`vlm card CARD --results FILE --name N` replaces results/N.jsonl only: a card built from two files
    (the llava card: the demo's and the modality study's) keeps both."""
    from benchmarks.model_card import attach, write_results
    row = {"benchmark": "sw-vqa-color", "metric": "accuracy", "n": 40, "seed": 0}
    write_results(tmp_path / "a.jsonl", [{**row, "model": "A", "score": 0.5}])
    write_results(tmp_path / "b.jsonl", [{**row, "model": "B", "score": 0.25}])
    card = tmp_path / "cards" / "m.md"
    attach(card, [tmp_path / "a.jsonl"])
    attach(card, [tmp_path / "b.jsonl"], name="m-extra")
    attach(card, [tmp_path / "b.jsonl"], name="m-extra.jsonl")    # again (its .jsonl dropped): named once
    meta, _, _ = _split(card.read_text(), str(card))
    assert meta["vlm-results"] == ["results/m.jsonl", "results/m-extra.jsonl"]
    models, _ = summarize(read_results(_files_of(card, meta)))
    assert set(models) == {"A", "B"}
    assert not check(card)


@pytest.mark.parametrize("name", ["a/b", "../m", "..", " ", "a\\b", " m", ".jsonl"])
def test_attach_refuses_a_results_name_with_a_folder(tmp_path, name):
    """--name is a file name under the card's results/: a folder in it (a/b, ../x) would be written where the
    front matter does not point; refused before anything is written."""
    from benchmarks.model_card import attach, write_results
    from vlm.errors import UserError
    write_results(tmp_path / "a.jsonl", [{"benchmark": "b", "metric": "acc", "n": 1, "seed": 0, "model": "A", "score": 0.5}])
    card = tmp_path / "cards" / "m.md"
    with pytest.raises(UserError, match="--name"):
        attach(card, [tmp_path / "a.jsonl"], name=name)
    assert not (tmp_path / "cards").exists()


def _card(tmp_path, body: str = "# m\n", results: str = "results/m.jsonl") -> Path:
    from benchmarks.model_card import write_results
    write_results(tmp_path / "results" / "m.jsonl", [{"model": "A", "benchmark": "b", "metric": "acc", "score": 0.5}])
    card = tmp_path / "m.md"
    card.write_text(f"---\nvlm-results: [{results}]\n---\n{body}")
    return card


@pytest.mark.parametrize("body", [
    "# m\n<!-- vlm-eval results: start -->\n## My notes\nimportant text\n",                     # a lone start
    "# m\n<!-- vlm-eval results: end -->\nMIDDLE\n<!-- vlm-eval results: start -->\nTAIL\n",      # end first
    ("# m\n<!-- vlm-eval results: start -->\nA\n<!-- vlm-eval results: end -->\n"
     "<!-- vlm-eval results: start -->\nSTALE B\n<!-- vlm-eval results: end -->\n")])           # two pairs
def test_markers_that_do_not_pair_up_are_an_error_and_the_card_is_kept(tmp_path, body):
    """Replacing from a lone start marker deleted the author's text after it; an end before the start
    duplicated text; a second pair stayed stale while --check passed."""
    from benchmarks.model_card import regenerate
    from vlm.errors import UserError
    card = _card(tmp_path, body)
    before = card.read_text()
    for call in (regenerate, check):
        with pytest.raises(UserError, match="markers do not pair up"):
            call(card)
    assert card.read_text() == before


def test_a_bad_results_row_or_card_writes_nothing(tmp_path):
    import json

    from benchmarks.model_card import attach, regenerate
    from vlm.errors import UserError
    card = _card(tmp_path)
    regenerate(card)
    before, results = card.read_text(), (tmp_path / "results" / "m.jsonl").read_text()
    base = {"model": "B", "benchmark": "b", "metric": "acc"}
    bad = {"a string score": ({**base, "score": "abc"}, "'score' that is not a finite number"),
           "NaN": ({**base, "score": float("nan")}, "not a finite number: nan"),
           "inf": ({**base, "score": float("inf")}, "not a finite number: inf"),
           "bool": ({**base, "score": True}, "not a finite number: True"),
           "null": ({**base, "score": None}, "not a finite number: None"),
           "a list model": ({**base, "model": ["m"], "score": 0.1}, "'model' that is not text"),
           "a number row": (5, "is a JSON int, not an object"),
           "a text chance": ({**base, "score": 0.1, "chance": "x"}, "'chance' that is not a finite number"),
           # found by a review: shown as (n=-3) and (n=1e+300)
           "a negative n": ({**base, "score": 0.1, "n": -3}, "'n' that is not a count"),
           "a huge n": ({**base, "score": 0.1, "n": 1e300}, "'n' that is not a count")}
    for name, (row, message) in bad.items():
        (tmp_path / "new.jsonl").write_text(json.dumps(row) + "\n")
        with pytest.raises(UserError, match=message):
            attach(card, [tmp_path / "new.jsonl"], name="extra")
        assert card.read_text() == before and not (tmp_path / "results" / "extra.jsonl").exists(), name
    (tmp_path / "new.jsonl").write_bytes(b"\xff\xfe{}\n")
    with pytest.raises(UserError, match="not UTF-8 text"):
        attach(card, [tmp_path / "new.jsonl"])
    (tmp_path / "new.jsonl").write_text(json.dumps({**base, "score": 0.1, "seed": 0}) + "\n"
                                        + json.dumps({**base, "score": 0.2}) + "\n")
    with pytest.raises(UserError, match="rows with and without a 'seed'"):        # not "2 seeds"
        attach(card, [tmp_path / "new.jsonl"], name="extra")
    (tmp_path / "new.jsonl").write_text(json.dumps({**base, "score": 0.1}) + "\n" + json.dumps({**base, "score": 0.2})
                                        + "\n")                               # neither has a seed: a duplicate
    with pytest.raises(UserError, match="has 2 rows and no 'seed' in them .the same evaluation twice"):
        attach(card, [tmp_path / "new.jsonl"], name="extra")
    assert card.read_text() == before and (tmp_path / "results" / "m.jsonl").read_text() == results
    (tmp_path / "folder.md").mkdir()
    (tmp_path / "good.jsonl").write_text(json.dumps({**base, "score": 0.1}) + "\n")
    with pytest.raises(UserError, match="a folder, not a model card"):
        attach(tmp_path / "folder.md", [tmp_path / "good.jsonl"])
    assert not (tmp_path / "results" / "folder.jsonl").exists()
    for front, message in (("- a\n", "front matter is a YAML list"), ("vlm-results: 5\n", "must be a list of results"),
                           # a key given twice: the last was read, the first's results files silently dropped
                           ("vlm-results: [results/m.jsonl]\nlicense: mit\nvlm-results: [results/x.jsonl]\n",
                            r"not valid YAML \(duplicate key 'vlm-results' \(lines 1 and 3\)\)")):
        (tmp_path / "odd.md").write_text(f"---\n{front}---\n# odd\n")
        with pytest.raises(UserError, match=message):
            attach(tmp_path / "odd.md", [tmp_path / "good.jsonl"])
        assert not (tmp_path / "results" / "odd.jsonl").exists()
    # found by a review: a front matter never closed got a second block on top of it; results files outside the
    # card's folder were read
    (tmp_path / "open.md").write_text("---\nlicense: mit\n# body\n")
    with pytest.raises(UserError, match="has no closing `---` line"):
        attach(tmp_path / "open.md", [tmp_path / "good.jsonl"])
    assert (tmp_path / "open.md").read_text() == "---\nlicense: mit\n# body\n"
    for path in ("/abs/r.jsonl", "../elsewhere/r.jsonl"):
        (tmp_path / "far.md").write_text(f"---\nvlm-results: [{path}]\n---\n# far\n")
        with pytest.raises(UserError, match="outside the card's folder"):
            regenerate(tmp_path / "far.md")
    (tmp_path / "bom.md").write_bytes("\ufeff---\nlicense: mit\n---\n# bom\n".encode())
    attach(tmp_path / "bom.md", [tmp_path / "good.jsonl"])           # the BOM's card keeps one front matter block
    assert (tmp_path / "bom.md").read_text().count("license: mit") == 1
    assert (tmp_path / "bom.md").read_text().startswith("---\n")


def test_card_cli_check_with_results_mode_and_replaced_results(tmp_path, capsys, monkeypatch):
    import json
    import os

    from vlm.cli import main
    card = _card(tmp_path)
    (tmp_path / "new.jsonl").write_text(json.dumps({"model": "C", "benchmark": "b", "metric": "acc", "score": 0.7}) + "\n")
    assert main(["card", str(card), "--results", str(tmp_path / "new.jsonl"), "--check"]) == 2
    assert "does not go with --results" in capsys.readouterr().err
    os.chmod(card, 0o640)
    monkeypatch.chdir(tmp_path)
    assert main(["card", "m.md", "--results", "new.jsonl"]) == 0                 # replaces results/m.jsonl: said
    assert "results/m.jsonl: replaced (1 row(s) before, 1 now" in capsys.readouterr().err
    assert oct(card.stat().st_mode & 0o777) == oct(0o640)                       # the card's mode is kept
    assert f"Generated by `vlm card {tmp_path.name}/m.md`" in card.read_text()   # its folder, from any working folder


def test_regenerating_keeps_the_front_matter_as_written(tmp_path):
    """`vlm card` re-dumped the whole front matter: the author's comments, key order and quoting were lost.
    Only `model-index` (and, on attach, the results list) is rewritten now."""
    from benchmarks.model_card import attach, regenerate
    card = _card(tmp_path)
    card.write_text("---\n# the Hub reads this card\nlicense: mit   # our choice\n"
                    "vlm-results: [results/m.jsonl]\ntags:\n- a  # first\n- b\nmodel-index: stale\n"
                    "# trailing note\n---\n# m\n")
    regenerate(card)
    head = card.read_text().split("\n---\n")[0]
    for kept in ("# the Hub reads this card", "license: mit   # our choice", "- a  # first", "# trailing note",
                 "vlm-results: [results/m.jsonl]"):
        assert kept in head
    assert "stale" not in head and "model-index:\n- name: A" in head
    assert not check(card)
    extra = tmp_path / "extra.jsonl"
    extra.write_text('{"model": "B", "benchmark": "b", "metric": "acc", "score": 0.25}\n')
    attach(card, [extra], name="m-extra")
    meta, _, head = _split(card.read_text(), str(card))
    assert meta["vlm-results"] == ["results/m.jsonl", "results/m-extra.jsonl"] and meta["license"] == "mit"
    assert "# the Hub reads this card" in head and "- a  # first" in head
    assert {m["name"] for m in meta["model-index"]} == {"A", "B"}
    # a quoted key the line edit does not match: the whole front matter is dumped (no duplicate, stale key)
    card.write_text('---\nlicense: mit\n"model-index":\n- name: old\n  results: []\nvlm-results: [results/m.jsonl]\n---\n# m\n')
    regenerate(card)
    text = card.read_text()
    assert "old" not in text and text.count("model-index") == 1 and not check(card)
