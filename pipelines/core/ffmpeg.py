"""ffmpeg, locked down: it reads only the one file it is given.

A file in a corpus can be a playlist (HLS `.m3u8`, ffconcat) that names other files or
URLs; a plain `ffmpeg -i` follows them and decodes what they point at into the sample (a
data-exfiltration path). So every call:
- reads through the `file` protocol only (`-protocol_whitelist file`), from a private
  temporary copy we wrote ourselves (`file:` prefix: no name is parsed as a protocol);
- may open only single-file audio containers (`-format_whitelist`, the demuxers below):
  hls, concat, image2, lavfi, tee, subfile, dash... are refused before anything is read;
- runs as an argument list (never a shell), with a timeout, one thread, no stdin, and
  `-t` when only the first seconds are needed;
- is read block by block from its pipe (`Stream`): a file that decodes to gigabytes costs
  one block of memory here, and the caller decides when to stop.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import subprocess
import tempfile
import threading
from collections.abc import Iterator

import numpy as np

from pipelines.core.failures import UNREADABLE, UNSUPPORTED, AudioRejected, TransientError

# Demuxers of single-file audio containers (ffmpeg's names; mov covers mp4/m4a/3gp,
# matroska covers webm, asf covers wma, mp3 covers mp1/mp2 elementary streams).
DEMUXERS = (
    "mp3", "flac", "wav", "w64", "ogg", "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "asf",
    "aac", "ac3", "eac3", "wv", "ape", "aiff", "au", "caf", "amr", "dts", "dtshd", "tta",
    "tak", "mpc", "mpc8", "shn", "voc", "dsf", "truehd", "mlp", "oma", "xwma", "wsaud",
    "sbc", "gsm", "rso", "sox", "mpeg",
)  # fmt: skip
DEFAULT_TIMEOUT_S = 300.0
_FORMAT_REFUSED = ("Format not on whitelist", "Protocol not on whitelist")
_CONTEXT = re.compile(r"\[([\w-]+) @ 0x[0-9a-fA-F]+\] ?")  # "[hls @ 0x55..] " (addresses vary)


def available() -> bool:
    return shutil.which("ffmpeg") is not None


def _base_command(path: str) -> list[str]:
    return [
        "ffmpeg", "-nostdin", "-hide_banner", "-nostats", "-v", "error", "-threads", "1",
        "-protocol_whitelist", "file", "-format_whitelist", ",".join(DEMUXERS),
        "-i", "file:" + path,
    ]  # fmt: skip


def _safe_suffix(suffix: str) -> str:
    # Some demuxers use the extension as a hint; it is ours to write, so keep it tame.
    tail = suffix.lstrip(".")
    return "." + tail.lower() if tail.isalnum() and len(tail) <= 8 else ""


def with_private_copy(data: bytes, suffix: str, fn):
    """`fn(path)` on a copy of `data` in a fresh private directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="tagkit-decode-") as directory:
        path = os.path.join(directory, "input" + _safe_suffix(suffix))
        with open(path, "wb") as f:
            f.write(data)
        return fn(path)


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise TransientError("decode", f"ffmpeg timed out after {timeout:.0f} s") from None
    except FileNotFoundError:
        # Not a property of the file: fail the job, do not reject every track.
        raise RuntimeError("ffmpeg is not installed (needed to decode this file)") from None


def _failure(proc: subprocess.CompletedProcess, path: str) -> Exception:
    lines = _messages(proc.stderr, path)
    if proc.returncode < 0:  # killed by a signal (the OOM killer, a shutdown): not the file
        return TransientError("decode", f"ffmpeg was killed by signal {-proc.returncode}")
    refused = next((ln for ln in lines if any(m in ln for m in _FORMAT_REFUSED)), None)
    if refused is not None:
        name = refused.split("]", 1)[0].lstrip("[") if refused.startswith("[") else "?"
        return AudioRejected(
            "decode", UNSUPPORTED, f"container {name!r} is not an allowed single-file audio format"
        )
    return AudioRejected("decode", UNREADABLE, (lines[-1] if lines else "ffmpeg failed")[:300])


def _messages(stderr: bytes, path: str) -> list[str]:
    # The private copy's name is random: rejects must be reproducible, so it is "<input>".
    text = (
        stderr.decode(errors="replace").replace("file:" + path, "<input>").replace(path, "<input>")
    )
    return [
        _CONTEXT.sub(lambda m: f"[{m.group(1)}] ", ln).strip()
        for ln in text.splitlines()
        if ln.strip()
    ]


