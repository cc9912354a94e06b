"""The audio-visual media tokenizer (`av`, the omni family): one clip's frames through the vision
encoder and its soundtrack through the music and / or audio encoders, the tokens interleaved in time.

    tok = build_media({"type": "av", "encoder": "image", "music": "music", "audio": "audio", "frames": 8,
                       "frame_pool": 2}, "video", model_encoders, d_lm)

A clip is cut into `F` equal windows (F = min(frames, the clip's frame count)); frame i is the centre
frame of window i, as LLaVA-NeXT-Video samples frames uniformly. Its tokens are, per window: the frame's
patch tokens (average-pooled by `frame_pool`, as LLaVA-NeXT-Video pools each frame), then the music
tokens whose time falls in that window, then the audio tokens of that window. So a sound at time t sits
next to the frame shown at time t. `mute` drops a stream (an ablation: what the model knows without it).

[Contract] the preprocessed item is an `AVItem` (frames, the encoders' inputs, duration); its `shape`
is what the token count reads, so data workers count tokens without the model.
"""
from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from encoders.base import GridTokens, TokenCount, pool_grid
from vlm.connectors.base import MEDIA, MediaContext, MediaTokenizer, TimePooled, build_projector
from vlm.connectors.projector import default_pool
from vlm.errors import require
from vlm.modalities import MediaError, audio_track

STREAMS = ("music", "audio")
BLANK_FPS = 4.0                     # decoded frames given without a clip: their assumed frame rate
# the longest clip read: its soundtrack is decoded whole (trailer clips are seconds long; a 2-frame file that
# declares 0.001 fps spans 2,000 s: 87,000 tokens and 2.5 GB before the context check refused it)
MAX_CLIP_SECONDS = 600.0


@dataclass
class AVItem:
    frames: Tensor                  # [F, 3, H, W] through the vision preprocess
    music: Tensor | None            # the music encoder's input ([N] waveform), None: no music stream
    audio: Tensor | None            # the audio encoder's input (e.g. [n_mels, T] log-mel), None: no audio stream
    duration: float                 # seconds the frames and the soundtrack span

    def to(self, device) -> "AVItem":
        move = (lambda t: None if t is None else t.to(device))
        return AVItem(self.frames.to(device), move(self.music), move(self.audio), self.duration)

    @property
    def shape(self) -> tuple[int, ...]:
        """(F, C, H, W, music length, audio frames): all the token count needs."""
        return (*self.frames.shape, 0 if self.music is None else self.music.shape[-1],
                0 if self.audio is None else self.audio.shape[-1])


