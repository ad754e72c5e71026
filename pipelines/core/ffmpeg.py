"""ffmpeg, locked down: it reads only the one file it is given.

A file in a corpus can be a playlist (HLS `.m3u8`, ffconcat) that names other files or
URLs; a plain `ffmpeg -i` follows them and decodes what they point at into the sample (a
data-exfiltration path). So every call:
- reads through the `file` protocol only (`-protocol_whitelist file`), from a private
  temporary copy we wrote ourselves (`file:` prefix: no name is parsed as a protocol);
- may open only single-file audio containers (`-format_whitelist`, the demuxers below):
  hls, concat, image2, lavfi, tee, subfile, dash... are refused before anything is read;
- runs as an argument list (never a shell), with a timeout, one thread, no stdin, and
  `-t` when only the first seconds are needed.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field

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


@dataclass
class FfmpegDecode:
    frames: np.ndarray  # [channels, samples] float32
    rate: int
    messages: list[str] = field(default_factory=list)  # what ffmpeg reported while decoding


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


def parse_wav(data: bytes) -> tuple[np.ndarray, int]:
    """float32 WAV as ffmpeg writes it to a pipe (sizes unknown: data runs to the end)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioRejected("decode", UNREADABLE, "ffmpeg produced no audio")
    pos, channels, rate = 12, 0, 0
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if chunk == b"fmt ":
            channels, rate = struct.unpack("<HI", data[pos + 10 : pos + 16])
        elif chunk == b"data":
            body = memoryview(data)[pos + 8 :]
            usable = len(body) - len(body) % (4 * max(channels, 1))
            pcm = np.frombuffer(body[:usable], dtype="<f4").reshape(-1, channels)
            return np.ascontiguousarray(pcm.T, dtype=np.float32), rate
        pos += 8 + size + (size & 1)
    raise AudioRejected("decode", UNREADABLE, "ffmpeg produced no audio")


def decode_file(
    path: str, max_seconds: float | None = None, timeout: float = DEFAULT_TIMEOUT_S
) -> FfmpegDecode:
    """The first audio stream of `path`, native rate and channels, as float32."""
    cmd = _base_command(path) + ["-map", "0:a:0", "-vn", "-sn", "-dn"]
    if max_seconds is not None:
        cmd += ["-t", f"{max_seconds:.6f}"]
    cmd += ["-c:a", "pcm_f32le", "-f", "wav", "-bitexact", "pipe:1"]
    proc = _run(cmd, timeout)
    if proc.returncode != 0:
        raise _failure(proc, path)
    frames, rate = parse_wav(proc.stdout)
    return FfmpegDecode(frames, rate, _messages(proc.stderr, path))


def decode_bytes(
    data: bytes,
    suffix: str = "",
    max_seconds: float | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> FfmpegDecode:
    return with_private_copy(data, suffix, lambda path: decode_file(path, max_seconds, timeout))


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
