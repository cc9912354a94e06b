"""MERT beyond the objective's own tests (tests/test_objectives.py): the saved folder as a transformers
HuBERT folder, the pretrained encoder by path in any family (`mert:PATH`, `hf:PATH`), the rvq and
EnCodec teachers, the target cache, the probes (`vlm eval --suite music-probes`, `--bench audio-folder:DIR`)
and bad audio (silent, clipped, very short, stereo, other rates, corrupt) in training and in probes."""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import test_train_common as C

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def tone(freq: float, seconds: float, sr: int = 24000, harmonics: int = 2) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, harmonics + 1))).astype(np.float32)


@pytest.fixture(scope="module")
def mert_folder(tmp_path_factory):
    import vlm
    model = vlm.build("mert", "tiny", codebooks=[16, 16], seed=3)
    return Path(model.save_pretrained(tmp_path_factory.mktemp("mert") / "ckpt")), model


# ------------------------------------------------------------------ the checkpoint folder
def test_saved_folder_is_a_transformers_hubert_folder_with_identical_hidden_states(mert_folder):
    from transformers import AutoModel

    import vlm
    folder, model = mert_folder
    hf = AutoModel.from_pretrained(folder, local_files_only=True)        # no remote code, no hub
    assert type(hf).__name__ == "HubertModel"
    x = torch.from_numpy(tone(220, 1.0))[None]
    with torch.no_grad():
        ours = model.eval().encoder(x, output_hidden_states=True).hidden_states
        theirs = hf.eval()(x, output_hidden_states=True).hidden_states
        assert len(ours) == len(theirs) == 3 and all(torch.equal(a, b) for a, b in zip(ours, theirs))
        again = vlm.load(folder)                                          # + the prediction heads
        h = again.encoder(x).last_hidden_state[0]
        assert all(torch.equal(a, b) for a, b in zip(again.codebook_logits(h), model.codebook_logits(h)))


@pytest.mark.parametrize("prefix", ["mert:", "hf:"])
def test_pretrained_folder_as_music_encoder_matches_automodel_per_layer_and_never_masks(mert_folder, prefix):
    from transformers import AutoModel

    from encoders import build_encoder, build_encoder_from_spec
    folder, _ = mert_folder
    hf = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    enc = build_encoder(f"{prefix}{folder}")
    assert enc.modality == "music" and enc.frame_rate == 75.0 and enc.hubert_config.apply_spec_augment is False
    x = enc.preprocess((torch.from_numpy(tone(330, 1.0, 16000))[None].repeat(2, 1), 16000))   # stereo, 16 kHz
    with torch.no_grad():
        want = hf(x[None], output_hidden_states=True).hidden_states
        for mode in ("eval", "train"):                  # a VLM stage puts the frozen encoder in train mode
            getattr(enc, mode)()
            for k in range(3):
                enc.feature_layer = k
                assert torch.equal(enc(x[None]), want[k]), (mode, k)
        masked = hf.train()(x[None]).last_hidden_state     # transformers in train mode masks ~5 % of frames
        assert not torch.equal(masked, want[-1])
    rebuilt = build_encoder_from_spec(enc.spec())          # a VLM checkpoint rebuilds it without the folder
    rebuilt.load_state_dict(enc.state_dict())
    assert torch.equal(rebuilt.eval()(x[None]), enc.eval()(x[None]))


def test_a_llava_model_takes_the_pretrained_encoder_by_path(mert_folder, tmp_path):
    import vlm
    folder, _ = mert_folder
    model = vlm.build("llava", "tiny", vision=None, audio=None, video=None, music=f"mert:{folder}")
    ref = vlm.load(folder).encoder
    got = model.media["music"].encoder.model
    assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), ref.state_dict().values()))
    loaded = vlm.load(model.save_pretrained(tmp_path / "llava"))
    assert torch.equal(loaded.media["music"].encoder.model.feature_projection.projection.weight,
                       ref.feature_projection.projection.weight)
    with pytest.raises(Exception, match="not a HuBERT"):
        vlm.build("llava", "tiny", vision=None, audio=None, video=None, music=f"mert:{tmp_path / 'llava'}")


def test_feature_grad_mult_scales_only_the_conv_front_ends_gradient_and_is_saved(tmp_path):
    import vlm
    x = torch.from_numpy(tone(220, 0.5))[None]
    grads = {}
    for mult in (1.0, 0.1):
        model = vlm.build("mert", "tiny", codebooks=[16, 16], feature_grad_mult=mult, seed=5)
        model.eval().encoder(x).last_hidden_state.pow(2).mean().backward()   # eval: no SpecAugment draw
        grads[mult] = (model.encoder.feature_extractor.conv_layers[0].conv.weight.grad.clone(),
                       model.encoder.feature_projection.projection.weight.grad.clone())
    assert torch.allclose(grads[0.1][0], 0.1 * grads[1.0][0], rtol=1e-4, atol=1e-9)
    assert torch.equal(grads[0.1][1], grads[1.0][1])            # above the front end: untouched
    assert vlm.load(model.save_pretrained(tmp_path / "m")).config.feature_grad_mult == 0.1


@pytest.mark.parametrize("family,settings", [("omni", {}), ("llava", {"vision": None})])
def test_pretrained_folder_is_the_music_encoder_of_any_family_in_format_3(mert_folder, tmp_path, family, settings):
    """omni (music encoder shared by <music> items and the video soundtrack) and llava-music-tiny's model:
    `music: mert:PATH` becomes `encoders.music`, saved and reloaded (format 3) without the folder."""
    import vlm
    from vlm.train.recipe import build_model, load_recipe
    folder, _ = mert_folder
    if family == "omni":
        model = vlm.build("omni", "tiny", music=f"mert:{folder}")
    else:
        recipe = load_recipe("llava-music-tiny", [f"model.settings.music=mert:{folder}"], check_files=False)
        model = build_model(recipe.model, seed=0)
    ref = vlm.load(folder).encoder.state_dict()
    got = {k[len("encoders.music.model."):]: v for k, v in model.state_dict().items()
           if k.startswith("encoders.music.model.")}
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
    saved = model.save_pretrained(tmp_path / family)
    import json
    cfg = json.loads((Path(saved) / "config.json").read_text())
    assert cfg["format_version"] == 3 and cfg["media"]["music"]["encoder"] == "music"
    assert cfg["encoders"]["music"]["name"].startswith("mert")      # the spec: rebuilt without the folder
    loaded = vlm.load(saved)
    x = torch.from_numpy(tone(440, 0.5))[None]
    with torch.no_grad():
        assert torch.equal(loaded.encoders["music"].eval()(x), model.encoders["music"].eval()(x))


