"""Targets for masked prediction of audio frames (MERT): acoustic teachers (discrete codes, one or more
codebooks per frame) and the musical teacher (a constant-Q spectrum per frame).

    cqt = CQTTarget()                                  # nnAudio: hop 320 at 24 kHz = 75 Hz, 336 bins from 32.7 Hz
    teacher = build_teacher("mel_kmeans", codebook_size=64)
    teacher.fit(waves, seed=0)                         # waves: [B, N] batches at 24 kHz (not normalised)
    codes = teacher(wave, frames, lengths)             # [B, frames, K] int64

Three acoustic teachers, chosen in the recipe (`objective_settings.teacher`):
- `mel_kmeans`: k-means units of log-mel and chroma frames fitted on the training audio (MERT-v0 /
  HuBERT's first iteration); 2 codebooks (`features` adds MFCCs, HuBERT's own, or picks others).
- `rvq`: a small residual-vector-quantised autoencoder trained first on the training audio (EnCodec's
  recipe in miniature, on log-mel frames instead of the waveform); 8 codebooks by default.
- `encodec`: a user's local EnCodec checkpoint through transformers' `EncodecModel` (MERT-v1: 24 kHz
  model at 6 kbps = 8 codebooks of 1024); nothing to fit, never downloaded.

Targets are computed on the fly from each crop (a fitted teacher is saved once per run beside the
checkpoints, `<run>/objectives/stage-i/teacher.safetensors`), so random crops and any data work
without a preprocessing pass.

Frames line up with the encoder's 75 Hz frames: both hop 320 samples, the first `frames` kept
(nnAudio / torchaudio / EnCodec give 1 + N // 320 or ceil(N / 320); the conv stack gives a few less).
"""
from __future__ import annotations

