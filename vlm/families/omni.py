"""Omni family: images, video clips with their soundtrack, music and sound, into one LLM (MMTrail-style
trailer clips: what is seen and what is heard, aligned in time).

    model = vlm.build("omni", "tiny")
    model = vlm.build("omni", vision="hf:/models/clip", music="mert:/runs/mert/final", audio="hf:/models/whisper",
                      llm="/models/qwen2", frames=16, frame_pool=2, route="inner_adaptor")
    vlm train omni-tiny                  # visual captions -> music captions -> merged captions + questions

Parts: one vision encoder shared by images and video frames, a music encoder (MERT-style) and an audio
encoder (Whisper-style); media tokenizers `projector` for <image>, <music>, <audio> items and `av` for
<video> clips (frames through the vision encoder, per-frame pooling as LLaVA-NeXT-Video, the clip's
soundtrack through the music and audio encoders, tokens interleaved per time window:
`vlm/connectors/av.py`); the `plain` route (LLaVA) or the `inner_adaptor` route (IAA, LLM frozen).
"""
from __future__ import annotations

import copy

from vlm.families.base import (
    PROJECTORS,
    QWEN2_05B,
    SYNTHETIC_WORLD,
    TINY_BASE_LLM,
    TINY_COMMON,
    Family,
    build_multimodal,
    check_count,
    register_family,
)
from vlm.model import MultimodalLM

ROUTES = ("plain", "inner_adaptor")


def build_omni(vision: str | dict = "tiny-clip", llm: str | dict = "tiny:llama", music: str | dict | None = "mert:tiny",
               audio: str | dict | None = "whisper:tiny", projector: str = "mlp2x_gelu", route: str = "plain",
               frames: int = 8, frame_pool: int = 1, music_pool: int | None = None, audio_pool: int | None = None,
               mute: list[str] | None = None, adaptor_layers: list[int] | None = None, llm_mode: str = "frozen",
               lora: dict | None = None, seed: int | None = 0) -> MultimodalLM:
    """frames: the clip's frame cap (uniform); frame_pool: average-pooling of each frame's patch grid;
    pools: music / audio tokens per run of encoder frames (None: the modality table's tokens per second);
    mute: soundtrack streams a clip's tokens leave out (an ablation); route: plain | inner_adaptor."""
    from vlm.errors import require
    require(route in ROUTES, f"omni route must be one of {ROUTES}, not '{route}'")
    for name, value, none in (("music_pool", music_pool, True), ("audio_pool", audio_pool, True),
                              ("frames", frames, False), ("frame_pool", frame_pool, False)):
        check_count(name, value, none)
    encoders = {k: v for k, v in (("image", vision), ("music", music), ("audio", audio)) if v is not None}
    proj = {"type": "projector", "projector": projector}
    media = {"image": dict(proj),
             "video": {"type": "av", "encoder": "image", "music": "music" if music else None,
                       "audio": "audio" if audio else None, "projector": projector, "frames": frames,
                       "frame_pool": frame_pool, "music_pool": music_pool, "audio_pool": audio_pool, "mute": mute}}
    for m, pool in (("music", music_pool), ("audio", audio_pool)):
        if m in encoders:
            media[m] = {**proj, "pool": pool}
    routes = {"plain": {"type": "plain"}, "inner_adaptor": {"type": "inner_adaptor", "adaptor_layers": adaptor_layers}}
    if route == "inner_adaptor":
        llm_mode, lora = "frozen", None
    return build_multimodal("omni", llm, encoders, media, routes[route], llm_mode, lora, seed=seed)


# The tiny size: tiny CLIP (32 px, 16 patches, unpooled: 16 tokens a frame), 6 of a clip's 12 frames,
# MERT tiny (75 Hz / 4) and Whisper tiny (50 Hz / 2) on the soundtrack: ~240 tokens for a 3 s clip.
# frame_pool 1, chosen on the val split: trained on trailer_shape alone (300 steps), 2x2 pooling (4 tokens
# a frame) left the moving shape at about the majority answer, unpooled frames named it (model_cards/omni.md).
TINY = dict(vision="tiny-clip", llm="tiny:llama", music="mert:tiny", audio="whisper:tiny", frames=6, frame_pool=1,
            music_pool=4, audio_pool=2)
# GPU: CLIP ViT-L/14-336 (576 patches, 2x2 pooling -> 144 a frame, as LLaVA-NeXT-Video), 16 frames,
# MERT-95M-shaped and Whisper-base-shaped encoders (random unless local weights are given), Qwen2-0.5B shape.
SIZE_05B = dict(vision="clip-vit-l-336", llm=QWEN2_05B, music="mert:base", audio="whisper:tiny", frames=16,
                frame_pool=2)

# MMTrail's curriculum on synthetic-world trailer clips: the projectors align on visual captions of clean
# clips, then music captions, then the merged captions and questions about what is seen and heard over
# the whole quality range (the clip's `quality` score, as MMTrail's imaging / aesthetic scores filter).
# `merged` budget and LR chosen on the val split (seed 0, 6,000 trailer clips): the moving shape 0.24 at
# 600 steps / 2e-3, 0.45 at 2,400 / 2e-3, 0.50 at 2,400 / 3e-3 (the instrument 1.00 at both).
_OMNI_COMMON = {**TINY_COMMON, "max_len": 320}   # a 3 s clip is ~240 tokens unpooled
OMNI_TINY_RECIPE = {
    "description": "omni on synthetic-world trailer clips: visual -> music -> merged captions + questions (CPU)",
    "model": {"family": "omni", "size": "tiny", "settings": {"llm": TINY_BASE_LLM}},
    "data": copy.deepcopy(SYNTHETIC_WORLD),
    "stages": [
        {"name": "visual", "trainable": [PROJECTORS], "llm": "frozen", "lr": 3e-3, "steps": 100,
         "filter": {"tasks": ["trailer_visual"], "min_quality": 0.6, "modalities": ["video"]}, **_OMNI_COMMON},
        {"name": "music", "trainable": [PROJECTORS], "llm": "frozen", "lr": 3e-3, "steps": 100,
         "filter": {"tasks": ["trailer_music"], "min_quality": 0.6, "modalities": ["video"]}, **_OMNI_COMMON},
        {"name": "merged", "trainable": [PROJECTORS], "llm": "full", "lr": 3e-3, "steps": 2400,
         "filter": {"tasks": ["trailer_visual", "trailer_music", "trailer_merged", "trailer_shape",
                              "trailer_instrument"], "modalities": ["video"]}, **_OMNI_COMMON},
    ],
    "runtime": {"checkpoint_every": 100, "keep_last": 2, "output_dir": "runs/{name}", "seed": 0,
                "num_workers": 1, "log_every": 10},
}

register_family(Family(
    name="omni",
    description="Omni: images, video frames + their soundtrack (music, sound) interleaved in time, music, audio",
    builder=build_omni,
    sizes={"tiny": TINY, "0.5b": SIZE_05B},
    modalities_of=lambda s: tuple(m for m, on in (("image", True), ("audio", s.get("audio")),
                                                 ("music", s.get("music")), ("video", True)) if on),
    recipes={"tiny": OMNI_TINY_RECIPE},
))
