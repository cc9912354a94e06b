"""LLaVA family: encoder -> 2-layer MLP projector -> LLM (LLaVA-1.5), for every modality it is given.

    model = vlm.build("llava", "tiny")
    model = vlm.build("llava", vision="hf:/models/clip", llm="/models/qwen2", audio="hf:/models/whisper")
    vlm train llava-tiny                                  # projector on captions, then projector + LLM

Generic builder `build_llava(...)` for any encoders and any LLM `vlm.llm` can load; named sizes:
`tiny` (tests and the default run, CPU) and `0.5b` (CLIP ViT-L/14-336 + a Qwen2-0.5B-shaped LLM,
random init unless local weights are given, for GPUs). Parts: a `projector` media connector per
modality, the `plain` route.
"""
from __future__ import annotations

import copy

from vlm.families.base import (
    ENCODER_ARGS,
    PROJECTORS,
    QWEN2_05B,
    SYNTHETIC_WORLD,
    TINY_COMMON,
    TINY_SIZE,
    Family,
    build_multimodal,
    media_parts,
    register_family,
    tiny_curriculum,
)
from vlm.model import MultimodalLM


def build_llava(vision: str | dict | None = "tiny-clip", llm: str | dict = "tiny:llama", projector: str = "mlp2x_gelu",
                audio: str | dict | None = None, music: str | dict | None = None, video: str | dict | None = None,
                audio_pool: int | None = None, music_pool: int | None = None, llm_mode: str = "frozen",
                lora: dict | None = None, seed: int | None = 0) -> MultimodalLM:
    """Pools: LLM tokens per encoder frame run for audio / music (None: the modality table's tokens/s)."""
    encoders, media = media_parts({"type": "projector", "projector": projector},
                                  {"audio": {"pool": audio_pool}, "music": {"pool": music_pool}},
                                  vision=vision, audio=audio, music=music, video=video)
    return build_multimodal("llava", llm, encoders, media, {"type": "plain"}, llm_mode, lora, seed=seed)


# SFT trains the LLM fully (it starts from llava-text-tiny's: tiny_curriculum's TINY_BASE_LLM).
LLAVA_TINY_RECIPE = tiny_curriculum(
    "llava", "SAIL-VL curriculum on synthetic-world image questions, CPU (vlm data build synthetic-world "
             "--out data/synthetic-world)", [PROJECTORS], "full")
# One modality each, the same curriculum (align the projector on that modality's captions, then SFT easy ->
# hard with the LLM in full), the model keeping only that modality's encoder. Tokens per second: the audio
# and music projectors pool Whisper's 50 Hz by 2 and MERT's 75 Hz by 4 (the tiny size's `audio_pool` /
# `music_pool`; set them in model.settings); video: video:tiny's 4 frames, unpooled. "Easy" is each
# modality's lower difficulties (synthetic-world: short tones, clear clips of large shapes, ...).
ONLY = {m: {arg: None for mm, arg in ENCODER_ARGS.items() if mm != m} for m in ENCODER_ARGS}
AUDIO_TASKS = ["audio_caption", "audio_tone", "audio_noise", "audio_speech"]
MUSIC_TASKS = ["music_caption", "music_pitch", "music_chord", "music_instrument", "music_tempo"]
VIDEO_TASKS = ["trailer_visual", "video", "trailer_shape"]
# The audio encoder trains in SFT: a random Whisper's output is dominated by its sinusoidal position
# embedding (nearly the same for every input), so frozen it tells the LLM next to nothing. Chosen on val
# (seed 0: tone 0.82 and noise 1.00 with it trained, 0.30 / 0.34 frozen).
LLAVA_AUDIO_TINY_RECIPE = tiny_curriculum(
    "llava", "sounds and spoken words -> answers and captions, CPU", [PROJECTORS, "encoders.*"], "full", ("audio",),
    AUDIO_TASKS, ["audio_caption"], ONLY["audio"], easy_below=0.4)
# Music trains on a music-only synthetic-world build (1,000 clips a task; the default build has ~180) with
# three times the image recipe's SFT steps: chosen on val (seed 0, 200 questions a task): chord quality 0.860
# vs 0.525 at 700 + 500 steps on the same data (the shared 6,000-sample subset: 0.57), pitch 0.765 vs 0.44.
MUSIC_DATA = "data/synthetic-world-music"
LLAVA_MUSIC_TINY_RECIPE = tiny_curriculum(
    "llava", f"instrument, pitch, chord, tempo questions and music captions, CPU (vlm data build synthetic-world "
             f"--out {MUSIC_DATA} --samples 5000 --tasks {' '.join(MUSIC_TASKS)} --no-classification)",
    [PROJECTORS], "full", ("music",), MUSIC_TASKS, ["music_caption"], ONLY["music"], easy_below=0.4,
    sft_steps=(2100, 1500), shards=f"{MUSIC_DATA}/train")
# Video frames unpooled (16 tokens a frame): chosen on val (seed 1: direction 0.95 vs 0.41 with video:tiny's
# 2x2 pooling, shape 0.51 vs 0.56). Twice the image recipe's SFT steps, also chosen on val (seed 0: the moving
# shape 0.80 vs 0.58 at 700 + 500 steps, direction 0.95 vs 0.98; 64 px frames pooled 2x2 or unpooled: 0.64 /
# 0.54, the encoder trained in SFT: 0.47).
LLAVA_VIDEO_TINY_RECIPE = tiny_curriculum(
    "llava", "what moves, where, which shape in video clips, CPU", [PROJECTORS], "full", ("video",), VIDEO_TASKS,
    ["trailer_visual"], {**ONLY["video"], "video": {"name": "video:tiny", "frame_pool": 1}}, easy_below=0.45,
    sft_steps=(1400, 1000))

