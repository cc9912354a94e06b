"""Encoders: every tiny preset and builder prefix, specs, weights, feature layers, errors.

python -m pytest tests/test_encoders.py -q
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from encoders import Encoder, build_encoder, build_encoder_from_spec, list_encoders
from encoders.registry import register_encoder
from vlm.errors import UserError

TINY_PRESETS = ["tiny-vit", "tiny-clip", "tiny-siglip", "tiny-openclip", "whisper:tiny", "mert:tiny", "video:tiny"]


# ----------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))  # not square, not RGB-sized


@pytest.fixture(scope="module")
def stereo() -> tuple[torch.Tensor, int]:
    """1.2 s of stereo at 22.05 kHz, so mono mixing and resampling both run."""
    g = torch.Generator().manual_seed(0)
    sr = 22050
    t = torch.arange(int(1.2 * sr)) / sr
    wav = torch.stack([torch.sin(2 * math.pi * 440 * t), 0.1 * torch.randn(t.numel(), generator=g)])  # [2, N]
    return wav, sr


@pytest.fixture(scope="module")
def mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-frame 48x64 mp4 written with PyAV; decord must read it."""
    import av

    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=12)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(12):
            frame = np.full((48, 64, 3), 20 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def raw_for(enc: Encoder, image: Image.Image, stereo: tuple[torch.Tensor, int], mp4: Path) -> Any:
    return {"image": image, "audio": stereo, "music": stereo, "video": mp4}[enc.modality]


def run(enc: Encoder, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return enc(x)


# ------------------------------------------------------------------------- registry
def test_listing_and_registry_errors() -> None:
    names = {row["name"]: row for row in list_encoders()}
    for name in [*TINY_PRESETS, "clip-vit-l-336", "mert:base", "timm:", "open_clip:", "hf:", "video:"]:
        assert name in names, name
    assert names["timm:"]["kind"] == "builder" and names["tiny-clip"]["kind"] == "preset"
    assert {r["name"] for r in list_encoders("tiny-*")} == {"tiny-vit", "tiny-clip", "tiny-siglip", "tiny-openclip"}
    assert all(set(r) >= {"name", "modality", "description"} for r in list_encoders())
    with pytest.raises(ValueError, match="registered twice"):
        register_encoder("tiny-vit", "image", "dup")(lambda **kw: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(UserError, match="no-such-encoder"):
        build_encoder("no-such-encoder")
    with pytest.raises(UserError, match="nope_model"):
        build_encoder("timm:nope_model")
    with pytest.raises(UserError, match="Nope-Arch"):
        build_encoder("open_clip:Nope-Arch")
    # a misspelt option is one line naming it, never a config attribute kept and ignored
    for name in TINY_PRESETS:
        with pytest.raises(UserError, match="unknown option.*'hiden_size'"):
            build_encoder(name, hiden_size=8)
    assert build_encoder("mert:tiny", num_hidden_layers=1).weights_module().config.num_hidden_layers == 1
    assert build_encoder("whisper:tiny", encoder_layers=1).whisper_config.encoder_layers == 1


# -------------------------------------------------------------------------- presets
@pytest.mark.parametrize("name", TINY_PRESETS)
def test_tiny_preset(
    name: str, image: Image.Image, stereo: tuple[torch.Tensor, int], mp4: Path, tmp_path: Path
) -> None:
    """Build, feed its own preprocess, shapes, num_tokens == encode, spec and weights round trips."""
    torch.manual_seed(0)
    enc = build_encoder(name).eval()
    assert enc.name == name and enc.modality in ("image", "audio", "music", "video")
    item = enc.preprocess(raw_for(enc, image, stereo, mp4))
    assert isinstance(enc.preprocess.to_dict(), dict)
    feats = run(enc, torch.stack([item, item]))
    assert feats.dim() == 3 and feats.shape[0] == 2 and feats.shape[2] == enc.output_dim
    [tokens] = enc.encode([item])
    assert tokens.shape == (enc.num_tokens(item), enc.output_dim)
    if enc.modality != "audio":  # Whisper's forward pads to its window; encode drops those tokens
        assert feats.shape[1] == enc.num_tokens(item)
        torch.testing.assert_close(tokens, feats[0])

    spec = json.loads(json.dumps(enc.spec()))  # JSON-serialisable
    rebuilt = build_encoder_from_spec(spec).eval()
    rebuilt.load_state_dict(enc.state_dict())
    assert torch.equal(run(rebuilt, item[None]), run(enc, item[None]))
    assert json.loads(json.dumps(rebuilt.spec())) == spec  # stable: a rebuilt spec is the same spec

    path = tmp_path / "enc.safetensors"
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(path))
    loaded = build_encoder(name, weights=str(path)).eval()
    assert torch.equal(run(loaded, item[None]), run(enc, item[None]))


def test_large_presets_shapes_on_meta() -> None:
    with torch.device("meta"):
        clip = build_encoder("clip-vit-l-336")
        mert = build_encoder("mert:base")
    assert clip.output_dim == 1024 and clip.feature_layer == -2 and clip.preprocess.size == (336, 336)
    assert clip.num_tokens(torch.empty(3, 336, 336)) == 576  # 24 x 24 patches, CLS dropped
    assert clip.hf_vision_config.num_hidden_layers == 24
    assert mert.output_dim == 768 and mert.frame_rate == 75.0


# ------------------------------------------------------------------- preprocessing
def test_image_preprocess_settings(image: Image.Image, tmp_path) -> None:
    """A weights tag gives the preprocessing; without a weights file it is refused (random weights were built
    without a word, where `vlm eval` refuses the same tag); hub names are refused before timm goes online."""
    from safetensors.torch import save_file

    from vlm.errors import UserError
    arch = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
    plain = build_encoder("timm:vit_tiny_patch16_224", **arch)
    save_file({k: v.contiguous() for k, v in plain.model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    for name in ("timm:vit_tiny_patch16_224.augreg_in21k", "open_clip:ViT-B-32.openai"):
        with pytest.raises(UserError, match=r"names pretrained weights, which are not downloaded; give them as weights="):
            build_encoder(name, **(arch if name.startswith("timm") else {}))
    with pytest.raises(UserError, match="a hub or local-dir name makes timm download"):
        build_encoder("timm:hf-hub:timm/vit_tiny_patch16_224.augreg_in21k")
    enc = build_encoder("timm:vit_tiny_patch16_224.augreg_in21k", weights=str(tmp_path / "w.safetensors"), **arch)
    assert all(torch.equal(a, b) for a, b in zip(enc.model.state_dict().values(), plain.model.state_dict().values()))
    pre = enc.preprocess
    assert pre.size == (32, 32) and pre.mean == (0.5, 0.5, 0.5) and pre.interpolation == "bicubic"
    assert pre(image.convert("L")).shape == (3, 32, 32)  # converted to RGB
    siglip = build_encoder("tiny-siglip").preprocess
    assert not siglip.crop and siglip.to_dict()["mean"] == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("backend", ["hf", "pil"])
@pytest.mark.parametrize("crop,size,interpolation", [(True, 32, "bicubic"), (False, (24, 40), "bilinear"),
                                                      (True, 48, "bicubic")])
def test_image_preprocess_batch_is_the_per_image_preprocess(crop, size, interpolation, backend) -> None:
    """`batch` (images of one size as one tensor) and `normalize(pixels)` (the uint8 crops a worker sends,
    normalised where the model runs) give `[pre(x) for x in images]` bit for bit: images of several sizes
    and modes, down- and up-scaled, cropped or squashed, PIL images, arrays and tensors."""
    from encoders.base import ImagePreprocess

    rng = np.random.default_rng(0)
    sizes = [(64, 64), (64, 64), (50, 70), (64, 64), (32, 32), (90, 40), (50, 70), (2000, 20), (10, 700)]
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    images.append(images[0].convert("L"))                        # not RGB: the one-by-one path
    pre = ImagePreprocess(size, (0.48, 0.45, 0.41), (0.27, 0.26, 0.28), interpolation, crop=crop, crop_pct=0.9,
                          backend=backend)
    mixed = [*images, np.asarray(images[2]), torch.from_numpy(np.asarray(images[5])).permute(2, 0, 1)]
    for batch in (images[:-1], images, mixed):
        want = [pre(x) for x in batch]
        pixels = pre.pixels(batch)
        assert all(p.dtype == torch.uint8 and p.shape == w.shape for p, w in zip(pixels, want))
        for got in (pre.batch(batch), list(pre.normalize(torch.stack(pixels)).unbind(0)),
                    [pre.normalize(p) for p in pixels]):
            assert len(got) == len(want) and all(g.shape == w.shape and torch.equal(g, w) for g, w in zip(got, want))


@pytest.mark.parametrize("backend", ["hf", "pil"])
def test_a_long_thin_image_is_cut_to_what_the_centre_crop_keeps_before_resizing(backend) -> None:
    """A 1 x 2,000,000 PNG (6 KB) resized to a 32-pixel short side was a 6 GB allocation, a 5000 x 1 one 4 GB at
    336 (a review): beyond 32:1 the image is cut to its centre of that ratio first. The crop's pixels are those
    of the uncut resize (a smooth image: equal here), and the cut image stays small."""
    from encoders import base

    ramp = np.linspace(0, 255, 3000).astype(np.uint8)
    wide = Image.fromarray(np.stack([np.tile(ramp, (50, 1))] * 3, -1))                     # 60:1
    tall = wide.transpose(Image.Transpose.ROTATE_90)
    pre = base.ImagePreprocess(32, (0.5,) * 3, (0.5,) * 3, crop=True, backend=backend)
    assert pre._centre(wide).size == (1600, 50) and pre._centre(tall).size == (50, 1600)
    assert pre._centre(Image.new("RGB", (3200, 100))).size == (3200, 100)                 # 32:1 itself: as it is
    cut = [pre(wide), pre(tall)]
    limit = base.MAX_ASPECT
    try:
        base.MAX_ASPECT = 10 ** 9                                                          # the uncut resize
        whole = [pre(wide), pre(tall)]
    finally:
        base.MAX_ASPECT = limit
    assert all((a - b).abs().max() <= 2 / 255 / 0.5 for a, b in zip(cut, whole))          # within 2 grey levels
    thin = Image.new("RGB", (2_000_000, 1), "red")
    assert pre(thin).shape == (3, 32, 32) and pre._centre(thin).size == (32, 1)
    squash = base.ImagePreprocess(32, (0.5,) * 3, (0.5,) * 3, crop=False, backend=backend)
    assert squash._centre(thin) is thin                                                    # squashed: all of it


def test_an_alpha_channel_is_dropped_as_llava_and_open_clip_loaders_drop_it() -> None:
    """What the README says of images with transparency: the colour under alpha 0 is read, on both backends (as
    `convert("RGB")` in LLaVA's and open_clip's loaders; transformers' processor composites on white)."""
    from encoders.base import ImagePreprocess, as_pil
    clear_red = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert as_pil(clear_red).getpixel((0, 0)) == (255, 0, 0)
    for backend in ("hf", "pil"):
        pre = ImagePreprocess(8, (0.0,) * 3, (1.0,) * 3, backend=backend)
        assert torch.allclose(pre(clear_red), pre(Image.new("RGB", (8, 8), (255, 0, 0))))


def test_whisper_log_mel_matches_transformers(stereo: tuple[torch.Tensor, int]) -> None:
    """Our torchaudio log-mel equals WhisperFeatureExtractor's on the real (unpadded) frames."""
    from transformers import WhisperFeatureExtractor

    enc = build_encoder("whisper:tiny")
    wav16 = enc.preprocess.load(stereo)  # [N] mono at 16 kHz
    ours = enc.preprocess(wav16, 16000)  # [80, N // 160]
    ref = WhisperFeatureExtractor(feature_size=80)(wav16.numpy(), sampling_rate=16000, return_tensors="pt")
    ref = ref["input_features"][0, :, : ours.shape[1]]  # [80, frames] of the 30 s padded window
    assert ours.shape == (80, wav16.numel() // 160)
    torch.testing.assert_close(ours[:, :-2], ref[:, :-2], atol=2e-3, rtol=0)  # the last frames see padding
    # a clip of 1 to 200 samples: the STFT's reflect padding was a traceback (found by a review); one line now
    from vlm.errors import UserError
    for n in (1, 170, 200):
        with pytest.raises(UserError, match=f"audio clip too short: {n} samples at 16000 Hz; the log-mel needs more "
                                            f"than 200"):
            enc.preprocess(torch.zeros(n), 16000)
    assert enc.preprocess(torch.zeros(320), 16000).shape == (80, 2)
    # a float clip of peak 5e17 or more (finite) overflowed the power spectrum: all-NaN features, a NaN loss
    # step in training and NaN rows in `vlm embed` (a review). It is read as the same clip at a peak of 1
    quiet = wav16 / wav16.abs().max()
    torch.testing.assert_close(enc.preprocess(quiet * 1e30, 16000), enc.preprocess(quiet, 16000), atol=1e-4, rtol=0)
    assert not torch.allclose(enc.preprocess(quiet * 1e5, 16000), enc.preprocess(quiet, 16000))   # (only beyond 1e6)


def test_mert_waveform_matches_transformers(stereo: tuple[torch.Tensor, int]) -> None:
    from transformers import Wav2Vec2FeatureExtractor

    pre = build_encoder("mert:tiny").preprocess
    assert pre.sample_rate == 24000
    ours = pre(*stereo)
    mono = pre.load(stereo)
    ref = Wav2Vec2FeatureExtractor(sampling_rate=24000, do_normalize=True)(mono.numpy(), sampling_rate=24000)
    torch.testing.assert_close(ours, torch.as_tensor(ref["input_values"][0]), atol=1e-4, rtol=1e-4)


# -------------------------------------------------------------------------- whisper
def test_whisper_drops_padding_and_chunks(stereo: tuple[torch.Tensor, int]) -> None:
    enc = build_encoder("whisper:tiny").eval()
    wav, sr = stereo
    short, long = enc.preprocess(wav[:, : sr // 2], sr), enc.preprocess(wav, sr)  # 50 and 120 frames
    assert enc.num_tokens(short) == 25 and enc.num_tokens(long) == 60
    with torch.no_grad():
        out_short, out_long = enc.encode([short, long])
        assert out_short.shape == (25, 64) and out_long.shape == (60, 64)
        window = enc(short[None])[0]  # [50, D] on the silence-padded window
        torch.testing.assert_close(out_short, window[:25])
        first = enc(long[None, :, :100])[0]  # the long clip's first full window
        second = enc(long[None, :, 100:])[0]  # its 20-frame remainder, padded
    torch.testing.assert_close(out_long, torch.cat([first, second[:10]]))


# ------------------------------------------------------------------- builder prefixes
def test_timm_prefix_feature_layer_and_prefix_tokens(image: Image.Image) -> None:
    kw: dict[str, Any] = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    torch.manual_seed(0)
    last = build_encoder("timm:vit_tiny_patch16_224", **kw).eval()
    x = last.preprocess(image)[None]
    torch.manual_seed(0)
    first = build_encoder("timm:vit_tiny_patch16_224", feature_layer=0, **kw).eval()
    torch.manual_seed(0)
    no_cls = build_encoder("timm:vit_tiny_patch16_224", keep_prefix=False, **kw).eval()
    a, b, c = run(last, x), run(first, x), run(no_cls, x)
    assert a.shape == b.shape == (1, 17, 32) and c.shape == (1, 16, 32)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(c, a[:, 1:])
    assert first.spec()["feature_layer"] == 0


def test_open_clip_prefix_from_added_config(tmp_path: Path, image: Image.Image) -> None:
    import open_clip

    from encoders.vision import TINY_OPENCLIP_CFG

    (tmp_path / "Tiny-Test-CLIP.json").write_text(json.dumps(TINY_OPENCLIP_CFG))
    open_clip.add_model_config(tmp_path / "Tiny-Test-CLIP.json")
    enc = build_encoder("open_clip:Tiny-Test-CLIP").eval()
    x = enc.preprocess(image)
    assert run(enc, x[None]).shape == (1, 16, 64)
    with torch.no_grad():  # the full model is there for zero-shot benchmarks
        text = enc.clip_model.encode_text(enc.tokenize(["a photo of a cat"]))
    assert text.shape == (1, 32)
    layer0 = build_encoder("open_clip:Tiny-Test-CLIP", feature_layer=0)
    layer0.load_state_dict(enc.state_dict())
    assert not torch.allclose(run(layer0.eval(), x[None]), run(enc, x[None]))
    visual_only = build_encoder("tiny-openclip", keep_text=False)
    assert visual_only.clip_model is None and not any(k.startswith("clip_model.") for k in visual_only.state_dict())


def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Sockets that refuse to connect and an empty Hugging Face cache: what a machine without a network has."""
    import socket

    from huggingface_hub import constants

    def refuse(*args: Any, **kw: Any) -> None:
        raise OSError("this test has no network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))


def test_open_clip_text_tower_on_the_hub_is_refused_and_a_local_one_builds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An open_clip architecture whose text tower is a Hugging Face model (roberta-ViT-B-32) tried the
    network (a minute of retries, then a traceback): refused at once, naming the model; the same kind of
    architecture with its text tower in a local folder builds with no network."""
    import open_clip
    from transformers import BertConfig

    no_network(monkeypatch, tmp_path)
    with pytest.raises(UserError, match="text tower is the Hugging Face model 'roberta-base', which is not on"):
        build_encoder("open_clip:roberta-ViT-B-32")
    from huggingface_hub import constants
    snapshot = Path(constants.HF_HUB_CACHE) / "models--roberta-base" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)                      # a cache holding roberta's tokenizer but not its config:
    (snapshot / "tokenizer.json").write_text("{}")    # not the text tower's files
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc")
    with pytest.raises(UserError, match="text tower is the Hugging Face model 'roberta-base', which is not on"):
        build_encoder("open_clip:roberta-ViT-B-32")
    BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
               max_position_embeddings=32).save_pretrained(tmp_path / "bert")
    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
           "text_cfg": {"hf_model_name": str(tmp_path / "bert"), "hf_model_pretrained": False,
                        "hf_proj_type": "linear", "hf_pooler_type": "mean_pooler", "context_length": 16}}
    (tmp_path / "Local-Bert-CLIP.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "Local-Bert-CLIP.json")
    enc = build_encoder("open_clip:Local-Bert-CLIP").eval()
    cfg["text_cfg"]["hf_model_name"] = "./no-such-bert"
    (tmp_path / "Missing-Bert-CLIP.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "Missing-Bert-CLIP.json")
    with pytest.raises(UserError, match="its text tower folder ./no-such-bert is not there"):
        build_encoder("open_clip:Missing-Bert-CLIP")
    with torch.no_grad():
        text = enc.clip_model.encode_text(torch.tensor([[1, 5, 7, 2]]))
    assert text.shape == (1, 16) and torch.isfinite(text).all()


def test_video_prefix(mp4: Path) -> None:
    enc = build_encoder("video:tiny-clip", num_frames=3, temporal="sinusoidal").eval()
    clip = enc.preprocess(mp4.read_bytes())  # from bytes this time
    assert clip.shape == (3, 3, 32, 32)
    feats = run(enc, clip[None])
    assert feats.shape == (1, 3 * 16, 64) and enc.num_tokens(clip) == 48
    frames = run(enc.image, clip)  # [3, 16, D]
    temporal = enc.frame_embed[:3, None, :].expand(3, 16, 64)  # one sinusoid per frame index
    torch.testing.assert_close(feats[0].view(3, 16, 64) - frames, temporal)
    rebuilt = build_encoder_from_spec(json.loads(json.dumps(enc.spec())))
    rebuilt.load_state_dict(enc.state_dict())
    assert torch.equal(run(rebuilt.eval(), clip[None]), feats)


# ---------------------------------------------------------------------- hf: folders
def _save(model: Any, folder: Path) -> str:
    model.save_pretrained(str(folder), safe_serialization=True)
    return f"hf:{folder}"


def test_hf_clip_full_model_feature_layers(tmp_path: Path, image: Image.Image) -> None:
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        text_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=99
        ),
        projection_dim=16,
    )
    ref = CLIPModel(cfg).eval()
    name = _save(ref, tmp_path / "clip")
    for layer, select in [(-2, "default"), (1, "full"), (-1, "default")]:
        enc = build_encoder(name, feature_layer=layer, feature_select=select).eval()
        x = enc.preprocess(image)[None]
        with torch.no_grad():
            states = ref.vision_model(pixel_values=x, output_hidden_states=True).hidden_states
        want = states[layer] if select == "full" else states[layer][:, 1:]
        torch.testing.assert_close(run(enc, x), want)
        assert enc.num_tokens(x[0]) == want.shape[1]
    assert enc.hf_vision_config.hidden_size == 32 and enc.vision_model.config is enc.hf_vision_config
    default = build_encoder(name).eval()               # LLaVA-1.5's layer, as the clip-vit-l-336 preset reads it
    assert default.feature_layer == -2
    torch.testing.assert_close(run(default, x), states[-2][:, 1:])
    assert "vision_config" not in json.dumps(enc.spec())  # the vision config itself, no folder needed


def test_hf_siglip_whisper_hubert_folders(tmp_path: Path, image: Image.Image, stereo: tuple[torch.Tensor, int],
                                          capsys: pytest.CaptureFixture) -> None:
    from transformers import (
        HubertConfig,
        HubertModel,
        SiglipVisionConfig,
        SiglipVisionModel,
        WhisperConfig,
        WhisperForConditionalGeneration,
    )

    from encoders.audio import TINY_WHISPER_CFG

    siglip = SiglipVisionModel(
        SiglipVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        )
    ).eval()
    whisper = WhisperForConditionalGeneration(WhisperConfig(**TINY_WHISPER_CFG)).eval()  # keys model.encoder.*
    hubert = HubertModel(
        HubertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            conv_dim=(16,) * 7,
            num_conv_pos_embeddings=8,
            num_conv_pos_embedding_groups=2,
        )
    ).eval()
    wav, sr = stereo
    short = (wav[:, : sr * 6 // 10], sr)  # 0.6 s: one Whisper window, 30 tokens
    cases = [(siglip, "image", image), (whisper, "audio", short), (hubert, "music", stereo)]
    for model, modality, raw in cases:
        enc = build_encoder(_save(model, tmp_path / modality)).eval()
        assert enc.modality == modality
        item = enc.preprocess(raw)
        [tokens] = enc.encode([item])
        assert tokens.shape == (enc.num_tokens(item), enc.output_dim)
        with torch.no_grad():
            if modality == "image":
                want = model(pixel_values=item[None], output_hidden_states=True).hidden_states[-1][0]
            elif modality == "audio":
                window = enc._fit(item[None])  # silence-padded to the 100-frame window
                want = model.model.encoder(input_features=window).last_hidden_state[0, : tokens.shape[0]]
            else:
                want = model(input_values=item[None]).last_hidden_state[0]
        torch.testing.assert_close(tokens, want)
        rebuilt = build_encoder_from_spec(json.loads(json.dumps(enc.spec())))
        rebuilt.load_state_dict(enc.state_dict())
        torch.testing.assert_close(rebuilt.eval().encode([item])[0], tokens)
    # the HuBERT folder has no preprocessor_config.json: read at 24 kHz, and said once (it was silent)
    err = capsys.readouterr().err
    assert err.count("no sampling_rate in preprocessor_config.json; reading its audio at 24000 Hz") == 1
    assert str(tmp_path / "music") in err


# ---------------------------------------------------------------------- bad input
def test_bad_weights_and_folders(tmp_path: Path) -> None:
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(UserError, match="missing.safetensors"):
        build_encoder("tiny-vit", weights=str(missing))
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header at all")
    with pytest.raises(UserError, match="corrupt.safetensors"):
        build_encoder("tiny-vit", weights=str(corrupt))
    pickled = tmp_path / "model.bin"
    pickled.write_bytes(b"pickle")
    with pytest.raises(UserError, match="model.bin"):
        build_encoder("tiny-vit", weights=str(pickled))
    wrong = tmp_path / "wrong.safetensors"
    save_file({"foo.weight": torch.zeros(2)}, str(wrong))
    with pytest.raises(UserError, match="wrong.safetensors"):
        build_encoder("tiny-vit", weights=str(wrong))

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no config.json"):
        build_encoder(f"hf:{empty}")
    (empty / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UserError, match="bert"):
        build_encoder(f"hf:{empty}")
    (empty / "config.json").write_text(
        json.dumps(
            {
                "model_type": "clip_vision_model",
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "image_size": 32,
                "patch_size": 8,
            }
        )
    )
    with pytest.raises(UserError, match="no model.safetensors"):
        build_encoder(f"hf:{empty}")
    assert build_encoder(f"hf:{empty}", allow_random=True).output_dim == 32
    with pytest.raises(UserError, match="not a local folder"):
        build_encoder("hf:openai/clip-vit-base-patch32")
    with pytest.raises(UserError, match="feature_layer 5"):
        build_encoder("tiny-clip", feature_layer=5)


def test_a_music_clip_shorter_than_one_frame_is_padded_and_non_finite_audio_is_refused() -> None:
    """A 100-sample clip crashed the conv front end (kernel larger than the input) in training and `vlm embed`;
    a float WAV holding NaN / Inf decoded as it was and poisoned every batch it was in."""
    import io

    import numpy as np
    import soundfile as sf

    from vlm.modalities import MediaError, decode_audio
    enc = build_encoder("mert:tiny").eval()
    item = enc.preprocess((torch.randn(1, 100), 16000))
    assert item.numel() == 400 and enc.num_tokens(item) == 1     # the conv stack's receptive field: one frame
    assert torch.isfinite(enc.encode([item])[0]).all()
    long = enc.preprocess((torch.randn(1, 24000), 24000))
    assert long.numel() == 24000                                 # longer clips untouched
    for bad in (np.nan, np.inf):
        y = np.zeros(1000, np.float32)
        y[100:200] = bad
        buf = io.BytesIO()
        sf.write(buf, y, 16000, format="WAV", subtype="FLOAT")
        with pytest.raises(MediaError, match=r"100 non-finite sample\(s\)"):
            decode_audio(buf.getvalue())
