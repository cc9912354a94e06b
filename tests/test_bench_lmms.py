"""The lmms-eval plugin: `lmms-eval --model vlm --model_args pretrained=CKPT --tasks ... --include_path
benchmarks/lmms_tasks` runs a tiny trained checkpoint through the entry point and writes a results file
whose scores (and per-sample answers) equal our runner's on the same split.

The model is found through an `lmms_eval.models` entry point. Until the package is reinstalled with the
entry point in pyproject.toml, the test declares the same entry point in a throwaway dist-info folder
on PYTHONPATH; lmms-eval reads it exactly as it reads an installed one. The CLI exits 0 even when the
evaluation fails, so the test checks the results file, not the exit code.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINT = "vlm = benchmarks.lmms_plugin:MANIFEST"
LMMS_TASKS = ("synthetic_world_vqa", "synthetic_world_vqa_mc", "synthetic_world_av_vqa", "synthetic_world_av_captions",
              "synthetic_world_text", "synthetic_world_av_vqa_music", "synthetic_world_av_captions_video")


def _entry_point_dir(tmp: Path) -> Path:
    d = tmp / "ep" / "vlm_lmms_test_ep-0.0.dist-info"
    d.mkdir(parents=True)
    (d / "METADATA").write_text("Metadata-Version: 2.1\nName: vlm-lmms-test-ep\nVersion: 0.0\n")
    (d / "entry_points.txt").write_text(f"[lmms_eval.models]\n{ENTRY_POINT}\n")
    return d.parent


def test_manifest_is_what_lmms_eval_expects():
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    from benchmarks.lmms_plugin import MANIFEST, VLMLmms
    reg = ModelRegistryV2()
    reg.register_manifest(MANIFEST)
    assert reg.get_model_class("vlm") is VLMLmms


def train_tiny_vlm(out: Path, world: Path, split: str = "test", tasks: tuple[str, ...] = ("color", "shape"),
                   steps: int = 60, batch_size: int = 8, lr: float = 3e-3, seed: int = 0) -> Path:
    """A `llava` `tiny` model (LLM unfrozen) trained for a few steps on synthetic-world VQA samples and saved
    as a checkpoint folder: enough to answer in the label vocabulary, so scores are not all zero."""
    import vlm
    from benchmarks.data import iter_samples, sample_media, shard_files
    from vlm.data.collate import collate
    from vlm.train.objectives import build_objective
    torch.manual_seed(seed)
    model = vlm.build("llava", "tiny", llm_mode="full")
    proc, loss_fn = model.processor, build_objective("next_token", {})
    items = []
    for s in iter_samples(shard_files(world, split)):
        meta = s.meta()
        if meta.get("task") in tasks:
            items.append(proc({"conversations": meta["conversations"]},
                              sample_media(s, meta["conversations"][0]["value"]), key=s.key))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(items), (min(batch_size, len(items)),), generator=g).tolist()
        res = loss_fn(model, collate([items[i] for i in idx], proc.pad_id))
        opt.zero_grad()
        (res.loss / res.count).backward()
        opt.step()
    model.eval()
    return model.save_pretrained(out)


def test_lmms_eval_cli_matches_runner(tmp_path):
    """Image VQA (generative and by log-likelihood), the sound / music / video tasks (audio handed over
    as {"array", "sampling_rate"}, videos as file paths) and the text-only questions (no media) in one
    lmms-eval run: the same answers as ours."""
    from benchmarks.lmms_tasks.export import AV_CAPTIONS, AV_VQA, TEXT_QA
    from benchmarks.registry import resolve
    from benchmarks.runner import RunConfig, evaluate
    from vlm.data.synthetic import build_synthetic_world, select_tasks
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        world = tmp_path / "sw"
        build_synthetic_world(world, samples=20, seed=0, eval_per_task=3, splits=("test",), workers=1,
                              classification=False, tasks=[*select_tasks(None), "text"])
        ckpt = train_tiny_vlm(tmp_path / "ckpt", world, steps=40)
        ours = evaluate([str(ckpt)], resolve(["sw-vqa", "sw-vqa-mc", *AV_VQA, *AV_CAPTIONS, *TEXT_QA]),
                        RunConfig(out=tmp_path / "ours", data=str(world), cache=False, progress=False,
                                  batch_size=1)).table.set_index("benchmark")
    finally:
        torch.set_num_threads(n_threads)

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(_entry_point_dir(tmp_path))]),
               VLM_SYNTHETIC_WORLD=str(world), VLM_CACHE=str(tmp_path / "cache"), HF_HOME=str(tmp_path / "hf"),
               HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    script = Path(sys.executable).with_name("lmms-eval")        # the console script of this environment
    cmd = [str(script) if script.exists() else "lmms-eval", "--model", "vlm", "--model_args", f"pretrained={ckpt}",
           "--tasks", ",".join(LMMS_TASKS), "--include_path", str(REPO / "benchmarks/lmms_tasks"),
           "--output_path", str(tmp_path / "lmms"), "--log_samples", "--device", "cpu", "--batch_size", "1"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    results = sorted((tmp_path / "lmms").glob("*/*_results.json"))
    assert results, f"lmms-eval wrote no results (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    res = json.loads(results[-1].read_text())["results"]

    assert res["synthetic_world_vqa"]["accuracy,none"] == pytest.approx(ours.loc["sw-vqa", "score"])
    assert res["synthetic_world_vqa_mc"]["acc,none"] == pytest.approx(ours.loc["sw-vqa-mc", "score"])
    assert ours.loc["sw-vqa", "score"] > 0                       # a trained model: the equality is not 0 == 0
    # Sound / music / video: lmms-eval's accuracy over all AV questions is ours weighted by benchmark size.
    n = ours.loc[AV_VQA, "n"]
    assert res["synthetic_world_av_vqa"]["accuracy,none"] == pytest.approx((ours.loc[AV_VQA, "score"] * n).sum() / n.sum())
    assert set(res["synthetic_world_av_captions"]) >= {"cider,none", "bleu,none", "rouge_l,none"}
    # One modality's tasks (what a music-only or video-only model can run): its questions, and its caption
    # benchmark, whose corpus CIDEr is `vlm eval`'s own (the pooled task's is over all four caption sets at once).
    from benchmarks.lmms_tasks.export import AV_BY_MODALITY
    music_vqa = AV_BY_MODALITY["music"][0]
    [video_caps] = AV_BY_MODALITY["video"][1]
    n = ours.loc[music_vqa, "n"]
    assert res["synthetic_world_av_vqa_music"]["accuracy,none"] == pytest.approx(
        (ours.loc[music_vqa, "score"] * n).sum() / n.sum())
    assert ours.loc[video_caps, "metric"] == "cider" and ours.loc[video_caps, "score"] > 0
    assert res["synthetic_world_av_captions_video"]["cider,none"] == pytest.approx(ours.loc[video_caps, "score"])

    # Per sample: lmms-eval's answers are our runner's answers, in the same order.
    def answers(task: str) -> list[str]:
        f = next((tmp_path / "lmms").glob(f"*/*_samples_{task}.jsonl"))
        rs = sorted((json.loads(line) for line in f.read_text().splitlines()), key=lambda r: r["doc_id"])
        return [r["filtered_resps"][0] if isinstance(r["filtered_resps"], list) else r["filtered_resps"] for r in rs]

    def preds(benches: list[str]) -> list[str]:
        return [p for b in benches
                for p in pd.read_parquet(next((tmp_path / "ours" / "results").glob(f"*/{b}.parquet")))["pred"]]

    assert answers("synthetic_world_vqa") == preds(["sw-vqa"])
    assert len(preds(AV_VQA)) >= 2 * len(AV_VQA) and len(preds(AV_CAPTIONS)) >= 2 * len(AV_CAPTIONS)
    assert answers("synthetic_world_av_vqa") == preds(AV_VQA)
    assert answers("synthetic_world_av_captions") == preds(AV_CAPTIONS)
    assert answers("synthetic_world_av_vqa_music") == preds(music_vqa)
    assert len(preds(TEXT_QA)) == 3 * len(TEXT_QA) and answers("synthetic_world_text") == preds(TEXT_QA)


def test_media_from_other_tasks_doc_to_visual():
    """What other lmms-eval tasks hand models: HF audio dicts without a modality take their placeholder's
    kind, else the model's audio modality; placeholders are added only when the text has none."""
    import numpy as np
    from PIL import Image

    from benchmarks.lmms_plugin import VLMLmms
    from vlm.errors import UserError
    lm = object.__new__(VLMLmms)
    lm.model = type("M", (), {"modalities": ("image", "music", "video")})()
    img, wave = Image.new("RGB", (8, 8)), {"array": np.zeros(1600, np.float32), "sampling_rate": 16000}
    ctx, media = lm._media("What plays?", [img, wave, "clip.mp4"])
    assert ctx == "<image>\n<music>\n<video>\nWhat plays?"
    assert media["music"][0][0].shape == (1, 1600) and media["music"][0][1] == 16000 and media["video"] == ["clip.mp4"]
    ctx, media = lm._media("<music> then <image>", [wave, img])
    assert ctx == "<music> then <image>" and set(media) == {"music", "image"}
    with pytest.raises(UserError, match="no audio encoder") as e:
        lm._media("<audio> what?", [wave])
    assert "per-modality tasks (synthetic_world_av_vqa_music, synthetic_world_av_vqa_video, " in str(e.value)