# ------------------------------------------------------------------ the teachers
def test_rvq_teacher_is_deterministic_and_its_codes_keep_the_audio():
    from vlm.train.objectives.teachers import build_teacher
    waves = [torch.stack([torch.from_numpy(tone(110 * 2 ** ((4 * i + j) / 12), 2.0, harmonics=1 + (i + j) % 3))
                          for j in range(4)]) for i in range(4)]
    a, b = (build_teacher("rvq", codebook_size=16, max_frames=2000, steps=60) for _ in range(2))
    a.fit(iter(waves), seed=0)
    b.fit(iter(waves), seed=0)
    assert all(torch.equal(x, y) for x, y in zip(a.fitted_state().values(), b.fitted_state().values()))
    assert a.history[-1] < 0.3 * a.history[0]                              # reconstruction through 8 codebooks
    assert a.reconstruction_error(waves[1]) < 0.3
    codes = a(waves[1], 120)
    assert codes.shape == (4, 120, 8) and codes.dtype == torch.int64 and codes.max() < 16
    assert all(len(codes[..., k].unique()) > 2 for k in range(8))


def tiny_encodec(folder: Path) -> Path:
    from transformers import EncodecConfig, EncodecModel
    torch.manual_seed(0)
    model = EncodecModel(EncodecConfig(num_filters=4, hidden_size=16, codebook_size=16, codebook_dim=16,
                                       num_lstm_layers=1, target_bandwidths=[1.2, 2.4]))  # 2.4 kbps: 8 x 4 bits at 75 Hz
    for layer in model.quantizer.layers:                                      # random, not all-zero, codes
        layer.codebook.embed.normal_()
        layer.codebook.inited.fill_(1)
    model.save_pretrained(folder)
    return folder


def test_encodec_teacher_gives_the_local_checkpoints_codes(tmp_path):
    from transformers import EncodecModel

    from vlm.errors import UserError
    from vlm.train.objectives.teachers import build_teacher
    folder = tiny_encodec(tmp_path / "encodec")
    teacher = build_teacher("encodec", codebook_size=64, max_frames=10, path=str(folder), bandwidth=2.4)
    assert teacher.codebook_sizes == [16] * 8 and not teacher.needs_fit and teacher.fitted_state() == {}
    assert teacher._encodec is None        # the weights load at the first codes (a recipe check builds it too)
    wave = torch.stack([torch.from_numpy(tone(f, 1.0)) for f in (220, 440)])
    codes = teacher(wave, 70)
    ref = EncodecModel.from_pretrained(folder).eval().encode(wave[:, None], bandwidth=2.4).audio_codes[0]   # [B, 8, 75]
    assert torch.equal(codes, ref.transpose(1, 2)[:, :70]) and len(codes.unique()) > 2
    assert not teacher.state_dict() and not list(teacher.parameters())   # out of the module tree (FSDP2's copy)
    assert build_teacher("encodec", path=str(folder), bandwidth=1.2).codebook_sizes == [16] * 4
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text('{"model_type": "encodec"}')
    cut = tmp_path / "cut"                 # a truncated copy: refused when built, not at the first step
    shutil.copytree(folder, cut)
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[:len(data) // 2])
    for path, msg in [(None, "teacher_settings.path"), (tmp_path / "none", "not a local folder"),
                      (tmp_path / "bin", "no .safetensors"), (folder, "bandwidth 6.0"), (cut, "corrupt weights file")]:
        with pytest.raises(UserError, match=msg):
            build_teacher("encodec", path=str(path) if path else None, bandwidth=6.0 if path == folder else 2.4)


def test_cached_targets_equal_the_computed_ones_and_are_reused():
    from vlm.train.objectives.masked_prediction import MaskedPrediction, MaskedPredictionSettings
    wave = torch.stack([torch.from_numpy(tone(f, 2.0)) for f in (110, 220, 440)])
    lengths = torch.tensor([48000, 48000, 30000])
    wave[2, 30000:] = 0
    plain = MaskedPrediction(MaskedPredictionSettings(codebook_size=8))
    cached = MaskedPrediction(MaskedPredictionSettings(codebook_size=8, target_cache_mb=16))
    cached.teacher.load_state_dict(plain.teacher.state_dict())
    a_codes, a_spec = plain.targets(wave, lengths, 149)
    b_codes, b_spec = cached.targets(wave, lengths, 149)
    assert torch.equal(a_codes, b_codes) and torch.allclose(a_spec, b_spec, atol=1e-4)
    assert len(cached.cache.items) == 3
    c_codes, c_spec = cached.targets(wave[[1, 0]], lengths[[1, 0]], 149)        # another batch: from the cache
    assert torch.equal(c_spec, b_spec[[1, 0]]) and torch.equal(c_codes, b_codes[[1, 0]])


def test_the_teacher_reads_the_objectives_cqt_with_the_same_codes():
    """The objective computes each clip's CQT once and hands it to the mel_kmeans teacher (its chroma):
    the codes equal those of the teacher computing the transform itself, bit for bit."""
    from vlm.train.objectives.masked_prediction import MaskedPrediction, MaskedPredictionSettings
    from vlm.train.objectives.teachers import normalise
    wave = torch.stack([torch.from_numpy(tone(f, 2.0)) for f in (110, 261.6, 440)])
    wave = wave + 0.3 * torch.roll(wave, 1, 0)                                  # two pitches per clip
    lengths = torch.tensor([48000, 41000, 30000])
    objective = MaskedPrediction(MaskedPredictionSettings(codebook_size=8, teacher_frames=400))
    objective.teacher.fit(iter([wave]), seed=0)
    codes, spec = objective.targets(wave, lengths, 149)
    alone = objective.teacher(wave, 149, lengths)                               # computes its own CQT
    assert torch.equal(codes, alone) and len(codes.unique()) > 2
    assert torch.equal(spec, objective.cqt(normalise(wave, lengths), 149))


# ------------------------------------------------------------------ bad audio
def flac(wave: np.ndarray, sr: int) -> bytes:
    import soundfile as sf
    buf = io.BytesIO()
    sf.write(buf, wave.T if wave.ndim == 2 else wave, sr, format="FLAC")
    return buf.getvalue()


def encoded(wave: np.ndarray, sr: int, fmt: str) -> bytes:
    import soundfile as sf
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format=fmt)
    return buf.getvalue()