import inspect
import json
import sys
import warnings
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
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
    of its kernel memory; constant padding, so any clip length works (even one shorter than the lowest
    band's 1.4 s kernel: that band then sees mostly padding)."""

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
    """Discrete targets per frame. `codebook_sizes`: one entry per codebook. A fitted teacher keeps its
    state in `fitted_state()` (saved by the objective beside the run), so a resumed run uses the same codes.

    [Contract] `forward(wave, frames, lengths, cqt)` takes the raw waveform [B, N] at 24 kHz (not normalised;
    samples past `lengths` are padding) and returns int64 codes [B, frames, K]; it never has gradients.
    `cqt`, when the caller has it already, is `CQTTarget()(normalise(wave, lengths), frames)`: a teacher
    built on the CQT reads it instead of computing the same transform again; the others ignore it."""

    codebook_sizes: list[int]
    needs_fit: ClassVar[bool] = True
    # setting -> (its lowest value, whether that value itself is refused): checked (and read as numbers) by `typed_limits`
    limits: ClassVar[dict[str, tuple[float, bool]]] = {}

    @classmethod
    def settings_error(cls, settings: dict[str, Any]) -> str | None:
        """What is wrong with the teacher's own settings beyond `limits` (checked before anything is built)."""
        return None

    def fit(self, batches, seed: int = 0) -> None:
        """Learn the codebooks from training audio: `batches` yields [B, N] waveforms at 24 kHz."""

    def fitted_state(self) -> dict[str, Tensor]:
        return {k: v.detach().contiguous() for k, v in self.state_dict().items()}

    def load_fitted(self, state: dict[str, Tensor]) -> None:
        self.load_state_dict(state)

    def forward(self, wave: Tensor, frames: int, lengths: Tensor | None = None,
                cqt: Tensor | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError


def collect_frames(features, batches, max_frames: int) -> list[Tensor]:
    """`features(wave, frames)` -> list of [B, T, d] per batch, until `max_frames` frames; [F_k, T, d] per
    feature kind (whole clips, cut to the frame budget)."""
    per_kind: list[list[Tensor]] = []
    n = 0
    for wave in batches:
        wave = wave.float()
        frames = 1 + wave.shape[1] // HOP
        feats = features(wave, frames)
        if not per_kind:
            per_kind = [[] for _ in feats]
        for i, f in enumerate(feats):
            per_kind[i].append(f)
        n += wave.shape[0] * frames
        if n >= max_frames:
            break
    if not per_kind:
        raise UserError("the acoustic teacher has no audio to fit on (the stage's data gave no clips)")
    return [torch.cat(parts) for parts in per_kind]


class LogMel(nn.Module):
    """log(mel + 1e-5) frames [B, frames, n_mels] of the normalised clip, hop 320 at 24 kHz."""

    def __init__(self, n_mels: int = 64, n_fft: int = 1024):
        super().__init__()
        import torchaudio
        self.mel = torchaudio.transforms.MelSpectrogram(SAMPLE_RATE, n_fft=n_fft, hop_length=HOP, n_mels=n_mels)

    def forward(self, wave: Tensor, frames: int, lengths: Tensor | None = None) -> Tensor:
        return torch.log(self.mel(normalise(wave.float(), lengths))[..., :frames].transpose(1, 2) + 1e-5)


@ACOUSTIC_TEACHERS.register("mel_kmeans")
class MelKMeans(AcousticTeacher):
    """The MERT-v0 / HuBERT first-iteration teacher: k-means units of hand-made features fitted on the
    training audio, no download. One codebook per feature kind (`features`), each standardised and clustered
    by k-means: `log_mel` (n_mels log-mel bands: spectrum), `chroma` (12 log pitch classes from the CQT:
    harmony; MERT-v0's pair is these two, the default) and `mfcc` (HuBERT's first-iteration features: 13
    MFCCs of the log-mel bands with their deltas and delta-deltas, 39 values: the spectral envelope, i.e.
    timbre, with pitch largely folded out)."""

    limits: ClassVar[dict[str, tuple[float, bool]]] = {"n_mels": (1, False)}
    KINDS: ClassVar[tuple[str, ...]] = ("log_mel", "chroma", "mfcc")
    N_MFCC: ClassVar[int] = 13

    def __init__(self, codebook_size: int = 64, n_mels: int = 64, max_frames: int = 20000,
                 features: list[str] | tuple[str, ...] = ("log_mel", "chroma")):
        super().__init__()
        _check_limits(type(self), "mel_kmeans", n_mels=n_mels)
        error = self.settings_error({"features": features})
        if error:
            raise UserError(f"mel_kmeans teacher: {error}")
        self.kinds = list(features)
        self.codebook_sizes = [int(codebook_size)] * len(self.kinds)
        self.max_frames = max_frames
        self.log_mel = LogMel(n_mels)
        self.cqt = CQTTarget()
        if "mfcc" in self.kinds:
            import torchaudio
            self.register_buffer("dct", torchaudio.functional.create_dct(self.N_MFCC, n_mels, "ortho"))
        dims = {"log_mel": n_mels, "chroma": 12, "mfcc": 3 * self.N_MFCC}
        for i, kind in enumerate(self.kinds):
            self.register_buffer(f"mean{i}", torch.zeros(dims[kind]))
            self.register_buffer(f"std{i}", torch.ones(dims[kind]))
            self.register_buffer(f"centroids{i}", torch.zeros(codebook_size, dims[kind]))

    @classmethod
    def settings_error(cls, settings: dict[str, Any]) -> str | None:
        """What is wrong with a `features` setting (a non-empty list of distinct KINDS), or None."""
        if "features" not in settings:
            return None
        features = settings["features"]
        if isinstance(features, str) or not isinstance(features, (list, tuple)) or not features:
            return f"features must be a non-empty list of {list(cls.KINDS)}, got {features!r}"
        for f in features:
            if f not in cls.KINDS:
                return f"features: unknown feature kind {f!r}; known: {list(cls.KINDS)}"
        if len(set(features)) < len(features):
            return f"features: a kind is given twice in {list(features)}"
        return None

    def features(self, wave: Tensor, frames: int, lengths: Tensor | None = None,
                 cqt: Tensor | None = None) -> list[Tensor]:
        """One [B, frames, d] tensor per feature kind of the normalised clip, in `features` order (its CQT
        computed here unless given: `cqt`, [B, frames, 336] as `CQTTarget` gives it)."""
        import torchaudio
        wave = normalise(wave.float(), lengths)
        out: dict[str, Tensor] = {}
        if "log_mel" in self.kinds or "mfcc" in self.kinds:
            out["log_mel"] = self.log_mel(wave, frames)                                   # [B, T, n_mels]
        if "chroma" in self.kinds:
            spec = self.cqt(wave, frames) if cqt is None else cqt
            out["chroma"] = torch.log(self.cqt.chroma(spec) + 1e-5)                      # [B, T, 12]
        if "mfcc" in self.kinds:
            c = (out["log_mel"] @ self.dct).transpose(1, 2)                              # [B, 13, T]
            d1 = torchaudio.functional.compute_deltas(c)
            out["mfcc"] = torch.cat([c, d1, torchaudio.functional.compute_deltas(d1)], 1).transpose(1, 2)
        return [out[k] for k in self.kinds]

    def fit(self, batches, seed: int = 0) -> None:
        from sklearn.cluster import KMeans
        from sklearn.exceptions import ConvergenceWarning
        for i, x in enumerate(collect_frames(self.features, batches, self.max_frames)):
            x = x.flatten(0, 1)[: self.max_frames].double()                            # [F, d]
            k = self.codebook_sizes[i]
            if x.shape[0] < k:
                raise UserError(f"the acoustic teacher needs >= {k} frames to fit {k} units, got {x.shape[0]} (the "
                                f"objective setting teacher_frames, or the stage's audio, is too small)")
            distinct = torch.unique(x, dim=0).shape[0]
            if distinct < k:           # all-silent or all-alike audio: sklearn warned of 'distinct clusters' only
                print(f"warning: the mel_kmeans teacher's {self.kinds[i]} frames of the training audio "
                      f"take {distinct} distinct value(s) for {k} units: the clips are silent or alike, and the "
                      f"codes it predicts carry little", file=sys.stderr, flush=True)
            mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", category=ConvergenceWarning)     # said above
                km = KMeans(n_clusters=k, n_init=1, max_iter=50, random_state=seed).fit(((x - mean) / std).numpy())
            getattr(self, f"mean{i}").copy_(mean.float())
            getattr(self, f"std{i}").copy_(std.float())
            getattr(self, f"centroids{i}").copy_(torch.from_numpy(km.cluster_centers_).float())

    @torch.no_grad()
    def forward(self, wave: Tensor, frames: int, lengths: Tensor | None = None,
                cqt: Tensor | None = None) -> Tensor:
        codes = []
        for i, f in enumerate(self.features(wave, frames, lengths, cqt)):
            z = (f - getattr(self, f"mean{i}")) / getattr(self, f"std{i}")             # [B, T, d]
            codes.append(torch.cdist(z, getattr(self, f"centroids{i}")[None]).argmin(-1))   # [B, T]
        return torch.stack(codes, -1)                                                  # [B, T, K]


# ---------------------------------------------------------------------------------------------
# rvq: a small residual-vector-quantised autoencoder, trained first
# ---------------------------------------------------------------------------------------------
def nearest(x: Tensor, codebook: Tensor, chunk: int = 8192) -> Tensor:
    """Index of the nearest code (squared Euclidean) for each row of x [M, d]; codebook [K, d]. [M]
    (rows in chunks: [chunk, K] distances at a time)."""
    c2 = codebook.pow(2).sum(-1)[None]                                                  # [1, K]
    return torch.cat([(c2 - 2 * part @ codebook.T).argmin(-1) for part in x.split(chunk)]) if len(x) else \
        torch.zeros(0, dtype=torch.long, device=x.device)


class ResidualVQ(nn.Module):
    """`n` codebooks of `size` codes of `dim`: each quantises what the ones before left (SoundStream /
    EnCodec), codes updated by exponential moving averages (decay 0.99), unused codes re-seeded from
    the batch's residuals."""

    def __init__(self, n: int, size: int, dim: int, decay: float = 0.99):
        super().__init__()
        self.decay = decay
        self.dead_below = 0.0                         # EMA use under which a code is re-seeded (set by init_from)
        self.register_buffer("codebooks", torch.zeros(n, size, dim))
        self.register_buffer("ema_count", torch.ones(n, size))
        self.register_buffer("ema_sum", torch.zeros(n, size, dim))

    def codes(self, z: Tensor) -> Tensor:
        """[M, dim] -> [M, n] code indices."""
        out, residual = [], z
        for cb in self.codebooks:
            idx = nearest(residual, cb)
            residual = residual - cb[idx]
            out.append(idx)
        return torch.stack(out, -1)

    def forward(self, z: Tensor, gen: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Training: [M, dim] -> (quantised with a straight-through gradient [M, dim], commitment loss);
        updates the codebooks (EMA) when `gen` is given (it re-seeds dead codes)."""
        residual, quantised, commit = z, torch.zeros_like(z), z.new_zeros(())
        for i, cb in enumerate(self.codebooks):
            r = residual.detach()
            idx = nearest(r, cb)
            q = cb[idx]                                                                 # [M, dim]
            commit = commit + F.mse_loss(residual, q)
            quantised = quantised + q
            residual = residual - q
            if gen is not None:
                self._update(i, r, idx, gen)
        return z + (quantised - z).detach(), commit

    @torch.no_grad()
    def _update(self, i: int, r: Tensor, idx: Tensor, gen: torch.Generator) -> None:
        size = self.codebooks.shape[1]
        onehot = F.one_hot(idx, size).type_as(r)                                        # [M, K]
        self.ema_count[i].mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.ema_sum[i].mul_(self.decay).add_(onehot.T @ r, alpha=1 - self.decay)
        n = self.ema_count[i].sum()
        count = (self.ema_count[i] + 1e-5) / (n + size * 1e-5) * n                      # Laplace smoothing
        self.codebooks[i].copy_(self.ema_sum[i] / count[:, None])
        dead = (self.ema_count[i] < self.dead_below).nonzero().flatten()                # unused for a while
        if len(dead):
            pick = r[torch.randint(0, r.shape[0], (len(dead),), generator=gen)]
            self.codebooks[i, dead] = pick
            self.ema_sum[i, dead] = pick
            self.ema_count[i, dead] = 1.0

    @torch.no_grad()
    def init_from(self, z: Tensor, gen: torch.Generator, per_batch: int) -> None:
        """Codebook i from random residuals left by codebooks < i (z [M, dim]); `per_batch`: vectors per
        training batch, so the EMA counts start at a code's fair share and a code whose share falls under
        a tenth of it is re-seeded (EnCodec re-seeds below 2 of ~5 per code)."""
        residual, size = z, self.codebooks.shape[1]
        fair = per_batch / size
        self.dead_below = 0.1 * fair
        for i in range(self.codebooks.shape[0]):
            pick = residual[torch.randint(0, residual.shape[0], (size,), generator=gen)]
            self.codebooks[i].copy_(pick)
            self.ema_sum[i].copy_(pick * fair)
            self.ema_count[i].fill_(fair)
            residual = residual - self.codebooks[i][nearest(residual, self.codebooks[i])]


@ACOUSTIC_TEACHERS.register("rvq")
class RVQAutoencoder(AcousticTeacher):
    """EnCodec's recipe in miniature, trained first on the stage's audio (no download): standardised
    log-mel frames -> conv encoder (5 frames of context) -> a residual vector quantiser with `codebooks`
    codebooks of `codebook_size` codes -> conv decoder -> the log-mel frames again. Reconstruction MSE +
    0.25 x commitment, EMA codebooks, `steps` Adam steps on batches of whole clips, all drawn from `seed`
    (the same teacher on every rank and on every rerun). The codes of each frame are the targets."""

    limits: ClassVar[dict[str, tuple[float, bool]]] = {
        "codebooks": (1, False), "n_mels": (1, False), "latent": (1, False), "hidden": (1, False),
        "steps": (1, False), "batch_clips": (1, False), "lr": (0, True)}

    def __init__(self, codebook_size: int = 64, codebooks: int = 8, max_frames: int = 20000, n_mels: int = 80,
                 latent: int = 32, hidden: int = 128, steps: int = 300, batch_clips: int = 16, lr: float = 2e-3):
        super().__init__()
        _check_limits(type(self), "rvq", codebooks=codebooks, n_mels=n_mels, latent=latent, hidden=hidden,
                      steps=steps, batch_clips=batch_clips, lr=lr)
        self.codebook_sizes = [int(codebook_size)] * int(codebooks)
        self.max_frames, self.steps, self.batch_clips, self.lr = max_frames, steps, batch_clips, lr
        self.log_mel = LogMel(n_mels, n_fft=2048)                 # 11.7 Hz bins: some pitch detail below 1 kHz
        with torch.random.fork_rng(devices=[]):                  # building draws nothing from the run's RNG
            self.encoder = nn.Sequential(nn.Conv1d(n_mels, hidden, 3, padding=1), nn.GELU(),
                                         nn.Conv1d(hidden, latent, 3, padding=1))
            self.decoder = nn.Sequential(nn.Conv1d(latent, hidden, 3, padding=1), nn.GELU(),
                                         nn.Conv1d(hidden, n_mels, 3, padding=1))
        self.rvq = ResidualVQ(int(codebooks), int(codebook_size), latent)
        self.register_buffer("mean", torch.zeros(n_mels))
        self.register_buffer("std", torch.ones(n_mels))
        self.requires_grad_(False)
        self.history: list[float] = []                            # reconstruction MSE per step of the last fit

    def _encode(self, feats: Tensor) -> Tensor:
        """[B, T, n_mels] log-mel -> latent [B, T, latent]."""
        x = ((feats - self.mean) / self.std).transpose(1, 2)                         # [B, n_mels, T]
        return self.encoder(x).transpose(1, 2)

    def fit(self, batches, seed: int = 0) -> None:
        (feats,) = collect_frames(lambda w, t: [self.log_mel(w, t)], batches, self.max_frames)   # [C, T, n_mels]
        flat = feats.flatten(0, 1)
        self.mean.copy_(flat.mean(0))
        self.std.copy_(flat.std(0).clamp(min=1e-6))
        gen = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for m in (self.encoder, self.decoder):
                for layer in m:
                    if hasattr(layer, "reset_parameters"):
                        layer.reset_parameters()
        params = [*self.encoder.parameters(), *self.decoder.parameters()]
        for p in params:
            p.requires_grad_(True)
        clips = min(self.batch_clips, feats.shape[0])
        with torch.no_grad():
            self.rvq.init_from(self._encode(feats).flatten(0, 1), gen, clips * feats.shape[1])
        opt = torch.optim.Adam(params, lr=self.lr)
        target = (feats - self.mean) / self.std
        self.history = []
        try:
            for _ in range(self.steps):
                pick = torch.randint(0, feats.shape[0], (clips,), generator=gen)
                z = self._encode(feats[pick])                                          # [b, T, latent]
                q, commit = self.rvq(z.flatten(0, 1), gen)
                recon = self.decoder(q.view_as(z).transpose(1, 2)).transpose(1, 2)     # [b, T, n_mels]
                mse = F.mse_loss(recon, target[pick])
                opt.zero_grad()
                (mse + 0.25 * commit).backward()
                opt.step()
                self.history.append(float(mse.detach()))
        finally:
            self.requires_grad_(False)

    def reconstruction_error(self, wave: Tensor) -> float:
        """MSE of the standardised log-mel frames rebuilt from the codes alone (how much the codes keep)."""
        with torch.no_grad():
            frames = 1 + wave.shape[1] // HOP
            feats = self.log_mel(wave, frames)
            z = self._encode(feats)
            codes = self.rvq.codes(z.flatten(0, 1))
            q = sum(cb[codes[:, i]] for i, cb in enumerate(self.rvq.codebooks)).view_as(z)
            recon = self.decoder(q.transpose(1, 2)).transpose(1, 2)
            return float(F.mse_loss(recon, (feats - self.mean) / self.std))

    @torch.no_grad()
    def forward(self, wave: Tensor, frames: int, lengths: Tensor | None = None,
                cqt: Tensor | None = None) -> Tensor:
        z = self._encode(self.log_mel(wave, frames, lengths))                          # [B, T, latent]
        return self.rvq.codes(z.flatten(0, 1)).view(*z.shape[:2], -1)                  # [B, T, K]


# ---------------------------------------------------------------------------------------------
# encodec: a user's local EnCodec checkpoint (transformers EncodecModel)
# ---------------------------------------------------------------------------------------------
@ACOUSTIC_TEACHERS.register("encodec")
class EncodecTeacher(AcousticTeacher):
    """MERT-v1's acoustic teacher: the codes of a local EnCodec folder (transformers `EncodecModel`,
    config.json + model.safetensors, e.g. a copy of facebook/encodec_24khz) at `bandwidth` kbps (6.0:
    8 codebooks of 1024 at 75 Hz). Codes of the raw (clean) clip; other sample rates are resampled to
    the checkpoint's; frames are mapped by time when its frame rate is not 75 Hz. Nothing is fitted."""

    needs_fit = False

    def __init__(self, path: str | None = None, bandwidth: float = 6.0):
        """Reads the folder's config (and checks its weights file opens); the weights load at the first
        codes asked for, so a recipe check that builds the objective does not load the checkpoint too."""
        super().__init__()
        from transformers import EncodecConfig, EncodecModel
        folder = check_encodec_folder(path)
        try:
            cfg = EncodecConfig.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, TypeError) as e:
            raise UserError(f"encodec teacher: cannot load {folder}: {str(e).splitlines()[0][:200]}") from None
        if cfg.chunk_length_s is not None:
            raise UserError(f"encodec teacher: {folder} encodes in chunks (chunk_length_s {cfg.chunk_length_s}, "
                            f"the 48 kHz model); give the 24 kHz one")
        if bandwidth not in cfg.target_bandwidths:
            raise UserError(f"encodec teacher: bandwidth {bandwidth} is not one of {folder}'s {cfg.target_bandwidths}")
        with torch.device("meta"):                  # the architecture without weights: its quantizer's arithmetic
            n_q = EncodecModel(cfg).quantizer.get_num_quantizers_for_bandwidth(float(bandwidth))
        self.folder = folder
        # the EncodecModel, once loaded: kept out of the module tree (FSDP2 copies the task module before the first
        # codes are asked for, and the copy's state dict must be the plain module's); frozen, never saved
        self.__dict__["_encodec"] = None
        self.bandwidth = float(bandwidth)
        self.rate = int(cfg.sampling_rate)
        self.frame_rate = cfg.sampling_rate / cfg.hop_length
        self.codebook_sizes = [int(cfg.codebook_size)] * int(n_q)

    def loaded(self, device: torch.device) -> nn.Module:
        """The checkpoint's EncodecModel on `device` (read from the folder once)."""
        if self._encodec is None:
            from transformers import EncodecModel
            from transformers.utils import logging as hf_logging
            level = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()          # its load report would list every tensor; named below instead
            try:
                model, info = EncodecModel.from_pretrained(self.folder, local_files_only=True, use_safetensors=True,
                                                           output_loading_info=True, ignore_mismatched_sizes=True)
            except (OSError, ValueError, RuntimeError) as e:
                raise UserError(f"encodec teacher: cannot load {self.folder}: {str(e).splitlines()[0][:200]}") from None
            finally:
                hf_logging.set_verbosity(level)
            bad = sorted(info.get("missing_keys") or []) + [str(m[0]) for m in info.get("mismatched_keys") or []]
            if bad:               # left at their random init: the codes would be noise
                raise UserError(f"encodec teacher: {self.folder} does not hold the model's weights ({len(bad)} "
                                f"tensor(s) missing or of another shape, e.g. {bad[0]})")
            self.__dict__["_encodec"] = model.eval().requires_grad_(False)
        return self._encodec.to(device)

    def fitted_state(self) -> dict[str, Tensor]:
        return {}                                   # the checkpoint itself is the state: nothing to save

    def load_fitted(self, state: dict[str, Tensor]) -> None:
        pass

    def train(self, mode: bool = True):
        return super().train(False)                 # always inference (no dropout / weight-norm changes)

    @torch.no_grad()
    def forward(self, wave: Tensor, frames: int, lengths: Tensor | None = None,
                cqt: Tensor | None = None) -> Tensor:
        x = wave.float()
        B, N = x.shape
        if lengths is None:
            lengths = torch.full((B,), N, device=x.device)
        if self.rate != SAMPLE_RATE:
            import torchaudio.functional as AF
            x = AF.resample(x, SAMPLE_RATE, self.rate)
            lengths = (lengths.float() * self.rate / SAMPLE_RATE).ceil().long()
        valid = torch.arange(x.shape[1], device=x.device)[None] < lengths[:, None].to(x.device)   # [B, N']
        model = self.loaded(x.device)
        dtype = next(model.parameters()).dtype
        out = model.encode((x * valid)[:, None].to(dtype), valid[:, None], bandwidth=self.bandwidth)
        codes = out.audio_codes[0].transpose(1, 2)                                   # [B, T', K]
        t = torch.arange(frames, device=codes.device)
        if abs(self.frame_rate - SAMPLE_RATE / HOP) > 1e-6:                          # map 75 Hz frames by time
            t = (t.double() * self.frame_rate / (SAMPLE_RATE / HOP)).floor().long()
        return codes[:, t.clamp(max=codes.shape[1] - 1)].long()                      # [B, frames, K]


def check_encodec_folder(path: str | None) -> Path:
    """A local EnCodec folder (config.json of model_type 'encodec' + safetensors), or a one-line error."""
    if not path:
        raise UserError("encodec teacher: give the local EnCodec folder as teacher_settings.path "
                        "(checkpoints are never downloaded)")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(f"encodec teacher: not a local folder: {folder} (hub names are not downloaded)")
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"encodec teacher: {folder / 'config.json'}: {e}") from None
    if cfg.get("model_type") != "encodec":
        raise UserError(f"encodec teacher: {folder / 'config.json'} is a {cfg.get('model_type')!r} model, not encodec")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise UserError(f"encodec teacher: no .safetensors weights in {folder} (pickled .bin files are not loaded)")
    from safetensors import safe_open
    for file in weights:                            # the header and the file's length (a truncated copy) only
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types on a damaged file
            raise UserError(f"encodec teacher: corrupt weights file {file}: {str(e).splitlines()[0][:200]}") from None
    return folder


