"""synthetic-world sound: tone sequences and noise colours (16 kHz), music (24 kHz), spoken words.

Audio: beeps whose count and pitch direction are known; white / pink / brown noise; words spoken by
`espeak-ng` when that binary is installed (skipped otherwise). Music (>= 2 s, so a CQT with a
32,768-sample lowest kernel fits): single notes, major/minor triads, five instruments made by
additive synthesis or Karplus-Strong, click tracks at a known tempo.

Each music clip of the music tasks is played with its own `Performance` (tuning within +/- 25 cents, onset,
length, attack / release, brightness, decay, vibrato, note and clip loudness) and each click track with its
own `ClickStyle` (phase, click pitch and decay, accent, timing jitter): synthetic-world version 2. Version 1
(`vlm data build ... --world-version 1`: builds whose index.json has no `world_version`) played every note of an
instrument the same way, so many val / test clips were train clips byte for byte (36 notes x 5 instruments,
one click track per tempo). Video and trailer soundtracks are played plainly in both versions.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import math
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlm.data.synthetic.common import NUMBER_WORDS, a, caption_json, pick, qa_json
from vlm.data.writer import Audio

AUDIO_SR = 16_000
MUSIC_SR = 24_000
MUSIC_SECONDS = 2.0  # > 1.4 s: nnAudio's lowest CQT kernel (32,768 samples at 24 kHz) must fit
NOTE_NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
INSTRUMENTS = ["flute", "organ", "brass", "guitar", "piano"]  # sine, square, sawtooth, Karplus-Strong, decaying partials
CHORDS = {"major": (0, 4, 7), "minor": (0, 3, 7)}
NOISES = ["white", "pink", "brown"]
TEMPI = {"slow": (60, 80), "fast": (140, 180)}
SPOKEN_WORDS = ["yes", "no", "red", "green", "blue", "one", "two", "three", "stop", "go"]
BEEP_CHOICES = [str(n) for n in range(1, 6)]


def midi_to_hz(m: float) -> float:
    return 440.0 * 2 ** ((m - 69) / 12)


def note_name(m: int) -> str:
    return f"{NOTE_NAMES[m % 12]}{m // 12 - 1}"


def _envelope(n: int, sr: int, attack: float, release: float) -> np.ndarray:
    env = np.ones(n, dtype=np.float32)
    a, r = max(1, int(attack * sr)), max(1, int(release * sr))
    env[:a] = np.linspace(0, 1, a, dtype=np.float32)
    env[-r:] *= np.linspace(1, 0, r, dtype=np.float32)
    return env


def _normalise(x: np.ndarray, peak: float = 0.8) -> np.ndarray:
    m = float(np.max(np.abs(x)))
    return (x * (peak / m)).astype(np.float32) if m > 0 else x.astype(np.float32)


@dataclass(frozen=True)
class Performance:
    """How one music clip is played. The defaults play it plainly (synthetic-world version 1, the video and
    trailer soundtracks): every factor 1, nothing shifted, so those bytes do not change."""
    cents: float = 0.0                  # tuning offset of the whole clip (the note's name holds within +/- 25)
    start: float = 0.0                  # seconds of silence before the notes
    length: float = 1.0                 # the notes' share of the rest of the clip (silence after them)
    attack: float = 1.0                 # scales of the instrument's attack and release times
    release: float = 1.0
    tilt: float = 0.0                   # partial k's amplitude times k ** -tilt (> 0 darker, < 0 brighter)
    decay: float = 1.0                  # scale of the piano's decay rates and of the guitar string's loss
    vibrato: float = 1.0                # scale of the flute's vibrato depth
    velocities: tuple[float, ...] = ()  # per-note gain in a chord (default 1 each)
    peak: float = 0.8                   # the clip's peak level
    exact: bool = False                 # the guitar at its exact pitch (version 1: the nearest whole delay line,
                                        # up to ~36 cents off at the top notes)

    @classmethod
    def draw(cls, rng: np.random.Generator, notes: int) -> Performance:
        """A random performance of `notes` notes (synthetic-world version 2)."""
        return cls(cents=float(rng.uniform(-25, 25)), start=float(rng.uniform(0.0, 0.25)),
                   length=float(rng.uniform(0.75, 1.0)), attack=float(rng.uniform(0.5, 2.0)),
                   release=float(rng.uniform(0.5, 2.0)), tilt=float(rng.uniform(-0.3, 0.3)),
                   decay=float(rng.uniform(0.7, 1.4)), vibrato=float(rng.uniform(0.5, 1.5)),
                   velocities=tuple(float(v) for v in rng.uniform(0.7, 1.0, notes)),
                   peak=float(rng.uniform(0.5, 0.9)), exact=True)


@dataclass(frozen=True)
class ClickStyle:
    """How a click track is played; the defaults are version 1's (first click at 50 ms, 1.5 kHz, 4 ms decay,
    off-beats at 0.6, on the grid)."""
    first: float = 0.05                 # seconds before the first click
    hz: float = 1500.0                  # the click's pitch
    tau: float = 0.004                  # its decay time constant, seconds
    accent: float = 0.6                 # the level of the three beats after each accented one
    jitter: float = 0.0                 # std of each onset's timing error, seconds

    @classmethod
    def draw(cls, rng: np.random.Generator, bpm: float) -> ClickStyle:
        """A random style (synthetic-world version 2): the first click anywhere in the first beat."""
        return cls(first=float(rng.uniform(0.02, 60.0 / bpm)), hz=float(rng.uniform(900, 2400)),
                   tau=float(rng.uniform(0.003, 0.007)), accent=float(rng.uniform(0.4, 0.8)),
                   jitter=float(rng.uniform(0.0, 0.006)))


PLAIN = Performance()
PLAIN_CLICKS = ClickStyle()


def performance(rng: np.random.Generator, notes: int, varied: bool) -> Performance:
    """A clip's performance: drawn (version 2) or plain (version 1, which draws nothing)."""
    return Performance.draw(rng, notes) if varied else PLAIN