# The tiny LLM before it sees media: one stage, the whole LLM, on synthetic-world's text-only questions
# (the world's facts, arithmetic, counting and word order; `benchmarks` suite synthetic-world-text). Steps
# chosen on val (seed 0, 8,000 samples, 200 questions a task; arithmetic / counting / facts / word order):
# 1,500: 0.970 / 0.355 / 1.000 / 0.840; 4,000: 1.000 / 0.590 / 1.000 / 1.000; 8,000: 1.000 / 0.625 / 1.000 /
# 0.990 (twice the time for +0.035 on counting).
TEXT_DATA = "data/synthetic-world-text"
TEXT_TASKS = ["text_fact", "text_arith", "text_count", "text_order"]
LLAVA_TEXT_TINY_RECIPE = {
    "description": f"the tiny LLM on text-only questions (facts, arithmetic, counting, word order), CPU "
                   f"(vlm data build synthetic-world --out {TEXT_DATA} --samples 8000 --tasks text --no-classification)",
    "model": {"family": "llava", "size": "tiny", "settings": {arg: None for arg in ENCODER_ARGS.values()}},
    "data": {"world": {"shards": [f"{TEXT_DATA}/train"], "weight": 1.0,        # built if absent (6 s)
                       "build": {"samples": 8000, "tasks": ["text"], "classification": False}}},
    "stages": [{"name": "text", "trainable": [], "llm": "full", "filter": {"tasks": TEXT_TASKS}, "steps": 4000,
                "lr": 3e-3, **TINY_COMMON}],
    "runtime": {"checkpoint_every": 500, "keep_last": 2, "output_dir": "runs/{name}", "seed": 0,
                "num_workers": 1, "log_every": 10},
}

# LLaVA-1.5 on a GPU: projector pretraining on captions (lr 1e-3, batch 256), then SFT of projector + LLM
# (lr 2e-5, batch 128), here split easy -> hard; bf16 autocast, FSDP2 under torchrun. The 0.5b size has an
# image encoder only: every stage keeps image (and text-only) samples.
_05B_COMMON = dict(max_len=2048, packing=True, schedule="cosine", warmup=0.03, grad_clip=1.0)
LLAVA_05B_RECIPE = {
    "description": "LLaVA-1.5 recipe, SAIL-VL stages (GPU; point data.* at your shards)",
    "model": {"family": "llava", "size": "0.5b", "settings": {}},
    "data": SYNTHETIC_WORLD,
    "stages": [
        {"name": "align", "trainable": [PROJECTORS], "llm": "frozen",
         "filter": {"kind": "caption", "modalities": ["image"]}, "steps": 2000, "lr": 1e-3, "batch_size": 256,
         **_05B_COMMON},
        {"name": "sft-easy", "trainable": [PROJECTORS], "llm": "full",
         "filter": {"max_difficulty": 0.5, "modalities": ["image"]}, "steps": 4000, "lr": 2e-5, "batch_size": 128,
         **_05B_COMMON},
        {"name": "sft-hard", "trainable": [PROJECTORS], "llm": "full",
         "filter": {"min_difficulty": 0.5, "modalities": ["image"]}, "steps": 2000, "lr": 2e-5, "batch_size": 128,
         **_05B_COMMON},
    ],
    "runtime": {"checkpoint_every": 500, "keep_last": 3, "output_dir": "runs/{name}", "num_workers": 4,
                "strategy": "fsdp2", "activation_checkpointing": True, "log_every": 10},
}


def _for_05b(recipe: dict, description: str, modality: str, tasks: list[str], settings: dict) -> dict:
    """LLaVA-1.5's 0.5b stages on one modality: its captions, then its questions (easy -> hard)."""
    r = copy.deepcopy(recipe)
    r["description"], r["model"]["settings"] = description, dict(settings)
    captions = [t for t in tasks if t.endswith("caption") or t == "trailer_visual"]
    for st in r["stages"]:
        st["filter"] = {**st["filter"], "modalities": [modality],
                        "tasks": captions if st["name"] == "align" else list(tasks)}
    return r


LLAVA_AUDIO_05B_RECIPE = _for_05b(LLAVA_05B_RECIPE, "LLaVA-1.5 stages on sound (Whisper-base-shaped encoder, GPU)",
                                  "audio", AUDIO_TASKS, {**ONLY["audio"], "audio": "whisper:base"})

register_family(Family(
    name="llava",
    description="LLaVA-1.5: encoder -> 2-layer MLP projector -> LLM (projector, then projector + LLM)",
    builder=build_llava,
    sizes={
        "tiny": TINY_SIZE,
        "0.5b": dict(vision="clip-vit-l-336", llm=QWEN2_05B),
    },
    recipes={"tiny": LLAVA_TINY_RECIPE, "0.5b": LLAVA_05B_RECIPE, "audio-tiny": LLAVA_AUDIO_TINY_RECIPE,
             "music-tiny": LLAVA_MUSIC_TINY_RECIPE, "video-tiny": LLAVA_VIDEO_TINY_RECIPE,
             "audio-0.5b": LLAVA_AUDIO_05B_RECIPE, "text-tiny": LLAVA_TEXT_TINY_RECIPE},
))
