"""The contrastive and masked_prediction objectives through the trainer, as users run it (`vlm train`):
losses finite and falling on tiny data, 2 ranks (torchrun, gloo DDP) equal to 1 process at the same
global batch (grounded_next_token too; FSDP2 with the encodec teacher), and kill -9 + --resume bitwise equal to an uninterrupted run; plus their building blocks
(span masks, the noise mixture, the CQT target, the k-means teacher)."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import helpers_media as H
import test_train_common as C

COLORS, SHAPES = ["red", "green", "blue", "yellow"], ["circle", "square"]
MERT = {"family": "mert", "size": "tiny", "settings": {"codebooks": [16, 16]}}
PAIR_MODEL = {"family": "llava", "size": "tiny", "settings": {"audio": None, "music": None, "video": None}}
MASKED = {"codebook_size": 16, "teacher_frames": 3000, "clip_seconds": 2.0, "min_seconds": 1.5}
DDP_LAUNCH = """
import sys
import torch.distributed as dist
from vlm.cli import main
dist.init_process_group("gloo")
args = sys.argv[1:]
if not args or len(args) % 3:
    sys.exit(f"launch.py: give (recipe, output folder, strategy) triples, got {args}")
for recipe, out, strategy in zip(args[0::3], args[1::3], args[2::3]):
    if main(["train", recipe, "--out", out, f"runtime.strategy={strategy}"]):
        sys.exit(1)
