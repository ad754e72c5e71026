"""Spectral features: log-mel spectrogram and harmonic tensor.

One implementation, in torch, used by the Beam jobs (on CPU, one thread) and by the
trainer (on any device, from PCM), so a model always sees features computed one way.
Periodic Hann window, centred frames, power spectrogram, a mel filterbank, then a log.
Three settings follow the paper a model comes from (`FeatureConfig`): the mel scale
(HTK or Slaney), the filters' normalisation (none or Slaney's area normalisation) and the
padding of the first and last frames (reflect or zeros). The defaults are torchaudio's
`MelSpectrogram` defaults (HTK, no normalisation, reflect), which the reference code of
seed 000 (minzwon/sota-music-tagging-models) and seed 003 use; librosa's Slaney filters
are what seeds 001/002 and MAEST use. Frames = 1 + samples // hop.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipelines.core.argtypes import positive_int
from pipelines.core.flags import setting
from pipelines.core.melscale import mel_filters

if TYPE_CHECKING:
    import torch

# torch is imported by the functions that compute, not here: a Beam job's driver, and a
# worker that only reuses finished shards, read FeatureConfig and never compute a feature
# (torch is ~1.5 CPU-s of every process's start-up).

LOG_SCALES = ("db", "log10_1p")
MEL_SCALES = ("htk", "slaney")
MEL_NORMS = ("none", "slaney")
PAD_MODES = ("reflect", "constant")
# A card written before the three front-end fields existed was computed this way
# (librosa 0.11's defaults); reading it must not silently switch to today's defaults.
LEGACY_FRONT_END = {"mel_scale": "slaney", "mel_norm": "slaney", "pad_mode": "constant"}
_AMIN = 1e-10
DEFAULT_F_MAX = 8000.0  # Hz; below a lower Nyquist, the Nyquist


@dataclass(frozen=True)
class FeatureConfig:
    """Everything that determines the features; stored in the dataset card.

    Each field is declared here once, with its default and its help text: `beam_runner.py
    prepare` makes a flag of every field (`pipelines/beam/prepare_flags.py`), a model's
    `InputSpec` holds one of these, and a recipe hands prepare its model's."""

    sample_rate: int = setting(16000, "sample rate, Hz", type=positive_int)
    n_fft: int = setting(512, "FFT size, samples", type=positive_int)
    hop: int = setting(256, "hop between frames, samples", type=positive_int)
    n_mels: int = setting(128, "mel bands", type=positive_int)
    f_min: float = setting(0.0, "lowest mel frequency, Hz")
    # None: min(8000, sample_rate / 2), resolved on construction, so a config always holds
    # a float (what the annotation says: the card, its identity and its check see one).
    f_max: float = setting(None, "highest mel frequency, Hz (default: min(8000, sr/2))")
    log_scale: str = setting(
        "db",
        "db: 10 log10(power), the papers' default; log10_1p: log10(1 + 10000 power), MAEST/PaSST's",
        choices=LOG_SCALES,
    )
    # torchaudio.transforms.MelSpectrogram's defaults, as the seed-000/003 references use.
    mel_scale: str = setting(
        "htk", "mel scale (htk: torchaudio's default, as seeds 000/003)", choices=MEL_SCALES
    )
    mel_norm: str = setting(
        "none", "mel filter normalisation (slaney: librosa's area norm)", choices=MEL_NORMS
    )
    pad_mode: str = setting("reflect", "padding of the first and last frames", choices=PAD_MODES)
    harmonics: int = setting(6, "harmonics of the harmonic tensor", type=positive_int)
    harmonic_bands: int = setting(
        128, "fundamentals (bands) of the harmonic tensor", type=positive_int
    )

    def __post_init__(self):
        if self.f_max is None:
            object.__setattr__(self, "f_max", min(DEFAULT_F_MAX, self.sample_rate / 2))
        if self.log_scale not in LOG_SCALES:
            raise ValueError(f"log_scale must be one of {LOG_SCALES}, got {self.log_scale!r}")
        for name, allowed in (
            ("mel_scale", MEL_SCALES),
            ("mel_norm", MEL_NORMS),
            ("pad_mode", PAD_MODES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        sizes = ("sample_rate", "n_fft", "hop", "n_mels", "harmonics", "harmonic_bands")
        if any(getattr(self, name) <= 0 for name in sizes):
            raise ValueError(f"{', '.join(sizes)} must be positive")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(
                f"need 0 <= f_min < f_max <= sample_rate/2, got {self.f_min}..{self.f_max} "
                f"at {self.sample_rate} Hz"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_fields(cls, values: Mapping, what: str = "features") -> FeatureConfig:
        """From fields given by name (a recipe's, a model's), the others at their
        defaults; an unknown name or a bad value is a one-line ValueError."""
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"{what}: unknown feature field(s) {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def from_dict(cls, d: dict) -> FeatureConfig:
        """From a card's `features` (or any subset of the fields); a card without the
        front-end fields predates them and gets `LEGACY_FRONT_END`."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in {**LEGACY_FRONT_END, **d}.items() if k in names})

    def num_frames(self, num_samples: int) -> int:
        return 1 + num_samples // self.hop


@functools.lru_cache(maxsize=16)
def mel_filterbank(
    sample_rate: int,
    n_fft: int,
    n_mels: int,
    f_min: float,
    f_max: float,
    mel_scale: str,
    mel_norm: str,
):
    """[n_mels, n_fft//2+1] triangular mel filters, computed once per config: librosa's
    `filters.mel` (numpy, `melscale.py`). HTK without normalisation is torchaudio's
    `melscale_fbanks` default (same mel formula, same triangles on the same FFT bin
    frequencies)."""
    import torch

    fb = mel_filters(
        sample_rate, n_fft, n_mels, f_min, f_max, htk=mel_scale == "htk",
        slaney_norm=mel_norm == "slaney",
    )  # fmt: skip
    return torch.from_numpy(np.ascontiguousarray(fb, dtype=np.float32))


@functools.lru_cache(maxsize=16)
def _hann(n_fft: int) -> torch.Tensor:
    import torch

    return torch.hann_window(n_fft, periodic=True, dtype=torch.float32)


def power_spectrogram(
    pcm: torch.Tensor, n_fft: int, hop: int, pad_mode: str = "reflect"
) -> torch.Tensor:
    """|STFT|^2, [..., n_fft//2+1, frames] for pcm [..., samples] (float); `pad_mode`
    pads the centred first and last frames (torch.stft's and torchaudio's default is
    reflect; librosa >= 0.10 pads with zeros)."""
    import torch

    window = _hann(n_fft).to(pcm.device)
    lead = pcm.shape[:-1]
    flat = pcm.reshape(-1, pcm.shape[-1]).float()
    spec = torch.stft(
        flat,
        n_fft=n_fft,
        hop_length=hop,
        window=window,
        center=True,
        pad_mode=pad_mode,
        return_complex=True,
    )
    power = spec.real.square() + spec.imag.square()
    return power.reshape(*lead, *power.shape[-2:])


def compress(power: torch.Tensor, log_scale: str) -> torch.Tensor:
    import torch

    if log_scale == "db":
        return 10.0 * torch.log10(torch.clamp(power, min=_AMIN))
    if log_scale == "log10_1p":
        return torch.log10(1.0 + 10000.0 * power)
    raise ValueError(f"unknown log scale {log_scale!r}")


def log_mel(pcm: torch.Tensor | np.ndarray, cfg: FeatureConfig) -> torch.Tensor:
    """Log-mel spectrogram [..., n_mels, frames] of a waveform [..., samples] in [-1, 1]."""
    import torch

    pcm = torch.as_tensor(pcm)
    power = power_spectrogram(pcm, cfg.n_fft, cfg.hop, cfg.pad_mode)
    fb = mel_filterbank(
        cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max, cfg.mel_scale, cfg.mel_norm
    )
    mel = torch.matmul(fb.to(power.device), power)
    return compress(mel, cfg.log_scale)


# --- harmonic tensor (Won et al. 2020, Harmonic CNN) -------------------------------------


def harmonic_center_frequencies(sample_rate: int, harmonics: int, bands: int) -> np.ndarray:
    """[harmonics, bands] centre frequencies: `bands` fundamentals spaced evenly in MIDI
    from C1 up to the note nearest the frequency whose top harmonic reaches Nyquist,
    times h = 1..harmonics.
    With 16 kHz, 6 harmonics and 128 bands this is the HCNN's half-semitone grid."""
    low_midi = 24.0  # C1
    high_hz = sample_rate / (2 * harmonics)
    # Rounded to the nearest note, as the reference does (librosa's hz_to_note, then
    # note_to_midi): at 16 kHz and 6 harmonics, E6, so the bands are half a semitone apart.
    high_midi = float(np.round(69.0 + 12.0 * np.log2(high_hz / 440.0)))
    midi = np.linspace(low_midi, high_midi, bands + 1)[:-1]
    f0 = 440.0 * 2.0 ** ((midi - 69.0) / 12.0)
    return np.stack([f0 * h for h in range(1, harmonics + 1)])


def harmonic_filterbank(
    center_hz: torch.Tensor, bandwidth_q: torch.Tensor | float, sample_rate: int, n_fft: int
) -> torch.Tensor:
    """Triangular filters [..., n_fft//2+1] around each centre frequency. Bandwidth is the
    HCNN's ERB-style (0.1079 f + 24.7) / Q, so Q may be a trainable tensor."""
    import torch

    bins = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, device=center_hz.device)
    bandwidth = (0.1079 * center_hz + 24.7) / bandwidth_q
    distance = (bins - center_hz.unsqueeze(-1)).abs()
    return torch.relu(1.0 - 2.0 * distance / bandwidth.unsqueeze(-1))


def harmonic_tensor(pcm: torch.Tensor | np.ndarray, cfg: FeatureConfig) -> torch.Tensor:
    """[..., harmonics, bands, frames] in dB: the Harmonic CNN front end at initialisation
    (Q = 1). The model's trainable front end calls `harmonic_filterbank` with its own Q."""
    import torch

    pcm = torch.as_tensor(pcm)
    power = power_spectrogram(pcm, cfg.n_fft, cfg.hop, cfg.pad_mode)
    centers = torch.from_numpy(
        harmonic_center_frequencies(cfg.sample_rate, cfg.harmonics, cfg.harmonic_bands)
    ).float()
    fb = harmonic_filterbank(centers, 1.0, cfg.sample_rate, cfg.n_fft)  # [H, B, F]
    out = torch.einsum("hbf,...ft->...hbt", fb.to(power.device), power)
    return compress(out, "db")
