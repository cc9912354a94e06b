"""Zero-shot classification equals clip_benchmark's per sample (fp32, same open_clip model and local
checkpoint, same local shards); cached features give the same answer without running the model."""
from __future__ import annotations

import collections

import pytest
import torch

from benchmarks.fixtures import fit_open_clip, tiny_open_clip_config, write_wds_classification


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zs")
    cfg = tiny_open_clip_config(tmp / "tiny-clip-zs.json")
    folder = write_wds_classification(tmp / "wds_colors", n_per_class=20, shards=2)
    ckpt = fit_open_clip(cfg, folder, tmp / "tiny-clip-zs.safetensors")
    return cfg, folder, ckpt


def reference(cfg, folder, ckpt, batch_size: int = 16):
    """clip_benchmark 1.6.2: its own wds dataset, `zero_shot_classifier` + `run_classification`, autocast off."""
    import open_clip
    from clip_benchmark.datasets.builder import build_dataset
    from clip_benchmark.metrics.zeroshot_classification import run_classification, zero_shot_classifier
    open_clip.add_model_config(cfg)
    model, _, pre = open_clip.create_model_and_transforms(cfg.stem, pretrained=str(ckpt))
    model.eval()
    tok = open_clip.get_tokenizer(cfg.stem)
    ds = build_dataset(f"wds/{folder.name}", root=str(folder), transform=pre, split="test", download=False)
    dl = torch.utils.data.DataLoader(ds.batched(batch_size), batch_size=None, num_workers=0)
    clf = zero_shot_classifier(model, tok, ds.classes, ds.templates, "cpu", amp=False)
    return run_classification(model, clf, dl, "cpu", amp=False)


def test_zero_shot_matches_clip_benchmark(tiny_clip, tmp_path):
    from sklearn.metrics import balanced_accuracy_score

    from benchmarks.cache import FeatureCache
    from benchmarks.data import read_wds_meta
    from benchmarks.models import load_model
    from benchmarks.registry import wds_benchmark
    from benchmarks.tasks import Context, run_task
    from benchmarks.tasks.zeroshot import image_features, text_weights
    cfg, folder, ckpt = tiny_clip
    ref_logits, ref_target = reference(cfg, folder, ckpt)

    model = load_model(f"open_clip:{cfg}:{ckpt}")
    ctx = Context(progress=False, batch_size=64, cache=FeatureCache(tmp_path / "cache"))
    res = run_task(model, wds_benchmark(folder), ctx)
    pred = torch.tensor([r["pred"] for r in res.rows])
    label = torch.tensor([r["label"] for r in res.rows])

    assert torch.equal(label, ref_target)
    assert torch.equal(pred, ref_logits.argmax(1))                       # identical per-sample predictions
    assert len(collections.Counter(pred.tolist())) >= 4                  # ... on a model whose predictions spread
    meta = read_wds_meta(folder)
    feats, _, _, _ = image_features(model, meta, "test", ctx)
    ours = 100.0 * feats @ text_weights(model, meta, ctx).T
    torch.testing.assert_close(ours, ref_logits, atol=1e-3, rtol=1e-5)
    ref_top5 = (ref_logits.topk(5, 1).indices == ref_target[:, None]).any(1).float().mean().item()
    assert res.metrics["top1"] == pytest.approx((ref_logits.argmax(1) == ref_target).float().mean().item())
    assert res.metrics["top5"] == pytest.approx(ref_top5)
    assert res.metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(ref_target, ref_logits.argmax(1)))

    # Warm cache: a model that would fail if it ran gives the same rows.
    assert ctx.cache.misses == 2 and ctx.cache.hits == 2
    model._load = lambda: (_ for _ in ()).throw(AssertionError("the model ran despite a warm cache"))
    again = run_task(model, wds_benchmark(folder), ctx)
    assert [r["pred"] for r in again.rows] == pred.tolist()


def test_trimmed_text_tower_equals_full_context(tiny_clip):
    """Running the causal text tower only up to the batch's longest token row changes nothing."""
    import open_clip

    from benchmarks.models import load_model
    cfg, _, ckpt = tiny_clip
    model = load_model(f"open_clip:{cfg}:{ckpt}")
    texts = ["a", "a photo of something red.", "the color of a rather long sentence about purple things."]
    ours = model.encode_texts(texts)
    with torch.no_grad():
        full = torch.nn.functional.normalize(model.model.encode_text(open_clip.get_tokenizer(cfg.stem)(texts)), dim=-1)
    torch.testing.assert_close(ours, full, atol=1e-5, rtol=1e-5)


def test_random_init_is_seeded_once_under_decoding_threads(tiny_clip, tmp_path):
    """A random-init model is built on first use, possibly from two decoding threads at once: it is built
    once, from seed 0, so its features equal those of a model built directly."""
    import open_clip

    from benchmarks.data import read_wds_meta
    from benchmarks.models import load_model
    from benchmarks.tasks import Context
    from benchmarks.tasks.zeroshot import image_features
    cfg, folder, _ = tiny_clip
    model = load_model(f"open_clip:{cfg}")
    feats, _, _, _ = image_features(model, read_wds_meta(folder), "test", Context(progress=False, workers=4, batch_size=8))
    assert feats.shape[0] == 120
    torch.manual_seed(0)
    ref, _, pre = open_clip.create_model_and_transforms(cfg.stem)
    for a, b in zip(ref.state_dict().values(), model.model.state_dict().values()):
        assert torch.equal(a, b)


def test_classes_the_model_reads_alike_are_refused(tiny_clip, tmp_path):
    """`red` and `RED` in classnames.txt: open_clip's tokenizer lower-cases both, their class weights were
    equal, and which one was predicted came down to rounding (a review). One line naming both."""
    import shutil

    from benchmarks.models import load_model
    from benchmarks.registry import wds_benchmark
    from benchmarks.tasks import Context, run_task
    from vlm.errors import UserError
    cfg, folder, ckpt = tiny_clip
    copy = tmp_path / "wds_cased"
    shutil.copytree(folder, copy)
    names = (copy / "classnames.txt").read_text().splitlines()
    (copy / "classnames.txt").write_text("\n".join([names[0], names[0].upper(), *names[2:]]) + "\n")
    with pytest.raises(UserError, match=rf"classes '{names[0]}' and '{names[0].upper()}' embed identically"):
        run_task(load_model(f"open_clip:{cfg}:{ckpt}"), wds_benchmark(copy), Context(progress=False))
