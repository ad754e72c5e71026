"""Decoding real files: never silently short, ffmpeg locked down, bounded memory."""

from __future__ import annotations

import http.server
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipelines.beam.track import TrackConfig, process_row
from pipelines.core.audio import decode_soundfile, load_audio
from pipelines.core.failures import UNSUPPORTED, AudioRejected
from pipelines.core.mpeg_length import mpeg_frames
from tests.conftest import ROOT

SR = 16000
SECONDS = 20.0
pytestmark = pytest.mark.timeout(300)


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True, timeout=120)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A 20 s stereo music-like signal as: VBR MP3 with and without a Xing header, an MP3
    with a damaged region, and FLAC."""
    d = tmp_path_factory.mktemp("decode")
    src = d / "src.wav"
    ffmpeg(
        "-f", "lavfi", "-i", f"sine=f=440:d={SECONDS}:sample_rate=44100",
        "-f", "lavfi", "-i", f"anoisesrc=d={SECONDS}:a=0.05:r=44100",
        "-filter_complex", "amix=inputs=2", "-ac", "2", str(src),
    )  # fmt: skip
    ffmpeg("-i", str(src), "-c:a", "libmp3lame", "-q:a", "4", str(d / "vbr.mp3"))
    ffmpeg(
        "-i", str(src), "-c:a", "libmp3lame", "-q:a", "4", "-write_xing", "0", str(d / "noxing.mp3")
    )
    ffmpeg("-i", str(src), str(d / "clean.flac"))
    base = (d / "vbr.mp3").read_bytes()
    # 4000 random bytes a third of the way in: with some damage libsndfile stops there
    # silently, with other damage it raises. Keep one of each (the first seeds found).
    for seed in range(20):
        data = _damaged(base, seed)
        outcome = _libsndfile_seconds(data)
        name = "damaged.mp3" if isinstance(outcome, float) else "damaged_raises.mp3"
        if not (d / name).exists():
            (d / name).write_bytes(data)
    assert (d / "damaged.mp3").exists() and (d / "damaged_raises.mp3").exists()
    return d


def _damaged(data: bytes, seed: int) -> bytes:
    out = bytearray(data)
    start = len(out) // 3
    out[start : start + 4000] = (
        np.random.default_rng(seed).integers(0, 256, 4000, np.uint8).tobytes()
    )
    return bytes(out)


def _libsndfile_seconds(data: bytes) -> float | str:
    try:
        pcm, rate = sf.read(io.BytesIO(data))
    except sf.LibsndfileError as exc:
        return str(exc)
    return len(pcm) / rate


def test_libsndfile_is_silently_short_and_the_frame_count_is_not(corpus):
    # The problem itself, on real files: libsndfile returns a third of the audio and
    # raises nothing; the MPEG frame walk sees the whole file.
    for name in ("noxing.mp3", "damaged.mp3"):
        pcm, rate = sf.read(corpus / name)
        assert len(pcm) / rate < 0.5 * SECONDS, name
        counted, counted_rate = mpeg_frames((corpus / name).read_bytes())
        assert counted / counted_rate > 0.95 * SECONDS, name
        raw = decode_soundfile((corpus / name).read_bytes())
        assert raw.expected_frames / raw.rate > 0.95 * SECONDS


@pytest.mark.parametrize("name", ["noxing.mp3", "damaged.mp3"])
def test_short_soundfile_decode_falls_back_to_ffmpeg_and_is_flagged(corpus, name):
    decoded = load_audio((corpus / name).read_bytes(), SR, suffix=".mp3")
    assert decoded.decoder == "ffmpeg"
    assert decoded.seconds > 0.95 * SECONDS
    assert decoded.warnings and decoded.warnings[0].startswith("recovered: soundfile decoded")
    if name == "damaged.mp3":  # ffmpeg resynced past errors: said so too
        assert any("ffmpeg reported" in w for w in decoded.warnings)


def test_damage_libsndfile_refuses_is_decoded_by_ffmpeg_and_flagged(corpus):
    data = (corpus / "damaged_raises.mp3").read_bytes()
    assert isinstance(_libsndfile_seconds(data), str)
    decoded = load_audio(data, SR, suffix=".mp3")
    assert decoded.decoder == "ffmpeg" and decoded.seconds > 0.95 * SECONDS
    assert any(w.startswith("ffmpeg reported") for w in decoded.warnings)


def test_soundfile_only_decode_is_flagged_partial_or_rejected(corpus):
    data = (corpus / "noxing.mp3").read_bytes()
    # 6.6-7.3 s (seen) of the 10 s asked for: stored, but flagged partial (no fallback
    # was allowed).
    decoded = load_audio(data, SR, decoder="soundfile", max_seconds=10.0)
    assert decoded.decoder == "soundfile" and decoded.seconds < 0.8 * 10.0
    assert len(decoded.warnings) == 1 and decoded.warnings[0].startswith("partial: soundfile")
    # A third of the whole file: truncated, a reject (as with a manifest duration).
    with pytest.raises(AudioRejected) as exc:
        load_audio(data, SR, decoder="soundfile")
    assert exc.value.reason == "truncated"


@pytest.mark.parametrize("name", ["vbr.mp3", "clean.flac"])
def test_complete_decodes_carry_no_warnings(corpus, name):
    decoded = load_audio((corpus / name).read_bytes(), SR, suffix=Path(name).suffix)
    assert decoded.decoder == "soundfile"
    assert abs(decoded.seconds - SECONDS) < 0.1
    assert decoded.warnings == []


def test_max_seconds_decodes_only_what_is_needed(corpus):
    data = (corpus / "noxing.mp3").read_bytes()
    # 5 s are within what libsndfile returns: no fallback, cropped, nothing to flag.
    decoded = load_audio(data, SR, max_seconds=5.0)
    assert (decoded.decoder, decoded.seconds, decoded.cropped) == ("soundfile", 5.0, True)
    assert decoded.warnings == []
    # 12 s are past where libsndfile stops: recovered with ffmpeg -t, exactly 12 s.
    decoded = load_audio(data, SR, max_seconds=12.0)
    assert (decoded.decoder, decoded.seconds, decoded.cropped) == ("ffmpeg", 12.0, True)
    assert decoded.warnings[0].startswith("recovered:")


def test_sample_json_records_decode_warnings(corpus):
    row = {
        "key": "k", "track_id": "k", "dataset": "d", "split": "train",
        "audio_path": "damaged.mp3", "tags": ["rock"], "duration": None,
    }  # fmt: skip
    sample = process_row(row, (corpus / "damaged.mp3").read_bytes(), TrackConfig(), ["rock"])
    meta = json.loads(sample.members["json"])
    assert meta["decoder"] == "ffmpeg"
    assert meta["decode_warnings"][0].startswith("recovered:")
    clean = process_row(row, (corpus / "vbr.mp3").read_bytes(), TrackConfig(), ["rock"])
    assert "decode_warnings" not in json.loads(clean.members["json"])


# --- ffmpeg reads only the file it was given -------------------------------------------


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802
        type(self).requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture()
def secret_server(tmp_path):
    """A marker MP3 outside the corpus, served over real HTTP too; its atime is set in
    the past so that any read of it shows (relatime updates an atime older than mtime)."""
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    secret = secret_dir / "secret.mp3"
    ffmpeg("-f", "lavfi", "-i", "sine=f=1000:d=3", str(secret))
    st = secret.stat()
    os.utime(secret, ns=(st.st_mtime_ns - 10**12, st.st_mtime_ns))
    handler = type("H", (_CountingHandler,), {"requests": []})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: handler(*a, directory=str(secret_dir))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield secret, f"http://127.0.0.1:{server.server_address[1]}/secret.mp3", handler
    server.shutdown()


def _playlists(secret: Path, url: str) -> dict[str, bytes]:
    hls = "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:3.0,\n{}\n#EXT-X-ENDLIST\n"
    return {
        "file.m3u8": hls.format(f"file://{secret}").encode(),
        "url.m3u8": hls.format(url).encode(),
        "disguised.mp3": hls.format(f"file://{secret}").encode(),
        "concat.mp3": f"ffconcat version 1.0\nfile 'file:{secret}'\n".encode(),
    }


def test_unrestricted_ffmpeg_would_follow_the_playlist(tmp_path, secret_server):
    # The control: without the lock-down the attack works here, so the test below can fail.
    secret, url, handler = secret_server
    before = secret.stat().st_atime_ns
    playlist = tmp_path / "evil.mp3"
    playlist.write_bytes(_playlists(secret, url)["disguised.mp3"])
    out = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", f"file:{playlist}", "-f", "f32le", "-"],
        capture_output=True,
        timeout=60,
    ).stdout
    if secret.stat().st_atime_ns == before:
        pytest.skip("this filesystem does not update atimes")
    assert len(out) > 44100  # the secret's audio came out


@pytest.mark.parametrize("decoder", ["auto", "ffmpeg", "essentia"])
def test_playlists_are_refused_and_nothing_else_is_read(secret_server, decoder):
    secret, url, handler = secret_server
    before = secret.stat().st_atime_ns
    for name, data in _playlists(secret, url).items():
        with pytest.raises(AudioRejected) as exc:
            load_audio(data, SR, decoder=decoder, suffix=Path(name).suffix)
        assert exc.value.reason == UNSUPPORTED, (name, exc.value)
    assert secret.stat().st_atime_ns == before  # the file was never opened for reading
    assert handler.requests == []  # and the URL never fetched


# --- bounded memory --------------------------------------------------------------------

_PEAK_RSS = """
import sys
from pipelines.core.audio import load_audio
data = open(sys.argv[1], "rb").read()
decoded = load_audio(data, 16000, decoder=sys.argv[2], max_seconds=30.0)
assert decoded.cropped and decoded.seconds == 30.0, decoded
# VmHWM, not ru_maxrss: the latter keeps the forking parent's peak across exec.
hwm = next(ln for ln in open("/proc/self/status") if ln.startswith("VmHWM"))
print(decoded.decoder, int(hwm.split()[1]) // 1024)
"""


@pytest.mark.parametrize("decoder", ["auto", "ffmpeg"])
def test_two_hour_file_with_max_seconds_stays_under_a_memory_bound(tmp_path, decoder):
    # Two hours of 44.1 kHz stereo MP3 (10 s of frames repeated; no Xing header, so no
    # decoder is told the length): a full decode would be 2.5 GB of float32.
    part = tmp_path / "part.mp3"
    ffmpeg(
        "-f", "lavfi", "-i", "sine=f=440:d=10:sample_rate=44100", "-ac", "2",
        "-c:a", "libmp3lame", "-b:a", "64k", "-write_xing", "0", "-id3v2_version", "0", str(part),
    )  # fmt: skip
    long = tmp_path / "two_hours.mp3"
    long.write_bytes(part.read_bytes() * 720)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, str(long), decoder],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak_mb = int(proc.stdout.split()[-1])
    size_mb = long.stat().st_size >> 20
    print(f"peak RSS, 30 s of a 2-hour MP3 ({size_mb} MB) with {decoder}: {peak_mb} MB")
    # A whole decode would be 2.5 GB; reading the file (55 MB) and 30 s stay far below.
    assert peak_mb < 400, (peak_mb, proc.stdout)


def test_ffmpeg_timeout_is_transient_and_raised_not_rejected(corpus, monkeypatch):
    from pipelines.core.failures import TransientError

    data = (corpus / "noxing.mp3").read_bytes()
    with pytest.raises(TransientError, match="timed out"):
        load_audio(data, SR, decoder="ffmpeg", timeout=0.001)
    row = {
        "key": "k", "track_id": "k", "dataset": "d", "split": "train",
        "audio_path": "x.mp3", "tags": [], "duration": None,
    }  # fmt: skip
    import pipelines.core.ffmpeg as core_ffmpeg

    real = core_ffmpeg.decode_file
    calls = []

    def slow(path, max_seconds=None, timeout=None):
        calls.append(path)
        return real(path, max_seconds, 0.001)

    monkeypatch.setattr(core_ffmpeg, "decode_file", slow)
    with pytest.raises(TransientError):
        process_row(row, data, TrackConfig(decoder="ffmpeg"), [])
    assert len(calls) == 2  # tried again once, then raised for the runner to retry


def test_reject_messages_are_reproducible_and_name_no_temporary_file():
    junk = b"this is not audio" * 10
    messages = set()
    for _ in range(2):
        with pytest.raises(AudioRejected) as exc:
            load_audio(junk, SR, suffix=".mp3")
        assert exc.value.reason == "unreadable"
        messages.add(exc.value.message)
    assert len(messages) == 1
    assert "tagkit-decode" not in messages.pop()