class AVPreprocess:
    """mp4 bytes / path -> AVItem: `frames` frames sampled uniformly (decord), the soundtrack decoded once
    (PyAV, mono, at `sample_rate`: `vlm.modalities.audio_track`) and fed to each stream's own preprocess. A clip without
    an audio track, when a stream needs one, is a MediaError (reason `no_audio_track`). Picklable."""

    def __init__(self, image: Any, frames: int, music: Any = None, audio: Any = None, sample_rate: int = 24000):
        self.image, self.frames, self.music, self.audio = image, int(frames), music, audio
        self.sample_rate = int(sample_rate)

    def _frames(self, decoded: list) -> Tensor:
        return torch.stack([self.image(f) for f in decoded])                            # [F, 3, H, W]

    def __call__(self, raw: Any) -> AVItem:
        from PIL import Image
        if isinstance(raw, (list, tuple)):                                   # decoded frames: a silent clip
            frames = list(raw)
            n = max(1, min(self.frames, len(frames)))
            picked = [frames[min(len(frames) - 1, int(len(frames) / n * (i + 0.5)))] for i in range(n)]
            duration = len(frames) / BLANK_FPS
            wave = torch.zeros(int(duration * self.sample_rate))
            return self._item(self._frames(picked), wave, self.sample_rate, duration)
        import decord
        src = io.BytesIO(bytes(raw)) if isinstance(raw, (bytes, bytearray)) else str(raw)
        try:
            vr = decord.VideoReader(src, ctx=decord.cpu(0), num_threads=1)
        except Exception as e:   # decord raises its own DECORDError
            raise MediaError(f"cannot decode video: {str(e).splitlines()[0][:200]}") from None
        total = len(vr)
        if total == 0:
            raise MediaError("video has no frames")
        try:                     # headers that read and frames that do not: decord's error, not a traceback
            duration = total / max(vr.get_avg_fps(), 1e-6)
            if duration > MAX_CLIP_SECONDS:
                raise MediaError(f"the clip spans {duration:.0f} s ({total} frames at {vr.get_avg_fps():.3g} fps); "
                                 f"clips of up to {MAX_CLIP_SECONDS:.0f} s are read: cut it first", reason="too_long")
            n = min(self.frames, total)
            idx = [min(total - 1, int(total / n * (i + 0.5))) for i in range(n)]
            decoded = vr.get_batch(idx).asnumpy()
        except MediaError:
            raise
        except Exception as e:   # noqa: BLE001  (DECORDError)
            raise MediaError(f"cannot decode video frames: {str(e).splitlines()[0][:200]}") from None
        frames = self._frames([Image.fromarray(f) for f in decoded])
        del vr
        wave = None
        if self.music is not None or self.audio is not None:
            wave = torch.from_numpy(self._soundtrack(src, duration))                    # [N] mono, spans the frames
        return self._item(frames, wave, self.sample_rate, duration)

    def _soundtrack(self, src: Any, duration: float):
        import av
        if isinstance(src, io.BytesIO):
            src.seek(0)
        try:
            with av.open(src) as container:
                if not container.streams.audio:
                    raise MediaError("the clip has no audio track (the model takes its music / sound)",
                                     reason="no_audio_track")
                return audio_track(container, self.sample_rate, 0.0, duration)
        except av.FFmpegError as e:
            raise MediaError(f"cannot decode the audio track: {str(e).splitlines()[0][:200]}") from None

    def _item(self, frames: Tensor, wave: Tensor | None, sr: int, duration: float) -> AVItem:
        def feed(pre):
            return None if pre is None or wave is None else pre(wave, sr)
        return AVItem(frames, feed(self.music), feed(self.audio), duration)


@dataclass(frozen=True)
class AVTokens(TokenCount):
    """Frames x pooled patch tokens + the pooled music and audio tokens, from the item's shape."""
    frame: GridTokens
    music: TokenCount | None = None
    audio: TokenCount | None = None

    def count(self, shape: tuple[int, ...]) -> int:
        f, c, h, w, n_music, n_audio = shape
        n = f * self.frame.count((c, h, w))
        if self.music is not None and n_music:
            n += self.music.count((n_music,))
        if self.audio is not None and n_audio:
            n += self.audio.count((1, n_audio))
        return n


def window_of(n_tokens: int, seconds_per_token: float, duration: float, windows: int) -> Tensor:
    """The window (0..windows-1) each of a stream's tokens falls in, by the time of its centre. [n_tokens]"""
    centres = (torch.arange(n_tokens, dtype=torch.float64) + 0.5) * seconds_per_token
    return (centres * windows / max(duration, 1e-9)).floor().clamp(0, windows - 1).long()