def performance_labels(perf: Performance | ClickStyle) -> dict[str, Any]:
    """A performance's factors for a sample's labels (numbers to 3 decimals, flags as they are)."""
    return {k: [round(x, 3) for x in v] if isinstance(v, tuple) else v if isinstance(v, bool) else round(v, 3)
            for k, v in dataclasses.asdict(perf).items()}


def _additive(f: float, n: int, sr: int, amps, vibrato: float = 0.0, table_size: int = 2048) -> np.ndarray:
    """Harmonics k*f with amplitude amps(k), band-limited below Nyquist, read from a one-period
    wavetable (linear interpolation), so the cost does not grow with the number of partials."""
    ks = np.arange(1, min(48, max(2, int(sr / 2 / f))))  # 48 partials: the rest is inaudible here
    a = np.array([amps(int(k)) for k in ks])
    ks, a = ks[a != 0], a[a != 0]
    grid = 2 * np.pi * np.arange(table_size + 1) / table_size
    table = (a[:, None] * np.sin(ks[:, None] * grid[None])).sum(0)  # [table_size + 1], one period
    t = np.arange(n, dtype=np.float64) / sr
    cycles = f * t
    if vibrato:
        cycles = cycles + vibrato / (2 * np.pi) * np.sin(2 * np.pi * 5.0 * t)
    return np.interp((cycles % 1.0) * table_size, np.arange(table_size + 1), table)


def _decaying_partials(f: float, n: int, sr: int, n_partials: int = 12, tilt: float = 0.0,
                       decay: float = 1.0) -> np.ndarray:
    """Piano-like: partial k has amplitude k^-(1.5 + tilt) and decays as exp(-(1.5 + 0.8 k) decay t).

    Uses powers of one complex phasor w = exp((2 pi i f - 0.8 decay) t): partial k is Im(w^k) exp(-1.5 decay t).
    """
    t = np.arange(n, dtype=np.float64) / sr
    w = np.exp((2j * np.pi * f - 0.8 * decay) * t)
    p, out = np.ones(n, dtype=np.complex128), np.zeros(n, dtype=np.complex128)
    for k in range(1, n_partials + 1):
        p *= w
        if k * f < sr / 2:
            out += k ** (-1.5 - tilt) * p
    return out.imag * np.exp(-1.5 * decay * t)


