"""Metrics against hand-computed cases: MMEB Precision@1 (per dataset, meta-task, IND/OOD), retrieval
Recall@k both ways, VQA normalisation, captioning scores, and the registry's rules."""
from __future__ import annotations

import pytest
import torch

from benchmarks.models import Query
from benchmarks.tasks import Context
from benchmarks.tasks.mmeb import Dataset, Item, MMEBQuery, evaluate


class TableModel:
    """An embedder whose embedding of a text is looked up in a table (2-d unit vectors)."""

    fingerprint = "table"

    def __init__(self, table: dict[str, tuple[float, float]]):
        self.table = table

    def embed(self, queries, batch_size=32):
        v = torch.tensor([self.table[q.text] for q in queries], dtype=torch.float32)
        return torch.nn.functional.normalize(v, dim=-1)


def _q(name: str, cands: list[str]) -> MMEBQuery:
    return MMEBQuery(name, Item(name, Query(text=name)), [Item(c, Query(text=c)) for c in cands])


def test_mmeb_precision_at_1_hand_computed():
    # Angles: q = 0 deg; g (gold) and x (other) at various angles; cosine decides.
    t = {"q": (1.0, 0.0), "near": (0.95, 0.31), "far": (0.0, 1.0), "near2": (0.95, 0.31)}
    datasets = [
        Dataset("A", "classification", False, [_q("q", ["near", "far"]), _q("q", ["far", "near"])]),   # hit, miss
        Dataset("B", "vqa", False, [_q("q", ["near", "far", "far"])]),                                 # hit
        Dataset("C", "retrieval", True, [_q("q", ["near", "far"]), _q("q", ["near", "near2"])]),     # hit, tie = miss
        Dataset("D", "grounding", True, [_q("q", ["far", "near"])]),                                   # miss
    ]
    res = evaluate(TableModel(t), datasets, Context(progress=False))
    # per dataset: A 1/2, B 1/1, C 1/2 (a tie with the gold is not a hit), D 0/1
    assert res.metrics["p@1/A"] == 0.5 and res.metrics["p@1/B"] == 1.0
    assert res.metrics["p@1/C"] == 0.5 and res.metrics["p@1/D"] == 0.0
    # MMEB averages datasets, not queries
    assert res.metrics["precision@1"] == pytest.approx((0.5 + 1.0 + 0.5 + 0.0) / 4)
    assert res.metrics["ind"] == pytest.approx(0.75) and res.metrics["ood"] == pytest.approx(0.25)
    assert res.metrics["classification"] == 0.5 and res.metrics["vqa"] == 1.0
    assert res.metrics["retrieval"] == 0.5 and res.metrics["grounding"] == 0.0
    assert [r["correct"] for r in res.rows] == [True, False, True, True, False, False]
    assert {r["dataset"]: r["n"] for r in res.tables["datasets"]} == {"A": 2, "B": 1, "C": 2, "D": 1}
    assert {r["dataset"]: r["chance"] for r in res.tables["datasets"]} == {"A": 0.5, "B": 1 / 3, "C": 0.5, "D": 0.5}
    # a query whose gold is its only candidate is a hit by construction: left out and counted, not scored
    alone = evaluate(TableModel(t), [Dataset("E", "retrieval", True, [_q("q", ["near"]), _q("q", ["far", "near"])])],
                     Context(progress=False))
    assert alone.metrics["p@1/E"] == 0.0 and alone.metrics["skipped_one_candidate"] == 1 and alone.metrics["n"] == 1


