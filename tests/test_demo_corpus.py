"""The built-in demo corpus: deterministic composition, and tags that are true of the
rendered audio (real FluidSynth renders, real MP3 encoding and decoding)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import librosa
import numpy as np
import pytest

from manifests import demo
from manifests.demo_music import TAGS, compose
from manifests.demo_styles import STYLE_NAMES, classes_of, style_of
from manifests.schema import read_manifest
from pipelines.core.audio import load_audio

# Two clips of each style: the index cycles (see classes_of) put loud, quiet, drums and
# no-drums clips into any corpus this size; test_small_corpus_covers_the_contrasts checks.
N_CLIPS = 14
SR = 16000
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_corpus")
    table = demo.render_corpus(out, n=N_CLIPS, seed=0, workers=2)
    return out, table


@pytest.fixture(scope="module")
def measured(corpus):
    """Per clip: manifest row, decoded audio facts, RMS level and percussive share."""
    out, table = corpus
    clips = []
    for row in table.to_pylist():
        decoded = load_audio((out / row["audio_path"]).read_bytes(), SR, suffix=".mp3")
        pcm = decoded.pcm
        spectrum = np.abs(librosa.stft(pcm, n_fft=1024, hop_length=512))
        _, percussive = librosa.decompose.hpss(spectrum)
        onsets = librosa.onset.onset_detect(y=pcm, sr=SR, units="time")
        clips.append(
            {
                "row": row,
                "decoded": decoded,
                "rms_db": 20 * np.log10(np.sqrt(np.mean(np.square(pcm, dtype=np.float64)))),
                "percussive": float(np.sum(percussive**2) / np.sum(spectrum**2)),
                "onsets_per_second": len(onsets) / decoded.seconds,
            }
        )
    return clips


def values(clips, tag, name):
    return np.array([c[name] for c in clips if tag in c["row"]["tags"]])


def test_composition_is_deterministic_for_a_seed():
    for index in (0, 5, 11):
        midi, tags, info = compose(index, seed=0)
        again = compose(index, seed=0)
        assert again == (midi, tags, info)
        other_seed = compose(index, seed=1)
        assert other_seed[0] != midi
        assert other_seed[2]["style"] == info["style"]
    assert compose(3, 0)[0] != compose(10, 0)[0]  # same style, another piece


def test_small_corpus_covers_the_contrasts():
    tags = Counter(t for i in range(N_CLIPS) for t in compose(i, 0)[1])
    for tag in ("loud", "quiet", "drums", "no drums", "fast", "slow"):
        assert tags[tag] >= 2, tag


def test_manifest_validates_and_describes_each_render(corpus):
    out, _ = corpus
    table = read_manifest(out / "manifest.parquet", require_tags=True)
    rows = table.to_pylist()
    assert [r["key"] for r in rows] == [f"demo_{i:04d}" for i in range(N_CLIPS)]
    encodings = Counter()
    for index, row in enumerate(rows):
        midi, tags, info = compose(index, 0)
        assert row["dataset"] == "demo" and row["duration"] == 30.0
        assert row["tags"] == tags
        assert (out / row["audio_path"]).is_file()
        assert (out / "midi" / f"{row['key']}.mid").read_bytes() == midi
        assert ("drums" in tags) != ("no drums" in tags)
        extra = json.loads(row["extra"])
        assert extra["style"] == info["style"] and extra["seed"] == 0
        assert {"tempo", "encoding", "programs", "fluidsynth_gain", "level_dbfs"} <= set(extra)
        assert row["artist_id"] and row["album_id"]
        encodings[extra["encoding"]] += 1
    assert encodings == {"mtat": N_CLIPS // 2, "msd": N_CLIPS // 2}
    artist_splits = {}
    for row in rows:
        assert artist_splits.setdefault(row["artist_id"], row["split"]) == row["split"]


def test_every_file_decodes_to_30_seconds_in_its_encoding(measured):
    for clip in measured:
        decoded, extra = clip["decoded"], json.loads(clip["row"]["extra"])
        assert abs(decoded.source_seconds - 30.0) <= 0.1, clip["row"]["key"]
        assert abs(decoded.seconds - 30.0) <= 0.1
        expected = (16000, 1) if extra["encoding"] == "mtat" else (44100, 2)
        assert (decoded.source_sample_rate, decoded.source_channels) == expected


def test_loud_clips_are_louder_than_quiet_clips(measured):
    loud, quiet = values(measured, "loud", "rms_db"), values(measured, "quiet", "rms_db")
    assert len(loud) >= 2 and len(quiet) >= 2
    # every loud clip, whatever its instruments, is well above every quiet one
    assert loud.min() - quiet.max() > 10.0


def test_drum_clips_have_more_percussive_energy(measured):
    drums = values(measured, "drums", "percussive")
    no_drums = values(measured, "no drums", "percussive")
    assert len(drums) >= 2 and len(no_drums) >= 2
    assert np.median(drums) > 2 * np.median(no_drums)
    assert drums.mean() > no_drums.mean()


def test_fast_clips_have_more_onsets_than_slow_clips(measured):
    fast = values(measured, "fast", "onsets_per_second")
    slow = values(measured, "slow", "onsets_per_second")
    assert np.median(fast) > 1.5 * np.median(slow)


def test_default_corpus_has_every_style_and_tag_in_every_split():
    n = 240
    styles = [style_of(i).name for i in range(n)]
    splits = demo.assign_splits(styles, seed=0)
    assert demo.assign_splits(styles, seed=0) == splits
    share = Counter(splits)
    assert 0.65 < share["train"] / n < 0.75
    assert 0.12 < share["test"] / n < 0.18 and 0.12 < share["valid"] / n < 0.18
    for style in STYLE_NAMES:
        assert {sp for st, sp in zip(styles, splits) if st == style} == {"train", "valid", "test"}
    per_split = {s: Counter() for s in share}
    for i, split in enumerate(splits):
        per_split[split].update(compose(i, 0)[1])
    for split, counts in per_split.items():
        for tag in TAGS:
            assert counts[tag] >= 2, (split, tag)
    # the cycles spread tempo and dynamics across each other rather than in lockstep
    assert len({classes_of(i) for i in range(n)}) == 9


def test_rerun_skips_rendered_clips_and_prints_summary(corpus, capsys):
    out, table = corpus
    mp3 = out / "audio" / "demo_0003.mp3"
    before = mp3.stat().st_mtime_ns
    assert demo.main(["--out", str(out), "--n", str(N_CLIPS), "--seed", "0", "--workers", "2"]) == 0
    assert mp3.stat().st_mtime_ns == before
    printed = capsys.readouterr().out
    assert f"{N_CLIPS} clips ({N_CLIPS} already rendered)" in printed
    assert "no drums" in printed and "train" in printed
    assert read_manifest(out / "manifest.parquet").equals(table)


@pytest.mark.parametrize(
    "args",
    [["--n", "0"], ["--n", "many"], ["--seed", "-1"], ["--workers", "0"]],
)
def test_bad_arguments_get_a_one_line_error(tmp_path, args):
    proc = subprocess.run(
        [sys.executable, "-m", "manifests.demo", "--out", str(tmp_path / "x"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("python -m manifests.demo: error:")
    assert not (tmp_path / "x").exists()


def test_missing_soundfont_gets_a_one_line_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "manifests.demo", "--out", str(tmp_path / "x")]
        + ["--soundfont", str(tmp_path / "missing.sf2")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: soundfont not found: {tmp_path / 'missing.sf2'} (install fluid-soundfont-gm)"
    ]


def test_a_soundfont_fluidsynth_cannot_load_fails_the_render(tmp_path):
    # fluidsynth itself exits 0 here and quietly renders with the system default soundfont
    not_a_soundfont = tmp_path / "broken.sf2"
    not_a_soundfont.write_bytes(b"RIFF0000sfbk but not really a soundfont")
    proc = subprocess.run(
        [sys.executable, "-m", "manifests.demo", "--out", str(tmp_path / "out"), "--n", "2"]
        + ["--workers", "1", "--soundfont", str(not_a_soundfont)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: rendering failed: fluidsynth: Failed to load the SoundFont {not_a_soundfont}"
    )
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "out" / "audio").iterdir())
