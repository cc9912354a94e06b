"""Targets for masked prediction of audio frames (MERT): acoustic teachers (discrete codes, one or more
codebooks per frame) and the musical teacher (a constant-Q spectrum per frame).

    cqt = CQTTarget()                                  # nnAudio: hop 320 at 24 kHz = 75 Hz, 336 bins from 32.7 Hz
    teacher = ACOUSTIC_TEACHERS.get("mel_kmeans")(codebook_size=64)
    teacher.fit(waves, seed=0)                         # waves: [B, N] batches at 24 kHz
    codes = teacher(wave, frames)                      # [B, frames, K] int64

Frames line up with the encoder's 75 Hz frames: both hop 320 samples, the first `frames` kept
(nnAudio / torchaudio centre their windows and give 1 + N // 320; the conv stack gives a few less).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from encoders.base import normalize_waveform as normalise
from vlm.errors import UserError
from vlm.registry import Registry

SAMPLE_RATE, HOP = 24000, 320
CQT_FMIN, CQT_BINS, CQT_PER_OCTAVE = 32.7, 336, 48          # MERT's musical teacher (C1 up, 7 octaves)

ACOUSTIC_TEACHERS: Registry[type["AcousticTeacher"]] = Registry("acoustic teacher")


class CQTTarget(nn.Module):
    """|CQT| per frame [B, frames, 336] of the normalised clip (linear magnitude, as MERT regresses it).
    nnAudio's CQT2010v2 (octave-wise downsampling): the same transform as MERT's CQT1992v2 with ~1/400
    of its kernel memory; constant padding, so any clip length works."""

    def __init__(self, sample_rate: int = SAMPLE_RATE, hop: int = HOP, fmin: float = CQT_FMIN,
                 n_bins: int = CQT_BINS, bins_per_octave: int = CQT_PER_OCTAVE):
        super().__init__()
        from nnAudio.features import CQT2010v2
        self.n_bins, self.bins_per_octave = n_bins, bins_per_octave
        self.cqt = CQT2010v2(sr=sample_rate, hop_length=hop, fmin=fmin, n_bins=n_bins, bins_per_octave=bins_per_octave,
                             pad_mode="constant", output_format="Magnitude", verbose=False)

    @torch.no_grad()
    def forward(self, wave: Tensor, frames: int) -> Tensor:
        spec = self.cqt(wave.float())                                           # [B, bins, 1 + N // hop]
        if spec.shape[-1] < frames:
            raise UserError(f"CQT gave {spec.shape[-1]} frames for {frames} encoder frames")
        return spec[..., :frames].transpose(1, 2)                               # [B, frames, bins]

    def chroma(self, spec: Tensor) -> Tensor:
        """Fold [B, T, bins] to 12 pitch classes (sum over octaves and each semitone's sub-bins). [B, T, 12]"""
        per = self.bins_per_octave // 12
        octaves = spec.shape[-1] // self.bins_per_octave
        return spec[..., :octaves * self.bins_per_octave].unflatten(-1, (octaves, 12, per)).sum((-3, -1))


class AcousticTeacher(nn.Module):
    """Discrete targets per frame. `codebook_sizes`: one entry per codebook. Fitted state lives in
    buffers (saved by the objective beside the run), so a resumed run uses the same codes."""

    codebook_sizes: list[int]

    def fit(self, batches, seed: int = 0) -> None:
        """Learn the codebooks from training audio: `batches` yields [B, N] waveforms at 24 kHz."""

    def forward(self, wave: Tensor, frames: int) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


@ACOUSTIC_TEACHERS.register("mel_kmeans")
class MelKMeans(AcousticTeacher):
    """The MERT-v0 / HuBERT first-iteration teacher: k-means units of hand-made features fitted on the
    training audio, no download. Two codebooks: log-mel frames (timbre, 64 mel bands) and chroma frames
    (harmony, 12 pitch classes from the CQT), each standardised and clustered by k-means."""

    def __init__(self, codebook_size: int = 64, n_mels: int = 64, max_frames: int = 20000):
        super().__init__()
        import torchaudio
        self.codebook_sizes = [int(codebook_size)] * 2
        self.max_frames = max_frames
        self.mel = torchaudio.transforms.MelSpectrogram(SAMPLE_RATE, n_fft=1024, hop_length=HOP, n_mels=n_mels)
        self.cqt = CQTTarget()
        dims = [n_mels, 12]
        for i, d in enumerate(dims):
            self.register_buffer(f"mean{i}", torch.zeros(d))
            self.register_buffer(f"std{i}", torch.ones(d))
            self.register_buffer(f"centroids{i}", torch.zeros(codebook_size, d))

    def features(self, wave: Tensor, frames: int) -> list[Tensor]:
        """[B, frames, 64] log-mel and [B, frames, 12] log-chroma of the normalised clip."""
        wave = normalise(wave.float())
        mel = torch.log(self.mel(wave)[..., :frames].transpose(1, 2) + 1e-5)           # [B, T, n_mels]
        chroma = torch.log(self.cqt.chroma(self.cqt(wave, frames)) + 1e-5)              # [B, T, 12]
        return [mel, chroma]

    def fit(self, batches, seed: int = 0) -> None:
        from sklearn.cluster import KMeans
        rows: list[list[Tensor]] = [[], []]
        n = 0
        for wave in batches:
            frames = 1 + wave.shape[1] // HOP
            for i, f in enumerate(self.features(wave, frames)):
                rows[i].append(f.flatten(0, 1))
            n += wave.shape[0] * frames
            if n >= self.max_frames:
                break
        if not rows[0]:
            raise UserError("the acoustic teacher has no audio to fit on (the stage's data gave no clips)")
        for i, parts in enumerate(rows):
            x = torch.cat(parts)[: self.max_frames].double()                          # [F, d]
            k = self.codebook_sizes[i]
            if x.shape[0] < k:
                raise UserError(f"the acoustic teacher needs >= {k} frames to fit {k} units, got {x.shape[0]}")
            mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
            km = KMeans(n_clusters=k, n_init=1, max_iter=50, random_state=seed).fit(((x - mean) / std).numpy())
            getattr(self, f"mean{i}").copy_(mean.float())
            getattr(self, f"std{i}").copy_(std.float())
            getattr(self, f"centroids{i}").copy_(torch.from_numpy(km.cluster_centers_).float())

    @torch.no_grad()
    def forward(self, wave: Tensor, frames: int) -> Tensor:
        codes = []
        for i, f in enumerate(self.features(wave, frames)):
            z = (f - getattr(self, f"mean{i}")) / getattr(self, f"std{i}")             # [B, T, d]
            codes.append(torch.cdist(z, getattr(self, f"centroids{i}")[None]).argmin(-1))   # [B, T]
        return torch.stack(codes, -1)                                                  # [B, T, 2]


def build_teacher(kind: str, **settings: Any) -> AcousticTeacher:
    try:
        return ACOUSTIC_TEACHERS.get(kind)(**settings)
    except TypeError as e:
        raise UserError(f"acoustic teacher '{kind}': {e}") from None
