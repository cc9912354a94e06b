"""masked_prediction: HuBERT / MERT self-supervised learning on audio clips. Spans of frames are
masked (a learned mask embedding replaces them), and the model predicts, at the masked frames, each
codebook of an acoustic teacher (cross-entropies summed over codebooks) and a musical teacher's
constant-Q spectrum (MSE). Optionally the input is mixed with segments of other clips of the batch
while the targets stay those of the clean clip (MERT's in-batch noise mixture).

    stages: [{name: pretrain, objective: masked_prediction,
              objective_settings: {teacher: mel_kmeans, codebook_size: 64, mask_prob: 0.8, mask_span: 5}}]
    objective_settings: {teacher: rvq, codebook_size: 1024, teacher_settings: {codebooks: 8, steps: 2000}}
    objective_settings: {teacher: encodec, teacher_settings: {path: /models/encodec_24khz, bandwidth: 6.0}}

The acoustic teacher (`vlm.train.objectives.teachers`) is fitted in `prepare` on the stage's audio
(mel_kmeans, rvq; nothing to fit for encodec) and saved under <run>/objectives/stage-i/; its codes and
the CQT are computed on the fly from each clean crop.

Masking as fairseq's `compute_mask_indices` (static spans): per clip, int(mask_prob * T / span + u)
span starts (u ~ U[0, 1), at least `min_masks`) drawn without replacement, each covering `mask_span`
frames; overlaps merge, so about 55 % of frames are masked at 0.8 / 5. Every random draw (mask,
mixture) comes from the sample's own seed (`sample_seeds`), so any split into ranks draws the same masks.
The mixture's segments come from the other clips of each rank's batch, as MERT's do: with `noise_prob` > 0,
N ranks mix other partners than one process, and grad_accum (which would change them within one run) and a
rank's batch of one clip (which has none) are refused.

The model provides: `frames(n_samples)`, `forward(audio, audio_lengths, mask) -> hidden [B, T, H]`,
`codebook_logits(hidden) -> [per codebook [N, V_k]]`, `regression(hidden) -> [N, R]` and
`codebook_sizes` (the mert family's MertModel).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlm.atomic import write_file
from vlm.data.formats import CLIP_SECONDS, MIN_CLIP_SECONDS
from vlm.errors import UserError
from vlm.train.objectives.base import OBJECTIVES, Objective, ObjectiveOutput
from vlm.train.objectives.teachers import (
    ACOUSTIC_TEACHERS,
    HOP,
    SAMPLE_RATE,
    CQTTarget,
    build_teacher,
    normalise,
    teacher_settings_error,
)

TEACHER_FILE = "teacher.safetensors"
MAX_CLIP_SECONDS = 120.0                   # the longest crop a recipe may ask for (`check` says why)


@dataclass
class MaskedPredictionSettings:
    mask_prob: float = 0.8                 # span starts per frame x span (MERT / HuBERT: 0.8)
    mask_span: int = 5                     # frames per span (MERT: 5)
    min_masks: int = 2
    teacher: str = "mel_kmeans"            # the acoustic teacher: mel_kmeans | rvq | encodec (teachers.py)
    codebook_size: int = 64                # units per codebook of a fitted teacher (encodec: its checkpoint's)
    teacher_frames: int = 20000            # frames of training audio the teacher is fitted on
    teacher_settings: dict[str, Any] = field(default_factory=dict)   # the teacher's own (rvq: codebooks, steps; encodec: path)
    regression: bool = True                # the musical teacher: the CQT of the masked frames
    cqt_log: bool = True                   # regress log(1 + |CQT|); false: the linear magnitude, as MERT does
    codebook_weight: float = 1.0
    regression_weight: float = 1.0
    noise_prob: float = 0.0                # in-batch noise mixture per clip (MERT: 0.5)
    noise_segments: list[int] = field(default_factory=lambda: [1, 3])        # segments per mixed clip
    noise_seconds: list[float] = field(default_factory=lambda: [0.5, 1.0])   # length of a segment
    noise_snr_db: list[float] = field(default_factory=lambda: [0.0, 10.0])   # clip-to-segment power ratio
    clip_seconds: float = CLIP_SECONDS     # crop length (MERT: 5 s)
    target_cache_mb: float = 0.0           # > 0: keep each crop's targets in memory (clips seen again are free)
    min_seconds: float = MIN_CLIP_SECONDS  # shorter clips are skipped (the CQT's lowest band needs ~1.4 s)

    def check(self, where: str) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise UserError(f"recipe field '{where}.{name}': {what}")
        need(0 < self.mask_prob <= 1, "mask_prob", f"must be in (0, 1], got {self.mask_prob}")
        need(self.mask_span >= 1, "mask_span", f"must be >= 1, got {self.mask_span}")
        need(self.min_masks >= 0, "min_masks", f"must be >= 0, got {self.min_masks}")
        need(self.teacher_frames >= 1, "teacher_frames", f"must be >= 1, got {self.teacher_frames}")
        for name in ("codebook_weight", "regression_weight"):
            need(getattr(self, name) >= 0, name, f"must be >= 0 (a negative weight trains the error up), "
                                                 f"got {getattr(self, name)}")
        need(self.codebook_weight > 0 or (self.regression and self.regression_weight > 0), "codebook_weight",
             "0 with no CQT term (regression off or regression_weight 0): the loss has nothing to learn")
        need(self.teacher in ACOUSTIC_TEACHERS, "teacher",
             f"unknown acoustic teacher '{self.teacher}'; known: {', '.join(ACOUSTIC_TEACHERS.names())}")
        need(self.codebook_size >= 2, "codebook_size", f"must be >= 2, got {self.codebook_size}")
        problem = teacher_settings_error(self.teacher, self.teacher_settings)
        need(problem is None, "teacher_settings", str(problem))
        need(0 <= self.noise_prob <= 1, "noise_prob", f"must be in [0, 1], got {self.noise_prob}")
        for name in ("noise_segments", "noise_seconds", "noise_snr_db"):
            v = getattr(self, name)
            need(len(v) == 2 and v[0] <= v[1], name, f"a [low, high] range, got {v}")
        need(self.noise_segments[0] >= 1 and self.noise_seconds[0] > 0, "noise_segments", "segments >= 1, seconds > 0")
        need(0 < self.min_seconds <= self.clip_seconds, "min_seconds", "must be in (0, clip_seconds]")
        # every clip of a batch is padded to the crop, and attention grows with the square of its 75 Hz frames: a
        # crop of 100000 s was killed for memory without a word (a review); MERT crops 5 s, MARBLE's longest 30 s
        need(self.clip_seconds <= MAX_CLIP_SECONDS, "clip_seconds",
             f"at most {MAX_CLIP_SECONDS:g} s (MERT crops 5 s; a batch is padded to the crop and attention grows with "
             f"the square of its {int(MAX_CLIP_SECONDS * SAMPLE_RATE / HOP)} frames), got {self.clip_seconds}")
        shortest = max(1024 / SAMPLE_RATE, (self.mask_span + 1) * HOP / SAMPLE_RATE)   # a mel window; a span + 1 frame
        need(self.min_seconds >= shortest, "min_seconds",
             f"must be >= {shortest:.3f} s (the log-mel's 1024-sample window and one mask span of "
             f"{self.mask_span} frames fit in it), got {self.min_seconds}")
        need(self.target_cache_mb >= 0, "target_cache_mb", f"must be >= 0, got {self.target_cache_mb}")


def span_mask(frames: int, valid: int, prob: float, span: int, min_masks: int, gen: torch.Generator) -> Tensor:
    """One clip's mask [frames] over its first `valid` frames (fairseq's static spans)."""
    mask = torch.zeros(frames, dtype=torch.bool)
    room = valid - span + 1
    if room <= 0:
        return mask
    n = int(prob * valid / span + torch.rand((), generator=gen).item())
    n = min(max(n, min_masks), room)
    for s in torch.randperm(room, generator=gen)[:n].tolist():
        mask[s:s + span] = True
    return mask


def mix_noise(wave: Tensor, lengths: Tensor, gens: list[torch.Generator], s: MaskedPredictionSettings,
              sample_rate: int) -> Tensor:
    """In-batch noise mixture: with probability noise_prob, add 1-3 segments (0.5-1 s) of other clips of
    the batch at a random SNR. The clean clips are left as they are (the targets come from them). A clip too
    loud for float32 powers is scaled down first (`scale_loud`: the encoder normalises each clip anyway)."""
    from encoders.base import scale_loud
    wave = scale_loud(wave, torch.arange(wave.shape[1])[None] < lengths[:, None])
    out = wave.clone()
    B = wave.shape[0]
    if B < 2:
        return out
    for i, g in enumerate(gens):
        if torch.rand((), generator=g).item() >= s.noise_prob:
            continue
        n_i = int(lengths[i])
        clean_power = wave[i, :n_i].pow(2).mean().clamp(min=1e-10)
        for _ in range(int(torch.randint(s.noise_segments[0], s.noise_segments[1] + 1, (), generator=g))):
            j = int(torch.randint(0, B - 1, (), generator=g))
            j += j >= i                                                         # another clip
            n_j = int(lengths[j])
            seconds = s.noise_seconds[0] + (s.noise_seconds[1] - s.noise_seconds[0]) * torch.rand((), generator=g).item()
            L = min(int(seconds * sample_rate), n_i, n_j)
            if L <= 0:
                continue
            src = int(torch.randint(0, n_j - L + 1, (), generator=g))
            dst = int(torch.randint(0, n_i - L + 1, (), generator=g))
            seg = wave[j, src:src + L]
            snr = s.noise_snr_db[0] + (s.noise_snr_db[1] - s.noise_snr_db[0]) * torch.rand((), generator=g).item()
            gain = torch.sqrt(clean_power / seg.pow(2).mean().clamp(min=1e-10) / 10 ** (snr / 10))
            out[i, dst:dst + L] += gain * seg
    return out


class TargetCache:
    """Targets of clips seen before, in memory (CPU), least recently used out first past `capacity` bytes.
    Keyed by a digest of the clip's real samples, its padded length and the frame count."""

    def __init__(self, capacity: int):
        from collections import OrderedDict
        self.capacity, self.used = capacity, 0
        self.items: OrderedDict[str, tuple[Tensor, Tensor | None]] = OrderedDict()

    @staticmethod
    def key(wave: Tensor, length: int, frames: int) -> str:
        import hashlib
        data = wave[:length].detach().float().cpu().contiguous().numpy().tobytes()
        return f"{hashlib.blake2b(data, digest_size=16).hexdigest()}:{wave.shape[-1]}:{length}:{frames}"

    def get(self, key: str) -> tuple[Tensor, Tensor | None] | None:
        hit = self.items.get(key)
        if hit is not None:
            self.items.move_to_end(key)
        return hit

    def put(self, key: str, value: tuple[Tensor, Tensor | None]) -> None:
        value = tuple(v.cpu() if v is not None else None for v in value)          # type: ignore[assignment]
        size = sum(v.numel() * v.element_size() for v in value if v is not None)
        if size > self.capacity:
            return
        self.items[key] = value
        self.used += size
        while self.used > self.capacity:
            _, old = self.items.popitem(last=False)
            self.used -= sum(v.numel() * v.element_size() for v in old if v is not None)


