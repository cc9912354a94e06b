"""MMEB-style data for VLM2Vec: synthetic-world's pair tasks (four meta-tasks, instructions on the query
side, OOD datasets kept out of train), the benchmark built from them, MMEB-train's own format converted
from a local copy (paths confined to it), MMEB-eval's format read from a local copy, and the vlm2vec
family starting from a checkpoint."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import helpers_media as H


@pytest.fixture(scope="module")
def pair_world(tmp_path_factory):
    from vlm.data.synthetic import build_synthetic_world
    out = tmp_path_factory.mktemp("sw-mmeb") / "sw"
    build_synthetic_world(out, samples=40, seed=0, eval_per_task=3, workers=1, tasks=["mmeb"], classification=False)
    return out


@pytest.fixture(scope="module")
def tiny_model():
    import vlm
    return vlm.build("llava", "tiny", audio=None, music=None, video=None)


def read(split_dir: Path):
    from benchmarks.data import iter_samples, shard_files
    return list(iter_samples(shard_files(split_dir.parent, split_dir.name)))


def test_pair_tasks_cover_four_meta_tasks_and_train_with_the_pairs_format(pair_world, tiny_model):
    from vlm.data.formats import FORMATS
    from vlm.data.writer import validate_sample
    index = json.loads((pair_world / "index.json").read_text())
    train, test = index["splits"]["train"]["tasks"], index["splits"]["test"]["tasks"]
    assert len(test) == 12 and all(n == 3 for n in test.values())
    ood = {"mmeb_cls_object", "mmeb_vqa_paraphrase", "mmeb_ret_i2i", "mmeb_ground_position"}
    assert set(train) == set(test) - ood                                   # OOD datasets never train
    fmt = FORMATS.get("pairs")(tiny_model.processor, max_len=128, negatives=1)
    metas = set()
    for s in read(pair_world / "train") + read(pair_world / "test"):
        fields = {k: v for k, v in s.fields.items()}
        assert validate_sample({"__key__": s.key, **fields}) == [], s.key
        m = s.meta()
        metas.add(m["meta_task"])
        assert m["query"]["instruction"] and m["ood"] == (m["task"] in ood)
        generic = {None, "Represent the given image.", "Represent the given cropped image of the object."}
        assert all(x.get("instruction") in generic for x in [m["positive"], *m["negatives"]])    # task instruction: query only
        pair, _ = fmt.make(s.key, fields, s.shard)
        text = tiny_model.tokenizer.decode(pair.query.input_ids)
        assert m["query"]["instruction"] in text
        if m["query"]["text"].startswith("<image>"):                       # media first, then the instruction
            assert text.index("<image>") < text.index(m["query"]["instruction"])
    assert metas == {"classification", "vqa", "retrieval", "grounding"}


def test_default_synthetic_world_has_no_pair_tasks():
    from vlm.data.synthetic import OPT_IN, TRAIN_WEIGHTS, select_tasks
    from vlm.data.synthetic.pairs import GENERATORS as PAIRS
    from vlm.data.synthetic.text import GENERATORS as TEXT
    assert not select_tasks(None) & OPT_IN and not set(TRAIN_WEIGHTS) & OPT_IN
    assert select_tasks(["mmeb"]) == set(PAIRS) and select_tasks(["text"]) == set(TEXT)
    assert OPT_IN == set(PAIRS) | set(TEXT) | {"fine_detail_hard"}


def test_pair_benchmark_candidates(pair_world):
    from benchmarks.tasks.mmeb import build_pair_datasets
    datasets = build_pair_datasets(read(pair_world / "test"), {"candidates": 1000})
    assert len(datasets) == 12 and sum(d.ood for d in datasets) == 4
    by = {d.name: d for d in datasets}
    assert {d.meta_task for d in datasets} == {"classification", "vqa", "retrieval", "grounding"}
    assert all(len(q.candidates) == 4 for q in by["cls-shape"].queries)     # the label set
    assert all(len(q.candidates) == 24 for q in by["cls-object"].queries)
    for name in ("ret-t2i", "ground-name"):
        for q in by[name].queries:
            ids = [c.id for c in q.candidates]
            assert len(ids) == len(set(ids)) > 1 and ids[0].endswith(":1")   # the positive first
            assert all(c.query.image is not None and c.query.instruction for c in q.candidates)
    q = by["ret-i2t"].queries[0]
    assert q.query.query.image is not None and q.candidates[0].query.image is None
    # --limit N keeps the first N queries of every dataset (it kept N samples of the first dataset alone)
    from benchmarks.tasks.mmeb import first_per_dataset
    kept = build_pair_datasets(first_per_dataset(read(pair_world / "test"), 2), {"candidates": 1000})
    assert sorted(d.name for d in kept) == sorted(by) and all(len(d.queries) == 2 for d in kept)


def test_pair_samples_with_fields_of_another_type_are_skipped_by_reason(pair_world):
    """Found by a review: negatives that are a text, a side without text, an instruction that is a number, a
    dataset that is a list, labels that are a text, target_labels of another length, a classification pair without
    choices and an unknown meta_task each ended the benchmark (a traceback or one line about one sample)."""
    from dataclasses import replace

    from benchmarks.data import Sample
    from benchmarks.tasks import Skips
    from benchmarks.tasks.mmeb import build_pair_datasets
    samples = read(pair_world / "test")
    first_cls = next(i for i, s in enumerate(samples) if json.loads(s.fields["json"])["meta_task"] == "classification")

    def spoiled(i: int, **fields) -> Sample:
        meta = {**json.loads(samples[i].fields["json"]), **fields}
        return replace(samples[i], key=f"bad{len(fields)}-{i}-{min(fields)}",
                       fields={**samples[i].fields, "json": json.dumps(meta).encode()})
    side = json.loads(samples[1].fields["json"])["query"]
    bad = [spoiled(1, negatives="abc"), spoiled(2, negatives=[{"instruction": "x"}]),
           spoiled(3, query={**side, "instruction": 5}), spoiled(4, dataset=["x"]), spoiled(5, labels="abc"),
           spoiled(6, labels={"target_labels": 5}), spoiled(first_cls, choices=None),
           spoiled(first_cls, meta_task="bogus", dataset="cls-shape")]
    skips = Skips()
    clean = {d.name: len(d.queries) for d in build_pair_datasets(samples, {"candidates": 1000})}
    got = {d.name: len(d.queries) for d in build_pair_datasets(samples + bad, {"candidates": 1000}, skips)}
    assert got == clean and skips.counts == {"not_a_pair": 7, "no_choices": 1}, (skips.counts, skips.messages)
    assert "'negatives' is not a list" in skips.messages["not_a_pair"]
    with pytest.raises(Exception, match="not a list"):               # without a Skips: raised, as before
        build_pair_datasets(bad[:1], {"candidates": 1000})


# ------------------------------------------------------------------------------------------------ MMEB-train
def test_convert_mmeb_train_from_a_local_copy(tmp_path, tiny_model):
    from vlm.data.formats import FORMATS
    from vlm.data.mmeb import convert_mmeb_train
    root = tmp_path / "MMEB-train"
    (root / "images" / "A-OKVQA" / "Train").mkdir(parents=True)
    for i in range(4):
        H.image(["red", "blue", "green", "yellow"][i], 32).save(root / "images" / "A-OKVQA" / "Train" / f"{i}.jpg")
    H.image("red", 32).save(tmp_path / "outside.jpg")
    img = "images/A-OKVQA/Train/{}.jpg"
    H.write_parquet(root / "A-OKVQA" / "original-00000-of-00001.parquet", [
        {"qry": "<|image_1|>\nRepresent the given image with the following question: What colour?\n",
         "qry_image_path": img.format(0), "pos_text": "red", "pos_image_path": "", "neg_text": "blue", "neg_image_path": ""},
        {"qry": "Retrieve an image of this caption: a blue circle\n", "qry_image_path": "",
         "pos_text": "<|image_1|>\nRepresent the given image.\n", "pos_image_path": img.format(1), "neg_text": "",
         "neg_image_path": ""},
        {"qry": "<|image_1|>\nFind a similar everyday image.\n", "qry_image_path": img.format(2),
         "pos_text": "<|image_1|>\nRepresent the given image.\n", "pos_image_path": img.format(3),
         "neg_text": "", "neg_image_path": ""},
        {"qry": "<|image_1|>\nWhat colour?\n", "qry_image_path": "../outside.jpg", "pos_text": "red",
         "pos_image_path": "", "neg_text": "", "neg_image_path": ""},
        {"qry": "<|image_1|> What is shown?", "qry_image_path": "", "pos_text": "a circle", "pos_image_path": "",
         "neg_text": "", "neg_image_path": ""},                                       # WebQA: a token, no image
    ] + [{"qry": f"<|image_1|>\nq{i}", "qry_image_path": img.format(i % 4), "pos_text": f"a{i}",
          "pos_image_path": "", "neg_text": "", "neg_image_path": ""} for i in range(5)])
    report = convert_mmeb_train(str(root), str(tmp_path / "out"), max_bad=0.2)
    assert report.written == 9 and report.skipped == 1 and "'../outside.jpg' is outside" in report.problems[0]
    assert report.reasons == {"path_outside_root": 1}          # the reason kept (it was 'bad_sample')
    samples = {s.key: s for s in _shards(tmp_path / "out")}
    first = samples["A-OKVQA-0"].meta()
    assert first["query"]["text"].startswith("<image>\nRepresent") and first["negatives"] == [{"text": "blue"}]
    assert samples["A-OKVQA-4"].meta()["query"]["text"] == "What is shown?"
    fmt = FORMATS.get("pairs")(tiny_model.processor, max_len=256, negatives=0)
    for s in samples.values():
        pair, _ = fmt.make(s.key, s.fields, s.shard)
        assert pair.query.input_ids and pair.targets
    assert sorted(samples["A-OKVQA-2"].fields) == ["0.jpg", "1.jpg", "json"]
    # found by a review: a subset named twice was converted twice (every sample doubled: A-OKVQA-0_1 ...)
    again = convert_mmeb_train(str(root), str(tmp_path / "out2"), subsets=["A-OKVQA", "A-OKVQA"], max_bad=0.2)
    assert again.written == 9
    from vlm.errors import UserError
    with pytest.raises(UserError, match="--max-per-subset must be >= 1, got 0"):    # it said "no samples found"
        convert_mmeb_train(str(root), str(tmp_path / "out3"), max_per_subset=0)


def _shards(folder: Path):
    from benchmarks.data import iter_samples
    from vlm.data.reader import expand_shards
    return list(iter_samples(expand_shards(str(folder))))


def test_convert_mmeb_train_bad_input_is_one_line(tmp_path):
    from vlm.cli import main
    assert main(["data", "convert", "mmeb", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    (tmp_path / "copy" / "A-OKVQA").mkdir(parents=True)
    assert main(["data", "convert", "mmeb", str(tmp_path / "copy"), "--out", str(tmp_path / "o")]) == 2


# ------------------------------------------------------------------------------------------------ MMEB-eval
def test_mmeb_eval_local_copy_scores_precision_at_1(tmp_path):
    from benchmarks.registry import Roots, get_benchmark
    from benchmarks.tasks import Context
    from benchmarks.tasks.mmeb import run

    class Oracle:
        """Embeds the gold-looking text the same as the query: P@1 = 1 when candidates are read right."""
        fingerprint, modalities = "oracle", ("image",)

        def embed(self, queries, batch_size=32):
            import torch
            return torch.stack([torch.nn.functional.normalize(torch.tensor([
                1.0 if (q.text or "").startswith("gold") or (q.text or "").startswith("Represent") else 0.0,
                1.0 if q.image is not None else 0.0, 0.1]), dim=0) for q in queries])

    root = tmp_path / "MMEB-eval"
    (root / "eval_images" / "ImageNet-1K").mkdir(parents=True)
    H.image("red", 32).save(root / "eval_images" / "ImageNet-1K" / "a.jpg")
    H.write_parquet(root / "ImageNet-1K" / "test-00000-of-00001.parquet", [
        {"qry_text": "<|image_1|>\nRepresent the given image for classification", "qry_img_path": "ImageNet-1K/a.jpg",
         "tgt_text": ["gold label", "other", "another"], "tgt_img_path": ["", "", ""]}] * 3)
    bench = get_benchmark("mmeb-imagenet-1k")
    assert bench.options["datasets"][0]["meta_task"] == "classification"
    res = run(Oracle(), bench, Context(roots=Roots(bench_root=str(tmp_path)), progress=False))
    assert res.metrics["precision@1"] == 1.0 and res.metrics["classification"] == 1.0
    assert [r["n_candidates"] for r in res.rows] == [3, 3, 3]
    # a copy of the gold among the candidates is the gold (MMEB de-duplicates by name); another input that
    # ties it is a competitor (a model embedding everything alike must not score 1)
    H.write_parquet(root / "ImageNet-1K" / "test-00000-of-00001.parquet", [
        {"qry_text": "<|image_1|>\nRepresent the given image for classification", "qry_img_path": "ImageNet-1K/a.jpg",
         "tgt_text": tgt, "tgt_img_path": ["", "", ""]}
        for tgt in (["gold label", "other", "gold label"], ["gold label", "gold twin", "other"])])
    res = run(Oracle(), bench, Context(roots=Roots(bench_root=str(tmp_path)), progress=False))
    assert [(r["correct"], r["pred"]) for r in res.rows] == [(True, 0), (False, 1)]
    H.write_parquet(root / "ImageNet-1K" / "test-00000-of-00001.parquet", [
        {"qry_text": "<|image_1|>\nx", "qry_img_path": "../../outside.jpg", "tgt_text": ["a"], "tgt_img_path": [""]}])
    from vlm.errors import UserError
    with pytest.raises(UserError, match="leaves the image folder"):
        run(Oracle(), bench, Context(roots=Roots(bench_root=str(tmp_path)), progress=False))
    assert len(get_benchmark("mmeb-all").options["datasets"]) == 36


def test_a_changed_mmeb_eval_copy_is_a_new_question(tmp_path):
    """A stored MMEB-eval score was reused for another --bench-root or an edited parquet (its data identity was
    empty), and the feature cache reused embeddings of an image replaced in place (its key held the parquet
    only): both depend on the parquet files and the images they name now."""
    import shutil
    import time

    from benchmarks.registry import Roots, get_benchmark
    from benchmarks.runner import data_identity
    from benchmarks.tasks.mmeb import mmeb_eval_files
    root = tmp_path / "a" / "MMEB-eval"
    (root / "eval_images" / "ImageNet-1K").mkdir(parents=True)
    for name, colour in (("x.jpg", "red"), ("y.jpg", "blue")):
        H.image(colour, 32).save(root / "eval_images" / "ImageNet-1K" / name)
    H.write_parquet(root / "ImageNet-1K" / "test-00000-of-00001.parquet", [
        {"qry_text": "<|image_1|>\nRepresent it", "qry_img_path": "ImageNet-1K/x.jpg",
         "tgt_text": ["gold", "other"], "tgt_img_path": ["", ""]}])
    bench = get_benchmark("mmeb-imagenet-1k")
    roots = Roots(bench_root=str(tmp_path / "a"))
    first = data_identity(bench, roots)
    assert first and [p.name for p in mmeb_eval_files(root, bench.options["datasets"][0])] == [
        "test-00000-of-00001.parquet", "x.jpg"]                            # y.jpg is not read: not in it
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert data_identity(bench, Roots(bench_root=str(tmp_path / "b"))) != first
    assert data_identity(bench, roots) == first                            # unchanged: the same
    time.sleep(0.01)
    shutil.copy(root / "eval_images" / "ImageNet-1K" / "y.jpg", root / "eval_images" / "ImageNet-1K" / "x.jpg")
    assert data_identity(bench, roots) != first
    # another split's parquet beside test's is not test data (it was scored with it), and --split val is not the
    # test files under a @val name (a review): MMEB-eval has a test split
    from dataclasses import replace

    from benchmarks.tasks.mmeb import build_mmeb_eval, check_mmeb_eval
    from vlm.errors import UserError
    H.write_parquet(root / "ImageNet-1K" / "validation-00000-of-00001.parquet", [
        {"qry_text": "<|image_1|>\nRepresent it", "qry_img_path": "ImageNet-1K/y.jpg",
         "tgt_text": ["gold", "other"], "tgt_img_path": ["", ""]}] * 3)
    assert len(build_mmeb_eval(root, bench.options["datasets"][0])) == 1
    val = replace(bench, data=replace(bench.data, split="val"))
    with pytest.raises(UserError, match=r"no .*ImageNet-1K/val-\*\.parquet .*test split only\); the folder has "
                                        r"test-00000-of-00001\.parquet, validation-00000-of-00001\.parquet"):
        check_mmeb_eval(val, roots)


def test_an_unreadable_mmeb_image_skips_its_query_not_the_run(tmp_path):
    """One missing or undecodable image stopped the whole run (36 sets of mmeb-all included). Now its query
    is skipped and counted (missing_file at build, bad_media when the model cannot read it), the others are
    scored as before; an empty candidate list and an item with neither text nor image are named."""
    import torch

    from benchmarks.registry import Roots, get_benchmark
    from benchmarks.tasks import Context
    from benchmarks.tasks.mmeb import run
    from vlm.embed.items import UnreadableMedia
    from vlm.errors import UserError

    class Reader:
        fingerprint, modalities = "reader", ("image",)

        def embed(self, queries, batch_size=32):
            for q in queries:
                if q.image is not None and str(q.image).endswith("bad.jpg"):
                    raise UnreadableMedia(f"image {q.image}: cannot decode image (3 bytes)")
            return torch.stack([torch.nn.functional.normalize(torch.tensor([
                1.0 if (q.text or "").startswith(("gold", "Represent")) else 0.0, 0.1]), dim=0) for q in queries])

    root = tmp_path / "MMEB-eval"
    (root / "eval_images" / "ImageNet-1K").mkdir(parents=True)
    H.image("red", 32).save(root / "eval_images" / "ImageNet-1K" / "a.jpg")
    (root / "eval_images" / "ImageNet-1K" / "bad.jpg").write_bytes(b"\xff\xd8x")
    f = root / "ImageNet-1K" / "test-00000-of-00001.parquet"

    def row(img, tgt=("gold label", "other")):
        return {"qry_text": "<|image_1|>\nRepresent it", "qry_img_path": f"ImageNet-1K/{img}",
                "tgt_text": list(tgt), "tgt_img_path": [""] * len(tgt)}
    H.write_parquet(f, [row("a.jpg"), row("missing.jpg"), row("bad.jpg"), row("a.jpg")])
    bench = get_benchmark("mmeb-imagenet-1k")
    ctx = Context(roots=Roots(bench_root=str(tmp_path)), progress=False)
    res = run(Reader(), bench, ctx)
    assert res.metrics["precision@1"] == 1.0 and res.metrics["n"] == 2
    assert res.metrics["skipped_missing_file"] == 1 and res.metrics["skipped_bad_media"] == 1
    first = res.tables["skipped_examples"]            # the CLI names the first of each (it named none: a review)
    assert "row 1: " in first["missing_file"] and first["bad_media"] == "ImageNet-1K ImageNet-1K-1", first
    for rows, message in (([row("a.jpg", ())], "row 0: an empty candidate list"),
                          ([row("a.jpg", ("gold", ""))], "row 0: an item with neither text nor an image"),
                          ([row("missing.jpg")], "every row names an image that is not there"),
                          # found by a review: these scored NaN (exit 0, no results row) or 1.000 by construction
                          ([row("bad.jpg")], "every one of its 1 queries has an input or a candidate whose media do not"),
                          ([row("a.jpg", ("gold label",)), row("a.jpg", ("gold", "gold"))],
                           "every query has one candidate \\(its gold\\) only")):
        H.write_parquet(f, rows)
        with pytest.raises(UserError, match=message):
            run(Reader(), bench, ctx)
    H.write_parquet(f, [row("a.jpg", ("gold label",)), row("a.jpg", ("gold", "x", "y", "z")), row("a.jpg")])
    res = run(Reader(), bench, ctx)                     # a one-candidate query is left out, counted; chance said
    assert res.metrics["skipped_one_candidate"] == 1 and res.metrics["n"] == 2
    assert res.tables["skipped_examples"] == {"one_candidate": "ImageNet-1K ImageNet-1K-0"}
    assert res.metrics["chance"] == pytest.approx((1 / 4 + 1 / 2) / 2) and res.metrics["candidates_min"] == 2
    f.write_bytes(b"PAR1 not really")                   # a traceback (pyarrow's ArrowInvalid) before
    with pytest.raises(UserError, match="test-00000-of-00001.parquet: not a readable parquet file"):
        run(Reader(), bench, ctx)


# ------------------------------------------------------------------------------------------------ the family
def test_vlm2vec_starts_from_any_checkpoint(tmp_path):
    import torch

    import vlm
    from vlm.train.recipe import ModelSpec, load_recipe, model_skeleton
    base = vlm.build("iaa", "tiny", audio=None, music=None, video=None, seed=3)
    base.save_pretrained(tmp_path / "iaa")
    model = vlm.build("vlm2vec", "tiny", init=str(tmp_path / "iaa"))
    assert model.config.family == "vlm2vec" and model.route.settings()["type"] == "inner_adaptor"
    a, b = base.state_dict(), model.state_dict()
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    skeleton = model_skeleton(ModelSpec("vlm2vec", "tiny", {"init": str(tmp_path / "iaa")}))
    assert next(skeleton.parameters()).is_meta
    recipe = load_recipe("vlm2vec-tiny", [f"model.settings.init={tmp_path / 'iaa'}"], check_files=False)
    assert recipe.stages[0].objective == "contrastive" and recipe.stages[0].objective_settings["chunk_size"] == 32
    from vlm.errors import UserError
    with pytest.raises(UserError, match="not found"):
        vlm.build("vlm2vec", "tiny", init=str(tmp_path / "missing"))


def test_vlm2vec_loads_omni_and_older_format_checkpoints_and_saves_format_3(tmp_path):
    """Format 3: an omni checkpoint (one vision tower shared by images and video frames) and a format-2
    llava checkpoint (encoders inside the media tokenizers) both start a vlm2vec model with their weights;
    what vlm2vec saves is format 3 (encoders.<name>.*) and `vlm.load` gives the same embeddings back."""
    import json

    import torch
    from safetensors.torch import load_file, save_file

    import vlm
    omni = vlm.build("omni", "tiny", seed=1)
    omni.save_pretrained(tmp_path / "omni")
    model = vlm.build("vlm2vec", "tiny", init=str(tmp_path / "omni"))
    a, b = omni.state_dict(), model.state_dict()
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert set(model.media) == set(omni.media) and model.media["video"] is not None

    llava = vlm.build("llava", vision="tiny-clip", llm="tiny:llama", audio=None, music=None, video=None, seed=2)
    path = llava.save_pretrained(tmp_path / "v2")
    cfg = json.loads((path / "config.json").read_text())
    state = load_file(str(path / "model.safetensors"))
    v2 = {**{k: v for k, v in cfg.items() if k != "encoders"}, "format_version": 2,
          "media": {m: {"encoder": cfg["encoders"][m], "connector": {x: y for x, y in c.items() if x != "encoder"}}
                    for m, c in cfg["media"].items()}}
    (path / "config.json").write_text(json.dumps(v2))
    save_file({(f"media.{k.split('.')[1]}.encoder." + k.split(".", 2)[2]) if k.startswith("encoders.") else k: v
               for k, v in state.items()}, str(path / "model.safetensors"))
    model = vlm.build("vlm2vec", "tiny", init=str(path))
    b = model.state_dict()
    assert sorted(state) == sorted(b) and all(torch.equal(state[k], b[k]) for k in state)

    saved = model.save_pretrained(tmp_path / "vlm2vec")
    out_cfg = json.loads((saved / "config.json").read_text())
    assert out_cfg["format_version"] == 3 and out_cfg["family"] == "vlm2vec" and "encoders" in out_cfg
    assert any(k.startswith("encoders.") for k in load_file(str(saved / "model.safetensors")))
    from vlm.embed import Embedder
    texts = ["A red circle.", "Two blue squares."]
    assert Embedder.load(str(saved)).embed(texts=texts).tolist() == Embedder.load(str(path)).embed(texts=texts).tolist()


def test_pooling_study_reads_the_embedding_and_two_image_poolings(pair_world, tiny_model, tmp_path, capsys):
    """benchmarks/studies/vlm2vec_pooling.py: its 'last token' is the suite's embedding (Embedder), the image
    poolings differ from it, and the table has one row per model."""
    import numpy as np

    from benchmarks.studies import vlm2vec_pooling as study
    from vlm.embed import Embedder
    tiny_model.save_pretrained(tmp_path / "m")
    queries, positives = study.pair_queries(pair_world, "test", "ret-i2i")
    assert len(queries) == 3 and all(q.image is not None and p.image is not None for q, p in zip(queries, positives))
    pooled = study.pooled(str(tmp_path / "m"), queries)
    ref = Embedder.load(str(tmp_path / "m")).embed(images=[q.image for q in queries],
                                                   instruction=[q.instruction for q in queries])
    assert np.allclose(pooled["last token"].numpy(), ref, atol=1e-5)
    assert not np.allclose(pooled["image tokens"].numpy()[:, :ref.shape[1]], ref, atol=1e-2)
    assert study.main(["--model", str(tmp_path / "m"), "--mmeb", str(pair_world), "--split", "test"]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith(f"| {tmp_path / 'm'} |")]
    assert len(rows) == 1 and len(rows[0].split("|")) == 6
    # --same-instruction: the query side reads the target's instruction (here not the query's own)
    assert {q.instruction for q in queries}.isdisjoint({p.instruction for p in positives})
    assert study.main(["--model", str(tmp_path / "m"), "--mmeb", str(pair_world), "--split", "test",
                       "--same-instruction"]) == 0
    out = capsys.readouterr().out
    assert repr(positives[0].instruction) in out and sum(r.startswith(f"| {tmp_path / 'm'} |") for r in out.splitlines()) == 1


def test_inspect_reads_pair_shards_as_training_does(pair_world, tiny_model, tmp_path):
    import webdataset as wds

    from vlm.data.inspect import inspect_shards
    from vlm.data.reader import expand_shards
    shards = expand_shards(str(pair_world / "train"))
    r = inspect_shards(shards, samples=1)
    assert r["ok"] == r["samples"] > 0 and not r["errors"]["skipped"], r["errors"]
    assert all(t.startswith("mmeb_") for t in r["tasks"]) and r["examples"][0]["turns"][0].startswith("query: ")
    with_model = inspect_shards(shards, processor=tiny_model.processor, samples=0)
    assert with_model["ok"] == r["ok"] and with_model["tokens"]["min"] > r["tokens"]["min"]   # media tokens counted
    with wds.TarWriter(str(tmp_path / "bad.tar")) as w:         # past the writer, which refuses such a sample
        w.write({"__key__": "b0", "json": json.dumps({"query": {"text": "q"}, "positive": {"text": "y"},
                                                      "negatives": ["no"]}).encode()})
    r = inspect_shards([str(tmp_path / "bad.tar")])
    assert r["ok"] == 0 and r["errors"]["skipped"] == {"bad_pair": 1}
    # a pair with audio for an image-only model: not_for_model, decided from the json as training does (its
    # audio, here not even a sound file, is never decoded)
    with wds.TarWriter(str(tmp_path / "audio.tar")) as w:
        w.write({"__key__": "a0", "wav": b"not audio", "json": json.dumps(
            {"query": {"text": "<audio>\nwhat is it?"}, "positive": {"text": "a bell"}}).encode()})
    r = inspect_shards([str(tmp_path / "audio.tar")], processor=tiny_model.processor)
    assert sorted(tiny_model.processor.preprocess) == ["image"], "the test needs an image-only model"
    assert r["errors"]["skipped"] == {"not_for_model": 1}, r["errors"]


def test_pairs_format_reads_only_the_sides_it_trains_and_refuses_empty_or_odd_sides(tiny_model):
    """Only the negatives the objective takes are read: a corrupt image in one left out no longer drops the
    pair. An empty text (every empty query would be one prompt with many positives) and a non-text
    instruction (a bare TypeError) are bad_pair samples, counted like any bad sample."""
    import helpers_media as H

    from vlm.data.decode import SampleError
    from vlm.data.formats import FORMATS
    from vlm.data.writer import encode_image, validate_sample
    img = encode_image(H.image("red", 32), "jpg")
    meta = {"query": {"text": "<image>\nred circle", "instruction": "Find it:"}, "positive": {"text": "<image>"},
            "negatives": [{"text": "<image>"}, {"text": "<image>"}]}
    fields = {"0.jpg": img, "1.jpg": img, "2.jpg": img, "3.jpg": b"not a jpeg"}      # the 2nd negative's is corrupt

    def make(negatives: int, m: dict = meta):
        return FORMATS.get("pairs")(tiny_model.processor, max_len=128, negatives=negatives).make(
            "k", {**fields, "json": json.dumps(m).encode()}, "s.tar")
    for n in (0, 1):
        pair, _ = make(n)
        assert len(pair.targets) == 1 + n
    with pytest.raises(SampleError) as e:
        make(2)
    assert e.value.reason == "bad_image"
    odd = {"empty query": ({**meta, "query": {"text": "  ", "instruction": "Find it:"}}, "'query' has an empty 'text'"),
           "int instruction": ({**meta, "positive": {"text": "<image>", "instruction": 5}},
                               "'positive' has an 'instruction' that is a int")}
    for name, (m, message) in odd.items():
        with pytest.raises(SampleError, match=message) as e:
            make(0, m)
        assert e.value.reason == "bad_pair", name
        problems = validate_sample({"__key__": "k", **fields, "json": m})    # the writer refuses it too
        assert problems and message in problems[0], (name, problems)
    for negs in ({}, "", 0, False):                                          # only absent / null mean none
        problems = validate_sample({"__key__": "k", **fields, "json": {**meta, "negatives": negs}})
        assert problems and "'negatives' must be a list" in problems[0], (negs, problems)
    assert validate_sample({"__key__": "k", "0.jpg": img, "1.jpg": img, "json": {**meta, "negatives": None}}) == []


def test_an_mmeb_side_already_holding_our_image_placeholder_keeps_one():
    """Found by a review: a side written with `<image>` (not Phi-3's <|image_1|>) and an image path got a
    second token, then was skipped as 'more than one image token'."""
    from vlm.data.mmeb import side
    assert side("<image>\nWhat colour?", "a.jpg") == ("<image>\nWhat colour?", True)
    assert side("<|image_1|>\nWhat colour?", "a.jpg") == ("<image>\nWhat colour?", True)
    assert side("What colour?", "a.jpg") == ("<image>\nWhat colour?", True)
