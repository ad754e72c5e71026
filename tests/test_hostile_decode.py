"""Hostile inputs to decoding (issue 29, third pass): a small file that decodes to
gigabytes, a header that lies about its length, float samples at 1e30, paths into /proc,
symlinks out of the audio root. Each is one reject with a reason, in bounded memory,
never a failed job; the block-wise decoder also streams windows of a long file.

The decompression bomb is written here, byte by byte (`flac_constant`): a FLAC of
CONSTANT subframes is a few bytes per 16384 frames, so 3 hours of 7.1 at 48 kHz (5.5 GB
of float32 once decoded) is a 1.1 MB file made in a fraction of a second, where ffmpeg
takes a minute to encode the same silence. ffprobe and libsndfile read it as what it is.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from manifests.schema import write_manifest
from pipelines.beam.track import Reject, Sample, TrackConfig, prepare_track, process_row
from pipelines.core.audio import iter_audio_blocks, load_audio
from pipelines.core.failures import AudioRejected
from pipelines.core.source import read_local
from tests.conftest import PYTHON, ROOT, encode_mp3, tone

pytestmark = pytest.mark.timeout(240)
SR = 16000
VOCAB = ["rock"]
AS_LIMIT_MB = 2000  # address space of the decoding subprocesses (Python + numpy: ~150 MB)


# --- a FLAC decompression bomb, written directly ------------------------------------------


def _crc_table(poly: int, bits: int) -> list[int]:
    top, mask, table = 1 << (bits - 1), (1 << bits) - 1, []
    for i in range(256):
        c = i << (bits - 8)
        for _ in range(8):
            c = ((c << 1) ^ poly) & mask if c & top else (c << 1) & mask
        table.append(c)
    return table


_CRC8, _CRC16 = _crc_table(0x07, 8), _crc_table(0x8005, 16)


def _crc8(data: bytes) -> int:
    c = 0
    for b in data:
        c = _CRC8[c ^ b]
    return c


def _crc16(data: bytes) -> int:
    c = 0
    for b in data:
        c = ((c << 8) & 0xFFFF) ^ _CRC16[(c >> 8) ^ b]
    return c


def _utf8_number(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    if n < 0x800:
        return bytes([0xC0 | n >> 6, 0x80 | n & 0x3F])
    if n < 0x10000:
        return bytes([0xE0 | n >> 12, 0x80 | (n >> 6) & 0x3F, 0x80 | n & 0x3F])
    return bytes([0xF0 | n >> 18, 0x80 | (n >> 12) & 0x3F, 0x80 | (n >> 6) & 0x3F, 0x80 | n & 0x3F])


def flac_constant(
    path: Path, rate: int, channels: int, seconds: float, value: int = 0, header_length=True
) -> Path:
    """A valid 16-bit FLAC holding `value` on every channel for `seconds`: STREAMINFO
    (total samples, or 0 = unknown when not `header_length`), then fixed-size frames of
    CONSTANT subframes."""
    block, total = 16384, int(rate * seconds)
    packed = (rate << 44) | ((channels - 1) << 41) | (15 << 36) | (total if header_length else 0)
    info = struct.pack(">HH", block, block) + b"\0" * 6 + packed.to_bytes(8, "big") + b"\0" * 16
    out = [b"fLaC", bytes([0x80, 0, 0, len(info)]), info]
    subframes = (b"\0" + struct.pack(">h", value)) * channels
    for number, start in enumerate(range(0, total, block)):
        head = bytes([0xFF, 0xF8, 0x70, ((channels - 1) << 4) | 0x08]) + _utf8_number(number)
        head += struct.pack(">H", min(block, total - start) - 1)
        frame = head + bytes([_crc8(head)]) + subframes
        out.append(frame + struct.pack(">H", _crc16(frame)))
    path.write_bytes(b"".join(out))
    return path


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bombs")
    flac_constant(d / "bomb.flac", 48000, 8, 3 * 3600)  # 5.5 GB of float32 decoded
    flac_constant(d / "long_71.flac", 48000, 8, 30 * 60, value=1000)  # 2.8 GB; under the caps
    flac_constant(d / "no_length.flac", 48000, 8, 3 * 3600, header_length=False)
    flac_constant(d / "long_mono_8k.flac", 8000, 1, 2.5 * 3600, value=1000)
    return d


def test_the_bomb_is_what_it_claims(bombs):
    bomb = bombs / "bomb.flac"
    assert bomb.stat().st_size < 2 * 2**20
    info = sf.info(str(bomb))
    assert (info.samplerate, info.channels, info.frames) == (48000, 8, 3 * 3600 * 48000)
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=channels,duration", "-of", "json",
         str(bomb)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    stream = json.loads(probe.stdout)["streams"][0]
    assert stream["channels"] == 8 and float(stream["duration"]) == 3 * 3600
    with sf.SoundFile(str(bomb)) as f:  # really decodes: silence, 8 channels
        assert f.read(100_000).shape == (100_000, 8)


# --- decoding in a subprocess with a capped address space ---------------------------------

_DECODE = """
import json, resource, sys, time
limit = int(sys.argv[2]) << 20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from pipelines.core.audio import AudioRejected, load_audio
data = open(sys.argv[1], "rb").read()
kwargs = json.loads(sys.argv[3])
started = time.monotonic()
try:
    d = load_audio(data, 16000, **kwargs)
    out = {"seconds": d.seconds, "channels": d.source_channels, "peak": float(abs(d.pcm).max())}
