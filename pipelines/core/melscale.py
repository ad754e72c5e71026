"""Mel scales and triangular mel filters in numpy: librosa's `filters.mel` (0.10/0.11),
HTK or Slaney scale, without or with Slaney's area normalisation, to float precision.

Why not librosa itself: importing `librosa.filters` pulls in numba and scipy, ~0.9 CPU-s
of every Beam worker that builds a shard, to compute one small matrix. The arithmetic
below is librosa's, step for step and in the same dtypes (float64 ramps, stored as
float32, then normalised in place), so the filters are the same numbers; the tests compare
the two over a grid of settings.
"""

from __future__ import annotations

import numpy as np

# Slaney's scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
_SLANEY_HZ_PER_MEL = 200.0 / 3
_SLANEY_BREAK_HZ = 1000.0
_SLANEY_BREAK_MEL = _SLANEY_BREAK_HZ / _SLANEY_HZ_PER_MEL
_SLANEY_LOG_STEP = np.log(6.4) / 27.0


def hz_to_mel(hz, htk: bool) -> np.ndarray:
    hz = np.asanyarray(hz, dtype=np.float64)
    if htk:
        return 2595.0 * np.log10(1.0 + hz / 700.0)
    mels = hz / _SLANEY_HZ_PER_MEL
    upper = hz >= _SLANEY_BREAK_HZ
    return np.where(
        upper,
        _SLANEY_BREAK_MEL
        + np.log(np.maximum(hz, _SLANEY_BREAK_HZ) / _SLANEY_BREAK_HZ) / _SLANEY_LOG_STEP,
        mels,
    )


def mel_to_hz(mels, htk: bool) -> np.ndarray:
    mels = np.asanyarray(mels, dtype=np.float64)
    if htk:
        return 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    hz = _SLANEY_HZ_PER_MEL * mels
    upper = mels >= _SLANEY_BREAK_MEL
    return np.where(
        upper,
        _SLANEY_BREAK_HZ * np.exp(_SLANEY_LOG_STEP * (mels - _SLANEY_BREAK_MEL)),
        hz,
    )


def mel_frequencies(n: int, f_min: float, f_max: float, htk: bool) -> np.ndarray:
    """`n` frequencies evenly spaced on the mel scale from f_min to f_max (Hz)."""
    low, high = hz_to_mel(f_min, htk), hz_to_mel(f_max, htk)
    return mel_to_hz(np.linspace(low, high, n), htk)


def mel_filters(
    sample_rate: float,
    n_fft: int,
    n_mels: int,
    f_min: float,
    f_max: float,
    htk: bool,
    slaney_norm: bool,
) -> np.ndarray:
    """[n_mels, n_fft//2+1] float32 triangles on the FFT bin frequencies, each rising
    from the mel frequency below its centre and falling to the one above; with
    `slaney_norm`, each scaled by 2 / its width in Hz (constant energy per band)."""
    bins = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    edges = mel_frequencies(n_mels + 2, f_min, f_max, htk)
    widths = np.diff(edges)
    ramps = np.subtract.outer(edges, bins)
    weights = np.zeros((n_mels, n_fft // 2 + 1), dtype=np.float32)
    for i in range(n_mels):
        rising = -ramps[i] / widths[i]
        falling = ramps[i + 2] / widths[i + 1]
        weights[i] = np.maximum(0, np.minimum(rising, falling))
    if slaney_norm:
        weights *= (2.0 / (edges[2 : n_mels + 2] - edges[:n_mels]))[:, np.newaxis]
    return weights
