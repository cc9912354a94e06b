"""Sound, music and video into the LLM: the omni family's audio-visual tokenizer (frame sampling, pooling,
time alignment of the soundtrack), the MMTrail converter (frame ranges, skips by reason, flat memory on
long videos), bad clips, and omni batches mixing clips, images and text under DDP and FSDP2."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
import test_train_common as C

import vlm
from encoders.base import ConvFrames, Encoder
from vlm.connectors.av import AVItem, window_of
from vlm.data.writer import Audio, encode_mp4

SR = 24000


def clip_mp4(seconds: float = 3.0, fps: int = 4, beep_at: float | None = None, audio: bool = True, size: int = 64) -> bytes:
    """Frames whose red channel counts the frame index; a 1 kHz beep of 0.2 s at `beep_at` seconds."""
    n = int(seconds * fps)
    frames = np.zeros((n, size, size, 3), np.uint8)
    for i in range(n):
        frames[i, :, :, 0] = min(255, 10 * i)
    x = np.zeros(int(seconds * SR), np.float32)
    if beep_at is not None:
        t0 = int(beep_at * SR)
        x[t0:t0 + int(0.2 * SR)] = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(int(0.2 * SR)) / SR)
    return encode_mp4(frames, fps, Audio(x, SR) if audio else None)


class Zero(nn.Module):
    def forward(self, x):
        return torch.zeros(*x.shape[:-1], 64)


class Energy(Encoder, kind="test_energy"):
    """A music encoder whose feature of each 320-sample frame is its RMS energy (the tiny MERT's frames)."""
    modality, output_dim, name, feature_layer = "music", 4, "energy", -1

    def __init__(self, preprocess):
        super().__init__()
        self.preprocess = preprocess
        self.scale = nn.Parameter(torch.ones(()))

    @property
    def frame_rate(self):
        return SR / 320

    def token_count(self):
        return ConvFrames((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2))

    def forward(self, x):                                       # [B, N] -> [B, frames, 4]
        n = self.token_count().count((x.shape[-1],))
        frames = x[:, : n * 320].unflatten(1, (n, 320))
        return (frames.pow(2).mean(-1, keepdim=True).sqrt() * self.scale).expand(-1, -1, 4)


@pytest.fixture(scope="module")
def omni():
    return vlm.build("omni", "tiny", frame_pool=2).eval()          # 2x2 pooling, as the 0.5b size


def test_frames_are_sampled_uniformly_and_pooled_to_the_configured_count(omni):
    tok = omni.media["video"]
    item = tok.preprocess(clip_mp4(seconds=3.0, fps=4))                      # 12 frames, cap 6
    assert isinstance(item, AVItem) and item.frames.shape == (6, 3, 32, 32) and item.duration == pytest.approx(3.0)
    red = item.frames[:, 0].mean((1, 2))                                     # the frame index, through the preprocess
    assert torch.all(red[1:] > red[:-1])                                     # centres of 6 equal windows: 1, 3, 5 ...
    short = tok.preprocess(clip_mp4(seconds=1.0, fps=4))                     # fewer frames than the cap: all of them
    assert short.frames.shape[0] == 4
    with torch.no_grad():
        feats = tok([item, short])
    per_frame = (32 // 8 // 2) ** 2                                          # 4x4 patches, 2x2 pooling
    n_music = tok.token_count().music.count((item.shape[4],))
    n_audio = tok.token_count().audio.count((1, item.shape[5]))
    assert feats[0].shape[0] == 6 * per_frame + n_music + n_audio == omni.num_media_tokens("video", item)
    assert feats[1].shape[0] == omni.num_media_tokens("video", short)
    muted = vlm.build("omni", "tiny", frame_pool=2, mute=["music"]).media["video"]
    assert vlm.build("omni", "tiny", frame_pool=2, mute="music").media["video"].mute == ["music"]   # a name alone
    assert muted.token_count()(muted.preprocess(clip_mp4())) == 6 * per_frame + n_audio


def test_a_clip_longer_than_the_connector_reads_is_refused_before_its_soundtrack_decodes(omni, monkeypatch):
    """A 2-frame file declaring 0.001 fps spans 2,000 s: its soundtrack, decoded and zero-padded whole, was 87,000
    tokens and 2.5 GB before the context check (a review). Past MAX_CLIP_SECONDS it is a MediaError, too_long."""
    import vlm.connectors.av as av_connector
    from vlm.modalities import MediaError
    tok = omni.media["video"]
    assert tok.preprocess(clip_mp4(seconds=3.0, fps=4)).duration == pytest.approx(3.0)
    monkeypatch.setattr(av_connector, "MAX_CLIP_SECONDS", 2.0)
    with pytest.raises(MediaError, match=r"the clip spans 3 s \(12 frames at 4 fps\); clips of up to 2 s") as e:
        tok.preprocess(clip_mp4(seconds=3.0, fps=4))
    assert e.value.reason == "too_long"


def test_a_beep_cut_from_a_longer_video_lands_in_its_frames_window(tmp_path):
    """A 20 s video with a beep at 12.0 s; the MMTrail converter cuts frames [100, 140) at 10 fps = 10-14 s,
    so the beep is at 2.0 s of a 4 s clip: window 3 of 6 holds the music tokens with its energy."""
    from vlm.data.mmtrail import convert_mmtrail
    from vlm.data.reader import read_fields, scan_shard
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "long.mp4").write_bytes(clip_mp4(seconds=20.0, fps=10, beep_at=12.0))
    rec = {"basic": {"video_id": "long", "video_path": "long.mp4", "video_fps": 10.0, "clip_id": "c0",
                     "clip_start_end_idx": [100, 140], "imaging_quality": 50.0},
           "scene": {"caption": "red grows", "merge_caption": "red grows with a beep"}}
    (tmp_path / "ann.json").write_text(json.dumps([rec]))
    report = convert_mmtrail(str(tmp_path / "ann.json"), str(tmp_path / "videos"), str(tmp_path / "out"), fps=4)
    assert report.clips == 1 and report.written == 2
    ref = next(iter(scan_shard(str(tmp_path / "out" / "shard-000000.tar"))))
    mp4, meta = read_fields(ref)["mp4"], json.loads(read_fields(ref)["json"])
    assert meta["quality"] == 0.5 and meta["task"] in ("trailer_visual", "trailer_merged")
    model = vlm.build("omni", "tiny", audio=None, music_pool=1, frame_pool=2).eval()
    model.replace_encoder("music", Energy(model.encoders["music"].preprocess))
    tok = model.media["video"]
    item = tok.preprocess(mp4)
    assert item.frames.shape[0] == 6 and item.duration == pytest.approx(4.0, abs=0.05)
    loud = item.music.abs().argmax().item() / SR
    assert 2.0 <= loud <= 2.25                                              # the beep, 2 s into the clip
    energy = nn.Linear(4, 64)                                               # music tokens: the energy in dim 0
    with torch.no_grad():
        energy.weight.zero_()
        energy.bias.zero_()
        energy.weight[0, 0] = 1.0
        tok.projector["music"] = energy
        tok.projector["vision"] = Zero()                                    # frame tokens: 0
        out = tok([item])[0][:, 0]                                          # [tokens]
    n_music = item.music.shape[0]
    win = window_of(ConvFrames((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)).count((n_music,)), 1 / 75, 4.0, 6)
    per_frame = 4
    starts, pos = [], 0
    for i in range(6):                                                      # the layout: frame, then its music
        starts.append(pos)
        pos += per_frame + int((win == i).sum())
    beep = int(out[:].argmax())
    window = max(i for i, s in enumerate(starts) if s <= beep)
    assert window == 3 and beep >= starts[3] + per_frame                    # a music token, after frame 3's tokens


def test_mmtrail_converter_skips_bad_clips_by_reason(tmp_path):
    from vlm.data.mmtrail import convert_mmtrail
    v = tmp_path / "videos"
    v.mkdir()
    (v / "ok.mp4").write_bytes(clip_mp4(seconds=6.0, fps=10))
    (v / "silent.mp4").write_bytes(clip_mp4(seconds=3.0, fps=10, audio=False))
    (v / "corrupt.mp4").write_bytes(clip_mp4(seconds=3.0, fps=10)[:300])
    (tmp_path / "secret.mp4").write_bytes(clip_mp4())

    def rec(cid, path, rng, **scene):
        return {"basic": {"video_id": cid, "video_path": path, "video_fps": 10.0, "clip_id": cid,
                          "clip_start_end_idx": rng}, "scene": scene or {"caption": "a clip"},
                "misc": {"music_caption": [{"text": "quiet", "time": "0:00-0:03"}]}}
    recs = [rec("good", "ok.mp4", [10, 40]), rec("past", "ok.mp4", [100, 120]), rec("missing", "gone.mp4", [0, 10]),
            rec("empty", "ok.mp4", [20, 20]), rec("silent", "silent.mp4", [0, 10]), rec("corrupt", "corrupt.mp4", [0, 10]),
            rec("escape", "../secret.mp4", [0, 10]), rec("negative", "ok.mp4", [-4, 4])]   # sound and picture apart
    (tmp_path / "ann.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    from vlm.errors import UserError
    with pytest.raises(UserError, match=r"7 of 8 clips are bad \(bad_record 1, bad_video 1, .*\), more than --max-bad 0.2; "
                                        r"nothing published \(--max-bad 1 keeps the 1 that converted\)"):
        convert_mmtrail(str(tmp_path / "ann.jsonl"), str(v), str(tmp_path / "out"), max_bad=0.2)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.tar"))     # nothing published
    with pytest.raises(UserError, match=r"1 of 8 records name a video not found under .*, more than --max-bad 0.1; "
                                        r"nothing converted"):                 # said before any clip is cut
        convert_mmtrail(str(tmp_path / "ann.jsonl"), str(v), str(tmp_path / "out"))
    for bad in (-0.5, float("nan"), 2):
        with pytest.raises(UserError, match="--max-bad is a fraction"):
            convert_mmtrail(str(tmp_path / "ann.jsonl"), str(v), str(tmp_path / "out"), max_bad=bad)
    report = convert_mmtrail(str(tmp_path / "ann.jsonl"), str(v), str(tmp_path / "out"), max_bad=1.0)
    assert report.clips == 1 and report.written == 2                      # visual + music captions of "good"
    assert dict(report.skipped) == {"range_past_end": 1, "missing_video": 1, "empty_range": 1, "no_audio_track": 1,
                                    "bad_video": 1, "path_outside_root": 1, "bad_record": 1}
    kept = convert_mmtrail(str(tmp_path / "ann.jsonl"), str(v), str(tmp_path / "out2"), audio_optional=True, max_bad=1.0)
    assert kept.clips == 2 and "no_audio_track" not in kept.skipped


def test_mmtrail_frame_indices_count_from_the_videos_first_frame(tmp_path):
    """A video whose first frame is at 2 s (pts 8 at 4 fps): MMTrail's frame indices (decord's) count from that
    frame. The converter counted from time 0: frames [8, 12) came out as the video's frames 0-3, and [0, 4) was
    skipped as past the end (a review)."""
    from fractions import Fraction

    import av
    import decord

    from vlm.data.mmtrail import convert_mmtrail
    from vlm.data.reader import read_fields, scan_shard
    (tmp_path / "videos").mkdir()
    with av.open(str(tmp_path / "videos" / "late.mp4"), "w", format="mp4") as c:
        st = c.add_stream("mpeg4", rate=4)
        st.width = st.height = 32
        st.pix_fmt = "yuv420p"
        st.codec_context.time_base = Fraction(1, 4)
        for i in range(16):                                       # frame i: grey level 15 i
            f = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 15 * i, np.uint8), format="rgb24")
            f.pts, f.time_base = i + 8, Fraction(1, 4)
            for pkt in st.encode(f):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    assert [round(x.mean() / 15) for x in decord.VideoReader(str(tmp_path / "videos" / "late.mp4"))[0:2].asnumpy()] \
        == [0, 1]                                                 # decord: frame 0 is the first frame
    recs = [{"basic": {"video_path": "late.mp4", "video_fps": 4, "clip_id": f"c{a}", "clip_start_end_idx": [a, a + 4]},
             "scene": {"caption": f"from {a}"}} for a in (0, 8)]
    (tmp_path / "ann.json").write_text(json.dumps(recs))
    report = convert_mmtrail(str(tmp_path / "ann.json"), str(tmp_path / "videos"), str(tmp_path / "out"), fps=4,
                             audio_optional=True, size=32)
    assert report.clips == 2 and not report.skipped
    levels = {}
    for ref in scan_shard(str(tmp_path / "out" / "shard-000000.tar")):
        fields = read_fields(ref)
        frames = decord.VideoReader(io.BytesIO(fields["mp4"])).get_batch(list(range(4))).asnumpy()
        levels[json.loads(fields["json"])["conversations"][1]["value"]] = [round(x.mean() / 15) for x in frames]
    assert levels == {"from 0": [0, 1, 2, 3], "from 8": [8, 9, 10, 11]}


