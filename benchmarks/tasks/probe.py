"""Audio and music probes in the MARBLE manner: the encoder stays frozen; per layer its features are
averaged over time; a probe learns a softmax weighting of the layers and a small MLP head on the
weighted sum, trained on the benchmark's train split, scored (accuracy) on the split evaluated (test, or
`--split val`; never the train split itself). As MARBLE reports single layers too, one probe per layer is
fitted as well: the per-layer table.

    vlm eval --suite music-probes --model runs/mert-tiny/final --out runs/probes     # prints the table
    vlm eval --bench audio-folder:/data/my-instruments --model runs/mert-tiny/final --out runs/probes

Labels are the samples' answers (synthetic-world: pitch, chord, instrument, tempo, tone count /
direction, noise type), a field of their json put in ranges (`sw-probe-music-bpm`: the click track's beats
per minute in six ranges, where the slow / fast answer is read by any encoder) or a user's labels.csv
(`benchmarks.audio_folder`). Features of both splits are cached; the probes themselves train in seconds.
Clips a probe cannot use (missing, undecodable or a path the file system refuses in a user's folder,
non-finite samples, shorter than 0.1 s; a sample without an answer, or without its json-field label:
`no_label`, `label_not_a_number`, `label_outside_bins`) are skipped and counted by reason
(`skipped_<reason>` in the metrics); silent and clipped clips are kept and counted (`kept_audio_silent`,
`kept_audio_clipped`: the data layer's `audio_notes` on the mono downmix at the file's rate, where pretraining
judges it after resampling to the model's; the waveform normalisation leaves a silent clip zero).
"""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.data import SampleProblem
from benchmarks.registry import Benchmark
from benchmarks.tasks import Context, Skips, TaskResult, TooFewItems, load_samples
from vlm.errors import UserError

MIN_SECONDS = 0.1             # shorter clips are skipped (a HuBERT frame is 400 samples = 17 ms at 24 kHz)


def applicable(model, bench: Benchmark) -> str | None:
    if not model.can_probe or bench.modality not in model.modalities:
        return f"needs a model with a {bench.modality} encoder (a vlm or mert checkpoint)"
    return None


class LayerWeightedProbe(nn.Module):
    """softmax(w) . layers -> MLP. Input [N, L, D] -> logits [N, C]."""

    def __init__(self, n_layers: int, dim: int, n_classes: int, hidden: int = 128, dropout: float = 0.1):
        super().__init__()
        self.layer_logits = nn.Parameter(torch.zeros(n_layers))
        self.head = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.layer_logits.softmax(0)                                 # [L]
        return self.head((x * w[None, :, None]).sum(1))                 # [N, D] -> [N, C]


