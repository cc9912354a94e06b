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
    meta, _ = _split(card.read_text(), str(card))
    files = _files_of(card, meta)                   # names its results files, and they exist
    assert all(f.is_file() and f.resolve().is_relative_to(card.parent.resolve()) for f in files)
    models, benches = summarize(read_results(files))
    assert models and benches
    diff = check(card)
    assert not diff, "\n".join(diff[:40])


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
    attach(card, [tmp_path / "b.jsonl"], name="m-extra")          # again: named once
    meta, _ = _split(card.read_text(), str(card))
    assert meta["vlm-results"] == ["results/m.jsonl", "results/m-extra.jsonl"]
    models, _ = summarize(read_results(_files_of(card, meta)))
    assert set(models) == {"A", "B"}
    assert not check(card)