def wav_float(wave: np.ndarray, sr: int) -> bytes:
    import soundfile as sf
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format="WAV", subtype="FLOAT")
    return buf.getvalue()


BAD_AUDIO = {   # name -> (file bytes, what must happen); the bad ones first
    "short": (lambda: flac(tone(440, 0.5), 24000), "too_short"),           # < the CQT's 1.4 s lowest kernel
    "corrupt": (lambda: b"fLaC" + b"\x00" * 300, "bad_audio"),
    "nan": (lambda: wav_float(np.where(np.arange(48000) % 7 == 0, np.nan, tone(220, 2.0)).astype(np.float32), 24000),
            "bad_audio"),
    "silent": (lambda: flac(np.zeros(48000, np.float32), 24000), "kept"),
    "clipped": (lambda: flac(np.clip(4 * tone(220, 2.0), -1, 1), 24000), "kept"),
    "stereo": (lambda: flac(np.stack([tone(220, 2.0), tone(330, 2.0)]), 24000), "kept"),
    "rate16k": (lambda: flac(tone(220, 2.0, 16000), 16000), "kept"),
    "rate44k": (lambda: flac(tone(220, 2.0, 44100), 44100), "kept"),
    "mp3": (lambda: encoded(tone(220, 2.0), 24000, "MP3"), "kept"),          # counted as 'no_audio' before
    "ogg": (lambda: encoded(tone(330, 2.0), 24000, "OGG"), "kept"),
}


def test_bad_audio_in_pretraining_is_resampled_padded_or_skipped_and_counted(tmp_path):
    from vlm.data.pipeline import PipelineConfig, ShardPipeline
    from vlm.data.writer import ShardWriter
    from vlm.train.objectives.masked_prediction import MaskedPrediction, MaskedPredictionSettings

    import vlm
    with ShardWriter(str(tmp_path / "bad"), max_count=100) as w:
        w.write({"__key__": "text", "json": {"conversations": C.conv("hi", "there")}})
        for name, (make, _) in BAD_AUDIO.items():
            ext = {"nan": "wav", "mp3": "mp3", "ogg": "ogg"}.get(name, "flac")
            w.write({"__key__": name, ext: make(), "json": {"modality": "music"}})
    model = vlm.build("mert", "tiny", codebooks=[8, 8])
    settings = MaskedPredictionSettings(codebook_size=8, clip_seconds=2.0, min_seconds=1.5, noise_prob=1.0,
                                        teacher_frames=500)
    objective = MaskedPrediction(settings)
    cfg = PipelineConfig(batch_size=7, max_len=8, shuffle_buffer=0, num_workers=0, format="clips",
                         format_settings=objective.format_settings(), max_error_rate=0.5)
    pipe = ShardPipeline([{"name": "bad", "shards": [str(tmp_path / "bad")], "weight": 1.0}], model.processor, cfg)
    batch = next(iter(pipe))
    assert sorted(batch["sample_keys"]) == sorted(k for k, (_, what) in BAD_AUDIO.items() if what == "kept")
    assert pipe.stats.skipped == {"too_short": 1, "bad_audio": 2, "no_audio": 1}
    assert pipe.stats.converted == {"audio_resampled": 2, "audio_downmixed": 1, "audio_silent": 1, "audio_clipped": 1}
    assert pipe.stats.errors == 2                          # too short / no audio: the settings drop them
    from vlm.data.inspect import inspect_shards           # `vlm data inspect --model`: read as training reads
    from vlm.data.reader import expand_shards
    report = inspect_shards(expand_shards(str(tmp_path / "bad")), processor=model.processor, samples=0)
    assert report["errors"]["skipped"] == pipe.stats.skipped and report["ok"] == len(batch["sample_keys"])
    assert report["errors"]["converted"] == pipe.stats.converted and report["modalities"] == {"music": report["ok"]}
    objective.teacher.fit(iter([batch["audio"]]), seed=0)
    out = objective(model, batch)
    assert math.isfinite(float(out.loss.detach())) and all(math.isfinite(v) for v in out.metrics.values())
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ------------------------------------------------------------------ probes
@pytest.fixture(scope="module")
def probe_world(tmp_path_factory):
    from vlm.data.synthetic import build_synthetic_world
    world = tmp_path_factory.mktemp("probes") / "sw"
    build_synthetic_world(world, samples=48, seed=0, eval_per_task=4, splits=("train", "test"), workers=1,
                          classification=False, tasks=["music_pitch", "music_chord", "music_instrument", "music_tempo"])
    return world