def fit_probe(x: torch.Tensor, y: torch.Tensor, n_classes: int, steps: int = 300, lr: float = 1e-3,
              weight_decay: float = 1e-4, seed: int = 0) -> tuple[LayerWeightedProbe, torch.Tensor, torch.Tensor]:
    """Full-batch Adam on standardised features; returns the probe and the (mean, std) it expects."""
    g = torch.Generator().manual_seed(seed)
    mean, std = x.mean(0, keepdim=True), x.std(0, keepdim=True).clamp(min=1e-6)   # [1, L, D]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        probe = LayerWeightedProbe(x.shape[1], x.shape[2], n_classes)
        opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
        xs = (x - mean) / std
        probe.train()
        for _ in range(steps):
            loss = nn.functional.cross_entropy(probe(xs), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return probe.eval(), mean, std


@dataclass
class Clip:
    key: str
    label: str
    audio: tuple[torch.Tensor, int] | None      # (waveform [C, N], sample rate); None when unusable
    problem: str | None = None                  # why it is unusable: a reason name
    shard: str = ""                             # the shard it came from (a sample is (shard, key)); '' in a folder


def check_clip(wave: torch.Tensor, sr: int) -> str | None:
    from encoders.base import MAX_RATE, MIN_RATE
    if not MIN_RATE <= sr <= MAX_RATE:
        return "bad_sample_rate"
    if wave.shape[-1] < MIN_SECONDS * sr:
        return "too_short"
    if not torch.isfinite(wave).all():
        return "non_finite"
    return None


def shard_clips(bench: Benchmark, ctx: Context, split: str, skips: Skips) -> tuple[list[Clip], str]:
    """Benchmark shards (synthetic-world): labels are the answers; a sample without audio, whose audio does not
    decode or whose json does not parse is a clip with its problem (skipped and counted)."""
    samples, dhash = load_samples(bench, ctx, split, skips=skips)
    out = []
    for s in samples:
        try:
            label, problem = sample_label(s.meta(), bench.options)
            audio = s.decode("audio", s.first("audio"))
        except SampleProblem as e:
            out.append(Clip(s.key, "", None, e.reason, s.shard))
            continue
        out.append(Clip(s.key, label, audio, problem or check_clip(*audio), s.shard))
    return out, dhash


def sample_label(meta: dict[str, Any], options: dict[str, Any]) -> tuple[str, str | None]:
    """A shard sample's class and, when it has none, why (a reason name). The class is the sample's answer,
    or with option `label` (a dotted path into its json, e.g. 'labels.bpm') that field, put by option `bins`
    ([[lo, hi], ...], both ends included: ranges of whole numbers such as bpm; a value between two ranges is
    outside) in the class 'lo-hi' of the first range that holds it."""
    path = options.get("label") or "answer"
    value: Any = meta
    for part in path.split("."):
        if not isinstance(value, dict) or value.get(part) is None:
            return "", "no_label"
        value = value[part]
    if isinstance(value, str) and not value.strip():
        return "", "no_label"
    bins = options.get("bins")
    if not bins:
        return str(value), None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "", "label_not_a_number"
    return next(((f"{lo}-{hi}", None) for lo, hi in bins if lo <= value <= hi), ("", "label_outside_bins"))


def folder_clips(bench: Benchmark, split: str, limit: int | None = None) -> tuple[list[Clip], str]:
    """A user's labels.csv (its first `limit` rows of the split): missing or undecodable files are skipped and
    counted, not fatal."""
    from benchmarks.audio_folder import LABELS_FILE, read_labels
    from benchmarks.data import data_hash
    from vlm.modalities import MODALITIES, MediaError
    root = Path(bench.data.root)                                     # an absolute folder
    rows = [r for r in read_labels(root) if r.split == split][:limit or None]
    out = []
    for r in rows:
        try:
            is_file = r.path.is_file()
        except OSError:                            # a name the file system refuses (too long ...)
            out.append(Clip(r.key, r.label, None, "bad_path"))
            continue
        if not is_file:
            out.append(Clip(r.key, r.label, None, "not_a_file" if r.path.exists() else "missing_file"))
            continue
        try:
            audio = MODALITIES[bench.modality].decode(r.path.read_bytes())
        except (MediaError, OSError):
            out.append(Clip(r.key, r.label, None, "bad_audio"))
            continue
        out.append(Clip(r.key, r.label, audio, check_clip(*audio)))
    files = [root / LABELS_FILE] + sorted({r.path for r, c in zip(rows, out) if c.problem not in
                                           ("bad_path", "not_a_file", "missing_file")})
    return out, data_hash(files, split, limit)


def _features(model, clips: list[Clip], dhash: str, modality: str, ctx: Context) -> torch.Tensor:
    def compute():
        return {"features": model.layer_features(modality, [c.audio for c in clips])}, {"keys": [c.key for c in clips]}
    from benchmarks.data import data_hash
    name = f"probe-{modality}-{data_hash([], dhash, [c.key for c in clips])}"
    t, _ = ctx.cache.get_or_compute(model.fingerprint, name, compute)
    return t["features"]


def _usable(clips: list[Clip], skips: Skips, split: str) -> list[Clip]:
    """The clips with no problem; the others counted per reason, the first of each named."""
    for c in clips:
        if c.problem is not None:
            skips.count(c.problem, c.key, shard=c.shard or split)
    return [c for c in clips if c.problem is None]


def _digest(clip: Clip) -> str:
    wave, sr = clip.audio
    return hashlib.sha1(wave.contiguous().numpy().tobytes() + str((sr, tuple(wave.shape))).encode()).hexdigest()


def _unseen(test: list[Clip], train: list[Clip], skips: Skips) -> list[Clip]:
    """The test clips whose audio no train clip has: a probe fitted on a clip scores it from memory (in a
    synthetic-world build of few distinct notes half the pitch and chord test clips were train clips, and
    82 % of the tempo ones). The others are counted as `seen_in_train`."""
    seen = {_digest(c) for c in train}
    repeats = [_digest(c) in seen for c in test]
    if any(repeats):
        skips.count("seen_in_train", test[repeats.index(True)].key, n=sum(repeats))
    return [c for c, repeat in zip(test, repeats) if not repeat]


def run(model, bench: Benchmark, ctx: Context) -> TaskResult:
    train_split = bench.data.train_split or "train"
    # --limit N: the first N clips scored; the probe is fitted on the whole train split (a probe fitted on N
    # clips measures the limit, not the encoder)
    skips = Skips()                             # by reason, the first clip skipped for each (named by the CLI)
    if bench.options.get("format") == "audio-folder":
        (train, h_train), (test, h_test) = folder_clips(bench, train_split), folder_clips(bench, bench.data.split,
                                                                                           ctx.limit)
    else:
        (train, h_train) = shard_clips(bench, replace(ctx, limit=None), train_split, skips)
        (test, h_test) = shard_clips(bench, ctx, bench.data.split, skips)
    train, test = _usable(train, skips, train_split), _usable(test, skips, bench.data.split)
    test = _unseen(test, train, skips)
    skipped = skips.counts
    classes = sorted({c.label for c in train})
    if len(classes) < 2:
        raise UserError(f"benchmark {bench.name}: the '{train_split}' split has {len(classes)} usable class(es); "
                        f"a probe needs at least 2 (skipped: {dict(skipped) or 'none'})")
    limited = f" among the first {ctx.limit} (--limit)" if ctx.limit else ""
    if not test:           # the first N all train clips: what the limit left (a data problem otherwise)
        error = TooFewItems if ctx.limit and skipped.get("seen_in_train") else UserError
        raise error(f"benchmark {bench.name}: no usable {bench.data.split} clips{limited} "
                    f"(skipped: {dict(skipped) or 'none'})")
    if not any(c.label in classes for c in test):      # an accuracy of 0 that measures nothing
        raise TooFewItems(f"benchmark {bench.name}: no {bench.data.split} clip{limited} has a label of the "
                          f"'{train_split}' split ({', '.join(sorted({c.label for c in test})[:5])} vs "
                          f"{', '.join(classes[:5])})")
    from vlm.data.formats import audio_notes
    kept = Counter(n for c in (*train, *test) for n in audio_notes(c.audio[0].reshape(-1, c.audio[0].shape[-1]).mean(0)))
    x_train = _features(model, train, h_train, bench.modality, ctx)                 # [N, L, D]
    x_test = _features(model, test, h_test, bench.modality, ctx)
    idx = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([idx[c.label] for c in train])
    steps = int(bench.options.get("steps", 300))

    def accuracy(layers: slice) -> tuple[float, list[int], LayerWeightedProbe]:
        probe, mean, std = fit_probe(x_train[:, layers], y, len(classes), steps=steps)
        with torch.no_grad():
            pred = probe((x_test[:, layers] - mean) / std).argmax(1).tolist()
        return sum(classes[p] == c.label for p, c in zip(pred, test)) / len(test), pred, probe

    acc, pred, probe = accuracy(slice(None))
    rows: list[dict[str, Any]] = [dict(key=c.key, label=c.label, pred=classes[p], correct=classes[p] == c.label)
                                  for c, p in zip(test, pred)]
    weights = probe.layer_logits.softmax(0).tolist()
    per_layer = [accuracy(slice(k, k + 1))[0] for k in range(x_train.shape[1])]
    metrics = {"accuracy": acc, "n": float(len(rows)), "n_train": float(len(train)),
               "best_layer": float(max(range(len(weights)), key=weights.__getitem__)),    # the largest weight
               "best_single_layer": float(max(range(len(per_layer)), key=per_layer.__getitem__)),
               # test clips of a label no train clip has: scored (always wrong), and counted so it shows
               "unseen_label": float(sum(c.label not in idx for c in test)),
               **skips.metrics(),
               **{f"kept_{k}": float(v) for k, v in sorted(kept.items())}}
    layers = [dict(layer=k, weight=w, accuracy=a) for k, (w, a) in enumerate(zip(weights, per_layer))]
    return TaskResult(rows, metrics, {"layers": layers, **skips.tables()})


def layer_table(records: list[dict[str, Any]]) -> str | None:
    """Markdown: one row per probe result (model, benchmark), the test accuracy of the probe on each
    single layer (0 = the conv front end's projection, k = after block k) and of the learned weighting,
    and the layer the weighting favours (after 300 steps from equal weights they stay close: it is not a
    ranking) beside the single layer that scores best. None when no record is a probe."""
    probes = [r for r in records if r.get("kind") == "probe" and r.get("status") == "ok"
              and (r.get("tables") or {}).get("layers")]
    if not probes:
        return None
    n = max(len(r["tables"]["layers"]) for r in probes)
    header = ["model", "benchmark", *[f"layer {k}" for k in range(n)], "weighted", "top weight", "best layer"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in probes:
        accs = [f"{row['accuracy']:.3f}" for row in r["tables"]["layers"]] + [""] * (n - len(r["tables"]["layers"]))
        lines.append("| " + " | ".join([r["model"], r["benchmark"], *accs, f"{r['metrics']['accuracy']:.3f}",
                                        str(int(r["metrics"]["best_layer"])), _best_single(r)]) + " |")
    return "\n".join(lines)


def _best_single(record: dict[str, Any]) -> str:
    if "best_single_layer" in record["metrics"]:
        return str(int(record["metrics"]["best_single_layer"]))
    accs = [row["accuracy"] for row in record["tables"]["layers"]]        # a result stored before the metric
    return str(max(range(len(accs)), key=accs.__getitem__))