class Stream:
    """One running ffmpeg decode, read block by block from its pipe: memory is one block,
    whatever the file decodes to. `rate` and `channels` are known once it is opened (the
    WAV header); `blocks()` yields [channels, n] float32 and raises at the end what ffmpeg
    failed with (AudioRejected, or TransientError on a timeout or a kill); `messages` holds
    what it reported. `seconds` is the length ffprobe gave beforehand (None: unknown).
    Always `close()` it (a `with` block): the process is killed and the copy removed."""

    def __init__(self, cmd: list[str], path: str, timeout: float | None):
        self.path, self.timeout, self.messages = path, timeout, []
        self.seconds: float | None = None
        self._cleanup: list = []
        self._timed_out = False
        self._stderr = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr
            )
        except FileNotFoundError:
            self._stderr.close()
            raise RuntimeError("ffmpeg is not installed (needed to decode this file)") from None
        self._timer = None if timeout is None else threading.Timer(timeout, self._kill_for_timeout)
        if self._timer is not None:
            self._timer.daemon = True
            self._timer.start()
        try:
            self.channels, self.rate = self._header()
        except BaseException:
            self.close()
            raise

    def _kill_for_timeout(self) -> None:
        self._timed_out = True
        self._proc.kill()

    def _read(self, n: int) -> bytes:
        return self._proc.stdout.read(n) if n > 0 else b""

    def _header(self) -> tuple[int, int]:
        head = self._read(12)
        if len(head) == 12 and head[:4] == b"RIFF" and head[8:12] == b"WAVE":
            channels = rate = 0
            while len(chunk := self._read(8)) == 8:
                name, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if name == b"data":
                    if channels and rate:
                        return channels, rate
                    break
                body = self._read(min(size + (size & 1), 1 << 16))
                if name == b"fmt " and len(body) >= 8:
                    channels, rate = struct.unpack("<HI", body[2:8])
        raise self._ended() or AudioRejected("decode", UNREADABLE, "ffmpeg produced no audio")

    def _ended(self) -> Exception | None:
        """Wait for the process; the exception its end amounts to, if any."""
        self._proc.stdout.close()
        try:
            self._proc.wait(timeout=max(1.0, self.timeout or 60.0))
        except subprocess.TimeoutExpired:  # its output ended, yet it runs on
            self._proc.kill()
            self._proc.wait()
            self._timed_out = True
        if self._timer is not None:
            self._timer.cancel()
        if self._timed_out:
            return TransientError("decode", f"ffmpeg timed out after {self.timeout or 60:.0f} s")
        self._stderr.seek(0)
        stderr = self._stderr.read(1 << 20)  # what a damaged file makes it say: a sample
        self.messages = _messages(stderr, self.path)
        if self._proc.returncode != 0:
            return _failure(
                subprocess.CompletedProcess([], self._proc.returncode, b"", stderr), self.path
            )
        return None

    def blocks(self, frames: int) -> Iterator[np.ndarray]:
        """[channels, <= frames] float32 blocks to the end of the stream."""
        width = 4 * self.channels
        while True:
            data = self._read(frames * width)
            usable = len(data) - len(data) % width
            if usable:
                block = np.frombuffer(data[:usable], dtype="<f4").reshape(-1, self.channels)
                yield np.ascontiguousarray(block.T, dtype=np.float32)
            if len(data) < frames * width:
                break
        failure = self._ended()
        if failure is not None:
            raise failure

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        if not self._proc.stdout.closed:
            self._proc.stdout.close()
        self._stderr.close()
        while self._cleanup:
            self._cleanup.pop()()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def decode_file(
    path: str, max_seconds: float | None = None, timeout: float | None = DEFAULT_TIMEOUT_S
) -> Stream:
    """The first audio stream of `path`, native rate and channels, as float32 blocks;
    killed after `timeout` seconds (None: never, for a stream its consumer paces)."""
    cmd = _base_command(path) + ["-map", "0:a:0", "-vn", "-sn", "-dn"]
    if max_seconds is not None:
        cmd += ["-t", f"{max_seconds:.6f}"]
    cmd += ["-c:a", "pcm_f32le", "-f", "wav", "-bitexact", "pipe:1"]
    return Stream(cmd, path, timeout)


def decode_bytes(
    data: bytes,
    suffix: str = "",
    max_seconds: float | None = None,
    timeout: float | None = DEFAULT_TIMEOUT_S,
) -> Stream:
    """`decode_file` on a private copy of `data` (removed when the stream is closed),
    with the length ffprobe reads from the container's header (`Stream.seconds`)."""
    directory = tempfile.mkdtemp(prefix="tagkit-decode-")
    try:
        path = os.path.join(directory, "input" + _safe_suffix(suffix))
        with open(path, "wb") as f:
            f.write(data)
        seconds = probe_seconds(path)
        stream = decode_file(path, max_seconds, timeout)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    stream.seconds = seconds
    stream._cleanup.append(lambda: shutil.rmtree(directory, ignore_errors=True))
    return stream


def probe_seconds(path: str, timeout: float = 60.0) -> float | None:
    """The duration of the first audio stream (or the container) as the header says, by
    ffprobe locked down like ffmpeg; None when unknown or ffprobe is unavailable. Only an
    estimate to refuse absurd lengths early: the decode itself is capped as it goes."""
    cmd = [
        "ffprobe", "-v", "error", "-protocol_whitelist", "file",
        "-format_whitelist", ",".join(DEMUXERS), "-select_streams", "a:0",
        "-show_entries", "stream=duration:format=duration,format_name", "-of", "json", "file:" + path,
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
        info = json.loads(proc.stdout or b"{}")
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None
    if info.get("format", {}).get("format_name") == "mp3":
        return None  # estimated from the bitrate, which can be several times too long
    for entry in [*info.get("streams", []), info.get("format", {})]:
        try:
            seconds = float(entry.get("duration", "nan"))
        except (TypeError, ValueError):
            continue
        if math.isfinite(seconds) and seconds > 0:
            return seconds
    return None


def check_container(path: str, timeout: float = 60.0) -> None:
    """Raise AudioRejected unless `path` opens as an allowed container with an audio
    stream (for decoders that cannot be locked down themselves, e.g. essentia)."""
    cmd = _base_command(path) + ["-map", "0:a:0", "-t", "0", "-f", "null", "-"]
    proc = _run(cmd, timeout)
    if proc.returncode != 0:
        raise _failure(proc, path)


def has_audio(path: str, timeout: float = 30.0) -> tuple[bool, str]:
    """(True, "") when ffmpeg, locked down, finds an audio stream it can decode in the
    file at `path`; else (False, why). Reads at most a fraction of a second of audio."""
    cmd = _base_command(path) + ["-map", "0:a:0", "-t", "0.05", "-f", "null", "-"]
    try:
        proc = _run(cmd, timeout)
    except TransientError as exc:
        return False, exc.message
    if proc.returncode == 0:
        return True, ""
    failure = _failure(proc, path)
    return False, getattr(failure, "message", str(failure))