except AudioRejected as exc:
    out = {"reason": exc.reason, "message": exc.message}
out["elapsed"] = time.monotonic() - started
# VmHWM, not ru_maxrss: the latter keeps the forking parent's peak across exec.
hwm = next(ln for ln in open("/proc/self/status") if ln.startswith("VmHWM"))
out["peak_mb"] = int(hwm.split()[1]) // 1024
print(json.dumps(out))
"""


def decode_capped(path: Path, limit_mb: int = AS_LIMIT_MB, **kwargs) -> dict:
    proc = subprocess.run(
        [PYTHON, "-c", _DECODE, str(path), str(limit_mb), json.dumps(kwargs)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=200,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(path.name, kwargs, result)
    return result


@pytest.mark.parametrize("decoder", ["auto", "soundfile", "ffmpeg"])
def test_flac_bomb_is_rejected_from_its_header_fast_in_bounded_memory(bombs, decoder):
    # Today's decode allocated the native signal (5.5 GB) and more: MemoryError under the
    # cap, 11 GB and a "silent" reject after a minute without it.
    out = decode_capped(bombs / "bomb.flac", decoder=decoder)
    assert out.get("reason") == "too_long", out
    assert "3.00 h" in out["message"] and "--max-seconds" in out["message"]
    assert out["elapsed"] < 5.0 and out["peak_mb"] < 300, out


def test_with_max_seconds_the_bomb_is_cropped_not_rejected(bombs):
    out = decode_capped(bombs / "bomb.flac", max_seconds=20.0)
    assert out.get("reason") == "silent", out  # decoded 20 s of it: silence
    assert out["peak_mb"] < 300


@pytest.mark.parametrize("decoder", ["auto", "ffmpeg"])
def test_a_header_that_hides_the_length_is_stopped_as_blocks_come(bombs, decoder):
    # STREAMINFO says "length unknown": nothing to refuse up front; the running length
    # stops the decode at the cap (a small one here, to keep the test fast).
    assert sf.info(str(bombs / "no_length.flac")).frames > 2**62  # libsndfile: unknown
    out = decode_capped(bombs / "no_length.flac", decoder=decoder, max_decode_seconds=60.0)
    assert out.get("reason") == "too_long", out
    assert "its header did not say so" in out["message"]
    assert out["peak_mb"] < 300, out


def test_long_multichannel_file_under_the_caps_decodes_in_blocks(bombs):
    # 30 min of 7.1 at 48 kHz: 2.8 GB as native float32, which today's decode allocated
    # whole (MemoryError under a 2 GB address space). Block-wise, memory is the 16 kHz
    # mono output (115 MB) and one block.
    out = decode_capped(bombs / "long_71.flac")
    assert out.get("seconds") == 30 * 60 and out["channels"] == 8, out
    assert out["peak"] == pytest.approx(1000 / 32768, rel=0.1)  # DC (and the step's ringing)
    assert out["peak_mb"] < 400, out


# --- the real prepare job ------------------------------------------------------------------


@pytest.mark.timeout(400)
def test_prepare_of_a_bomb_a_link_out_and_a_good_file_is_two_rejects_and_a_sample(bombs, tmp_path):
    import resource

    audio = tmp_path / "audio"
    audio.mkdir()
    (audio / "bomb.flac").write_bytes((bombs / "bomb.flac").read_bytes())
    sf.write(audio / "good.wav", tone(440, 3.0, SR), SR)
    sf.write(tmp_path / "secret.wav", tone(660, 3.0, SR), SR)
    (audio / "link.wav").symlink_to(tmp_path / "secret.wav")  # out of the audio root
    rows = [
        {"key": name.split(".")[0], "track_id": name, "dataset": "d", "split": "train",
         "audio_path": name, "tags": ["rock"], "duration": None}
        for name in ("bomb.flac", "good.wav", "link.wav")
    ]  # fmt: skip
    write_manifest(rows, tmp_path / "manifest.parquet")
    out = tmp_path / "out"
    limit = 4 << 30  # 4 GB of address space: the bomb's native decode alone is 5.5 GB

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    started = time.monotonic()
    result = subprocess.run(
        [PYTHON, str(ROOT / "beam_runner.py"), "prepare", "--manifest",
         str(tmp_path / "manifest.parquet"), "--audio-root", str(audio), "--out", str(out),
         "--max-reject-fraction", "0.9"],
        capture_output=True, text=True, timeout=360, preexec_fn=cap,
        env={**os.environ, "PYTHONPATH": str(ROOT), "MALLOC_ARENA_MAX": "2"},
    )  # fmt: skip
    print(f"prepare of [bomb, good, link] under 4 GB: {time.monotonic() - started:.1f} s")
    assert result.returncode == 0, result.stderr[-3000:]
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert sorted((r["key"], r["stage"], r["reason"]) for r in rejects) == [
        ("bomb", "decode", "too_long"),
        ("link", "read", "outside_root"),
    ]
    card = json.loads((out / "dataset.json").read_text())
    assert card["counts"]["inputs"] == 3
    index = pq.read_table(out / "index.parquet").to_pylist()
    assert [r["key"] for r in index] == ["good"]


# --- MemoryError while decoding: one reject, the first time -----------------------------


def test_memory_error_while_decoding_is_one_oversized_reject(monkeypatch):
    import pipelines.beam.track as track

    calls = []

    def out_of_memory(*args, **kwargs):
        calls.append(1)
        raise MemoryError()

    monkeypatch.setattr(track, "load_audio", out_of_memory)
    row = {
        "key": "k", "track_id": "k", "dataset": "d", "split": "train",
        "audio_path": "x.flac", "tags": [], "duration": None,
    }  # fmt: skip
    result = process_row(row, b"fLaC...", TrackConfig(), VOCAB)
    assert isinstance(result, Reject) and (result.stage, result.reason) == ("decode", "oversized")
    assert calls == [1]  # not retried


# --- values far past full scale -------------------------------------------------------------


def test_float_wav_at_1e30_is_rejected_not_stored_as_a_square_wave(tmp_path):
    pcm = tone(440, 3.0, SR)
    pcm[::2] = 1e30  # finite, but no audio: int16 would clip it to a full-scale square
    sf.write(tmp_path / "huge.wav", pcm, SR, subtype="FLOAT")
    with pytest.raises(AudioRejected) as exc:
        load_audio((tmp_path / "huge.wav").read_bytes(), SR)
    assert (exc.value.stage, exc.value.reason) == ("validate", "out_of_range")
    assert "1e+30" in exc.value.message
    # A hot but real master (peaks at +3.5 dBFS, as float WAVs may have) is kept.
    sf.write(tmp_path / "hot.wav", 5 * tone(440, 3.0, SR), SR, subtype="FLOAT")
    assert load_audio((tmp_path / "hot.wav").read_bytes(), SR).seconds == 3.0


# --- paths: kernel files, symlinks out of the root --------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["//proc/self/environ", "/proc/self/environ", "/proc/self/root/proc/self/environ",
     "/./proc/self/status", "///sys/kernel/mm/../mm/transparent_hugepage/enabled"],
)  # fmt: skip
def test_kernel_files_are_refused_however_the_path_is_spelled(path, monkeypatch):
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    with pytest.raises(AudioRejected) as exc:
        read_local(path)
    assert exc.value.reason == "not_regular_file", exc.value
    assert opened == []  # refused before it was opened


def test_a_link_to_a_kernel_file_is_refused(tmp_path):
    (tmp_path / "env.wav").symlink_to("/proc/self/environ")
    result = prepare_track(row_for(str(tmp_path / "env.wav")), None, TrackConfig(), VOCAB)
    assert isinstance(result, Reject) and result.reason == "not_regular_file"


def row_for(path: str) -> dict:
    return {
        "key": "k1", "track_id": "k1", "dataset": "d", "split": "train",
        "audio_path": path, "tags": ["rock"], "duration": None,
    }  # fmt: skip


@pytest.fixture()
def linked_root(tmp_path) -> Path:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    sf.write(root / "inside.wav", tone(440, 2.0, SR), SR)
    sf.write(outside / "secret.wav", tone(660, 2.0, SR), SR)
    (root / "link.wav").symlink_to(outside / "secret.wav")  # a file out of the root
    (root / "dir").symlink_to(outside, target_is_directory=True)  # a folder out of it
    (root / "sub" / "same.wav").symlink_to(root / "inside.wav")  # stays inside: fine
    return root


def test_a_symlink_out_of_the_audio_root_is_not_followed(linked_root):
    root = str(linked_root)
    for path in ("link.wav", "dir/secret.wav", str(linked_root / "link.wav")):
        result = prepare_track(row_for(path), root, TrackConfig(), VOCAB)
        assert isinstance(result, Reject), path
        assert (result.stage, result.reason) == ("read", "outside_root"), path
        assert "secret" not in result.message and str(linked_root) not in result.message
    assert isinstance(prepare_track(row_for("inside.wav"), root, TrackConfig(), VOCAB), Sample)
    assert isinstance(prepare_track(row_for("sub/same.wav"), root, TrackConfig(), VOCAB), Sample)


def test_follow_symlinks_reads_links_out_of_the_root(linked_root):
    follow = TrackConfig(follow_symlinks=True)
    result = prepare_track(row_for("link.wav"), str(linked_root), follow, VOCAB)
    assert isinstance(result, Sample)
    # The default leaves a job's identity (and its card) as it was before the option.
    assert "follow_symlinks" not in TrackConfig().to_dict()
    assert follow.to_dict()["follow_symlinks"] is True


# --- streaming windows of a long file ---------------------------------------------------------


def test_iter_audio_blocks_is_load_audio_in_blocks(tmp_path):
    stereo = np.stack([tone(440, 21.3, 44100), tone(550, 21.3, 44100, seed=1)], axis=1)
    encode_mp3(stereo, 44100, tmp_path / "a.mp3")
    six = np.stack([tone(200 + 100 * c, 7.7, 48000, seed=c) for c in range(6)], axis=1)
    sf.write(tmp_path / "six.flac", six, 48000)
    for name in ("a.mp3", "six.flac"):
        whole = load_audio((tmp_path / name).read_bytes(), SR).pcm
        parts = list(iter_audio_blocks(tmp_path / name, SR, block_seconds=5.0))
        assert all(len(p) == 5 * SR for p in parts[:-1]) and 0 < len(parts[-1]) <= 5 * SR
        assert np.array_equal(np.concatenate(parts), whole), name  # the very same samples


def test_iter_audio_blocks_continues_a_short_soundfile_decode_with_ffmpeg(tmp_path):
    # VBR without a Xing header: libsndfile stops a third of the way in (test_decode.py).
    src = tmp_path / "src.wav"
    sf.write(src, np.stack([tone(440, 20, 44100), tone(330, 20, 44100, seed=2)], axis=1), 44100)
    mp3 = tmp_path / "noxing.mp3"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), "-c:a", "libmp3lame",
         "-q:a", "4", "-write_xing", "0", str(mp3)],
        check=True,
    )  # fmt: skip
    warnings: list[str] = []
    total = sum(len(p) for p in iter_audio_blocks(mp3, SR, 4.0, warnings=warnings))
    assert total / SR > 0.95 * 20, total / SR
    assert warnings and warnings[0].startswith("recovered: soundfile decoded")
    assert abs(total - len(load_audio(mp3.read_bytes(), SR).pcm)) < 0.05 * SR


def test_iter_audio_blocks_streams_a_long_file_in_bounded_memory(bombs):
    # 2.5 hours: over load_audio's default cap (a too_long reject), and 576 MB as one 16 kHz
    # array; streamed in 30 s windows, memory is a window.
    script = """
