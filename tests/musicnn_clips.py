"""Deterministic test clips for the musicnn golden fixtures (numpy + soundfile only, so
the dev-only TensorFlow environment of scripts/golden/ can render them too).

Three clips, written as 16-bit WAV: a 16 kHz mono piano-like melody, a 16 kHz mono beat
(kick, hats, saw bass) loud enough that some mel bins overflow the official float16
compression, and a 22.05 kHz stereo chord clip that goes through downmix + resampling.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

SEED = 15


def _note(freq: float, seconds: float, sr: int, harmonics: int = 6, decay: float = 3.0):
    t = np.arange(int(seconds * sr)) / sr
    tone = sum(np.sin(2 * np.pi * freq * h * t) / h**1.5 for h in range(1, harmonics + 1))
    return tone * np.exp(-decay * t) * np.minimum(1.0, t * 200)


def melody(sr: int = 16000, seconds: float = 8.0) -> np.ndarray:
    rng = np.random.default_rng(SEED)
    out = np.zeros(int(seconds * sr))
    step = int(0.25 * sr)
    for start in range(0, len(out) - step, step):
        freq = 220.0 * 2 ** (rng.integers(0, 24) / 12)
        note = _note(freq, 0.8, sr)[: len(out) - start]
        out[start : start + len(note)] += note
    out += 0.003 * rng.standard_normal(len(out))
    return 0.25 * out / np.abs(out).max()


def beat(sr: int = 16000, seconds: float = 10.0) -> np.ndarray:
    rng = np.random.default_rng(SEED + 1)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    out = np.zeros(n)
    beat_len = int(0.5 * sr)
    tk = np.arange(int(0.2 * sr)) / sr
    kick = np.sin(2 * np.pi * (50 + 100 * np.exp(-30 * tk)) * tk) * np.exp(-12 * tk)
    hat = rng.standard_normal(int(0.05 * sr)) * np.exp(-80 * np.arange(int(0.05 * sr)) / sr)
    for start in range(0, n - len(kick), beat_len):
        out[start : start + len(kick)] += kick
        mid = start + beat_len // 2
        out[mid : mid + len(hat)] += 0.3 * hat[: n - mid]
    bass_freq = 55.0 * 2 ** (np.floor(t / 2) % 4 / 12)
    out += 0.3 * (2 * ((bass_freq * t) % 1.0) - 1)
    return 0.9 * out / np.abs(out).max()


def chords(sr: int = 22050, seconds: float = 7.0) -> np.ndarray:
    """[samples, 2]: a chord per second, different voicings left and right, plus noise."""
    rng = np.random.default_rng(SEED + 2)
    n = int(seconds * sr)
    left, right = np.zeros(n), np.zeros(n)
    for i, root in enumerate([196.0, 261.6, 174.6, 220.0, 196.0, 293.7, 246.9]):
        start = i * sr
        for ratio in (1.0, 1.26, 1.5):
            note = _note(root * ratio, 1.5, sr, decay=1.5)[: n - start]
            left[start : start + len(note)] += note
            note = _note(root * ratio * 2, 1.5, sr, decay=2.0)[: n - start]
            right[start : start + len(note)] += 0.7 * note
    stereo = np.stack([left, right], axis=1) + 0.01 * rng.standard_normal((n, 2))
    return 0.5 * stereo / np.abs(stereo).max()


CLIPS = {"melody": (melody, 16000), "beat": (beat, 16000), "chords": (chords, 22050)}


def write_clips(folder: Path) -> dict[str, Path]:
    """Write every clip as folder/NAME.wav (PCM 16); {name: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (render, sr) in CLIPS.items():
        paths[name] = folder / f"{name}.wav"
        sf.write(paths[name], render().astype(np.float32), sr, subtype="PCM_16")
    return paths