COMMON = {"codebook_size": "codebook_size", "max_frames": "teacher_frames"}   # teacher arg -> objective setting


def build_teacher(kind: str, **settings: Any) -> AcousticTeacher:
    """The teacher `kind` with the settings its constructor takes (the objective's common ones,
    codebook_size and max_frames, are passed only to teachers that have them)."""
    cls = ACOUSTIC_TEACHERS.get(kind)
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(k for k in settings if k not in params and k not in COMMON)
    if unknown:
        raise UserError(f"acoustic teacher '{kind}' has no setting {unknown[0]!r}; "
                        f"known: {sorted(p for p in params if p != 'self')}")
    try:
        typed = typed_limits(cls, {k: v for k, v in settings.items() if k in params})    # lr '1e-3' -> 0.001
    except UserError as e:
        raise UserError(f"acoustic teacher '{kind}': {e}") from None
    return cls(**typed)


def typed_limits(cls: type[AcousticTeacher], settings: dict[str, Any]) -> dict[str, Any]:
    """`settings` with each of the teacher's `limits` read as its parameter's type (an integer setting an
    integer, a float one a number: YAML's text '1e-3' too) and checked: a finite value at or above its
    lowest; a one-line UserError naming the setting otherwise."""
    from vlm.config import check_value
    params = inspect.signature(cls.__init__).parameters
    out = dict(settings)
    for key, value in settings.items():
        if key not in cls.limits:
            continue
        low, strict = cls.limits[key]
        integer = isinstance(params[key].default, int)
        what = f"{key} must be {'an integer' if integer else 'a number'} {'>' if strict else '>='} {low:g}, got {value!r}"
        try:
            value = check_value(int if integer else float, value, key)
        except UserError:
            raise UserError(what) from None
        if value < low or (strict and value == low):
            raise UserError(what)
        out[key] = value
    return out


def _check_limits(cls: type[AcousticTeacher], name: str, **settings: Any) -> None:
    try:
        typed_limits(cls, settings)
    except UserError as e:
        raise UserError(f"{name} teacher: {e}") from None


def teacher_settings_error(kind: str, settings: dict[str, Any]) -> str | None:
    """What is wrong with a teacher's settings, checked at recipe validation (no model built)."""
    if kind not in ACOUSTIC_TEACHERS:
        return None
    params = inspect.signature(ACOUSTIC_TEACHERS.get(kind).__init__).parameters
    own = sorted(p for p in params if p not in ("self", *COMMON))
    for k in settings:
        if k in COMMON:
            return f"{k} is set by objective_settings.{COMMON[k]}, not teacher_settings"
        if k not in params:
            return f"teacher '{kind}' has no setting {k!r}; known: {own}"
    try:
        typed_limits(ACOUSTIC_TEACHERS.get(kind), settings)
    except UserError as e:
        return f"teacher '{kind}': {e}"
    error = ACOUSTIC_TEACHERS.get(kind).settings_error(settings)
    if error:
        return f"teacher '{kind}': {error}"
    if kind == "encodec":
        try:
            check_encodec_folder(settings.get("path"))
        except UserError as e:
            return str(e)
    return None