import sys
from pipelines.core.audio import iter_audio_blocks
n = sum(len(block) for block in iter_audio_blocks(sys.argv[1], 16000, 30.0))
hwm = next(ln for ln in open("/proc/self/status") if ln.startswith("VmHWM"))
print(n, int(hwm.split()[1]) // 1024)
"""
    proc = subprocess.run(
        [PYTHON, "-c", script, str(bombs / "long_mono_8k.flac")],
        capture_output=True, text=True, timeout=200, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    samples, peak_mb = map(int, proc.stdout.split())
    print(f"iter_audio_blocks over 2.5 h: peak RSS {peak_mb} MB")
    assert samples == int(2.5 * 3600 * SR)
    assert peak_mb < 250


def test_a_folder_manifest_skips_links_out_of_the_folder(linked_root):
    from manifests.folder import scan_audio

    found, skipped = scan_audio(linked_root)
    assert found == ["inside.wav", "sub/same.wav"]  # the linked folder is not entered either
    assert ("link.wav", "a symlink to outside the folder (not followed)") in skipped


def test_iter_audio_blocks_refuses_a_special_file_rather_than_reading_it_forever():
    with pytest.raises(AudioRejected) as exc:
        next(iter_audio_blocks("/dev/zero", SR))
    assert exc.value.reason == "not_regular_file"