@OBJECTIVES.register("masked_prediction")
class MaskedPrediction(Objective):
    """Masked audio frames: per-codebook cross-entropy + CQT regression (MERT / HuBERT)."""

    Settings = MaskedPredictionSettings
    data_format = "clips"
    count_name = "masked_frames"

    @classmethod
    def check_stage(cls, settings: MaskedPredictionSettings, stage, world_size: int, where: str) -> None:
        """The noise mixture draws its segments from the micro-batch: grad_accum made another update than the
        same batch in one pass (a review), and a rank's batch of one clip silently mixed nothing."""
        if settings.noise_prob <= 0:
            return
        if stage.grad_accum > 1:
            raise UserError(f"recipe field '{where}.grad_accum': {stage.grad_accum}, but the noise mixture "
                            f"(objective_settings.noise_prob {settings.noise_prob}) mixes clips of the micro-batch: "
                            "keep grad_accum 1, or set noise_prob 0")
        if stage.batch_size // world_size < 2:
            raise UserError(f"recipe field '{where}.batch_size': {stage.batch_size} leaves each of {world_size} "
                            "rank(s) one clip, which the noise mixture has no other clip to mix with: use batch_size "
                            ">= 2 per rank, or noise_prob 0")

    @classmethod
    def smoke_settings(cls, raw):
        """The teacher fits on a little audio in a few steps (its kind and code sizes as given)."""
        raw = dict(raw)
        raw["teacher_frames"] = min(int(raw.get("teacher_frames", MaskedPredictionSettings.teacher_frames)), 2000)
        ts = dict(raw.get("teacher_settings") or {})
        if raw.get("teacher", MaskedPredictionSettings.teacher) == "rvq":
            ts["steps"] = min(int(ts.get("steps", 10)), 10)              # (the teacher's defaults are larger)
            ts["batch_clips"] = min(int(ts.get("batch_clips", 4)), 4)
        raw["teacher_settings"] = ts
        return raw

    def __init__(self, settings=None):
        super().__init__(settings)
        s = self.settings
        self.teacher = build_teacher(s.teacher, codebook_size=s.codebook_size, max_frames=s.teacher_frames,
                                     **s.teacher_settings)
        self.cqt = CQTTarget() if s.regression else None
        self.cache = TargetCache(int(s.target_cache_mb * 2**20))

    def format_settings(self) -> dict:
        return {"modality": "music", "clip_seconds": self.settings.clip_seconds, "min_seconds": self.settings.min_seconds}

    def check_model(self, model: nn.Module) -> None:
        for need in ("codebook_logits", "regression", "frames"):
            if not hasattr(model, need):
                raise UserError(f"objective 'masked_prediction' needs a masked-prediction model (the mert family); "
                                f"{type(model).__name__} has no {need}()")
        if list(model.codebook_sizes) != list(self.teacher.codebook_sizes):
            raise UserError(f"the model predicts codebooks of sizes {list(model.codebook_sizes)} but teacher "
                            f"'{self.settings.teacher}' gives {list(self.teacher.codebook_sizes)} (set the model's "
                            f"`codebooks` to match)")
        if self.cqt is not None and model.regression_dim != self.cqt.n_bins:
            raise UserError(f"the model regresses {model.regression_dim} values per frame, the CQT teacher "
                            f"gives {self.cqt.n_bins}")

    def prepare(self, model: nn.Module, batches, state_dir) -> None:
        """Fit the acoustic teacher on the stage's audio once; a resumed run reads it back (a file that does not
        read is fitted again, from the same audio and seed). Every rank fits the same teacher (same data, same
        seed) and writes the same bytes (each through its own temp file)."""

        from safetensors.torch import load_file, save_file
        if not self.teacher.needs_fit:
            return
        path = Path(state_dir) / TEACHER_FILE
        if path.exists():
            from safetensors import SafetensorError

            from vlm.model import load_error_line
            try:
                state = load_file(str(path))
            except (SafetensorError, OSError) as e:      # damaged: fitted again, as it was the first time (the
                print(f"warning: {path}: the fitted teacher does not read ({load_error_line(e)[:200]}); fitting it "
                      f"again from the stage's audio", file=sys.stderr, flush=True)     # same audio and seed)
            else:
                try:
                    self.teacher.load_fitted(state)
                    return
                except RuntimeError as e:                # another teacher's tensors: the settings changed since
                    raise UserError(f"{path}: a teacher of other settings ({load_error_line(e)[:200]}); the run's "
                                    f"heads learned its targets: resume with the settings it began with") from None
        self.teacher.fit((b["audio"] for b in batches()), seed=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = self.teacher.fitted_state()
        write_file(path, lambda tmp: save_file(state, str(tmp)))

    def targets(self, wave: Tensor, lengths: Tensor, frames: int) -> tuple[Tensor, Tensor | None]:
        """The teacher's codes [B, T, K] and the CQT [B, T, R] (None without the musical teacher) of the
        clean clips. With the cache on, each clip's targets are computed alone (so they are the same bits
        whatever batch it comes in) and kept, keyed by its samples."""
        def compute(w: Tensor, n: Tensor) -> tuple[Tensor, Tensor | None]:
            spec = self.cqt(normalise(w, n), frames) if self.cqt is not None else None  # [b, T, R]
            return self.teacher(w, frames, n, cqt=spec), spec       # codes [b, T, K]; one CQT serves both
        if not self.cache.capacity:
            return compute(wave, lengths)
        out = []
        for i in range(wave.shape[0]):
            key = self.cache.key(wave[i], int(lengths[i]), frames)
            hit = self.cache.get(key)
            if hit is None:
                hit = compute(wave[i:i + 1], lengths[i:i + 1])
                self.cache.put(key, hit)
            out.append(hit)
        codes = torch.cat([c for c, _ in out]).to(wave.device)
        return codes, (torch.cat([sp for _, sp in out]).to(wave.device) if self.cqt is not None else None)

    def forward(self, model: nn.Module, batch: dict) -> ObjectiveOutput:
        s = self.settings
        wave, lengths = batch["audio"].float(), batch["audio_lengths"]                 # [B, N], [B]
        B, N = wave.shape
        T = model.frames(N)
        valid = torch.tensor([model.frames(int(n)) for n in lengths.tolist()])          # [B]
        seeds = batch["sample_seeds"].tolist()
        masks = [span_mask(T, int(v), s.mask_prob, s.mask_span, s.min_masks, torch.Generator().manual_seed(sd))
                 for v, sd in zip(valid, seeds)]
        mask = torch.stack(masks).to(wave.device)                                       # [B, T]
        codes, spec = self.targets(wave, lengths, T)                                    # of the clean clips
        x = wave
        if s.noise_prob > 0:
            gens = [torch.Generator().manual_seed(sd + 1) for sd in seeds]
            x = mix_noise(wave.cpu(), lengths.cpu(), gens, s, model.sample_rate).to(wave.device)
        hidden = model(x, lengths, mask)                                                # [B, T, H]
        h = hidden[mask]                                                                # [M, H]
        target = codes[mask]                                                            # [M, K]
        ce = [F.cross_entropy(lg.float(), target[:, k], reduction="none")
              for k, lg in enumerate(model.codebook_logits(h))]                         # K x [M]
        ce_sum = torch.stack(ce).sum(0)                                                 # [M]: summed over codebooks
        loss = s.codebook_weight * ce_sum.sum()
        metrics = {"codebook_ce": float(ce_sum.detach().sum())}
        if spec is not None:
            spec = spec[mask]                                                           # [M, R]
            if s.cqt_log:        # the few peak bins of a linear spectrum would dominate the MSE of a small model
                spec = torch.log1p(spec)
            mse = (model.regression(h).float() - spec).pow(2).mean(-1)                  # [M]
            loss = loss + s.regression_weight * mse.sum()
            metrics["cqt_mse"] = float(mse.detach().sum())
        return ObjectiveOutput(loss, int(mask.sum()), int(valid.sum()), metrics)