def test_plugin_settings_and_an_image_that_does_not_decode(tmp_path):
    """batch_size 0 (every request crashed in range()) and a negative max_new_tokens (answered '' silently) are
    one-line errors; a request whose image file is truncated is answered '' and counted (generation: the
    other requests keep the answers they get alone), and is a one-line error for a likelihood."""
    import io

    from lmms_eval.api.instance import Instance
    from PIL import Image

    import vlm
    from benchmarks.lmms_plugin import VLMLmms
    from vlm.errors import UserError
    vlm.build("llava", "tiny", audio=None, music=None, video=None).save_pretrained(tmp_path / "ckpt")
    for kw, message in (({"batch_size": 0}, "batch_size must be a positive integer"),
                        ({"batch_size": "x"}, "batch_size must be"), ({"max_new_tokens": -1}, "max_new_tokens must be"),
                        # found by a review: ran silently as the defaults (on the CPU; in float32)
                        ({"devcie": "cuda"}, "unknown model_args key 'devcie'"),
                        ({"dtype": "bfloat16"}, r"unknown model_args key 'dtype' \(evaluation runs in float32")):
        with pytest.raises(UserError, match=message):
            VLMLmms(str(tmp_path / "ckpt"), **kw)
    # lmms-eval passes its --batch_size / --device too: a key also in model_args was a TypeError (found by a review)
    made = VLMLmms.create_from_arg_string(f"pretrained={tmp_path / 'ckpt'},batch_size=2",
                                          {"batch_size": 1, "device": "cpu"})
    assert made.batch_size == 2
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buf, "PNG")
    truncated = Image.open(io.BytesIO(buf.getvalue()[:120]))                # opens lazily; fails on load
    docs = {0: Image.new("RGB", (32, 32), "red"), 1: truncated, 2: Image.new("RGB", (32, 32), "blue")}
    lm = VLMLmms(str(tmp_path / "ckpt"), batch_size=3, max_new_tokens=4)
    lm.task_dict = {"t": {"test": docs}}

    def req(i, kind="generate_until"):
        args = (("What colour?", {"max_new_tokens": 4, "until": []}, lambda d: [d], i, "t", "test") if kind == "generate_until"
                else ("What colour?", " red", lambda d: [d], i, "t", "test"))
        return Instance(kind, args, idx=0, metadata={"task": "t", "doc_id": i, "repeats": 1})
    together = lm.generate_until([req(0), req(1), req(2)])
    alone = [lm.generate_until([req(i)])[0] for i in (0, 2)]
    assert together[1] == "" and [together[0], together[2]] == alone and lm.bad_images == 1
    with pytest.raises(UserError, match="t doc 1: its image does not decode"):
        lm.loglikelihood([req(1, "loglikelihood")])
    # max_new_tokens in model_args wins over the task's (every shipped task sets one: it was ignored, a review);
    # without it the task's applies
    short = VLMLmms(str(tmp_path / "ckpt"), max_new_tokens=1)
    short.task_dict, plain = lm.task_dict, VLMLmms(str(tmp_path / "ckpt"))
    plain.task_dict = lm.task_dict
    one = plain.generate_until([Instance("generate_until", ("What colour?", {"max_new_tokens": 1, "until": []},
                                                            lambda d: [d], 0, "t", "test"), idx=0,
                                         metadata={"task": "t", "doc_id": 0, "repeats": 1})])
    assert short.generate_until([req(0)]) == one and plain.generate_until([req(0)]) == alone[:1] != one
    # a doc_to_visual that decodes bytes itself (the suite's exported tasks) and fails there: the same, not the end
    # of the whole run (found by a review)
    from vlm.modalities import decode_image

    def from_bytes(i, kind="generate_until"):
        args = req(i, kind).args
        visual = lambda d: [decode_image(b"not an image" if d is truncated else buf.getvalue())]
        return Instance(kind, (*args[:2], visual, *args[3:]), idx=0, metadata={"task": "t", "doc_id": i, "repeats": 1})
    assert lm.generate_until([from_bytes(0), from_bytes(1)])[1] == "" and lm.bad_images == 2
    # audio that decodes but the model's preprocessing refuses (1 sample: too short for its log-mel): the same
    # (it ended the whole run)
    vlm.build("llava", "tiny", vision=None, music=None, video=None).save_pretrained(tmp_path / "heard")
    heard = VLMLmms(str(tmp_path / "heard"), batch_size=3, max_new_tokens=4)
    heard.task_dict = {"t": {"test": {0: {"array": [0.1] * 8000, "sampling_rate": 16000},
                                      1: {"array": [0.5], "sampling_rate": 16000},
                                      2: {"array": [-0.1] * 8000, "sampling_rate": 16000}}}}
    quiet = [heard.generate_until([req(i)])[0] for i in (0, 2)]
    assert heard.generate_until([req(0), req(1), req(2)]) == [quiet[0], "", quiet[1]] and heard.bad_images == 1
    with pytest.raises(UserError, match="t doc 1: its image does not decode"):
        lm.loglikelihood([from_bytes(1, "loglikelihood")])
    with pytest.raises(UserError, match="max_new_tokens must be"):
        lm.generate_until([Instance("generate_until", ("x", {"max_new_tokens": -1}, None, 0, "t", "test"), idx=0,
                                    metadata={"task": "t", "doc_id": 0, "repeats": 1})])
    # generation settings as lmms-eval tasks and --gen_kwargs give them: `top_p: null` and the string 'None'
    # crashed the whole run (TypeError in the sampler); strings are typed; a value that is not one is a line
    def sampled(**gen):
        return Instance("generate_until", ("What colour?", {"until": [], "max_new_tokens": 4, **gen}, lambda d: [d], 0,
                                           "t", "test"), idx=0, metadata={"task": "t", "doc_id": 0, "repeats": 1})
    assert lm.generate_until([sampled(do_sample=True, temperature=0.7, top_p=None)])[0] is not None
    assert lm.generate_until([sampled(do_sample="True", temperature="0.5", top_p="None", top_k="None")])[0] is not None
    assert lm.generate_until([sampled(do_sample="False", top_p=None)]) == alone[:1]          # greedy: the same answer
    with pytest.raises(UserError, match=r"generation setting top_p='x': expected a number"):
        lm.generate_until([sampled(do_sample=True, top_p="x")])