def karplus_strong(f: float, n: int, sr: int, rng: np.random.Generator, decay: float = 1.0,
                   exact: bool = False) -> np.ndarray:
    """Plucked string: a noise burst through a delay line with a two-tap averaging filter.

    Vectorised one period at a time: y[i] = g * (y[i-P] + y[i-P-1]) / 2 with g = 0.996 ** decay. A whole
    delay line sounds at sr / (P + 1/2); `exact` reads the string faster or slower (linear interpolation,
    under 3 %) so it sounds at f.
    """
    if exact:
        p = max(2, round(sr / f - 0.5))
        ratio = f * (p + 0.5) / sr                     # f over the whole line's pitch: the reading rate
        y = karplus_strong(f, int(np.ceil(n * ratio)) + 2, sr, rng, decay)
        return np.interp(np.arange(n) * ratio, np.arange(len(y)), y)
    g = 0.996 ** decay
    p = max(2, round(sr / f - 0.5))  # the averaging filter adds half a sample of delay
    y = np.zeros(n + p + 1)
    burst = rng.uniform(-1, 1, p + 1)
    y[:p + 1] = burst - burst.mean()  # zero mean: the loop keeps DC forever otherwise
    for start in range(p + 1, n + p + 1, p):
        stop = min(start + p, n + p + 1)
        y[start:stop] = g * 0.5 * (y[start - p:stop - p] + y[start - p - 1:stop - p - 1])
    y = y[p + 1:]
    c = np.concatenate([[0.0], np.cumsum(y)])
    lo = np.clip(np.arange(n) - p // 2, 0, n - p)
    return y - (c[lo + p] - c[lo]) / p  # minus the mean over one period around each sample: no DC drift


def instrument_tone(instrument: str, f: float, n: int, sr: int, rng: np.random.Generator,
                    perf: Performance = PLAIN) -> np.ndarray:
    """One note of `instrument` at f Hz, n samples, played as `perf` says (its timbre and envelope factors)."""
    def env(attack: float, release: float) -> np.ndarray:
        return _envelope(n, sr, attack * perf.attack, release * perf.release)

    def tilted(amp):
        return lambda k: amp(k) * k ** -perf.tilt

    if instrument == "flute":
        x = _additive(f, n, sr, tilted(lambda k: {1: 1.0, 2: 0.12, 3: 0.04}.get(k, 0.0)), vibrato=0.02 * perf.vibrato)
        return x * env(0.08, 0.1)
    if instrument == "organ":
        return _additive(f, n, sr, tilted(lambda k: 1.0 / k if k % 2 else 0.0)) * env(0.01, 0.02)
    if instrument == "brass":
        x = _additive(f, n, sr, tilted(lambda k: 1.0 / k))
        return x * env(0.12, 0.1) * (0.7 + 0.3 * np.exp(-np.arange(n) / (0.3 * sr)))
    if instrument == "guitar":
        return karplus_strong(f, n, sr, rng, perf.decay, perf.exact) * env(0.002, 0.05)
    if instrument == "piano":
        return _decaying_partials(f, n, sr, tilt=perf.tilt, decay=perf.decay) * env(0.003, 0.05)
    raise ValueError(f"unknown instrument {instrument!r}")


def play(instrument: str, midis: list[int], seconds: float, rng: np.random.Generator, sr: int = MUSIC_SR,
         perf: Performance = PLAIN) -> np.ndarray:
    """Notes played together by one instrument as `perf` says (tuning, onset, length, note levels), the clip
    normalised to its peak level."""
    n = int(seconds * sr)
    start = int(perf.start * sr)
    length = int((n - start) * perf.length)
    velocities = perf.velocities or (1.0,) * len(midis)
    x = np.zeros(n, dtype=np.float64)
    x[start:start + length] = sum(v * instrument_tone(instrument, midi_to_hz(m + perf.cents / 100), length, sr, rng, perf)
                                  for m, v in zip(midis, velocities, strict=True))
    return _normalise(x, perf.peak)


def click_track(bpm: float, seconds: float, sr: int = MUSIC_SR, rng: np.random.Generator | None = None,
                style: ClickStyle = PLAIN_CLICKS) -> tuple[np.ndarray, list[float]]:
    """Clicks (20 ms decaying bursts, accented every 4th beat) at `bpm` as `style` says; returns the onsets
    too. `rng` draws the timing jitter (needed when style.jitter > 0)."""
    n = int(seconds * sr)
    x = np.zeros(n, dtype=np.float32)
    m = int(0.02 * sr)
    t = np.arange(m) / sr
    click = np.sin(2 * np.pi * style.hz * t) * np.exp(-t / style.tau)
    onsets = np.arange(style.first, seconds - 0.03, 60.0 / bpm)
    if style.jitter:
        onsets = np.clip(onsets + rng.normal(0.0, style.jitter, len(onsets)), 0.0, seconds - 0.03)
    for i, on in enumerate(onsets):
        s = int(on * sr)
        x[s:s + m] += (1.0 if i % 4 == 0 else style.accent) * click[: n - s]
    return _normalise(x), [round(float(o), 4) for o in onsets]


def colored_noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """White (flat), pink (1/f power) or brown (1/f^2 power) noise by spectral shaping."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1]
    spec *= {"white": 1.0, "pink": 1.0 / np.sqrt(f), "brown": 1.0 / f}[kind]
    x = np.fft.irfft(spec, n)
    return (x / np.sqrt(np.mean(x ** 2)) * 0.15).astype(np.float32)


def _add_noise(rng: np.random.Generator, x: np.ndarray, p: float) -> tuple[np.ndarray, float]:
    """With probability p add white noise at 5-30 dB SNR; returns the signal and its quality."""
    if rng.random() >= p:
        return x, 1.0
    snr = float(rng.uniform(5, 30))
    noise = rng.standard_normal(len(x)) * np.sqrt(np.mean(x ** 2) / 10 ** (snr / 10))
    return np.clip(x + noise, -1, 1).astype(np.float32), 0.4 + 0.6 * (snr - 5) / 25


def _noise_p(split: str) -> float:
    return 0.15 if split == "train" else 0.0


# ---------------------------------------------------------------------------------------------
# Audio tasks (16 kHz, placeholder <audio>)
# ---------------------------------------------------------------------------------------------

def tone_sequence(rng: np.random.Generator, n_beeps: int, pattern: str, seconds: float = 2.0) -> tuple[np.ndarray, dict]:
    """n beeps (120 ms, 150 ms apart) rising, falling or flat in pitch."""
    f0 = float(rng.uniform(300, 600))
    ratio = {"rising": 1.25, "falling": 0.8, "flat": 1.0}[pattern]
    if pattern == "falling":
        f0 *= 1.25 ** (n_beeps - 1)
    step, dur = 0.27, 0.12
    start = float(rng.uniform(0.05, seconds - n_beeps * step))
    x = np.zeros(int(seconds * AUDIO_SR), dtype=np.float32)
    t = np.arange(int(dur * AUDIO_SR)) / AUDIO_SR
    freqs, onsets = [], []
    for i in range(n_beeps):
        f = f0 * ratio ** i
        s = int((start + i * step) * AUDIO_SR)
        x[s:s + len(t)] += 0.6 * np.sin(2 * np.pi * f * t) * _envelope(len(t), AUDIO_SR, 0.01, 0.01)
        freqs.append(round(f, 2))
        onsets.append(round(start + i * step, 4))
    return x, {"beeps": n_beeps, "pattern": pattern, "freqs_hz": freqs, "onsets_s": onsets}


def gen_audio_tone(rng: np.random.Generator, split: str) -> dict[str, Any]:
    if rng.random() < 0.6:
        n = int(rng.integers(1, 6))
        pattern = pick(rng, ["rising", "falling", "flat"]) if n > 1 else "flat"
        x, labels = tone_sequence(rng, n, pattern)
        q, answer, choices = "How many beeps are there?", str(n), BEEP_CHOICES
    else:
        n = int(rng.integers(3, 6))
        pattern = pick(rng, ["rising", "falling"])
        x, labels = tone_sequence(rng, n, pattern)
        q, answer, choices = "Is the pitch of the beeps rising or falling?", pattern, ["rising", "falling"]
    x, quality = _add_noise(rng, x, _noise_p(split))
    meta = qa_json("audio_tone", "<audio>\n" + q, answer, choices, labels, 0.15 + 0.1 * n, quality)
    return {"flac": Audio(x, AUDIO_SR), "json": meta}


def gen_audio_noise(rng: np.random.Generator, split: str) -> dict[str, Any]:
    kind = pick(rng, NOISES)
    x = colored_noise(kind, AUDIO_SR, rng)
    meta = qa_json("audio_noise", "<audio>\nWhat kind of noise is this?", kind, NOISES, {"noise": kind}, 0.3)
    return {"flac": Audio(x, AUDIO_SR), "json": meta}


def gen_audio_caption(rng: np.random.Generator, split: str) -> dict[str, Any]:
    if rng.random() < 0.7:
        n = int(rng.integers(1, 6))
        pattern = pick(rng, ["rising", "falling", "flat"]) if n > 1 else "flat"
        x, labels = tone_sequence(rng, n, pattern)
        text = f"{NUMBER_WORDS[n].capitalize()} {'' if pattern == 'flat' else pattern + ' '}beep{'s' if n > 1 else ''}."
    else:
        kind = pick(rng, NOISES)
        x, labels = colored_noise(kind, AUDIO_SR, rng), {"noise": kind}
        text = f"{kind.capitalize()} noise."
    meta = caption_json("audio_caption", "<audio>\nDescribe the sound.", text, labels, 0.2)
    return {"flac": Audio(x, AUDIO_SR), "json": meta}


def resample(x: np.ndarray, sr: int, target: int) -> np.ndarray:
    """Band-limited FFT resampling (drops content above the new Nyquist); zero-padded so the
    FFT's wrap-around does not leak the end into the start."""
    if sr == target:
        return x.astype(np.float32)
    unit = sr // math.gcd(sr, target)  # pad by whole units so the cut below lands on a sample
    pad = unit * -(-(len(x) // 10 + 16) // unit)
    xp = np.pad(x, pad)
    n_new = round(len(xp) * target / sr)
    spec = np.fft.rfft(xp)[: n_new // 2 + 1]
    y = np.fft.irfft(spec, n_new) * (n_new / len(xp))
    cut, n_out = pad * target // sr, round(len(x) * target / sr)
    return y[cut: cut + n_out].astype(np.float32)


def speech_available() -> bool:
    return shutil.which("espeak-ng") is not None


@functools.lru_cache(maxsize=64)
def _speak(word: str, speed: int, pitch: int) -> bytes:
    """wav bytes of `word` spoken by espeak-ng (its native rate, 22,050 Hz)."""
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        subprocess.run(["espeak-ng", "-s", str(speed), "-p", str(pitch), "-w", f.name, word],
                       check=True, capture_output=True, timeout=30)
        with open(f.name, "rb") as g:
            return g.read()


def gen_audio_speech(rng: np.random.Generator, split: str) -> dict[str, Any]:
    """A word spoken by espeak-ng (speed and pitch vary), resampled to 16 kHz."""
    import soundfile as sf

    word = pick(rng, SPOKEN_WORDS)
    speed, pitch = int(rng.integers(120, 200)), int(rng.integers(20, 80))
    x, sr = sf.read(io.BytesIO(_speak(word, speed, pitch)), dtype="float32")
    x = resample(x if x.ndim == 1 else x.mean(1), sr, AUDIO_SR)
    x, quality = _add_noise(rng, _normalise(x, 0.7), _noise_p(split))
    meta = qa_json("audio_speech", "<audio>\nWhat word is spoken?", word, SPOKEN_WORDS,
                   {"word": word, "speed_wpm": speed, "pitch": pitch}, 0.4, quality)
    return {"flac": Audio(x, AUDIO_SR), "json": meta}


# ---------------------------------------------------------------------------------------------
# Music tasks (24 kHz, placeholder <music>)
# ---------------------------------------------------------------------------------------------

def gen_music_pitch(rng: np.random.Generator, split: str, varied: bool = True) -> dict[str, Any]:
    m, inst = int(rng.integers(48, 84)), pick(rng, INSTRUMENTS)
    perf = performance(rng, 1, varied)
    x = play(inst, [m], MUSIC_SECONDS, rng, perf=perf)
    labels = {"note": note_name(m), "midi": m, "freq_hz": round(midi_to_hz(m + perf.cents / 100), 3), "instrument": inst}
    meta = qa_json("music_pitch", "<music>\nWhat note is played?", NOTE_NAMES[m % 12], NOTE_NAMES,
                   _with_performance(labels, perf, varied), 0.4 + 0.1 * (inst in ("guitar", "piano")))
    return {"flac": Audio(x, MUSIC_SR), "json": meta}


def _with_performance(labels: dict[str, Any], perf: Performance | ClickStyle, varied: bool) -> dict[str, Any]:
    return {**labels, "performance": performance_labels(perf)} if varied else labels


def chord_labels(rng: np.random.Generator) -> dict[str, Any]:
    root, quality = int(rng.integers(48, 65)), pick(rng, list(CHORDS))
    return {"root": NOTE_NAMES[root % 12], "quality": quality, "midis": [root + i for i in CHORDS[quality]],
            "notes": [note_name(root + i) for i in CHORDS[quality]]}


def gen_music_chord(rng: np.random.Generator, split: str, varied: bool = True) -> dict[str, Any]:
    labels = {**chord_labels(rng), "instrument": pick(rng, INSTRUMENTS)}
    perf = performance(rng, len(labels["midis"]), varied)
    x = play(labels["instrument"], labels["midis"], MUSIC_SECONDS, rng, perf=perf)
    meta = qa_json("music_chord", "<music>\nIs the chord major or minor?", labels["quality"], list(CHORDS),
                   _with_performance(labels, perf, varied), 0.5)
    return {"flac": Audio(x, MUSIC_SR), "json": meta}


def gen_music_instrument(rng: np.random.Generator, split: str, varied: bool = True) -> dict[str, Any]:
    inst = pick(rng, INSTRUMENTS)
    if rng.random() < 0.5:
        midis = [int(rng.integers(48, 76))]
        labels = {"instrument": inst, "midis": midis, "notes": [note_name(midis[0])]}
    else:
        labels = {"instrument": inst, **chord_labels(rng)}
    perf = performance(rng, len(labels["midis"]), varied)
    x = play(inst, labels["midis"], MUSIC_SECONDS, rng, perf=perf)
    meta = qa_json("music_instrument", "<music>\nWhich instrument is playing?", inst, INSTRUMENTS,
                   _with_performance(labels, perf, varied), 0.35 + 0.1 * (len(labels["midis"]) > 1))
    return {"flac": Audio(x, MUSIC_SR), "json": meta}


def clicks(rng: np.random.Generator, varied: bool) -> tuple[np.ndarray, dict[str, Any]]:
    """A 4 s click track of a random tempo class and bpm, its style drawn (version 2) or plain; its labels."""
    tempo = pick(rng, list(TEMPI))
    bpm = int(rng.integers(*TEMPI[tempo], endpoint=True))
    style = ClickStyle.draw(rng, bpm) if varied else PLAIN_CLICKS
    x, onsets = click_track(bpm, 4.0, rng=rng, style=style)
    return x, _with_performance({"tempo": tempo, "bpm": bpm, "onsets_s": onsets}, style, varied)


def gen_music_tempo(rng: np.random.Generator, split: str, varied: bool = True) -> dict[str, Any]:
    x, labels = clicks(rng, varied)
    x, quality = _add_noise(rng, x, _noise_p(split))
    meta = qa_json("music_tempo", "<music>\nIs the tempo slow or fast?", labels["tempo"], list(TEMPI),
                   labels, 0.3, quality)
    return {"flac": Audio(x, MUSIC_SR), "json": meta}


def gen_music_caption(rng: np.random.Generator, split: str, varied: bool = True) -> dict[str, Any]:
    inst, r = pick(rng, INSTRUMENTS), rng.random()
    if r < 0.4:
        m = int(rng.integers(48, 84))
        perf = performance(rng, 1, varied)
        x = play(inst, [m], MUSIC_SECONDS, rng, perf=perf)
        labels = _with_performance({"instrument": inst, "midis": [m], "notes": [note_name(m)]}, perf, varied)
        text = f"{a(inst).capitalize()} plays the note {NOTE_NAMES[m % 12]}."
    elif r < 0.8:
        labels = {"instrument": inst, **chord_labels(rng)}
        perf = performance(rng, len(labels["midis"]), varied)
        x = play(inst, labels["midis"], MUSIC_SECONDS, rng, perf=perf)
        text = f"{a(inst).capitalize()} plays a {labels['root']} {labels['quality']} chord."
        labels = _with_performance(labels, perf, varied)
    else:
        x, labels = clicks(rng, varied)
        text = f"A {labels['tempo']} click track at {labels['bpm']} beats per minute."
    meta = caption_json("music_caption", "<music>\nDescribe the music.", text, labels, 0.3)
    return {"flac": Audio(x, MUSIC_SR), "json": meta}


GENERATORS = {
    "audio_tone": gen_audio_tone, "audio_noise": gen_audio_noise, "audio_caption": gen_audio_caption,
    "audio_speech": gen_audio_speech, "music_pitch": gen_music_pitch, "music_chord": gen_music_chord,
    "music_instrument": gen_music_instrument, "music_tempo": gen_music_tempo, "music_caption": gen_music_caption,
}
# synthetic-world version 1: the music tasks played plainly (every note of an instrument alike)
GENERATORS_V1 = {**GENERATORS, **{t: functools.partial(GENERATORS[t], varied=False) for t in GENERATORS
                                  if t.startswith("music_")}}