# VmHWM (this process's peak RSS since exec), not ru_maxrss, which keeps the forking parent's peak.
MEMORY = """
import sys
from vlm.data.mmtrail import convert_mmtrail
convert_mmtrail(sys.argv[1], sys.argv[2], sys.argv[3], fps=2)
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")))
"""


def test_converting_a_clip_of_a_ten_minute_video_keeps_memory_flat(tmp_path):
    """The same 10 s clip cut from a 1-minute and from a 10-minute video: peak RSS within 10 % (only the
    clip's range is decoded)."""
    rss = {}
    for minutes in (1, 10):
        d = tmp_path / f"m{minutes}"
        (d / "videos").mkdir(parents=True)
        n = minutes * 60 * 5                                               # 5 fps, 64 px: seconds to encode
        frames = np.random.default_rng(0).integers(0, 255, (n, 64, 64, 3), dtype=np.uint8)
        wave = (0.1 * np.random.default_rng(1).standard_normal(minutes * 60 * SR)).astype(np.float32)
        (d / "videos" / "v.mp4").write_bytes(encode_mp4(frames, 5, Audio(wave, SR)))
        del frames, wave
        start = n // 2
        rec = {"basic": {"video_id": "v", "video_path": "v.mp4", "video_fps": 5.0, "clip_id": "c",
                         "clip_start_end_idx": [start, start + 50]}, "scene": {"caption": "noise"}}
        (d / "ann.json").write_text(json.dumps([rec]))
        out = subprocess.run([sys.executable, "-c", MEMORY, str(d / "ann.json"), str(d / "videos"), str(d / "out")],
                             cwd=C.REPO, env=C.env(), capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        rss[minutes] = int(out.stdout.split()[-1])
    assert rss[10] < 1.1 * rss[1], rss


REPEAT = """
import sys, torch
from vlm.connectors.av import AVPreprocess
pre = AVPreprocess(lambda img: torch.zeros(3, 4, 4), frames=4, music=lambda w, sr: w)
data = open(sys.argv[1], "rb").read()
def rss():
    return int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmRSS")))
for i in range(400):
    item = pre(data)
    assert item.music.shape == (int(sys.argv[2]),)
    if i == 49:
        first = rss()
print(first, rss())
"""


def test_decoding_clips_with_a_soundtrack_keeps_memory_flat(tmp_path):
    """400 decodes of a 2 s clip with music: resident memory after the last within 30 MB of that after
    the 50th (decord's AudioReader, used before, kept ~0.3 MB per clip: ~100 MB here)."""
    frames = np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    wave = (0.1 * np.random.default_rng(1).standard_normal(2 * 24000)).astype(np.float32)
    clip = tmp_path / "c.mp4"
    clip.write_bytes(encode_mp4(frames, 4, Audio(wave, 24000)))
    out = subprocess.run([sys.executable, "-c", REPEAT, str(clip), str(2 * 24000)], cwd=C.REPO, env=C.env(), check=False,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    first, last = map(int, out.stdout.split())
    assert last - first < 30 * 1024, (first, last)          # kB


def test_bad_clips_in_training_data_are_skipped_by_reason(tmp_path):
    from vlm.data.pipeline import ShardPipeline
    from vlm.data.writer import ShardWriter
    conv = [{"from": "human", "value": "<video>\nWhich shape moves?"}, {"from": "gpt", "value": "circle"}]
    with ShardWriter(tmp_path / "w", max_count=100) as w:
        w.write({"__key__": "good", "mp4": clip_mp4(), "json": {"conversations": conv}})
        w.write({"__key__": "silent", "mp4": clip_mp4(audio=False), "json": {"conversations": conv}})
        w.write({"__key__": "corrupt", "mp4": clip_mp4()[:400], "json": {"conversations": conv}})
    model = vlm.build("omni", "tiny")
    pipe = ShardPipeline(tmp_path / "w", model.processor, batch_size=4, epochs=1, shuffle_buffer=0, min_samples=100)
    keys = [k for b in pipe for k in b["sample_keys"]]
    assert keys == ["good"]
    assert pipe.stats.skipped == {"no_audio_track": 1, "bad_video": 1}


DIST = """
import sys
import torch.distributed as dist
from vlm.cli import main
dist.init_process_group("gloo")
for strategy in ("ddp", "fsdp2"):
    if main(["train", sys.argv[1], "--out", f"{sys.argv[2]}/{strategy}", f"runtime.strategy={strategy}"]):
        sys.exit(1)
dist.destroy_process_group()
"""


def test_omni_batches_mixing_clips_images_and_text_train_under_ddp_and_fsdp2(tmp_path):
    """Even samples: trailer clips (frames + music track); odd: images or text only. With no shuffle rank 0
    gets every clip and rank 1 none: both ranks still run the same modules (no hang), and the losses
    equal one process's at the same global batch."""
    from vlm.data.writer import ShardWriter
    with ShardWriter(tmp_path / "world", max_count=10**6) as w:
        for i in range(16):
            if i % 2 == 0:
                w.write({"__key__": f"s{i:04d}", "mp4": clip_mp4(beep_at=1.0), "json": {"conversations": [
                    {"from": "human", "value": "<video>\nDescribe the clip."}, {"from": "gpt", "value": "a beep"}]}})
            elif i % 4 == 1:
                w.write(C.image_sample(i))
            else:
                w.write(C.text_sample(i))
    recipe = C.write_recipe(tmp_path / "r.yaml", str(tmp_path / "world"), [
        C.stage("sft", ["media.*.projector.*"], llm="full", steps=2, lr=1e-3, eps=1e-6, max_len=256)],
        model={"family": "omni", "size": "tiny", "settings": {}}, checkpoint_every=0)
    (tmp_path / "launch.py").write_text(DIST)
    dist = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(tmp_path / "launch.py"), str(recipe), str(tmp_path)], cwd=C.REPO, env=C.env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    C.run_vlm("train", str(recipe), "--out", str(tmp_path / "single"))
    _, err = dist.communicate(timeout=600)
    assert dist.returncode == 0, err[-4000:]
    one = C.step_rows(tmp_path / "single")
    stats = C.events(tmp_path / "single", "stage_end")[0]["data"]
    assert stats["skipped"] == {}                                           # every clip, image and chat trained
    for strategy in ("ddp", "fsdp2"):
        two = C.step_rows(tmp_path / strategy)
        assert sorted(two) == [1, 2]
        for s in one:
            assert abs(one[s]["loss"] - two[s]["loss"]) < 1e-5, (strategy, s, one[s]["loss"], two[s]["loss"])


def test_chat_with_a_file_that_is_not_a_video_is_one_line(omni, tmp_path, capsys):
    """Found by a review: the omni connector decodes the clip inside the model, and its MediaError was a
    traceback from `vlm chat` (a llava-video checkpoint said it in one line)."""
    import soundfile as sf

    from vlm.cli import main
    ckpt = omni.save_pretrained(tmp_path / "omni")
    sf.write(str(tmp_path / "a.flac"), np.zeros(1600, np.float32), 16000)
    capsys.readouterr()
    assert main(["chat", str(ckpt), "<video> What?", "--video", str(tmp_path / "a.flac")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot decode video" in err[0], err
    # headers that decord reads and frames it does not (a one-frame 16x16 mpeg4): decord's traceback before
    import helpers_media as M
    M.mp4(tmp_path / "one.mp4", frames=1, size=16)
    assert main(["chat", str(ckpt), "<video> What?", "--video", str(tmp_path / "one.mp4")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot decode video" in err[0], err
