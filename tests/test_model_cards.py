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