dist.destroy_process_group()
"""


def write_pair_world(folder, n: int = 32) -> str:
    """Image -> its caption, with one hard negative (the same shape in another colour)."""
    from vlm.data.writer import ShardWriter
    with ShardWriter(folder, max_count=10**6) as w:
        for i in range(n):
            c, s = COLORS[i % 4], SHAPES[(i // 4) % 2]
            w.write({"__key__": f"p{i:04d}", "jpg": H.image(c, 32, s), "json": {
                "query": {"text": "<image>\nFind a caption for this image."}, "positive": {"text": f"a {c} {s}"},
                "negatives": [{"text": f"a {COLORS[(i + 1) % 4]} {s}"}], "task": "retrieval"}})
    return str(folder)


def tone(freq: float, seconds: float, sr: int = 16000, harmonics: int = 3) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, harmonics + 1))).astype(np.float32)


def write_music_world(folder, n: int = 24) -> str:
    """Tones of a few pitches and timbres, 2.5 s at 16 kHz (the pipeline resamples to 24 kHz)."""
    from vlm.data.writer import Audio, ShardWriter
    with ShardWriter(folder, max_count=10**6) as w:
        for i in range(n):
            wave = tone(110 * 2 ** ((i % 12) / 12), 2.5, harmonics=1 + i % 3)
            w.write({"__key__": f"m{i:04d}", "flac": Audio(wave, 16000), "json": {"modality": "music", "task": "tone"}})
    return str(folder)


def pair_recipe(tmp, world, steps=8, name="pairs", settings=None, **runtime):
    """settings: more contrastive settings (e.g. chunk_size for GradCache)."""
    return C.write_recipe(tmp / f"{name}.yaml", world, [
        C.stage("embed", ["media.*.projector.*"], llm="full", steps=steps, batch_size=8, lr=1e-3, eps=1e-6,
                objective="contrastive", objective_settings={"negatives": 1, "temperature": 0.05, **(settings or {})})],
        model=PAIR_MODEL, **runtime)


# the rvq teacher (trained first, 8 codebooks) with the in-memory target cache: what mert-tiny runs
RVQ = {"teacher": "rvq", "teacher_settings": {"steps": 20}, "target_cache_mb": 64}
MERT_RVQ = {"family": "mert", "size": "tiny", "settings": {"codebooks": [16] * 8}}


def masked_recipe(tmp, world, steps=8, noise=0.0, name="masked", rvq=False, encodec=None, **runtime):
    """rvq: the rvq teacher; encodec: a local EnCodec folder as the teacher (8 codebooks of 16 at 2.4 kbps)."""
    teacher = RVQ if rvq else {"teacher": "encodec", "teacher_settings": {"path": str(encodec), "bandwidth": 2.4}} \
        if encodec else {}
    return C.write_recipe(tmp / f"{name}.yaml", world, [
        C.stage("pretrain", ["encoder.*", "final_proj.*", "label_embs", "regression_head.*"], steps=steps,
                batch_size=4, lr=5e-3, eps=1e-6, objective="masked_prediction",
                objective_settings={**MASKED, "noise_prob": noise, **teacher})],
        model=MERT_RVQ if rvq or encodec else MERT, **runtime)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("objectives")
    return tmp, write_pair_world(tmp / "pairs"), write_music_world(tmp / "music")


def mean(xs):
    return sum(xs) / len(xs)


# ------------------------------------------------------------------ learning
@pytest.fixture(scope="module")
def learning(worlds):
    tmp, pairs, music = worlds
    (tmp / "l").mkdir()
    runs = {"pairs": pair_recipe(tmp / "l", pairs, steps=16, checkpoint_every=0),
            "masked": masked_recipe(tmp / "l", music, steps=24, noise=0.5, checkpoint_every=0)}
    procs = {k: subprocess.Popen(C.vlm_cmd("train", str(r), "--out", str(tmp / "l" / f"run-{k}")), cwd=C.REPO,
                                 env=C.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for k, r in runs.items()}
    for k, p in procs.items():
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    return {k: C.step_rows(tmp / "l" / f"run-{k}") for k in runs}


def test_contrastive_loss_falls_and_retrieval_accuracy_rises(learning):
    rows = learning["pairs"]
    loss, acc = [rows[s]["loss"] for s in sorted(rows)], [rows[s]["accuracy"] for s in sorted(rows)]
    assert all(math.isfinite(x) for x in loss) and all(r["queries"] == 8 for r in rows.values())
    assert mean(loss[-4:]) < 0.8 * mean(loss[:4]), loss
    assert mean(acc[-4:]) > mean(acc[:4]), acc


def test_masked_prediction_terms_fall_with_the_noise_mixture_on(learning):
    rows = learning["masked"]
    for key in ("loss", "codebook_ce", "cqt_mse"):          # batches repeat every 3 steps: compare 6-step means
        xs = [rows[s][key] for s in sorted(rows)]
        assert all(math.isfinite(x) for x in xs), key
        assert mean(xs[-6:]) < 0.9 * mean(xs[:6]), (key, xs)
    frac = [rows[s]["masked_frames"] / (4 * 149) for s in rows]            # 2 s clips: 149 frames each
    assert all(0.4 < f < 0.7 for f in frac), frac                          # spans of 5 at p 0.8: ~55 %


def grounded_recipe(tmp, steps=3):
    """dragonfly-tiny (text selection) on synthetic-world's fine-detail questions, each with its answer's bbox."""
    from vlm.data.synthetic import build_synthetic_world
    build_synthetic_world(tmp / "fd", samples=24, tasks=["fine_detail"], eval_per_task=2, splits=("train",),
                          classification=False, workers=1)
    return C.write_recipe(tmp / "grounded.yaml", str(tmp / "fd" / "train"), [
        C.stage("sft", ["media.*.projector.*", "media.image.zoom.*"], llm="full", steps=steps, batch_size=8,
                max_len=256, lr=1e-3, eps=1e-6, objective="grounded_next_token")],
        model={"family": "dragonfly", "size": "tiny", "settings": {"selection": "text"}}, checkpoint_every=0)


# ------------------------------------------------------------------ 2 ranks == 1 rank
RANK_RUNS = {"pairs": "ddp", "masked": "ddp", "grounded": "ddp", "encodec": "fsdp2"}     # run -> strategy


@pytest.fixture(scope="module")
def ranks(worlds):
    from test_mert import tiny_encodec
    tmp, pairs, music = worlds
    (tmp / "d").mkdir()
    recipes = [pair_recipe(tmp / "d", pairs, steps=3, checkpoint_every=0),
               masked_recipe(tmp / "d", music, steps=3, checkpoint_every=0), grounded_recipe(tmp / "d"),
               masked_recipe(tmp / "d", music, steps=3, name="encodec", encodec=tiny_encodec(tmp / "d" / "encodec"),
                             checkpoint_every=0)]
    (tmp / "d" / "launch.py").write_text(DDP_LAUNCH)
    args = [x for r, (name, strategy) in zip(recipes, RANK_RUNS.items())
            for x in (str(r), str(tmp / "d" / f"two-{name}"), strategy)]
    dist = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(tmp / "d" / "launch.py"), *args], cwd=C.REPO, env=C.env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for r, name in zip(recipes, RANK_RUNS):
        C.run_vlm("train", str(r), "--out", str(tmp / "d" / f"one-{name}"), timeout=600)
    _, err = dist.communicate(timeout=600)
    assert dist.returncode == 0, err[-4000:]
    return tmp / "d"


@pytest.mark.parametrize("name, counts", [("pairs", ["queries"]), ("masked", ["masked_frames"]),
                                          ("grounded", ["label_tokens", "grounded_images"]),
                                          ("encodec", ["masked_frames"])])
def test_two_ranks_equal_one_process(ranks, name, counts):
    """grounded: the relevance term's images are split across ranks and summed like the answer tokens;
    encodec: FSDP2 with a local EnCodec checkpoint as the acoustic teacher (kept out of the sharded module)."""
    one, two = C.step_rows(ranks / f"one-{name}"), C.step_rows(ranks / f"two-{name}")
    assert sorted(one) == sorted(two) == [1, 2, 3]
    for s in one:
        assert abs(one[s]["loss"] - two[s]["loss"]) < 1e-5, (s, one[s]["loss"], two[s]["loss"])
        assert all(one[s][c] == two[s][c] for c in counts), s
    if name == "grounded":
        assert all(one[s]["grounded_images"] > 0 and one[s]["relevance_ce"] > 0 for s in one)
        assert all(abs(one[s]["relevance_ce"] - two[s]["relevance_ce"]) < 1e-5 for s in one)
    a, b = C.weights(ranks / f"one-{name}" / "final"), C.weights(ranks / f"two-{name}" / "final")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst


# ------------------------------------------------------------------ kill -9, then --resume
@pytest.fixture(scope="module")
def resumed(worlds):
    tmp, pairs, music = worlds
    (tmp / "r").mkdir()
    recipes = {"pairs": pair_recipe(tmp / "r", pairs, steps=5, checkpoint_every=2),
               "masked": masked_recipe(tmp / "r", music, steps=5, noise=0.5, rvq=True, checkpoint_every=2)}
    out = {}
    for name, r in recipes.items():
        ref, victim = tmp / "r" / f"ref-{name}", tmp / "r" / f"victim-{name}"
        p_ref, _ = C.train_and_kill(r, ref, victim)
        C.run_vlm("train", str(r), "--out", str(victim), "--resume", timeout=600)
        assert p_ref.wait(timeout=600) == 0, p_ref.stderr.read()[-3000:]
        out[name] = (ref, victim)
    return out


@pytest.mark.parametrize("name", ["pairs", "masked"])
def test_resume_after_kill9_is_bitwise(resumed, name):
    """masked: the rvq teacher is read back from the run, and the target cache starts empty after the kill."""
    ref, victim = resumed[name]
    a, b = C.step_rows(ref), C.step_rows(victim)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5]
    for s in a:
        assert a[s]["loss"] == b[s]["loss"] and a[s]["grad_norm"] == b[s]["grad_norm"], s
    wa, wb = C.weights(ref / "final"), C.weights(victim / "final")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# ------------------------------------------------------------------ building blocks
def test_span_masks_cover_about_the_expected_fraction_in_spans_of_the_span_length():
    from vlm.train.objectives.masked_prediction import span_mask
    masks = torch.stack([span_mask(375, 375, 0.8, 5, 2, torch.Generator().manual_seed(s)) for s in range(200)])
    assert 0.50 < masks.float().mean().item() < 0.62                       # fairseq / HF: ~0.55-0.58 at 0.8 / 5
    runs = []
    for m in masks.tolist():                                                # every masked run is >= one span
        n = 0
        for x in m + [False]:
            if x:
                n += 1
            elif n:
                runs.append(n)
                n = 0
    assert min(runs) >= 5
    again = span_mask(375, 375, 0.8, 5, 2, torch.Generator().manual_seed(7))
    assert torch.equal(again, masks[7]) and not span_mask(375, 100, 0.8, 5, 2, torch.Generator())[100:].any()


def test_noise_mixture_changes_the_input_and_leaves_the_clean_clips_alone():
    from vlm.train.objectives.masked_prediction import MaskedPredictionSettings, mix_noise
    wave = torch.stack([torch.from_numpy(tone(f, 2.0, 24000)) for f in (220, 330, 440)])
    clean = wave.clone()
    s = MaskedPredictionSettings(noise_prob=1.0)
    noisy = mix_noise(wave, torch.full((3,), wave.shape[1]), [torch.Generator().manual_seed(i) for i in range(3)],
                      s, 24000)
    assert torch.equal(wave, clean) and not torch.equal(noisy, wave)
    assert all(not torch.equal(noisy[i], wave[i]) for i in range(3))
    off = mix_noise(wave, torch.full((3,), wave.shape[1]), [torch.Generator() for _ in range(3)],
                    MaskedPredictionSettings(noise_prob=0.0), 24000)
    assert torch.equal(off, wave)
    # a finite clip too loud for float32 powers (its mixture gain was inf, the encoder's input NaN): the same
    # mixture as at a sane scale, once the encoder normalises each clip
    from encoders.base import normalize_waveform
    loud = wave.clone()
    loud[1] *= 1e20
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    mixed = mix_noise(loud, torch.full((3,), wave.shape[1]), gens, s, 24000)
    assert torch.isfinite(mixed).all()
    assert torch.allclose(normalize_waveform(mixed), normalize_waveform(noisy), atol=1e-4)


def test_the_noise_mixture_refuses_splits_that_change_its_partners():
    """The mixture takes its segments from the micro-batch: grad_accum 2 x 2 made another update than 1 x 4 (a
    review: weights 1e-2 apart after one step, 7.5e-6 without the mixture), and one clip per rank mixed nothing."""
    from vlm.errors import UserError
    from vlm.train.recipe import load_recipe
    for overrides, field in ((["stages.0.grad_accum=2"], "stages.0.grad_accum"),
                             (["stages.0.batch_size=1"], "stages.0.batch_size")):
        with pytest.raises(UserError, match=rf"^recipe field '{field}': .*noise"):
            load_recipe("mert-tiny", overrides, check_files=False)
        load_recipe("mert-tiny", [*overrides, "stages.0.objective_settings.noise_prob=0"], check_files=False)
    with pytest.raises(UserError, match=r"'stages.0.batch_size': 16 leaves each of 16 rank"):
        load_recipe("mert-tiny", [], world_size=16, check_files=False)


def test_cqt_target_peaks_at_the_bin_of_a_pure_tone():
    from vlm.train.objectives.teachers import CQTTarget
    cqt = CQTTarget()
    for freq in (110.0, 440.0, 1000.0):
        spec = cqt(torch.from_numpy(tone(freq, 2.0, 24000, harmonics=1))[None], 100)     # [1, 100, 336]
        want = 48 * math.log2(freq / 32.7)
        assert abs(spec[0, 20:80].mean(0).argmax().item() - want) <= 1, freq


def test_kmeans_teacher_is_deterministic_for_a_seed():
    from vlm.train.objectives.teachers import MelKMeans
    waves = [torch.stack([torch.from_numpy(tone(110 * (1 + i + j), 2.0, 24000)) for j in range(4)]) for i in range(3)]
    a, b = MelKMeans(codebook_size=8), MelKMeans(codebook_size=8)
    a.fit(iter(waves), seed=0)
    b.fit(iter(waves), seed=0)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    codes = a(waves[0], 100)
    assert codes.shape == (4, 100, 2) and codes.max() < 8 and len(codes.unique()) > 1


def test_kmeans_teacher_features_choose_its_codebooks_and_mfcc_are_torchaudios():
    """`features` picks the mel_kmeans teacher's codebooks, one per kind; `mfcc` (HuBERT's first-iteration
    features) is torchaudio's MFCC of the clip's log-mel bands with deltas and delta-deltas (39 values)."""
    import torchaudio

    from vlm.errors import UserError
    from vlm.train.objectives.teachers import MelKMeans, normalise
    gen = torch.Generator().manual_seed(0)
    waves = [torch.stack([torch.from_numpy(tone(110 * (1 + i + j), 2.0, 24000)) for j in range(4)])
             + 0.01 * torch.randn(4, 48000, generator=gen) for i in range(3)]
    a = MelKMeans(codebook_size=8, features=["log_mel", "chroma", "mfcc"])
    b = MelKMeans(codebook_size=8, features=["log_mel", "chroma", "mfcc"])
    a.fit(iter(waves), seed=0)
    b.fit(iter(waves), seed=0)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    codes = a(waves[0], 100)
    assert a.codebook_sizes == [8, 8, 8] and codes.shape == (4, 100, 3) and len(codes[..., 2].unique()) > 1
    mfcc = MelKMeans(codebook_size=8, features=["mfcc"]).features(waves[0], 100)[0]          # [4, 100, 39]
    ref = torchaudio.transforms.MFCC(24000, n_mfcc=13, log_mels=True,
                                     melkwargs={"n_fft": 1024, "hop_length": 320, "n_mels": 64})
    static = ref(normalise(waves[0], None))[..., :100]                                      # [4, 13, 100]
    d1 = torchaudio.functional.compute_deltas(static)
    want = torch.cat([static, d1, torchaudio.functional.compute_deltas(d1)], 1).transpose(1, 2)
    assert mfcc.shape == (4, 100, 39) and torch.allclose(mfcc, want, atol=1e-3), (mfcc - want).abs().max()
    for bad, why in ([[], "non-empty list"], ["mfcc", "non-empty list"], [["mfc"], "unknown feature kind 'mfc'"],
                     [["mfcc", "mfcc"], "given twice"]):
        with pytest.raises(UserError, match=why):
            MelKMeans(features=bad)


def test_a_kmeans_teacher_fitted_on_silence_says_so(capsys):
    """Found by a review: pretraining on all-silent clips trained on with exit 0, the only sign sklearn's
    raw ConvergenceWarning ('Number of distinct clusters (1) found smaller than n_clusters')."""
    import warnings

    from vlm.train.objectives.teachers import MelKMeans
    teacher = MelKMeans(codebook_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                       # sklearn's own warning is not what a user reads
        teacher.fit(iter([torch.zeros(4, 48000)]), seed=0)
    err = capsys.readouterr().err
    assert "take 1 distinct value(s) for 8 units: the clips are silent or alike" in err, err
    capsys.readouterr()
    waves = [torch.stack([torch.from_numpy(tone(110 * (1 + i + j), 2.0, 24000)) for j in range(4)]) for i in range(3)]
    MelKMeans(codebook_size=8).fit(iter(waves), seed=0)
    assert "distinct value" not in capsys.readouterr().err
