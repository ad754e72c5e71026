"""The built-in demo corpus: procedurally composed clips rendered with FluidSynth.

    python -m manifests.demo --out DIR [--n 240] [--seed 0] [--workers N]

Writes DIR/audio/<key>.mp3, DIR/midi/<key>.mid and DIR/manifest.parquet (audio paths
relative to DIR, so `--audio-root DIR` finds them). Half the clips are encoded like
MagnaTagATune (16 kHz mono 32 kbps MP3), half like the Million Song Dataset (44.1 kHz
stereo 128 kbps). Every clip is exactly 30 s and mastered to the RMS level of its
dynamics class, so "loud" and "quiet" differ by ~18 dB whatever the instruments.

Re-running into the same DIR skips clips whose MIDI is unchanged and whose MP3 exists.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import soundfile as sf
from tqdm import tqdm

from manifests.demo_music import CLIP_SECONDS, TAGS, compose
from manifests.demo_styles import STYLE_NAMES
from manifests.schema import write_manifest
from pipelines.core.argtypes import non_negative_int, positive_int
from pipelines.core.flags import add_flags, from_args, setting

DEFAULT_SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
FLUIDSYNTH_GAIN = 0.5  # float output: nothing clips before mastering sets the level
PEAK_LIMIT = 0.89  # -1 dBFS: headroom for the MP3 encoder's overshoot
FADE_SECONDS = 0.02  # the cut at 30 s must not click
SPLIT_FRACTIONS = (("test", 0.15), ("valid", 0.15))
TRACKS_PER_ARTIST = 4
TRACKS_PER_ALBUM = 2


@dataclass(frozen=True)
class Encoding:
    sample_rate: int
    channels: int
    bitrate: str


ENCODINGS = {
    "mtat": Encoding(16000, 1, "32k"),
    "msd": Encoding(44100, 2, "128k"),
}


def clip_key(index: int) -> str:
    return f"demo_{index:04d}"


def check_tools(soundfont: Path) -> None:
    """Exit with a one-line message when a renderer is missing."""
    for tool in ("fluidsynth", "ffmpeg"):
        if shutil.which(tool) is None:
            sys.exit(f"error: {tool} not found on PATH (run `make setup`)")
    if not soundfont.is_file():
        sys.exit(f"error: soundfont not found: {soundfont} (install fluid-soundfont-gm)")


def _run(argv: list[str], stdin: bytes | None = None) -> list[str]:
    """Run a tool; its stderr lines on success, a RuntimeError naming it on failure."""
    proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=300)
    lines = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
    if proc.returncode != 0:
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        raise RuntimeError(f"{argv[0]} failed: {last}")
    return lines


def synthesize(midi_path: Path, wav_path: Path, sample_rate: int, soundfont: Path) -> np.ndarray:
    """FluidSynth render of a MIDI file: float32 [samples, 2]."""
    log = _run(
        ["fluidsynth", "-ni", "-q", "-O", "float", "-T", "wav", "-F", str(wav_path)]
        # load only the samples the piece uses, not all 148 MB of the soundfont
        + ["-o", "synth.dynamic-sample-loading=1"]
        + ["-r", str(sample_rate), "-g", str(FLUIDSYNTH_GAIN), str(soundfont), str(midi_path)]
    )
    frames, rate = sf.read(str(wav_path), dtype="float32", always_2d=True)
    if rate != sample_rate:
        raise RuntimeError(f"fluidsynth rendered at {rate} Hz instead of {sample_rate} Hz")
    # fluidsynth exits 0 when the soundfont does not load (it falls back to the system's
    # default soundfont, or renders silence): only its log tells
    failed = [line for line in log if "Failed to load" in line]
    if failed or not np.any(frames):
        raise RuntimeError(f"fluidsynth: {(failed or log or ['rendered silence'])[-1]}")
    return frames


def master(frames: np.ndarray, sample_rate: int, channels: int, level_dbfs: float) -> np.ndarray:
    """Cut to exactly 30 s, fade the cut, mix to `channels` and set the RMS level of the
    mono mix to `level_dbfs`, soft-limiting peaks to PEAK_LIMIT."""
    length = int(round(CLIP_SECONDS * sample_rate))
    out = np.zeros((length, frames.shape[1]), dtype=np.float32)
    out[: min(length, len(frames))] = frames[:length]
    fade = int(FADE_SECONDS * sample_rate)
    out[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)[:, None]
    if channels == 1:
        out = out.mean(axis=1, keepdims=True)
    rms = float(np.sqrt(np.mean(np.square(out.mean(axis=1), dtype=np.float64))))
    if rms <= 0:
        raise RuntimeError("nothing audible in the first 30 s of the render")
    out *= np.float32(10 ** (level_dbfs / 20) / rms)
    if np.abs(out).max() > PEAK_LIMIT:
        out = PEAK_LIMIT * np.tanh(out / PEAK_LIMIT)
    return out.astype(np.float32)


def encode_mp3(pcm: np.ndarray, sample_rate: int, encoding: Encoding, mp3_path: Path) -> None:
    """MP3 via ffmpeg/libmp3lame from raw float PCM on stdin; the LAME header carries the
    encoder delay, so decoders that honour it (libsndfile, ffmpeg) give back exactly 30 s."""
    _run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "f32le"]
        + ["-ar", str(sample_rate), "-ac", str(pcm.shape[1]), "-i", "-"]
        + ["-map_metadata", "-1", "-c:a", "libmp3lame", "-b:a", encoding.bitrate]
        # LAME's fast mode: half the encoding time of the default at the same bitrate
        + ["-compression_level", "7"]
        + ["-ar", str(encoding.sample_rate), "-ac", str(encoding.channels), str(mp3_path)],
        stdin=np.ascontiguousarray(pcm).tobytes(),
    )


def render_clip(index: int, seed: int, out_dir: str, soundfont: str) -> dict:
    """Compose, render, master and encode one clip into out_dir (skipped when its MIDI is
    unchanged and its MP3 exists). Returns its manifest row, split and artist not yet set."""
    midi, tags, info = compose(index, seed)
    key = clip_key(index)
    root = Path(out_dir)
    mp3_path = root / "audio" / f"{key}.mp3"
    midi_path = root / "midi" / f"{key}.mid"
    skipped = mp3_path.is_file() and midi_path.is_file() and midi_path.read_bytes() == midi
    if not skipped:
        encoding = ENCODINGS[info["encoding"]]
        # the temp dir sits inside out_dir so the final renames are atomic
        with tempfile.TemporaryDirectory(dir=root, prefix=".render-") as tmp:
            tmp_midi = Path(tmp) / "clip.mid"
            tmp_midi.write_bytes(midi)
            frames = synthesize(
                tmp_midi, Path(tmp) / "clip.wav", encoding.sample_rate, Path(soundfont)
            )
            pcm = master(frames, encoding.sample_rate, encoding.channels, info["level_dbfs"])
            tmp_mp3 = Path(tmp) / "clip.mp3"
            encode_mp3(pcm, encoding.sample_rate, encoding, tmp_mp3)
            os.replace(tmp_mp3, mp3_path)
            os.replace(tmp_midi, midi_path)  # last: a MIDI file means its MP3 is complete
    info = {**info, "fluidsynth_gain": FLUIDSYNTH_GAIN}
    return {
        "key": key,
        "track_id": key,
        "dataset": "demo",
        "audio_path": f"audio/{key}.mp3",
        "tags": tags,
        "duration": CLIP_SECONDS,
        "extra": info,
        "skipped": skipped,
    }


def assign_splits(styles: Sequence[str], seed: int) -> list[str]:
    """train/valid/test per clip, ~70/15/15 within every style (a style with at least
    three clips appears in every split); deterministic for (styles, seed)."""
    splits = ["train"] * len(styles)
    rng = np.random.default_rng([seed, 0x5EED])
    for style in sorted(set(styles)):
        members = [i for i, s in enumerate(styles) if s == style]
        members = [members[j] for j in rng.permutation(len(members))]
        start = 0
        for split, fraction in SPLIT_FRACTIONS:
            count = max(1, round(fraction * len(members))) if len(members) >= 3 else 0
            if len(members) == 2 and split == "test":
                count = 1
            for i in members[start : start + count]:
                splits[i] = split
            start += count
    return splits


def assign_artists(styles: Sequence[str], splits: Sequence[str]) -> list[tuple[str, str]]:
    """(artist_id, album_id) per clip: fake artists of a few same-style tracks that never
    straddle two splits, as artist-filtered benchmark splits require."""
    out: list[tuple[str, str]] = [("", "")] * len(styles)
    for style in sorted(set(styles)):
        slug = style.replace(" ", "-")
        group = 0
        for split in ("train", "valid", "test"):
            members = [i for i in range(len(styles)) if styles[i] == style and splits[i] == split]
            for j, i in enumerate(members):
                artist = f"demo-{slug}-{group + j // TRACKS_PER_ARTIST:02d}"
                album = f"{artist}-album{(j % TRACKS_PER_ARTIST) // TRACKS_PER_ALBUM}"
                out[i] = (artist, album)
            group += -(-len(members) // TRACKS_PER_ARTIST)
    return out


def render_corpus(
    out_dir: str | Path,
    n: int = 240,
    seed: int = 0,
    workers: int | None = None,
    soundfont: str | Path = DEFAULT_SOUNDFONT,
    progress: bool = False,
) -> pa.Table:
    """Render the corpus into out_dir and write its manifest; returns the manifest table."""
    return _render_corpus(out_dir, n, seed, workers, soundfont, progress)[0]


def _render_corpus(
    out_dir: str | Path,
    n: int,
    seed: int,
    workers: int | None,
    soundfont: str | Path,
    progress: bool,
) -> tuple[pa.Table, int]:
    """The manifest table and how many clips were already rendered."""
    if n < 1:
        raise ValueError("n must be at least 1")
    out = Path(out_dir)
    for sub in ("audio", "midi"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    workers = max(1, min(workers or os.cpu_count() or 1, n))
    rows: list[dict | None] = [None] * n
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(render_clip, i, seed, str(out), str(soundfont)): i for i in range(n)}
        done = as_completed(futures)
        if progress:
            done = tqdm(done, total=n, desc="rendering demo corpus", unit="clip")
        try:
            for future in done:
                rows[futures[future]] = future.result()
        except BaseException:
            # one failed clip fails the corpus: do not render the rest first
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    styles = [row["extra"]["style"] for row in rows]
    splits = assign_splits(styles, seed)
    artists = assign_artists(styles, splits)
    for row, split, (artist, album) in zip(rows, splits, artists):
        row.update(split=split, artist_id=artist, album_id=album)
    metadata = {
        "demo_seed": str(seed),
        "demo_n": str(n),
        "tag_vocabulary": ",".join(TAGS),
    }
    skipped = sum(row.pop("skipped") for row in rows)
    return write_manifest(rows, out / "manifest.parquet", metadata=metadata), skipped


def summary(table: pa.Table) -> str:
    """Counts per tag (and per style) and split, as a text table."""
    splits = ("train", "valid", "test")
    rows = table.select(["split", "tags", "extra"]).to_pylist()
    counts: dict[str, Counter] = {s: Counter() for s in splits}
    for row in rows:
        counts[row["split"]].update(row["tags"])
        counts[row["split"]]["style: " + json.loads(row["extra"])["style"]] += 1
        counts[row["split"]]["clips"] += 1
    labels = ["clips"] + [f"style: {s}" for s in STYLE_NAMES] + list(TAGS)
    width = max(len(label) for label in labels)
    lines = [f"{'':{width}}  " + "".join(f"{s:>7}" for s in (*splits, "all"))]
    for label in labels:
        values = [counts[s][label] for s in splits]
        lines.append(f"{label:{width}}  " + "".join(f"{v:>7}" for v in (*values, sum(values))))
        if label == "clips" or label == f"style: {STYLE_NAMES[-1]}":
            lines.append("")
    return "\n".join(lines)


@dataclass(frozen=True)
class DemoFlags:
    out: str = setting("", "output directory", required=True)
    n: int = setting(240, "number of clips", type=positive_int)
    seed: int = setting(0, "composition seed", type=non_negative_int)
    workers: int | None = setting(None, "render processes (default: all cores)", type=positive_int)
    soundfont: str = setting(str(DEFAULT_SOUNDFONT), "General MIDI soundfont")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m manifests.demo",
        description="Compose and render the built-in demo corpus (MP3 + manifest.parquet).",
    )
    add_flags(parser, DemoFlags)
    args = from_args(parser.parse_args(argv), DemoFlags)
    check_tools(Path(args.soundfont))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        sys.exit(f"error: --out {out} exists and is not a directory")
    started = time.monotonic()
    try:
        table, skipped = _render_corpus(
            out, args.n, args.seed, args.workers, Path(args.soundfont), progress=True
        )
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        sys.exit(f"error: rendering failed: {reason}")
    elapsed = time.monotonic() - started
    print(summary(table))
    print(
        f"\n{table.num_rows} clips ({skipped} already rendered) in {elapsed:.1f} s"
        f" -> {out / 'manifest.parquet'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
