"""Shared by the tests/test_train_*.py files and others (no tests here): tiny shards and recipes, run helpers,
the study scripts as modules."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, os.path.dirname(__file__))
import helpers_media as H

REPO = Path(__file__).resolve().parents[1]
COLORS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square"]
# image + text only: the fast model of the resume / stage tests
IMAGE_MODEL = {"family": "llava", "size": "tiny",
               "settings": {"audio": None, "music": None, "video": None}}
# image + audio + video (music's raw-waveform encoder is the slowest part of the tiny model)
MIXED_MODEL = {"family": "llava", "size": "tiny", "settings": {"music": None}}


def conv(q: str, a: str) -> list[dict]:
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


def image_sample(i: int, caption: bool = False) -> dict:
    c, s = COLORS[i % 4], SHAPES[(i // 4) % 2]
    meta = {"task": "caption" if caption else "color", "difficulty": round((i % 10) / 10, 2), "quality": 1.0}
    if caption:
        meta["caption"] = f"a {c} {s}"
    else:
        meta["conversations"] = conv("<image>\nWhat colour is the shape?", c)
    return {"__key__": f"s{i:04d}", "jpg": H.image(c, 32, s), "json": meta}


def text_sample(i: int) -> dict:
    return {"__key__": f"s{i:04d}", "json": {"conversations": conv(f"What is {i % 7} plus one?", f"{i % 7 + 1}"),
                                             "task": "text", "difficulty": 0.2}}


def audio_sample(i: int) -> dict:
    from vlm.data.writer import Audio
    wave = (0.3 * np.sin(np.arange(8000) * (0.05 + 0.01 * (i % 3)))).astype(np.float32)
    return {"__key__": f"s{i:04d}", "flac": Audio(wave, 16000),
            "json": {"conversations": conv("<audio>\nHigh or low?", "high" if i % 2 else "low"),
                     "task": "audio", "difficulty": 0.4}}


def video_sample(i: int, mp4: bytes) -> dict:
    return {"__key__": f"s{i:04d}", "mp4": mp4,
            "json": {"conversations": conv("<video>\nWhere does the box go?", "right"), "task": "video",
                     "difficulty": 0.6}}


def write_image_world(folder: Path, n: int = 64) -> str:
    """Captions, colour questions and text-only chats; one shard, fixed order."""
    from vlm.data.writer import ShardWriter
    with ShardWriter(folder, max_count=10**6) as w:
        for i in range(n):
            w.write(text_sample(i) if i % 5 == 4 else image_sample(i, caption=i % 3 == 0))
    return str(folder)


def write_mixed_world(folder: Path, n: int = 32) -> str:
    """Even positions: images; odd: text, audio or video. With no shuffle, sample i goes to rank
    i % 2, so rank 0 sees only images and rank 1 never one (the reader's split contract)."""
    from vlm.data.writer import ShardWriter
    mp4 = Path(H.mp4(folder.parent / "clip.mp4", frames=4, size=32)).read_bytes()
    with ShardWriter(folder, max_count=10**6) as w:
        for i in range(n):
            if i % 2 == 0:
                w.write(image_sample(i))
            else:
                w.write([text_sample, audio_sample, lambda j: video_sample(j, mp4)][(i // 2) % 3](i))
    return str(folder)


def stage(name: str, trainable: list[str], llm: str = "frozen", steps: int = 3, **kw) -> dict:
    return {"name": name, "trainable": trainable, "llm": llm, "steps": steps, "lr": 3e-3, "batch_size": 4,
            "max_len": 96, "warmup": 0.0, "schedule": "cosine", **kw}


def write_recipe(path: Path, data: str, stages: list[dict], model: dict = IMAGE_MODEL, **runtime) -> Path:
    recipe = {"name": "test", "model": model, "data": {"world": {"shards": [data]}}, "stages": stages,
              "runtime": {"checkpoint_every": 2, "keep_last": 10, "num_workers": 0, "shuffle_buffer": 0,
                          "log_every": 1, "log_samples": True, **runtime}}
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def env(threads: int = 1) -> dict:
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO) + os.pathsep + e.get("PYTHONPATH", ""),
             TOKENIZERS_PARALLELISM="false")
    return e


def vlm_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "vlm.cli", *args]


def run_vlm(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    p = subprocess.run(vlm_cmd(*args), cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"vlm {' '.join(args)} -> {p.returncode}\n{p.stderr[-3000:]}")
    return p


def train_and_kill(recipe: Path, ref: Path, victim: Path, first: str = "step-00000002", timeout: float = 300):
    """Start an uninterrupted run into `ref` and a victim into `victim`; kill -9 the victim once its first
    checkpoint is complete. Returns (the reference process, still running, and the victim's last step)."""
    kw = dict(cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    p_ref = subprocess.Popen(vlm_cmd("train", str(recipe), "--out", str(ref)), **kw)
    p_vic = subprocess.Popen(vlm_cmd("train", str(recipe), "--out", str(victim)), **kw)
    marker = victim / "checkpoints" / first / "trainer.json"
    deadline = time.time() + timeout
    while not marker.exists() and p_vic.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(p_vic.pid, signal.SIGKILL)
    p_vic.wait()
    assert p_vic.returncode == -signal.SIGKILL and not (victim / "final").exists(), "finished before the kill"
    return p_ref, max(step_rows(victim))


def step_rows(run: Path) -> dict[int, dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {r["step"]: r for r in rows if "event" not in r}


def events(run: Path, kind: str) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [r for r in rows if r.get("event") == kind]


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(folder / "model.safetensors"))


def load_study(name: str):
    """A script of benchmarks/studies (not a package) as a module."""
    import importlib.util
    path = REPO / "benchmarks" / "studies" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
