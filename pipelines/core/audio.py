"""Decode, downmix, resample and validate audio: plain functions on arrays.

Decoders: libsndfile (soundfile; fastest on MP3 here, the default), essentia's
AudioLoader (the papers' decoder) and ffmpeg (for what libsndfile cannot read, e.g.
AAC/M4A; locked down to the one file it is given, see `core/ffmpeg.py`). `auto` tries
soundfile and falls back to ffmpeg. Every decoder gives the native-rate multichannel
signal; downmix (mean of channels) and resampling (soxr HQ) are shared, so switching
decoder changes only the decoding.

Bounded memory, whatever the file: soundfile and ffmpeg are read in blocks, each block
downmixed and resampled on the fly (a streaming soxr gives the very samples a one-shot
resample gives), so a decode costs about its mono output at the target rate, never the
native multichannel signal (a 1.3 MB FLAC of 7.1 silence decodes to 5 GB of it). Before a
block is read, the length the header says (libsndfile's frame count, the MPEG frame
walk, ffprobe) is checked against the caps, and the running length is checked again as
blocks come: without `max_seconds`, at most `max_decode_seconds` (default 2 h) of audio,
and never more than `MAX_NATIVE_SAMPLES` native samples (channels x frames) in one decode.
Over a cap is a `too_long` reject, in milliseconds for a header that says so. Samples far
past full scale (over `MAX_PEAK`, e.g. 1e30 in a float WAV) are an `out_of_range` reject,
not a full-scale square wave.

Never silently short: libsndfile can return less audio than a file holds without raising
(an MP3 without a Xing header, a damaged region). Every soundfile decode is checked
against an independent estimate of the length (the header's frame count and, for MPEG, a
count of the frames themselves, `core/mpeg_length.py`); when it falls materially short,
`auto` decodes with ffmpeg instead. A recovered or still partial decode, or one during
which ffmpeg reported errors, carries `warnings` (the sample's JSON `decode_warnings`).

With `max_seconds`, only the frames needed are decoded (libsndfile `frames=`, ffmpeg `-t`).

Streaming: `iter_audio_blocks(source, sample_rate, block_seconds)` yields the same mono
signal as `load_audio` in blocks of `block_seconds` (for tagging a file hours long in
windows: memory is one block, no length cap).

Problems raise `AudioRejected(stage, reason, message)` (permanent: a reject row) or
`TransientError` (retry); see `core/failures.py`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf
import soxr

from pipelines.core import decode_blocks as blocks
from pipelines.core import ffmpeg
from pipelines.core.decode_blocks import (  # noqa: F401  (re-exported for callers)
    BLOCK_SECONDS,
    DEFAULT_MAX_DECODE_SECONDS,
    MAX_NATIVE_SAMPLES,
    MAX_PEAK,
    downmix,
)
from pipelines.core.failures import (  # noqa: F401  (reasons re-exported for callers)
    EMPTY,
    MISSING,
    NON_FINITE,
    OUT_OF_RANGE,
    SILENT,
    TOO_LONG,
    TOO_SHORT,
    TRUNCATED,
    UNREADABLE,
    AudioRejected,
    TransientError,
    reason_text,
)
from pipelines.core.source import read_local

DECODERS = ("auto", "soundfile", "essentia", "ffmpeg")

# Peak below this (about -100 dBFS) is digital silence, not a quiet recording.
SILENCE_PEAK = 1e-5
# A decode is short when it misses more than max(0.5 s, 1 %) of the estimate: encoder
# delay and padding (a few ms) and a Xing frame must not count as missing audio.
SHORT_TOLERANCE_S = 0.5
SHORT_TOLERANCE_FRACTION = 0.01


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


def decode_soundfile(data: bytes, max_seconds: float | None = None) -> RawDecode:
    """libsndfile, reading at most `max_seconds` (plus one frame, to know if it goes on)."""
    with sf.SoundFile(io.BytesIO(data)) as f:
        rate = f.samplerate
        limit = blocks.frame_limit(max_seconds, rate)
        expected = blocks.expected_frames(data, f, limit)[0]
        frames = f.read(frames=-1 if limit is None else limit + 1, dtype="float32", always_2d=True)
    cropped = limit is not None and frames.shape[0] > limit
    if cropped:
        frames = frames[:limit]
    return RawDecode(np.ascontiguousarray(frames.T), rate, "soundfile", expected, cropped)


def decode_essentia(
    data: bytes, suffix: str = "", max_seconds: float | None = None, check=None
) -> RawDecode:
    """essentia's AudioLoader (whole file at once); `check(seconds)` is given the length
    ffprobe reads from the header before anything is decoded (it raises to refuse)."""
    import essentia

    essentia.log.warningActive = False
    import essentia.standard as es

    def load(path):
        # essentia opens files with libavformat and no allow-list: refuse playlists first.
        ffmpeg.check_container(path)
        if check is not None:
            check(ffmpeg.probe_seconds(path))
        try:
            audio, rate, channels, *_ = es.AudioLoader(filename=path)()
        except RuntimeError as exc:
            raise AudioRejected("decode", UNREADABLE, reason_text(exc)) from None
        audio = np.asarray(audio, dtype=np.float32)  # [samples, 2]
        if channels == 1:
            audio = audio[:, :1]
        frames, limit = audio.T, blocks.frame_limit(max_seconds, int(rate))
        cropped = limit is not None and frames.shape[1] > limit
        return RawDecode(
            np.ascontiguousarray(frames[:, :limit]), int(rate), "essentia", None, cropped
        )

    return ffmpeg.with_private_copy(data, suffix, load)


def shortfall(raw, max_seconds: float | None) -> tuple[float, float] | None:
    """(decoded seconds, expected seconds) when `raw` (a RawDecode or a finished decode)
    is materially shorter than its independent estimate (capped at `max_seconds`)."""
    if not raw.expected_frames:
        return None
    target = raw.expected_frames / raw.rate
    if max_seconds is not None:
        target = min(target, max_seconds)
    got = raw.seconds
    if target - got > max(SHORT_TOLERANCE_S, SHORT_TOLERANCE_FRACTION * target):
        return got, target
    return None


_SOUNDFILE_ERRORS = (sf.LibsndfileError, RuntimeError, ValueError, TypeError)


def _decode(data, decoder, suffix, caps: blocks.Caps, timeout) -> blocks.Result:
    """Decode with `decoder`, checked against an independent length estimate."""
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; expected one of {DECODERS}")
    if not data:
        raise AudioRejected("decode", EMPTY, "file is empty (0 bytes)")
    max_seconds = caps.max_seconds

    def with_ffmpeg():
        return blocks.consume(
            blocks.FfmpegSource(
                data,
                suffix,
                max_seconds,
                caps.max_decode_seconds,
                timeout or ffmpeg.DEFAULT_TIMEOUT_S,
            ),
            caps,
        )

    if decoder == "essentia":

        def check(seconds):
            caps.check(44100, 2, seconds and seconds * 44100)  # AudioLoader: stereo

        return blocks.consume(
            blocks.WholeSource(decode_essentia(data, suffix, max_seconds, check)), caps
        )
    if decoder == "ffmpeg":
        return with_ffmpeg()
    try:
        first = blocks.consume(blocks.SoundfileSource(data, max_seconds), caps)
    except _SOUNDFILE_ERRORS as exc:
        if decoder == "soundfile":
            raise AudioRejected("decode", UNREADABLE, reason_text(exc)) from None
        # Ordinary for containers libsndfile does not read (AAC, WMA, Opus in WebM, ...).
        return with_ffmpeg()
    short = shortfall(first, max_seconds)
    if short is None:
        return first
    note = f"soundfile decoded {short[0]:.2f} s of an expected {short[1]:.2f} s"
    if decoder == "soundfile":
        first.warnings.append(f"partial: {note}")
        return first
    try:
        second = with_ffmpeg()
    except AudioRejected as exc:
        if exc.reason in (TOO_LONG, NON_FINITE, OUT_OF_RANGE):
            raise
        first.warnings.append(f"partial: {note}; ffmpeg failed: {exc.message}"[:300])
        return first
    return _recovered(first, second, note, max_seconds)


def _recovered(
    first: blocks.Result, second: blocks.Result, note: str, max_seconds
) -> blocks.Result:
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
    max_decode_seconds: float | None = DEFAULT_MAX_DECODE_SECONDS,
) -> Decoded:
    """Decode, downmix, resample and validate one file's bytes.

    `max_seconds` decodes only the first `max_seconds` (a cap on memory, time and shard
    size for very long files; the sample's JSON records `cropped`). Without it, a file
    longer than `max_decode_seconds` (None: no cap) is a `too_long` reject, refused from
    its header before anything is decoded when the header says so. `expected_seconds`,
    when the manifest knows the duration, catches files truncated to less than half of
    it; the independent length estimate does the same without a manifest duration.
    """
    caps = blocks.Caps(sample_rate, max_seconds, max_decode_seconds)
    raw = _decode(data, decoder, suffix, caps, timeout)
    if raw.samples == 0 or raw.rate <= 0:
        raise AudioRejected("decode", EMPTY, "decoded to no audio samples")
    whole = max(raw.samples, raw.expected_frames or 0) if raw.cropped else raw.samples
    source_seconds = whole / raw.rate
    length_known = not raw.cropped or raw.expected_frames is not None
    _check_truncated(raw, source_seconds, expected_seconds if length_known else None)
    out = Decoded(
        raw.pcm, sample_rate, raw.rate, raw.channels, raw.decoder, source_seconds, raw.cropped,
        list(raw.warnings),
    )  # fmt: skip
    if out.seconds < min_seconds:
        raise AudioRejected(
            "validate",
            TOO_SHORT,
            f"{out.seconds:.2f} s is shorter than the minimum {min_seconds} s",
        )
    peak = blocks.peak_of(out.pcm) if len(out.pcm) else 0.0
    if peak < SILENCE_PEAK:
        raise AudioRejected("validate", SILENT, f"all-silent (peak {peak:.2e})")
    return out


def iter_audio_blocks(
    source: bytes | str | os.PathLike,
    sample_rate: int,
    block_seconds: float = 30.0,
    decoder: str = "auto",
    suffix: str = "",
    timeout: float | None = None,
    warnings: list[str] | None = None,
) -> Iterator[np.ndarray]:
    """The mono float32 signal `load_audio` gives, at `sample_rate`, in consecutive blocks
    of `block_seconds` (the last one shorter), decoded as it is consumed: memory is one
    block whatever the file's length, channels or rate, and there is no length cap.

    `source` is a file's bytes or its path. `decoder` is "auto", "soundfile" or "ffmpeg"
    (essentia decodes whole files only). A soundfile decode that ends materially short of
    the file's independent length is continued with ffmpeg from where it stopped ("auto"),
    and `warnings` (when given) gets the same notes `Decoded.warnings` would. Raises
    AudioRejected (unreadable, empty, non-finite, out of range) or TransientError; blocks
    already yielded stay valid. No silence or minimum-length check: the caller decides.
    """
    if decoder not in ("auto", "soundfile", "ffmpeg"):
        raise ValueError(
            f"iter_audio_blocks decodes with auto, soundfile or ffmpeg, not {decoder!r}"
        )
    if not isinstance(source, bytes):  # a regular file only: /dev/zero would never end
        suffix = suffix or os.path.splitext(os.fspath(source))[1]
        source = read_local(os.fspath(source)).data
    if not source:
        raise AudioRejected("decode", EMPTY, "file is empty (0 bytes)")
    notes = warnings if warnings is not None else []
    step = max(1, int(round(block_seconds * sample_rate)))
    pending: list[np.ndarray] = []
    held = 0

    def ready(x: np.ndarray, last: bool = False):
        nonlocal held
        pending.append(x)
        held += len(x)
        while held >= step or (last and held):
            joined = np.concatenate(pending)
            out, rest = joined[:step], joined[step:]
            pending[:] = [rest]
            held = len(rest)
            yield out

    first = None
    if decoder != "ffmpeg":
        try:
            first = blocks.SoundfileSource(source, None)
        except _SOUNDFILE_ERRORS as exc:
            if decoder == "soundfile":
                raise AudioRejected("decode", UNREADABLE, reason_text(exc)) from None
    opened = first or blocks.FfmpegSource(source, suffix, None, None, timeout)
    mono = blocks.Mono(opened.rate, sample_rate)
    try:
        for block in opened.blocks():
            yield from ready(mono.push(block))
    except _SOUNDFILE_ERRORS as exc:  # damage libsndfile refuses mid-file: go on with ffmpeg
        if opened is not first:
            raise
        if decoder == "soundfile":
            raise AudioRejected("decode", UNREADABLE, reason_text(exc)) from None
    finally:
        opened.close()
    notes.extend(opened.warnings)
    short = shortfall(_ResultLike(opened.rate, mono.frames, opened.expected_frames), None)
    if first is not None and short is not None:
        note = f"soundfile decoded {short[0]:.2f} s of an expected {short[1]:.2f} s"
        if decoder == "soundfile":
            notes.append(f"partial: {note}")
        else:
            yield from _continue_with_ffmpeg(source, suffix, timeout, mono, ready, notes, note)
    yield from ready(mono.flush(), last=True)


@dataclass
class _ResultLike:
    rate: int
    samples: int
    expected_frames: int | None

    @property
    def seconds(self) -> float:
        return self.samples / self.rate


def _continue_with_ffmpeg(data, suffix, timeout, mono: blocks.Mono, ready, notes, note):
    """Decode with ffmpeg from the start, skip the frames soundfile gave, go on from there."""
    done = mono.frames
    try:
        source = blocks.FfmpegSource(data, suffix, None, None, timeout)
    except AudioRejected as exc:
        notes.append(f"partial: {note}; ffmpeg failed: {exc.message}"[:300])
        return
    try:
        if source.rate != mono.rate:
            notes.append(f"partial: {note}; ffmpeg decodes at another rate ({source.rate} Hz)")
            return
        seen = 0
        for block in source.blocks():
            skip = min(max(done - seen, 0), block.shape[1])
            seen += block.shape[1]
            if skip < block.shape[1]:
                yield from ready(mono.push(np.ascontiguousarray(block[:, skip:])))
    except AudioRejected as exc:
        if exc.reason in (NON_FINITE, OUT_OF_RANGE):
            raise
        notes.append(f"partial: {note}; ffmpeg failed: {exc.message}"[:300])
        return
    finally:
        source.close()
    if mono.frames <= done:
        notes.append(f"partial: {note}; ffmpeg decoded no more ({seen / mono.rate:.2f} s)")
        return
    notes.append(f"recovered: {note}; continued with ffmpeg ({mono.frames / mono.rate:.2f} s)")
    notes.extend(source.warnings)


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
