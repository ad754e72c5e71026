"""Decode, downmix, resample and validate audio: plain functions on arrays.

Decoders: libsndfile (soundfile; fastest on MP3 here, the default), essentia's
AudioLoader (the papers' decoder) and ffmpeg (for what libsndfile cannot read, e.g.
AAC/M4A). `auto` tries soundfile and falls back to ffmpeg. Every decoder returns the
native-rate multichannel signal; downmix (mean of channels) and resampling (soxr HQ) are
shared, so switching decoder changes only the decoding.

Problems raise `AudioRejected(stage, reason, message)`; the Beam job turns them into rows
of rejects.parquet.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

DECODERS = ("auto", "soundfile", "essentia", "ffmpeg")

# Reject reasons (stable strings: they are counted, tested and documented).
UNREADABLE = "unreadable"
EMPTY = "empty"
TRUNCATED = "truncated"
TOO_SHORT = "too_short"
SILENT = "silent"
NON_FINITE = "non_finite"
MISSING = "missing"

# Peak below this (about -100 dBFS) is digital silence, not a quiet recording.
SILENCE_PEAK = 1e-5


class AudioRejected(Exception):
    def __init__(self, stage: str, reason: str, message: str):
        super().__init__(f"{stage}/{reason}: {message}")
        self.stage = stage
        self.reason = reason
        self.message = message


@dataclass
class Decoded:
    """Mono float32 PCM at `sample_rate`, plus what it came from."""

    pcm: np.ndarray
    sample_rate: int
    source_sample_rate: int
    source_channels: int
    decoder: str
    source_seconds: float
    cropped: bool = False

    @property
    def seconds(self) -> float:
        return len(self.pcm) / self.sample_rate


_OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


def _first_line(exc: BaseException) -> str:
    """First line of an error, without object addresses (rejects must be reproducible)."""
    text = str(exc).strip().splitlines()
    return _OBJECT_REPR.sub("<input>", text[0])[:300] if text else type(exc).__name__


def decode_soundfile(data: bytes) -> tuple[np.ndarray, int]:
    """[channels, samples] float32 and the native rate."""
    with sf.SoundFile(io.BytesIO(data)) as f:
        rate = f.samplerate
        frames = f.read(dtype="float32", always_2d=True)
    return np.ascontiguousarray(frames.T), rate


def _with_temp_file(data: bytes, suffix: str, fn):
    # essentia and ffmpeg want a path; remote files arrive as bytes.
    fd, path = tempfile.mkstemp(suffix=suffix or ".audio")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return fn(path)
    finally:
        os.unlink(path)


def decode_essentia(data: bytes, suffix: str = "") -> tuple[np.ndarray, int]:
    import essentia

    essentia.log.warningActive = False
    import essentia.standard as es

    def load(path):
        audio, rate, channels, *_ = es.AudioLoader(filename=path)()
        audio = np.asarray(audio, dtype=np.float32)  # [samples, 2]
        if channels == 1:
            audio = audio[:, :1]
        return np.ascontiguousarray(audio.T), int(rate)

    return _with_temp_file(data, suffix, load)


def decode_ffmpeg(data: bytes, suffix: str = "") -> tuple[np.ndarray, int]:
    def load(path):
        out = path + ".wav"
        try:
            proc = subprocess.run(
                ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", path, "-vn"]
                + ["-c:a", "pcm_f32le", "-f", "wav", out],
                capture_output=True,
                timeout=600,
            )
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr.decode(errors="replace").strip() or "ffmpeg failed")
            frames, rate = sf.read(out, dtype="float32", always_2d=True)
            return np.ascontiguousarray(frames.T), rate
        finally:
            if os.path.exists(out):
                os.unlink(out)

    return _with_temp_file(data, suffix, load)


def decode_bytes(
    data: bytes, decoder: str = "auto", suffix: str = ""
) -> tuple[np.ndarray, int, str]:
    """Decode to ([channels, samples] float32, native rate, decoder used)."""
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; expected one of {DECODERS}")
    if not data:
        raise AudioRejected("decode", EMPTY, "file is empty (0 bytes)")
    if decoder == "essentia":
        return (*decode_essentia(data, suffix), "essentia")
    if decoder == "ffmpeg":
        return (*decode_ffmpeg(data, suffix), "ffmpeg")
    try:
        return (*decode_soundfile(data), "soundfile")
    except Exception as first:
        if decoder == "soundfile":
            raise
        try:
            return (*decode_ffmpeg(data, suffix), "ffmpeg")
        except Exception:
            raise first from None


def downmix(frames: np.ndarray) -> np.ndarray:
    """Mean over channels of [channels, samples]."""
    if frames.shape[0] == 1:
        return frames[0]
    return frames.mean(axis=0, dtype=np.float32)


def resample(pcm: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    if source_rate == target_rate:
        return np.ascontiguousarray(pcm, dtype=np.float32)
    return soxr.resample(pcm, source_rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def load_audio(
    data: bytes,
    sample_rate: int,
    decoder: str = "auto",
    suffix: str = "",
    min_seconds: float = 1.0,
    max_seconds: float | None = None,
    expected_seconds: float | None = None,
) -> Decoded:
    """Decode, downmix, resample and validate one file's bytes.

    `max_seconds` crops to the first `max_seconds` (a cap on memory and shard size for
    very long files; the sample's JSON records `cropped`). `expected_seconds`, when the
    manifest knows the duration, catches files truncated to less than half of it.
    """
    if not data:
        raise AudioRejected("decode", EMPTY, "file is empty (0 bytes)")
    try:
        frames, rate, used = decode_bytes(data, decoder, suffix)
    except AudioRejected:
        raise
    except Exception as exc:
        raise AudioRejected("decode", UNREADABLE, _first_line(exc)) from None
    channels, samples = frames.shape
    if samples == 0 or rate <= 0:
        raise AudioRejected("decode", EMPTY, "decoded to no audio samples")
    source_seconds = samples / rate
    if not np.isfinite(frames).all():
        raise AudioRejected("validate", NON_FINITE, "decoded audio contains NaN or Inf")
    cropped = False
    if max_seconds is not None and source_seconds > max_seconds:
        frames = frames[:, : int(round(max_seconds * rate))]
        cropped = True
    pcm = resample(downmix(frames), rate, sample_rate)
    out = Decoded(pcm, sample_rate, rate, channels, used, source_seconds, cropped)
    if expected_seconds and source_seconds < 0.5 * expected_seconds:
        raise AudioRejected(
            "validate",
            TRUNCATED,
            f"decoded {source_seconds:.2f} s of an expected {expected_seconds:.2f} s",
        )
    if out.seconds < min_seconds:
        raise AudioRejected(
            "validate",
            TOO_SHORT,
            f"{out.seconds:.2f} s is shorter than the minimum {min_seconds} s",
        )
    peak = float(np.max(np.abs(pcm))) if len(pcm) else 0.0
    if peak < SILENCE_PEAK:
        raise AudioRejected("validate", SILENT, f"all-silent (peak {peak:.2e})")
    return out


def to_int16(pcm: np.ndarray) -> np.ndarray:
    return np.clip(np.round(pcm * 32767.0), -32768, 32767).astype(np.int16)


def from_int16(pcm: np.ndarray) -> np.ndarray:
    return pcm.astype(np.float32) / 32767.0
