"""Decode, downmix, resample and validate audio: plain functions on arrays.

Decoders: libsndfile (soundfile; fastest on MP3 here, the default), essentia's
AudioLoader (the papers' decoder) and ffmpeg (for what libsndfile cannot read, e.g.
AAC/M4A; locked down to the one file it is given, see `core/ffmpeg.py`). `auto` tries
soundfile and falls back to ffmpeg. Every decoder returns the native-rate multichannel
signal; downmix (mean of channels) and resampling (soxr HQ) are shared, so switching
decoder changes only the decoding.

Never silently short: libsndfile can return less audio than a file holds without raising
(an MP3 without a Xing header, a damaged region). Every soundfile decode is checked
against an independent estimate of the length (the header's frame count and, for MPEG, a
count of the frames themselves, `core/probe.py`); when it falls materially short, `auto`
decodes with ffmpeg instead. A recovered or still partial decode, or one during which
ffmpeg reported errors, carries `warnings` (the sample's JSON `decode_warnings`).

With `max_seconds`, only the frames needed are decoded (libsndfile `frames=`, ffmpeg `-t`).

Problems raise `AudioRejected(stage, reason, message)` (permanent: a reject row) or
`TransientError` (retry); see `core/failures.py`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf
import soxr

from pipelines.core import ffmpeg
from pipelines.core.failures import (  # noqa: F401  (reasons re-exported for callers)
    EMPTY,
    MISSING,
    NON_FINITE,
    SILENT,
    TOO_SHORT,
    TRUNCATED,
    UNREADABLE,
    AudioRejected,
    TransientError,
    reason_text,
)
from pipelines.core.mpeg_length import mpeg_frames

DECODERS = ("auto", "soundfile", "essentia", "ffmpeg")

# Peak below this (about -100 dBFS) is digital silence, not a quiet recording.
SILENCE_PEAK = 1e-5
# A decode is short when it misses more than max(0.5 s, 1 %) of the estimate: encoder
# delay and padding (a few ms) and a Xing frame must not count as missing audio.
SHORT_TOLERANCE_S = 0.5
SHORT_TOLERANCE_FRACTION = 0.01
_UNKNOWN_FRAMES = 2**62  # libsndfile's "length unknown"


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
    warnings: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return len(self.pcm) / self.sample_rate


@dataclass
class RawDecode:
    """What a decoder returned: [channels, samples] float32 at the native rate."""

    frames: np.ndarray
    rate: int
    decoder: str
    expected_frames: int | None = None  # independent estimate of the whole file's length
    cropped: bool = False  # the file goes on past `max_seconds`
    warnings: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.frames.shape[1] / self.rate


def _frame_limit(max_seconds: float | None, rate: int) -> int | None:
    return None if max_seconds is None else int(round(max_seconds * rate))


def decode_soundfile(data: bytes, max_seconds: float | None = None) -> RawDecode:
    """libsndfile, reading at most `max_seconds` (plus one frame, to know if it goes on)."""
    with sf.SoundFile(io.BytesIO(data)) as f:
        rate, header_frames, subtype = f.samplerate, f.frames, f.subtype
        limit = _frame_limit(max_seconds, rate)
        frames = f.read(frames=-1 if limit is None else limit + 1, dtype="float32", always_2d=True)
    expected = header_frames if 0 < header_frames < _UNKNOWN_FRAMES else None
    if subtype.startswith("MPEG_LAYER"):
        counted = mpeg_frames(data, stop_after=None if limit is None else limit + 1)
        if counted is not None and counted[1] == rate:
            expected = max(expected or 0, counted[0])
    cropped = limit is not None and frames.shape[0] > limit
    if cropped:
        frames = frames[:limit]
    return RawDecode(np.ascontiguousarray(frames.T), rate, "soundfile", expected, cropped)


def decode_with_ffmpeg(
    data: bytes, suffix: str = "", max_seconds: float | None = None, timeout: float | None = None
) -> RawDecode:
    # 0.1 s more than needed tells whether the file goes on (cropped).
    out = ffmpeg.decode_bytes(
        data,
        suffix,
        None if max_seconds is None else max_seconds + 0.1,
        timeout or ffmpeg.DEFAULT_TIMEOUT_S,
    )
    limit = _frame_limit(max_seconds, out.rate)
    frames = out.frames
    cropped = limit is not None and frames.shape[1] > limit
    if cropped:
        frames = np.ascontiguousarray(frames[:, :limit])
    warnings = []
    if out.messages:
        warnings.append(
            f"ffmpeg reported {len(out.messages)} problem(s) while decoding: {out.messages[0]}"[
                :300
            ]
        )
    return RawDecode(frames, out.rate, "ffmpeg", None, cropped, warnings)


def decode_essentia(data: bytes, suffix: str = "", max_seconds: float | None = None) -> RawDecode:
    import essentia

    essentia.log.warningActive = False
    import essentia.standard as es

    def load(path):
        # essentia opens files with libavformat and no allow-list: refuse playlists first.
        ffmpeg.check_container(path)
        try:
            audio, rate, channels, *_ = es.AudioLoader(filename=path)()
        except RuntimeError as exc:
            raise AudioRejected("decode", UNREADABLE, reason_text(exc)) from None
        audio = np.asarray(audio, dtype=np.float32)  # [samples, 2]
        if channels == 1:
            audio = audio[:, :1]
        frames, limit = audio.T, _frame_limit(max_seconds, int(rate))
        cropped = limit is not None and frames.shape[1] > limit
        return RawDecode(
            np.ascontiguousarray(frames[:, :limit]), int(rate), "essentia", None, cropped
        )

    return ffmpeg.with_private_copy(data, suffix, load)


def shortfall(raw: RawDecode, max_seconds: float | None) -> tuple[float, float] | None:
    """(decoded seconds, expected seconds) when `raw` is materially shorter than its
    independent estimate (capped at `max_seconds`), else None."""
    if not raw.expected_frames:
        return None
    target = raw.expected_frames / raw.rate
    if max_seconds is not None:
        target = min(target, max_seconds)
    got = raw.seconds
    if target - got > max(SHORT_TOLERANCE_S, SHORT_TOLERANCE_FRACTION * target):
        return got, target
    return None


def decode_bytes(
    data: bytes,
    decoder: str = "auto",
    suffix: str = "",
    max_seconds: float | None = None,
    timeout: float | None = None,
) -> RawDecode:
    """Decode with `decoder`, checked against an independent length estimate."""
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; expected one of {DECODERS}")
    if not data:
        raise AudioRejected("decode", EMPTY, "file is empty (0 bytes)")
    if decoder == "essentia":
        return decode_essentia(data, suffix, max_seconds)
    if decoder == "ffmpeg":
        return decode_with_ffmpeg(data, suffix, max_seconds, timeout)
    try:
        first = decode_soundfile(data, max_seconds)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as exc:
        if decoder == "soundfile":
            raise AudioRejected("decode", UNREADABLE, reason_text(exc)) from None
        # Ordinary for containers libsndfile does not read (AAC, WMA, Opus in WebM, ...).
        return decode_with_ffmpeg(data, suffix, max_seconds, timeout)
    short = shortfall(first, max_seconds)
    if short is None:
        return first
    note = f"soundfile decoded {short[0]:.2f} s of an expected {short[1]:.2f} s"
    if decoder == "soundfile":
        first.warnings.append(f"partial: {note}")
        return first
    return _recover_with_ffmpeg(data, suffix, max_seconds, timeout, first, note)


def _recover_with_ffmpeg(data, suffix, max_seconds, timeout, first: RawDecode, note: str):
    try:
        second = decode_with_ffmpeg(data, suffix, max_seconds, timeout)
    except AudioRejected as exc:
        first.warnings.append(f"partial: {note}; ffmpeg failed: {exc.message}"[:300])
        return first
    if second.seconds <= first.seconds:
        first.warnings.append(f"partial: {note}; ffmpeg decoded no more ({second.seconds:.2f} s)")
        return first
    if second.rate == first.rate:
        second.expected_frames = first.expected_frames
    second.warnings.insert(0, f"recovered: {note}; decoded with ffmpeg ({second.seconds:.2f} s)")
    still = shortfall(second, max_seconds)
    if still is not None:
        second.warnings.append(
            f"partial: ffmpeg decoded {still[0]:.2f} s of an expected {still[1]:.2f} s"
        )
    return second


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
    timeout: float | None = None,
) -> Decoded:
    """Decode, downmix, resample and validate one file's bytes.

    `max_seconds` decodes only the first `max_seconds` (a cap on memory, time and shard
    size for very long files; the sample's JSON records `cropped`). `expected_seconds`,
    when the manifest knows the duration, catches files truncated to less than half of
    it; the independent length estimate does the same without a manifest duration.
    """
    raw = decode_bytes(data, decoder, suffix, max_seconds, timeout)
    channels, samples = raw.frames.shape
    if samples == 0 or raw.rate <= 0:
        raise AudioRejected("decode", EMPTY, "decoded to no audio samples")
    if not np.isfinite(raw.frames).all():
        raise AudioRejected("validate", NON_FINITE, "decoded audio contains NaN or Inf")
    whole = max(samples, raw.expected_frames or 0) if raw.cropped else samples
    source_seconds = whole / raw.rate
    length_known = not raw.cropped or raw.expected_frames is not None
    _check_truncated(raw, source_seconds, expected_seconds if length_known else None)
    pcm = resample(downmix(raw.frames), raw.rate, sample_rate)
    out = Decoded(
        pcm, sample_rate, raw.rate, channels, raw.decoder, source_seconds, raw.cropped,
        list(raw.warnings),
    )  # fmt: skip
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


def _check_truncated(raw: RawDecode, source_seconds: float, expected_seconds) -> None:
    """Less than half of what the manifest or the file's own frames say: a reject."""
    if expected_seconds and source_seconds < 0.5 * expected_seconds:
        raise AudioRejected(
            "validate",
            TRUNCATED,
            f"decoded {source_seconds:.2f} s of an expected {expected_seconds:.2f} s",
        )
    if (
        not raw.cropped
        and raw.expected_frames
        and raw.seconds < 0.5 * raw.expected_frames / raw.rate
    ):
        raise AudioRejected(
            "validate",
            TRUNCATED,
            f"decoded {raw.seconds:.2f} s of the {raw.expected_frames / raw.rate:.2f} s "
            "the file's frames hold",
        )


def to_int16(pcm: np.ndarray) -> np.ndarray:
    return np.clip(np.round(pcm * 32767.0), -32768, 32767).astype(np.int16)


def from_int16(pcm: np.ndarray) -> np.ndarray:
    return pcm.astype(np.float32) / 32767.0