def test_music_probes_suite_prints_the_per_layer_table(probe_world, mert_folder, tmp_path, capsys):
    from vlm.cli import main
    folder, _ = mert_folder
    assert main(["eval", "--suite", "music-probes", "--model", str(folder), "--data", str(probe_world),
                 "--out", str(tmp_path / "eval"), "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "Probe accuracy per encoder layer" in out
    table = [ln for ln in out.splitlines() if ln.startswith("| ckpt | sw-probe-music-")]
    assert len(table) == 5
    for ln in table:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        assert len(cells) == 2 + 3 + 3               # model, benchmark, layers 0-2, weighted, top weight, best layer
        assert cells[-1] == str(max(range(3), key=lambda k: float(cells[2 + k])))
        assert all(0.0 <= float(c) <= 1.0 for c in cells[2:6])


def test_probe_labels_from_a_json_field_in_ranges():
    """sw-probe-music-bpm: the class is the bpm's range; a clip without the field or outside every range is
    skipped by a named reason, never put in a class."""
    from benchmarks.registry import get_benchmark
    from benchmarks.tasks.probe import sample_label
    opts = get_benchmark("sw-probe-music-bpm").options
    assert sample_label({"answer": "slow", "labels": {"bpm": 60}}, opts) == ("60-66", None)
    assert sample_label({"answer": "slow", "labels": {"bpm": 73}}, opts) == ("67-73", None)
    assert sample_label({"answer": "fast", "labels": {"bpm": 180}}, opts) == ("168-180", None)
    assert sample_label({"answer": "fast", "labels": {"bpm": 100}}, opts)[1] == "label_outside_bins"
    assert sample_label({"answer": "fast", "labels": {}}, opts)[1] == "no_label"
    assert sample_label({"answer": "fast", "labels": {"bpm": None}}, opts)[1] == "no_label"
    assert sample_label({"answer": "fast", "labels": {"bpm": 80.5}}, opts)[1] == "label_outside_bins"
    assert sample_label({"answer": "fast", "labels": {"bpm": "fast"}}, opts)[1] == "label_not_a_number"
    assert sample_label({"answer": "fast", "labels": {"bpm": 100}}, {}) == ("fast", None)
    assert sample_label({"labels": {"bpm": 100}}, {"label": "labels.bpm"}) == ("100", None)
    # the plain probes' class is the answer: a sample without one is skipped, not a class "None" (found by a review)
    for meta in ({}, {"answer": None}, {"answer": "  "}):
        assert sample_label(meta, {}) == ("", "no_label")


def test_bpm_probe_reads_every_tempo_clip_of_a_build(probe_world, mert_folder, tmp_path):
    """Every music_tempo clip of a build falls in one of the six ranges (none skipped)."""
    from benchmarks.registry import get_benchmark
    from benchmarks.runner import RunConfig, evaluate
    folder, _ = mert_folder
    res = evaluate([str(folder)], [get_benchmark("sw-probe-music-bpm")],
                   RunConfig(out=str(tmp_path / "eval"), data=str(probe_world), progress=False))
    (rec,) = res.records
    assert not any(k.startswith("skipped_") and k != "skipped_seen_in_train" for k in rec["metrics"]), rec["metrics"]
    assert rec["metrics"]["n_train"] > 0 and 0.0 <= rec["score"] <= 1.0


def test_mert_study_trains_probes_and_reprobes_its_runs_on_another_build(probe_world, tmp_path, capsys):
    """benchmarks/studies/mert_probes.py: `vlm train mert-tiny` per seed (here 2 steps), the random start
    saved beside it, the probes through the runner; `--runs` probes those same runs again into another
    folder without training anything."""
    from benchmarks.studies import mert_probes as study
    quick = ["stages.0.steps=2", "stages.0.batch_size=4", "stages.0.objective_settings.teacher_frames=600"]
    first, second = tmp_path / "study", tmp_path / "again"
    assert study.main(["--data", str(probe_world), "--out", str(first), "--split", "test", "--seeds", "0",
                       "--variants", "pretrained", *quick]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in first.glob("seed*")) == ["seed0-pretrained", "seed0-random"]
    rows = [ln for ln in out.splitlines() if ln.startswith(("| pitch |", "| chord |", "| instrument |", "| tempo |"))]
    assert len(rows) == 8 and all(ln.rstrip().endswith(("| yes |", "| no |")) for ln in rows[:4])
    weights = (first / "seed0-pretrained" / "final" / "model.safetensors").read_bytes()
    assert study.main(["--data", str(probe_world), "--runs", str(first), "--out", str(second), "--split", "test",
                       "--seeds", "0", "--variants", "pretrained", *quick]) == 0
    assert not list(second.glob("seed*")) and (first / "seed0-pretrained" / "final" / "model.safetensors").read_bytes() == weights
    again = json.loads((second / "results-test.json").read_text())["results"]
    assert sorted(again) == ["seed0-pretrained", "seed0-random"] and set(again["seed0-random"]) == set(study.PROBES)


def tone_folder(d: Path, n: int) -> tuple[Path, list[str]]:
    """d/clips/0..n-1.flac, low (110 Hz up) and high (880 Hz up) tones in turn, each a little higher than the
    last of its label (no two clips alike); labels.csv's lines (not written)."""
    (d / "clips").mkdir(parents=True)
    rows = ["path,label"]
    for i in range(n):
        label = ["low", "high"][i % 2]
        (d / "clips" / f"{i}.flac").write_bytes(flac(tone((110 if label == "low" else 880) * (1 + i / 100), 0.6), 24000))
        rows.append(f"clips/{i}.flac,{label}")
    return d, rows


def test_audio_folder_probe_skips_bad_files_by_reason_and_bad_csv_is_one_line(mert_folder, tmp_path, capsys):
    folder, _ = mert_folder
    d, rows = tone_folder(tmp_path / "mine", 12)
    for name in ("silent", "clipped", "stereo", "rate16k", "corrupt", "nan"):
        (d / "clips" / f"{name}.flac").write_bytes(BAD_AUDIO[name][0]())
        rows.append(f"clips/{name}.flac,low")
    (d / "clips" / "tiny.wav").write_bytes(flac(tone(440, 0.05), 24000))
    (d / "clips" / "cancel.flac").write_bytes(flac(np.stack([tone(220, 2.0), -tone(220, 2.0)]), 24000))
    rows += ["clips/tiny.wav,high", "clips/missing.flac,high", "clips/cancel.flac,high"]
    (d / "labels.csv").write_text("\n".join(rows) + "\n")
    from benchmarks.registry import get_benchmark, resolve
    from benchmarks.runner import RunConfig, evaluate
    assert len(resolve([f"audio-folder:{d}", f"audio-folder:{d}/", f"audio-folder:{d}/../mine"])) == 1   # one folder
    res = evaluate([str(folder)], [get_benchmark(f"audio-folder:{d}")],
                   RunConfig(out=str(tmp_path / "eval"), cache=False, progress=False))
    [rec] = res.records
    assert rec["status"] == "ok", rec
    m = rec["metrics"]
    skipped = {k: v for k, v in m.items() if k.startswith("skipped_")}
    assert sum(skipped.values()) == 4 and skipped.get("skipped_missing_file") == 1
    assert m["n"] + m["n_train"] == 12 + 6 + 3 - 4 and 0 <= m["accuracy"] <= 1
    assert m["kept_audio_silent"] == 2 and m["kept_audio_clipped"] == 1      # (a stereo pair cancelling in the downmix)
    assert [r["layer"] for r in rec["tables"]["layers"]] == [0, 1, 2]
    from vlm.cli import main
    capsys.readouterr()
    assert main(["eval", "--bench", f"audio-folder:{d}", "--model", str(folder), "--out", str(tmp_path / "eval")]) == 0
    err = capsys.readouterr().err                        # (the finished record is reused) the counts are printed
    assert "skipped 4 sample(s): " in err and "missing_file 1 (first: row21:missing.flac)" in err, err
    assert "kept audio_clipped 1, audio_silent 2" in err, err
    # the probe scored on the clips it was fitted on: refused (it printed 1.000 for every layer)
    assert main(["eval", "--bench", f"audio-folder:{d}", "--model", str(folder), "--out", str(tmp_path / "eval"),
                 "--split", "train"]) == 2
    err = capsys.readouterr().err.strip()
    assert "measures memorisation" in err and len(err.splitlines()) == 1, err   # before any model runs
    (d / "labels.csv").write_text("file,label\nclips/0.flac,low\n")
    capsys.readouterr()
    assert main(["eval", "--bench", f"audio-folder:{d}", "--model", str(folder), "--out", str(tmp_path / "e2")]) == 2
    err = capsys.readouterr().err
    assert "labels.csv: header must be" in err and len(err.strip().splitlines()) == 1
    # `Piano` and `piano`: two classes, each clip of one always "wrong" against the other (0.667 for a perfect probe)
    (d / "labels.csv").write_text("path,label\nclips/0.flac,piano\nclips/1.flac,Piano\nclips/2.flac,violin\n")
    from benchmarks.audio_folder import read_labels
    from vlm.errors import UserError
    with pytest.raises(UserError, match=r"labels 'piano' \(rows 2\) and 'Piano' \(rows 3\) differ only in case"):
        read_labels(d)
    # "café" composed (NFC) and decomposed (NFD, macOS file names): one label, not two (found by a review)
    (d / "labels.csv").write_text("path,label\nclips/0.flac,caf\u00e9\nclips/1.flac,cafe\u0301\nclips/2.flac,tea\n")
    assert [c.label for c in read_labels(d)] == ["caf\u00e9", "caf\u00e9", "tea"]


def test_hand_crafted_features_are_a_probe_reference_that_reads_timbre_at_any_rate(tmp_path, capsys):
    """`features:log-mel` / `features:mfcc` (MARBLE's reference row): probed like an encoder, nothing learned but
    the probe. Two timbres at the same pitches (a pure tone, a tone with six harmonics) are told apart; a clip
    given at 48 kHz or in stereo has the features of the same clip at 24 kHz, mono; bad names are one line."""
    from benchmarks.models import load_model
    from benchmarks.registry import get_benchmark
    from benchmarks.runner import RunConfig, evaluate
    d = tmp_path / "timbre"
    (d / "clips").mkdir(parents=True)
    rows = ["path,label"]
    for i in range(24):
        label = ["pure", "rich"][i % 2]
        f = 110 * 2 ** ((i // 2 * 5 % 12) / 4)              # the same twelve pitches for both labels, shuffled
        (d / "clips" / f"{i}.flac").write_bytes(flac(tone(f, 0.5, harmonics=1 if label == "pure" else 6), 24000))
        rows.append(f"clips/{i}.flac,{label}")
    (d / "labels.csv").write_text("\n".join(rows) + "\n")
    res = evaluate(["features:log-mel", "features:mfcc"], [get_benchmark(f"audio-folder:{d}")],
                   RunConfig(out=str(tmp_path / "eval"), cache=False, progress=False))
    scores = {rec["model"]: rec["score"] for rec in res.records if rec["status"] == "ok"}
    assert scores["features:log-mel"] == 1.0 and scores["features:mfcc"] >= 5 / 6, scores   # 6 test clips, chance 0.5
    assert all([r["layer"] for r in rec["tables"]["layers"]] == [0] for rec in res.records)
    model = load_model("features:log-mel")
    x = tone(330, 0.5)
    at24 = model.layer_features("music", [(torch.from_numpy(x)[None], 24000)])
    at48 = model.layer_features("music", [(torch.from_numpy(np.repeat(x, 2))[None].repeat(2, 1), 48000)])
    assert at24.shape == (1, 1, 256) and torch.isfinite(at24).all()
    assert (at24 - at48).abs().mean() < 1.0                       # dB: resampled, downmixed, the same clip
    short = model.layer_features("audio", [(torch.zeros(1, 100), 16000)])      # silent, shorter than the FFT
    assert short.shape == (1, 1, 160) and torch.isfinite(short).all()
    assert load_model("features:mfcc").fingerprint != model.fingerprint
    from vlm.cli import main
    capsys.readouterr()
    assert main(["eval", "--bench", f"audio-folder:{d}", "--model", "features:chroma", "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown features 'chroma'" in err and "features:log-mel" in err and len(err.splitlines()) == 1, err
    from benchmarks.tasks import applicable
    assert "no image encoder" in applicable(model, get_benchmark("sw-colors"))       # probes only


@pytest.mark.usefixtures("one_intra_op_thread")
def test_a_test_clip_the_probe_was_fitted_on_is_not_scored(mert_folder, tmp_path):
    """Found by a review: synthetic-world's music probes scored val / test clips byte-identical to train clips
    (half the pitch and chord ones, 82 % of the tempo ones), which a probe answers from memory. A test clip
    whose audio a train clip has (another file name, the same sound) is left out and counted."""
    import shutil

    from benchmarks.registry import get_benchmark
    from benchmarks.runner import RunConfig, evaluate
    folder, _ = mert_folder
    d, rows = tone_folder(tmp_path / "dup", 8)
    rows = ["path,label,split", *(f"{r},{'train' if i < 6 else 'test'}" for i, r in enumerate(rows[1:]))]
    shutil.copy(d / "clips" / "0.flac", d / "clips" / "copy-of-0.flac")
    (d / "labels.csv").write_text("\n".join([*rows, "clips/copy-of-0.flac,low,test"]) + "\n")
    [rec] = evaluate([str(folder)], [get_benchmark(f"audio-folder:{d}")],
                     RunConfig(out=str(tmp_path / "eval"), cache=False, progress=False)).records
    assert rec["status"] == "ok", rec
    assert rec["metrics"]["skipped_seen_in_train"] == 1 and rec["metrics"]["n"] == 2 and rec["metrics"]["n_train"] == 6
    # --limit 1 leaves only the copy: not applicable at that limit (the rest of a suite runs), not the run's end
    (d / "labels.csv").write_text("\n".join([*rows[:7], "clips/copy-of-0.flac,low,test", rows[7]]) + "\n")
    [rec] = evaluate([str(folder)], [get_benchmark(f"audio-folder:{d}")],
                     RunConfig(out=str(tmp_path / "eval2"), cache=False, progress=False, limit=1)).records
    assert rec["status"] == "skipped" and "under --limit 1" in rec["reason"], rec


def test_odd_audio_scales_are_normalised_and_odd_rates_resample_in_small_steps():
    from encoders.base import AudioPreprocess, normalize_waveform, resample_ratio
    from vlm.errors import UserError
    from vlm.train.objectives.masked_prediction import MaskedPredictionSettings
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4800, generator=g)
    ref = normalize_waveform(x)
    for scale in (1e20, 1e37):                  # finite, but the float32 sum of squares overflows
        y = x.clone()
        y[1] *= scale
        out = normalize_waveform(y)
        assert torch.equal(out[0], ref[0]) and torch.allclose(out[1], ref[1], atol=1e-4), scale
    assert resample_ratio(44100, 24000) == (44100, 24000)             # common rates: torchaudio's own ratio
    assert resample_ratio(6007, 24000) == (200, 799)                  # odd: a small ratio, not 6007 -> 24000
    wav = AudioPreprocess(24000)((torch.randn(1, 6007, generator=g), 6007))
    assert abs(wav.numel() - 24000) <= 2 and torch.isfinite(wav).all()
    with pytest.raises(UserError, match="sample rate 5 Hz is outside"):
        AudioPreprocess(24000)((torch.randn(1, 100), 5))
    with pytest.raises(UserError, match="'s.min_seconds': must be >= 0.080 s"):
        MaskedPredictionSettings(clip_seconds=0.05, min_seconds=0.05).check("s")
    # a crop of 100000 s padded every clip to it and was killed for memory without a word (a review)
    with pytest.raises(UserError, match=r"'s.clip_seconds': at most 120 s .* got 100000"):
        MaskedPredictionSettings(clip_seconds=100000).check("s")


@pytest.mark.usefixtures("one_intra_op_thread")
def test_audio_folder_edits_duplicates_bom_and_split(mert_folder, tmp_path, capsys):
    from vlm.cli import main
    folder, _ = mert_folder
    d, rows = tone_folder(tmp_path / "mine", 8)
    (d / "labels.csv").write_bytes(b"\xef\xbb\xbf" + ("\r\n".join(rows) + "\r\n").encode())   # Excel's CSV UTF-8
    argv = ["eval", "--bench", f"audio-folder:{d}", "--model", str(folder), "--out", str(tmp_path / "eval"), "--quiet"]
    assert main(argv) == 0
    first = json.loads(next((tmp_path / "eval" / "results").rglob("audio-folder_mine.json")).read_text())
    swapped = [r.replace(",low", ",LOW").replace(",high", ",low").replace(",LOW", ",high") for r in rows]
    (d / "labels.csv").write_text("\n".join(swapped) + "\n")          # an edited labels.csv: a new result
    assert main(argv) == 0
    second = json.loads(next((tmp_path / "eval" / "results").rglob("audio-folder_mine.json")).read_text())
    assert second["signature"] != first["signature"] and second["metrics"]["n_train"] == first["metrics"]["n_train"]
    capsys.readouterr()
    (d / "clips" / "link.flac").symlink_to(d / "clips" / "1.flac")
    bad = {"duplicate": (rows + ["./clips/0.flac,high"], [], "rows 2 and 10 name the same file (0.flac)"),
           "link": (rows + ["clips/link.flac,high"], [], "rows 3 and 10 name the same file (link.flac)"),
           "no_val": (rows, ["--split", "val"], "no val clips"),
           "unseen": (["path,label,split", *(f"clips/{i}.flac,{['low', 'high'][i % 2]},train" for i in range(6)),
                       "clips/6.flac,mid,test", "clips/7.flac,mid,test"], [],
                      "no test clip has a label of the 'train' split (mid vs high, low)"),
           "limited": (["path,label,split", *(f"clips/{i}.flac,{['low', 'high'][i % 2]},train" for i in range(6)),
                        "clips/6.flac,mid,test", "clips/7.flac,low,test"], ["--limit", "1"],
                       "no test clip among the first 1 (--limit) has a label of the 'train' split")}
    for name, (lines, extra, message) in bad.items():
        (d / "labels.csv").write_text("\n".join(lines) + "\n")
        assert main([*argv[:-3], "--out", str(tmp_path / name), "--quiet", *extra]) == 2, name
        err = capsys.readouterr().err.strip()
        if name == "limited":            # under --limit: not applicable at that limit, said, then nothing evaluated
            assert message in err and err.splitlines()[-1].endswith("nothing was evaluated: no benchmark asked for "
                                                                    "applies to the model(s) (reasons above)"), err
            continue
        assert len(err.splitlines()) == 1 and message in err, (name, err)


MERT_BAD = [   # each trained with exit 0 before (a NaN teacher, an error trained up, a loss with nothing to learn)
    (["stages.0.objective_settings.teacher=rvq", "stages.0.objective_settings.teacher_settings={batch_clips: 0}"],
     "stages.0.objective_settings.teacher_settings", "batch_clips must be an integer >= 1"),
    (["stages.0.objective_settings.teacher=rvq", "stages.0.objective_settings.teacher_settings={lr: -1}"],
     "stages.0.objective_settings.teacher_settings", "lr must be a number > 0"),
    (["stages.0.objective_settings.teacher=rvq", "stages.0.objective_settings.teacher_settings={steps: 1.5}"],
     "stages.0.objective_settings.teacher_settings", "steps must be an integer >= 1"),
    (["stages.0.objective_settings.teacher_settings={n_mels: 0}"],
     "stages.0.objective_settings.teacher_settings", "n_mels must be an integer >= 1"),
    (["stages.0.objective_settings.teacher_settings={features: [log_mel, mfc]}"],
     "stages.0.objective_settings.teacher_settings", "unknown feature kind 'mfc'"),
    (["stages.0.objective_settings.codebook_weight=-1"], "stages.0.objective_settings.codebook_weight", ">= 0"),
    (["stages.0.objective_settings.regression_weight=-1"], "stages.0.objective_settings.regression_weight", ">= 0"),
    (["stages.0.objective_settings.codebook_weight=0", "stages.0.objective_settings.regression=false"],
     "stages.0.objective_settings.codebook_weight", "nothing to learn"),
    (["stages.0.objective_settings.teacher_frames=-5"], "stages.0.objective_settings.teacher_frames", ">= 1"),
    (["stages.0.objective_settings.min_masks=-3"], "stages.0.objective_settings.min_masks", ">= 0"),
    (["model.settings.codebooks=[]"], "model.settings.codebooks", "non-empty list"),
    (["model.settings.final_dim=0"], "model.settings.final_dim", "an integer >= 1"),
    (["model.settings.hidden_size=0"], "model.settings.hidden_size", "an integer >= 1"),   # (a ZeroDivisionError
    (["model.settings.num_attention_heads=0"], "model.settings.num_attention_heads", "an integer >= 1"),  # traceback)
    (["model.settings.conv_dim=0"], "model.settings.conv_dim", "an integer >= 1"),
]


@pytest.mark.parametrize("overrides,field,why", MERT_BAD, ids=[b[1].split(".")[-1] + "-" + b[0][-1].split("=")[1][:10]
                                                             for b in MERT_BAD])
def test_mert_recipe_values_that_cannot_train_are_one_line_naming_the_field(overrides, field, why):
    from vlm.errors import UserError
    from vlm.train.recipe import check_model, load_recipe
    with pytest.raises(UserError) as e:
        check_model(load_recipe("mert-tiny", overrides, check_files=False))
    msg = str(e.value)
    assert f"recipe field '{field}'" in msg and why in msg and "\n" not in msg, msg


def test_teacher_settings_yaml_reads_as_text_are_numbers():
    """YAML reads `lr: 1e-3` as text: the recipe's own fields take it as 0.001, and so does a teacher's
    setting (the first limits check refused it as 'not a number'; before that Adam failed on it)."""
    from vlm.train.objectives.teachers import build_teacher
    from vlm.train.recipe import load_recipe
    load_recipe("mert-tiny", ["stages.0.objective_settings.teacher=rvq",
                              "stages.0.objective_settings.teacher_settings={lr: 1e-3}"], check_files=False)
    assert build_teacher("rvq", codebook_size=16, codebooks=2, steps=3, lr="1e-3").lr == 0.001


def test_a_music_encoder_path_that_is_missing_names_its_setting(tmp_path):
    from vlm.errors import UserError
    from vlm.train.recipe import check_model, load_recipe
    with pytest.raises(UserError, match="recipe field 'model.settings.music'"):
        check_model(load_recipe("llava-music-tiny", [f"model.settings.music=mert:{tmp_path / 'none'}"], check_files=False))


def test_encoder_folders_for_probes_sharded_fingerprinted_by_preprocessing_and_other_models_named(mert_folder,
                                                                                                  tmp_path):
    """A sharded HuBERT folder probes as the single-file one does (it was refused: no model.safetensors); the
    feature cache's fingerprint covers preprocessor_config.json (an edited sample rate reused stale features);
    a sample rate that is not an integer is one line naming the file (a traceback); another transformers
    model is named as such (it was called 'not an embedder')."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    from benchmarks.models import load_model
    from encoders import build_encoder
    from vlm.errors import UserError
    folder, _ = mert_folder
    sharded = tmp_path / "sharded"
    shutil.copytree(folder, sharded)
    state = load_file(str(sharded / "model.safetensors"))
    (sharded / "model.safetensors").unlink()
    names = sorted(state)
    half = {"model-00001-of-00002.safetensors": names[:len(names) // 2],
            "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for file, keys in half.items():
        save_file({k: state[k] for k in keys}, str(sharded / file))
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f for f, keys in half.items() for k in keys}}))
    clips = [(torch.from_numpy(tone(f, 1.0))[None], 24000) for f in (220, 330)]
    one, two = load_model(str(folder)), load_model(str(sharded))
    assert torch.equal(one.layer_features("music", clips), two.layer_features("music", clips))
    edited = tmp_path / "edited"
    shutil.copytree(folder, edited)
    proc = json.loads((edited / "preprocessor_config.json").read_text())
    (edited / "preprocessor_config.json").write_text(json.dumps({**proc, "do_normalize": not proc["do_normalize"]}))
    assert load_model(str(edited)).fingerprint != one.fingerprint
    (edited / "preprocessor_config.json").write_text(json.dumps({**proc, "sampling_rate": "16k"}))
    with pytest.raises(UserError, match=r"preprocessor_config.json: sampling_rate must be an integer"):
        build_encoder(f"mert:{edited}")
    other = tmp_path / "w2v2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "wav2vec2"}))
    with pytest.raises(UserError, match=r"a transformers 'wav2vec2' folder"):
        load_model(str(other))


def test_the_recipe_check_of_a_pretrained_music_encoder_is_quiet_and_reads_headers_only(mert_folder, tmp_path,
                                                                                       monkeypatch):
    """The recipe check builds the model on the meta device: loading the encoder's weights into it printed
    one 'copying from a non-meta parameter ... is a no-op' warning per tensor (50 for mert tiny), after reading
    the whole file for nothing. Now it reads the file's header (shapes): a damaged file is still refused."""
    import shutil
    import warnings

    import safetensors.torch

    from vlm.errors import UserError
    from vlm.train.recipe import check_model, load_recipe
    folder, _ = mert_folder

    def never(*a, **k):
        raise AssertionError("the recipe check read the weights")
    with monkeypatch.context() as m:
        m.setattr(safetensors.torch, "load_file", never)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_model(load_recipe("llava-music-tiny", [f"model.settings.music=mert:{folder}"], check_files=False))
    assert not [w for w in caught if "non-meta" in str(w.message)]
    cut = tmp_path / "cut"
    shutil.copytree(folder, cut)
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(UserError, match="corrupt weights file"):
        check_model(load_recipe("llava-music-tiny", [f"model.settings.music=mert:{cut}"], check_files=False))


def test_probe_features_of_every_layer_in_one_pass_equal_one_pass_per_layer():
    """A HuBERT-shaped encoder hands the probes every hidden state from one forward pass (one pass per layer
    made a long clip of a 12-layer model 13 passes, found by a review); the features are the generic
    per-layer path's, bit for bit, for clips of several lengths in mixed batches."""
    from benchmarks.models import encoder_layer_features
    from encoders import build_encoder
    from encoders.base import Encoder
    torch.manual_seed(0)
    enc = build_encoder("mert:tiny").eval()
    g = torch.Generator().manual_seed(1)
    clips = [(torch.randn(1, int(24000 * s), generator=g) * 0.1, 24000) for s in (1, 2, 1, 0.5)]
    passes = []
    enc.model.register_forward_hook(lambda *a: passes.append(1))
    fast = encoder_layer_features(enc, clips, batch_size=3)
    assert len(passes) == 3                  # batches [1 s, 2 s, 1 s] (two shapes) and [0.5 s]: one pass per shape
    generic = [torch.stack([x.float().mean(0) for x in f]) for f in Encoder.encode_layers(
        enc, [enc.preprocess(w, sr) for w, sr in clips], 2)]
    assert fast.shape == (4, 3, 64) and torch.equal(fast, torch.stack(generic))


def test_broken_teachers_and_checkpoint_files_are_one_line_naming_the_file(mert_folder, tmp_path, capsys):
    """Found by a review: an EnCodec folder without the model's tensors trained on random codes; a damaged fitted
    teacher on resume, a mert folder's bad `mert_pretraining.json` and NaN weights under a probe were tracebacks
    or a score of noise."""
    from safetensors.torch import save_file

    from benchmarks.models import encoder_layer_features
    from vlm.errors import UserError
    from vlm.families.mert import HEADS_CONFIG, MertModel
    from vlm.train.objectives import masked_prediction as mp
    from vlm.train.objectives.teachers import build_teacher
    folder = tiny_encodec(tmp_path / "encodec")
    empty = tmp_path / "no-weights"
    empty.mkdir()
    shutil.copy(folder / "config.json", empty / "config.json")
    save_file({"x": torch.zeros(2)}, str(empty / "model.safetensors"))
    teacher = build_teacher("encodec", path=str(empty), bandwidth=2.4)
    with pytest.raises(UserError, match=r"does not hold the model's weights \(\d+ tensor\(s\) missing"):
        teacher(torch.from_numpy(tone(220, 1.0))[None], 70)
    # a fitted teacher file that does not read: named, and fitted again as the first time (it said "delete it")
    settings = mp.MaskedPredictionSettings(teacher="mel_kmeans", codebook_size=16)
    waves = [torch.stack([torch.from_numpy(tone(110 * 2 ** (i / 12), 2.0)) for i in range(j, j + 3)]) for j in (0, 5)]
    fresh, obj = mp.MaskedPrediction(settings), mp.MaskedPrediction(settings)
    fresh.prepare(None, lambda: iter({"audio": w} for w in waves), tmp_path / "fresh")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / mp.TEACHER_FILE).write_text("garbage")
    obj.prepare(None, lambda: iter({"audio": w} for w in waves), tmp_path / "state")
    assert f"{mp.TEACHER_FILE}: the fitted teacher does not read" in capsys.readouterr().err
    assert (tmp_path / "state" / mp.TEACHER_FILE).read_bytes() == (tmp_path / "fresh" / mp.TEACHER_FILE).read_bytes()
    save_file({"x": torch.zeros(2)}, str(tmp_path / "state" / mp.TEACHER_FILE))    # another teacher's: not refitted
    with pytest.raises(UserError, match="a teacher of other settings .*resume with the settings it began with"):
        mp.MaskedPrediction(settings).prepare(None, lambda: iter(()), tmp_path / "state")
    # the heads' settings of a mert folder
    src, _ = mert_folder
    for heads, msg in [({"family": "mert", "bogus": 1}, "unknown field 'bogus'"), ([], "not a JSON object"),
                       ({"family": "mert", "codebooks": [0]}, "codebooks: a non-empty list of code counts >= 2"),
                       ({"family": "mert", "final_dim": 0}, "final_dim: an integer >= 1"),
                       ({"family": "mert", "logit_temp": 0}, "logit_temp: a number > 0"),
                       ({"family": "mert", "feature_grad_mult": "x"}, "feature_grad_mult: a number >= 0")]:
        bad = tmp_path / f"bad-{len(msg)}"
        shutil.copytree(src, bad)
        (bad / HEADS_CONFIG).write_text(json.dumps(heads))
        with pytest.raises(UserError, match=msg) as e:
            MertModel.from_folder(bad)
        assert HEADS_CONFIG in str(e.value) and "\n" not in str(e.value)
    # the HuBERT config.json: a field of another type, a list transformers' checks refuse, bytes not UTF-8
    hubert = json.loads((src / "config.json").read_text())
    for n, (raw, msg) in enumerate([(json.dumps({**hubert, "hidden_size": "x"}).encode(), "does not build a mert model"),
                                    (json.dumps({**hubert, "conv_dim": [32, 32]}).encode(), "does not build a mert model"),
                                    (b'{"model_type": "hub\xe9rt"}', "not a mert checkpoint .*utf-8")]):
        bad = tmp_path / f"bad-hubert-{n}"
        shutil.copytree(src, bad)
        (bad / "config.json").write_bytes(raw)
        with pytest.raises(UserError, match=msg) as e:
            MertModel.from_folder(bad)
        assert "\n" not in str(e.value)
    # NaN weights: features of noise are refused, not probed
    from encoders import build_encoder
    enc = build_encoder(f"mert:{src}").eval()
    with torch.no_grad():
        next(p for n, p in enc.named_parameters() if "encoder.layers.1." in n).fill_(float("nan"))
    with pytest.raises(UserError, match=r"non-finite features at layer\(s\) 2 for 2 of 2 clip"):
        encoder_layer_features(enc, [(torch.from_numpy(tone(220, 1.0))[None], 24000)] * 2)


def test_audio_folder_paths_the_file_system_refuses_are_skipped_or_named(mert_folder, tmp_path):
    """A NUL in a path is a malformed row (one line); a name too long or a link loop is a clip skipped by reason
    (they were tracebacks: found by a review)."""
    from benchmarks.audio_folder import read_labels
    from benchmarks.registry import get_benchmark
    from benchmarks.runner import RunConfig, evaluate
    from vlm.errors import UserError
    d, rows = tone_folder(tmp_path / "mine", 12)
    os.symlink("loop-b.wav", d / "loop-a.wav")
    os.symlink("loop-a.wav", d / "loop-b.wav")
    (d / "labels.csv").write_text("\n".join(rows + ["loop-a.wav,low", f"{'x' * 300}.wav,high"]) + "\n")
    folder, _ = mert_folder
    [rec] = evaluate([str(folder)], [get_benchmark(f"audio-folder:{d}")],
                     RunConfig(out=str(tmp_path / "eval"), cache=False, progress=False)).records
    assert rec["status"] == "ok", rec
    skipped = {k: v for k, v in rec["metrics"].items() if k.startswith("skipped_")}
    assert skipped == {"skipped_missing_file": 1, "skipped_bad_path": 1}, skipped
    (d / "labels.csv").write_text("\n".join(rows + ["clips/a\0b.flac,low"]) + "\n")
    with pytest.raises(UserError, match=r"labels.csv: row 14: the path holds a NUL character"):
        read_labels(d)


def test_a_mert_checkpoint_where_a_language_model_is_needed_says_what_it_is(mert_folder):
    """lmms-eval, `vlm chat` and the embedder said "a transformers 'hubert' folder, not a vlm checkpoint; use the
    checkpoint it was exported from" of the suite's own mert checkpoint (found by a review)."""
    from vlm.embed import Embedder
    from vlm.errors import UserError
    folder, _ = mert_folder
    with pytest.raises(UserError, match="a mert music-encoder checkpoint, with no language model; probe it"):
        Embedder.load(str(folder))                                   # (the lmms-eval plugin's loader too)
