"""The front end musicnn's published models were run with (musicnn/extractor.py
`batch_data`), computed without librosa's STFT.

Official: `librosa.load(file, sr=16000)` (soundfile decode, channel mean, soxr HQ: the
same as `pipelines.core.audio.load_audio`), `librosa.feature.melspectrogram` with
n_fft 512, hop 256, 96 bands and its defaults (periodic Hann, centred frames with zero
padding in librosa 0.11, power 2, Slaney mel with area normalisation, 0..8000 Hz: the same
as `pipelines.core.features`), then — the part our `log10_1p` does not do — the mel is
cast to float16 (`audio_rep.astype(np.float16)`) before `np.log10(10000 * audio_rep + 1)`.
What that line computes depends on numpy's casting rules (`COMPRESSIONS`):

- "numpy1" (default): numpy < 2, the environment the models were published in: the
  python int 10000 promotes the float16 array to float32, so the mel is only rounded to
  float16 and the log is taken in float32.
- "numpy2": numpy >= 2 (NEP 50): the product stays float16 and every mel energy above
  65504/10000 overflows to +inf. musicnn 0.1.0 run today does this; loud audio (most
  commercial music) then gets one constant taggram whatever it contains. Kept to
  reproduce today's official output exactly, never the default.

The spectrogram is cut into windows of 187 frames
(3 s) with a hop of 187 frames (no overlap); a partial last window is dropped.
"""

from __future__ import annotations

import numpy as np
import torch

from pipelines.core.features import mel_filterbank, power_spectrogram

SAMPLE_RATE = 16000
N_FFT = 512
HOP = 256
N_MELS = 96
WINDOW_FRAMES = 187


def mel_power(pcm: np.ndarray) -> np.ndarray:
    """[frames, 96] float32 power mel (librosa.feature.melspectrogram(...).T)."""
    # librosa's defaults as the official extractor runs today: zero-padded ends, Slaney.
    pcm = torch.as_tensor(pcm, dtype=torch.float32)
    power = power_spectrogram(pcm, N_FFT, HOP, pad_mode="constant")
    fb = mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS, 0.0, SAMPLE_RATE / 2, "slaney", "slaney")
    return torch.matmul(fb, power).T.contiguous().numpy()


COMPRESSIONS = ("numpy1", "numpy2")


def musicnn_log(mel: np.ndarray, compression: str = "numpy1") -> np.ndarray:
    """The official `log10(10000 x + 1)` of the float16-cast mel (see COMPRESSIONS)."""
    # torch's float16 casts (vectorised) give numpy's values bit for bit, 40x faster.
    half_tensor = torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32)).half()
    if compression == "numpy1":
        widened = half_tensor.float().numpy()
        return np.log10(np.float32(10000) * widened + np.float32(1))
    half = half_tensor.numpy()
    if compression == "numpy2":
        with np.errstate(over="ignore"):
            return np.log10(np.float16(10000) * half + np.float16(1))
    raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")


def official_log_mel(pcm: np.ndarray, compression: str = "numpy1") -> np.ndarray:
    """[frames, 96], as `batch_data`'s `audio_rep` for 16 kHz mono PCM."""
    return musicnn_log(mel_power(pcm), compression)


def window_starts(
    n_frames: int, length: int = WINDOW_FRAMES, hop: int = WINDOW_FRAMES
) -> list[int]:
    """First frame of each window: range(0, n_frames - length + 1, hop), as batch_data."""
    return list(range(0, n_frames - length + 1, hop))


def cut_windows(log_mel: np.ndarray, starts: list[int], length: int = WINDOW_FRAMES) -> np.ndarray:
    """[windows, 96, length] float32 (the zoo's [B, n_mels, frames] layout)."""
    stacked = np.stack([log_mel[s : s + length] for s in starts]).astype(np.float32)
    return np.ascontiguousarray(stacked.transpose(0, 2, 1))


def window_seconds(starts: list[int], length: int = WINDOW_FRAMES) -> list[tuple[float, float]]:
    """(start, end) in seconds of each window: frame f is centred at f * hop / sr."""
    return [(s * HOP / SAMPLE_RATE, (s + length) * HOP / SAMPLE_RATE) for s in starts]