def test_retrieval_recall_constructed_case():
    from benchmarks.tasks.retrieval import positives, score
    # images i0, i1, i2; captions: i0 -> "a", "b"; i1 -> "c"; i2 -> "d"
    texts, pos = positives([["a", "b"], ["c"], ["d"]])
    assert texts == ["a", "b", "c", "d"]
    sim = torch.tensor([[0.9, 0.1, 0.8, 0.0],      # i0: best "a" (own)            -> i2t hit@1
                        [0.7, 0.2, 0.3, 0.1],      # i1: best "a" (not own), "c" 2nd -> miss@1, hit@5
                        [0.1, 0.25, 0.3, 0.4]])    # i2: best "d" (own)            -> hit@1
    img, txt = torch.eye(3), sim.T                 # img @ txt.T == sim
    m, i2t, t2i = score(img, txt, pos)
    assert m["image_recall@1"] == pytest.approx(2 / 3)
    assert m["image_recall@5"] == 1.0 and m["image_recall@10"] == 1.0
    # t2i: "a" -> i0 (own) hit; "b" -> i2 (0.25) miss; "c" -> i0 (0.8) miss; "d" -> i2 hit
    assert t2i[1].tolist() == [True, False, False, True]
    assert m["text_recall@1"] == 0.5
    # "b" ranks i2, i1, i0: its image is third -> a hit at 5 (and at 10), not at 1
    assert m["text_recall@5"] == 1.0
    assert m["mean_recall"] == pytest.approx((2 / 3 + 1 + 1 + 0.5 + 1 + 1) / 6)


def test_recall_two_images_one_caption_text():
    """Identical caption strings are one text: both of its images are right."""
    from benchmarks.tasks.retrieval import positives
    texts, pos = positives([["a red circle."], ["a red circle."], ["a blue star."]])
    assert texts == ["a blue star.", "a red circle."]
    assert pos.tolist() == [[False, True], [False, True], [True, False]]


def test_vqa_normalisation_and_caption_scores():
    from benchmarks.metrics import balanced_accuracy, bleu, cider, normalise_answer, vqa_match
    assert normalise_answer("  The Two circles.") == "2 circles"
    assert vqa_match("Red.", "red") and vqa_match("three", "3") and not vqa_match("blue", "red")
    from sklearn.metrics import balanced_accuracy_score
    y, p = [0, 0, 0, 1, 1, 2], [0, 1, 0, 1, 1, 0]
    assert balanced_accuracy(y, p) == pytest.approx(balanced_accuracy_score(y, p))
    refs = [["A red circle in the center."], ["Two blue stars and a green square."]]
    assert bleu([r[0] for r in refs], refs) == pytest.approx(100.0)
    good, per = cider([r[0] for r in refs], refs)
    bad, _ = cider(["a dog", "a cat"], refs)
    assert good > bad and len(per) == 2


def test_registry_rules():
    from benchmarks import get_benchmark, list_benchmarks
    from benchmarks.registry import Benchmark, DataRef, register_benchmark
    from vlm.errors import UserError
    names = [r["name"] for r in list_benchmarks()]
    assert len(names) == len(set(names)) and "sw-vqa-color" in names and "ub-cifar10" in names
    assert all(r["name"].startswith("sw-") for r in list_benchmarks("sw-*"))
    with pytest.raises(ValueError, match="registered twice"):
        register_benchmark(Benchmark("sw-colors", "zeroshot", "custom", "x", "top1", DataRef("/tmp")))
    with pytest.raises(UserError, match="unknown benchmark"):
        get_benchmark("no-such-benchmark")
    assert get_benchmark("wds:/some/where/wds_cifar10").name == "wds:wds_cifar10"


def test_captions_that_are_not_texts_are_no_captions_not_stringified():
    """Found by a review: `{"captions": [null, 5]}` was scored as the captions "None" and "5"; a relation sample
    without two captions was dropped uncounted (the count is `skipped_no_captions`, relation.run)."""
    from benchmarks.tasks.captions import captions_of, relation_captions

    class S:
        def __init__(self, meta):
            self._meta, self.fields = meta, {}

        def meta(self):
            return self._meta
    assert captions_of(S({"captions": ["a red circle", "a circle"]})) == ["a red circle", "a circle"]
    assert captions_of(S({"captions": [None, 5]})) == []
    # a blank caption is none: it was scored as a caption (vlm models), ended an open_clip run with "an item with
    # neither text nor an image", and one blank among good captions dropped the image (a review)
    assert captions_of(S({"captions": ["ok", " ", "fine"]})) == ["ok", "fine"]
    assert captions_of(S({"caption": "  "})) == [] == captions_of(S({"caption": ""}))
    assert relation_captions(S({"captions": ["true", "false"]}), "given") == ["true", "false"]
    for caps in (["only one"], "two words", ["fine", None], None):
        assert relation_captions(S({"captions": caps}), "given") is None
