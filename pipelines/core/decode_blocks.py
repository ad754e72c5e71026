"""Block-wise decoding: memory bounded by the output, whatever the file decodes to.

A decoder is opened as a `Source` of native-rate [channels, n] float32 blocks (libsndfile
and ffmpeg read block by block; essentia, which decodes whole files, is one block). Before
the first block, what the header says about the length is checked against the `Caps`; as
blocks come, the running length is checked again (a header can lie). Each block is
downmixed (mean of channels) and resampled (a streaming soxr HQ: the very samples a
one-shot resample gives) as it comes (`Mono`), so a 7.1 48 kHz file costs its 16 kHz
mono output, not eight channels at 48 kHz. NaN/Inf and absurd sample values (`MAX_PEAK`)
are refused block by block. `consume` runs one source to a finished decode (`Result`).

Used by `core/audio.py` (`load_audio`, `iter_audio_blocks`); not a public API itself.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from pipelines.core import ffmpeg
from pipelines.core.failures import NON_FINITE, OUT_OF_RANGE, TOO_LONG, AudioRejected
from pipelines.core.mpeg_length import mpeg_frames

# Peak above this (+36 dBFS) is no recording: float data that is not audio samples (1e30),
# or integer values stored unscaled. Stored as int16 it would be a full-scale square wave.
MAX_PEAK = 64.0
_UNKNOWN_FRAMES = 2**62  # libsndfile's "length unknown"
# Without max_seconds, a file longer than this is a `too_long` reject (--max-seconds crops
# instead): 2 h of 16 kHz mono is 460 MB of float32 output.
DEFAULT_MAX_DECODE_SECONDS = 2 * 3600.0
# Native samples (frames x channels) one decode may read: 2 h of 96 kHz stereo. Bounds the
# decoding time of a file that asks for many channels at a high rate.
MAX_NATIVE_SAMPLES = 2 * 3600 * 96000 * 2
BLOCK_SECONDS = 10.0  # native audio decoded per block


def downmix(frames: np.ndarray) -> np.ndarray:
    """Mean over channels of [channels, samples]."""
    if frames.shape[0] == 1:
        return frames[0]
    return frames.mean(axis=0, dtype=np.float32)


def frame_limit(max_seconds: float | None, rate: int) -> int | None:
    return None if max_seconds is None else int(round(max_seconds * rate))


def expected_frames(
    data: bytes, f: sf.SoundFile, limit: int | None
) -> tuple[int | None, int | None]:
    """The whole file's length by the header and, for MPEG, by counting its frames: the
    larger of the two (the shortfall check's estimate), and the one to check the caps
    against (for MPEG the count: libsndfile guesses a VBR file's length without a Xing
    header from its first frame's bitrate, which can be several times too long)."""
    expected = f.frames if 0 < f.frames < _UNKNOWN_FRAMES else None
    for_caps = expected
    if f.subtype.startswith("MPEG_LAYER"):
        counted = mpeg_frames(data, stop_after=None if limit is None else limit + 1)
        if counted is not None and counted[1] == f.samplerate:
            expected, for_caps = max(expected or 0, counted[0]), counted[0]
    return expected, for_caps


class Source:
    """A decoder opened on one file: native [channels, n] float32 blocks, at most `limit`
    frames (`cropped` is set when the file goes on past it), plus what is known up front."""

    def __init__(self, rate, channels, decoder, expected_frames=None, header_seconds=None):
        self.rate, self.channels, self.decoder = int(rate), int(channels), decoder
        self.expected_frames = expected_frames  # independent length estimate (whole file)
        self.header_seconds = header_seconds  # the header's length, for the caps only
        self.cropped = False
        self.warnings: list[str] = []

    def blocks(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class SoundfileSource(Source):
    def __init__(self, data: bytes, max_seconds: float | None):
        self._file = sf.SoundFile(io.BytesIO(data))
        f = self._file
        self._limit = frame_limit(max_seconds, f.samplerate)
        expected, for_caps = expected_frames(data, f, self._limit)
        super().__init__(
            f.samplerate,
            f.channels,
            "soundfile",
            expected,
            for_caps / f.samplerate if for_caps else None,
        )

    def blocks(self) -> Iterator[np.ndarray]:
        step, got, limit = max(1, int(BLOCK_SECONDS * self.rate)), 0, self._limit
        while True:
            want = step if limit is None else min(step, limit - got)
            if want <= 0:  # read one frame more, to know whether the file goes on
                self.cropped = len(self._file.read(1, dtype="float32", always_2d=True)) > 0
                return
            frames = self._file.read(want, dtype="float32", always_2d=True)
            if len(frames):
                got += len(frames)
                yield np.ascontiguousarray(frames.T)
            if len(frames) < want:
                return

    def close(self) -> None:
        self._file.close()


class FfmpegSource(Source):
    def __init__(self, data, suffix, max_seconds, max_decode_seconds, timeout: float | None):
        # timeout: seconds for the whole decode, None for none (a consumer-paced stream)
        # 0.1 s more than needed tells whether the file goes on (cropped); without
        # max_seconds, ffmpeg stops a little past the decode cap (a too_long reject).
        stop = max_seconds if max_seconds is not None else max_decode_seconds
        self._stream = ffmpeg.decode_bytes(
            data, suffix, None if stop is None else stop + 0.1, timeout
        )
        self._limit = frame_limit(max_seconds, self._stream.rate)
        s = self._stream
        super().__init__(s.rate, s.channels, "ffmpeg", None, s.seconds)

    def blocks(self) -> Iterator[np.ndarray]:
        got, limit = 0, self._limit
        for block in self._stream.blocks(max(1, int(BLOCK_SECONDS * self.rate))):
            if limit is not None and got + block.shape[1] > limit:
                self.cropped = True
                block = block[:, : limit - got]
            got += block.shape[1]
            if block.shape[1]:
                yield np.ascontiguousarray(block)
        messages = self._stream.messages
        if messages:
            self.warnings.append(
                f"ffmpeg reported {len(messages)} problem(s) while decoding: {messages[0]}"[:300]
            )

    def close(self) -> None:
        self._stream.close()


class WholeSource(Source):
    """A decoder that returns everything at once (essentia): one block."""

    def __init__(self, raw):  # a core.audio.RawDecode
        super().__init__(raw.rate, raw.frames.shape[0], raw.decoder, raw.expected_frames)
        self._raw, self.cropped = raw, raw.cropped
        self.warnings = list(raw.warnings)

    def blocks(self) -> Iterator[np.ndarray]:
        if self._raw.frames.shape[1]:
            yield self._raw.frames


@dataclass
class Caps:
    sample_rate: int
    max_seconds: float | None
    max_decode_seconds: float | None

    def check(self, rate: int, channels: int, frames: float | None, read: bool = False):
        """Reject (too_long) a decode of `frames` native frames: what the header says
        before anything is decoded, what was read so far as blocks come (`read`)."""
        if not frames or rate <= 0:
            return
        seconds = frames / rate
        cap = self.max_decode_seconds
        if self.max_seconds is None and cap is not None and seconds > cap:
            message = (
                f"decodes past the {_span(cap)} of audio a file may decode to without "
                "--max-seconds (which crops instead); its header did not say so"
                if read
                else f"{_span(seconds)} of audio (as its header says), over the "
                f"{_span(cap)} a file may decode to without --max-seconds (which crops instead)"
            )
            raise AudioRejected("decode", TOO_LONG, message)
        if self.max_seconds is not None:
            frames = min(frames, self.max_seconds * rate)
        if frames * channels > MAX_NATIVE_SAMPLES:
            raise AudioRejected(
                "decode",
                TOO_LONG,
                f"{'decoded' if read else 'decoding'} {channels} channels x {rate} Hz x "
                f"{_span(frames / rate)} is {frames * channels / 1e9:.2f} G samples, over the "
                f"cap of {MAX_NATIVE_SAMPLES / 1e9:.2f} G",
            )


def _span(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds:.0f} s"


class Mono:
    """Downmix and resample native blocks on the fly (soxr's stream gives the samples a
    one-shot resample gives); NaN/Inf and absurd values are refused as they come."""

    def __init__(self, rate: int, sample_rate: int):
        self.rate, self.sample_rate, self.frames = rate, sample_rate, 0
        self._soxr = (
            None
            if rate == sample_rate
            else soxr.ResampleStream(rate, sample_rate, 1, dtype="float32", quality="HQ")
        )

    def push(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        self.frames += block.shape[1]
        mono = downmix(block) if block.shape[1] else np.zeros(0, np.float32)
        if len(mono):  # NaN or Inf in any channel is NaN or Inf in the mean
            peak = peak_of(mono)
            if not np.isfinite(peak):
                raise AudioRejected("validate", NON_FINITE, "decoded audio contains NaN or Inf")
            if peak > MAX_PEAK:
                raise AudioRejected(
                    "validate",
                    OUT_OF_RANGE,
                    f"sample values up to {peak:.3g}, over {MAX_PEAK:g} times full scale: "
                    "not audio (stored as int16 it would be a full-scale square wave)",
                )
        if self._soxr is None:
            return np.ascontiguousarray(mono, dtype=np.float32)
        return self._soxr.resample_chunk(mono, last=last)

    def flush(self) -> np.ndarray:
        if self._soxr is None:
            return np.zeros(0, np.float32)
        return self._soxr.resample_chunk(np.zeros(0, np.float32), last=True)


def peak_of(x: np.ndarray) -> float:
    """max |x| without a temporary of x's size; NaN when x holds one."""
    high, low = float(np.max(x)), float(np.min(x))
    return max(high, -low) if high == high and low == low else float("nan")


class Pcm:
    """A growing float32 array, sized from the expected length (no copy when it is right)."""

    def __init__(self, capacity: int):
        self._buf, self.n = np.empty(max(int(capacity), 1024), np.float32), 0

    def add(self, x: np.ndarray) -> None:
        if self.n + len(x) > len(self._buf):
            grown = np.empty(max(self.n + len(x), int(len(self._buf) * 1.5)), np.float32)
            grown[: self.n] = self._buf[: self.n]
            self._buf = grown
        self._buf[self.n : self.n + len(x)] = x
        self.n += len(x)

    def array(self) -> np.ndarray:
        out = self._buf[: self.n]
        return out if self.n >= 0.9 * len(self._buf) else out.copy()


@dataclass
class Result:
    """A finished decode: mono PCM at the target rate plus the native facts (duck-types
    RawDecode for the length checks)."""

    pcm: np.ndarray
    rate: int
    channels: int
    samples: int  # native frames decoded
    decoder: str
    expected_frames: int | None
    cropped: bool
    warnings: list[str]

    @property
    def seconds(self) -> float:
        return self.samples / self.rate


def consume(source: Source, caps: Caps) -> Result:
    """Decode `source` to mono at the target rate within the caps; closes it."""
    try:
        if source.header_seconds:
            caps.check(source.rate, source.channels, source.header_seconds * source.rate)
        mono = Mono(source.rate, caps.sample_rate)
        # The output's size, to allocate it once: the header's length (for MPEG the frame
        # count, not libsndfile's guess from the first frame) or the shortfall estimate.
        known = (source.header_seconds or 0) * source.rate or source.expected_frames
        if caps.max_seconds is not None:
            known = min(known or np.inf, caps.max_seconds * source.rate)
        pcm = Pcm(known * caps.sample_rate / source.rate + caps.sample_rate if known else 0)
        for block in source.blocks():
            caps.check(source.rate, source.channels, mono.frames + block.shape[1], read=True)
            pcm.add(mono.push(block))
        pcm.add(mono.flush())
        return Result(
            pcm.array(), source.rate, source.channels, mono.frames, source.decoder,
            source.expected_frames, source.cropped, list(source.warnings),
        )  # fmt: skip
    finally:
        source.close()