@MEDIA.register("av")
class AVTokenizer(MediaTokenizer):
    """A clip's frames and soundtrack (music / audio encoders), tokens interleaved in time (omni)."""

    SLOTS = ("encoder", "music", "audio")

    def __init__(self, modality: str, encoder: nn.Module, d_lm: int, projector: str = "mlp2x_gelu",
                 frames: int = 8, frame_pool: int = 1, music: nn.Module | None = None, audio: nn.Module | None = None,
                 music_pool: int | None = None, audio_pool: int | None = None, mute: list[str] | None = None):
        """encoder: the vision (image) encoder, used per frame; music / audio: the encoders the soundtrack
        goes through (either may be None); pools: tokens per run of encoder frames (None: the modality
        table's tokens per second)."""
        require(getattr(encoder, "modality", "image") == "image", "the av connector's encoder is an image encoder")
        super().__init__(modality, encoder)
        self.set_mute(mute)
        self.frames, self.frame_pool, self.projector_kind = int(frames), int(frame_pool), projector
        require(self.frames >= 1 and self.frame_pool >= 1, "av connector: frames and frame_pool must be >= 1")
        self.__dict__["streams"] = {k: e for k, e in (("music", music), ("audio", audio)) if e is not None}  # the model's
        self.pools = {k: int(p) if p is not None else default_pool(k, self.streams[k])
                      for k, p in (("music", music_pool), ("audio", audio_pool)) if k in self.streams}
        for k, p in self.pools.items():
            require(p >= 1, f"av connector: {k}_pool must be >= 1 (encoder frames per LLM token), got {p}")
        self.projector = nn.ModuleDict({"vision": build_projector(projector, encoder.output_dim, d_lm)})
        for k, e in self.streams.items():
            self.projector[k] = build_projector(projector, e.output_dim, d_lm)
        self._preprocess: AVPreprocess | None = None

    def set_mute(self, mute: list[str] | None) -> None:
        """Leave these soundtrack streams out of every clip's tokens (saved with the model's config; a
        processor built before keeps the old token counts: save and load, or build it again)."""
        mute = sorted(set([mute] if isinstance(mute, str) else mute or []))       # (a name alone was split in letters)
        require(set(mute) <= set(STREAMS), f"av connector: mute takes {list(STREAMS)}, got {mute}")
        self.mute = mute
        self.__dict__["_preprocess"] = None

    def settings(self) -> dict[str, Any]:
        return {"type": "av", **self.slot_settings(), "projector": self.projector_kind, "frames": self.frames,
                "frame_pool": self.frame_pool,
                "music_pool": self.pools.get("music"), "audio_pool": self.pools.get("audio"), "mute": list(self.mute)}

    def fsdp_units(self) -> list[tuple[nn.Module, tuple[str, ...]]]:
        return [(self.encoder, ("encode",))] + [(e, ("encode",)) for e in self.streams.values()]

    def bind(self, slot: str, encoder: nn.Module) -> None:
        if slot in STREAMS:
            self.streams[slot] = encoder
            self._preprocess = None
        else:
            super().bind(slot, encoder)

    def live(self, stream: str) -> bool:
        return stream in self.streams and stream not in self.mute

    @property
    def preprocess(self) -> AVPreprocess:
        if self._preprocess is None:
            pre = {k: self.streams[k].preprocess if self.live(k) else None for k in STREAMS}
            rates = {getattr(p, "sample_rate", None) for p in pre.values() if p is not None}
            self._preprocess = AVPreprocess(self.encoder.preprocess, self.frames, pre["music"], pre["audio"],
                                            max(rates) if rates else 24000)
        return self._preprocess

    def token_count(self) -> AVTokens:
        frame = self.encoder.token_count()
        require(isinstance(frame, GridTokens) or self.frame_pool == 1,
                f"frame_pool needs a patch grid; image encoder {getattr(self.encoder, 'name', '?')!r} has none")
        if isinstance(frame, GridTokens):
            frame = dataclasses.replace(frame, pool=self.frame_pool)
        streams = {k: TimePooled(self.streams[k].token_count(), self.pools[k]) if self.live(k) else None
                   for k in STREAMS}
        return AVTokens(frame, streams["music"], streams["audio"])

    def _seconds_per_token(self, stream: str) -> float:
        return self.pools[stream] / self.streams[stream].frame_rate

    def _pool(self, x: Tensor, k: int) -> Tensor:                  # [T, D] -> [ceil(T/k), D]
        if k == 1:
            return x
        return torch.nn.functional.avg_pool1d(x.T[None], k, k, ceil_mode=True)[0].T

    def forward(self, items: list[AVItem], context: MediaContext | None = None) -> list[Tensor]:
        frames = torch.cat([it.frames for it in items])                                        # [sum F, 3, H, W]
        feats = torch.stack(self.encoder.encode(list(frames)))                                 # [sum F, T, D_v]
        grid = self.encoder.patch_grid(frames[0])
        if self.frame_pool > 1:
            feats = pool_grid(feats, grid, getattr(self.encoder, "num_prefix_tokens", 0), self.frame_pool)
        visual = self.projector["vision"](feats).split([it.frames.shape[0] for it in items])   # N x [F, t, D]
        out = []
        for it, vis in zip(items, visual):
            F = vis.shape[0]
            per_window: list[list[Tensor]] = [[vis[i]] for i in range(F)]
            for k, x in (("music", it.music), ("audio", it.audio)):
                if x is None or not self.live(k):
                    continue
                tok = self.projector[k](self._pool(self.streams[k].encode([x])[0], self.pools[k]))   # [T_k, D]
                win = window_of(tok.shape[0], self._seconds_per_token(k), it.duration, F)
                for i in range(F):
                    per_window[i].append(tok[win == i])
            out.append(torch.cat([t for w in per_window for t in w]))                           # [tokens, D]
        return out

