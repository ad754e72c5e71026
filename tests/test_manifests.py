"""Manifests: the shipped benchmark splits, the builders, the folder builder and the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from conftest import run_cli, tone

from manifests.__main__ import main
from manifests.audio_check import missing_audio
from manifests.builders import BuildOptions, build_benchmark
from manifests.folder import assign_splits
from manifests.labels import load_labels
from manifests.schema import (
    COLUMNS,
    SCHEMA,
    ManifestError,
    is_safe_key,
    read_manifest,
    rows_to_table,
    validate_table,
    write_manifest,
)
from manifests.tables import SPLITS_DIR, read_split_table, read_tag_list, read_text
from manifests.vocabulary import vocabulary_of

# The published sizes (train, valid, test) of every shipped split table.
PUBLISHED = {
    "mtat": (15_244, 1_529, 4_332),
    "mtat/full_split": (18_706, 1_825, 5_329),
    "mtg-jamendo/top50tags": (32_136, 10_888, 11_356),
    "mtg-jamendo/genre": (32_572, 11_043, 11_479),
    "mtg-jamendo/instrument": (14_395, 5_466, 5_115),
    "mtg-jamendo/moodtheme": (9_949, 3_802, 4_231),
    # MSD train lists: the conventional one is the 201,683-id approximation (see README);
    # CALS train ids are not shipped.
    "msd/conventional": (201_683, 11_774, 28_435),
    "msd/cals": (None, 34_730, 34_913),
}
TAG_COUNTS = {
    "mtat": 50,
    "mtg-jamendo/top50tags": 50,
    "mtg-jamendo/genre": 87,
    "mtg-jamendo/instrument": 40,
    "mtg-jamendo/moodtheme": 56,
    "msd": 50,
    "msd/cals": 50,
}


def _split_ids(folder: str) -> dict[str, list[str]]:
    names = {"train": "train", "valid": "valid", "test": "test"}
    if folder == "msd/conventional":
        names["train"] = "train_ids_approx"
    if folder == "msd/cals":
        del names["train"]
    return {
        split: [row["id"] for row in read_split_table(f"{folder}/{name}.tsv")]
        for split, name in names.items()
    }


def _cli(*args: str) -> subprocess.CompletedProcess:
    return run_cli("manifests", *args, timeout=120)


def _assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------- shipped split tables


@pytest.mark.parametrize("folder", sorted(PUBLISHED))
def test_shipped_splits_have_published_counts_and_are_disjoint(folder):
    ids = _split_ids(folder)
    expected = dict(zip(("train", "valid", "test"), PUBLISHED[folder]))
    for split, split_ids in ids.items():
        assert len(split_ids) == expected[split], (folder, split)
        assert len(set(split_ids)) == len(split_ids), f"{folder}/{split} repeats an id"
    seen: dict[str, str] = {}
    for split, split_ids in ids.items():
        for track in split_ids:
            assert seen.setdefault(track, split) == split, f"{track} in {seen[track]} and {split}"


def test_mtat_clean_split_is_inside_the_full_split_with_the_same_tags():
    for split in ("train", "valid", "test"):
        full = {r["id"]: r["tags"] for r in read_split_table(f"mtat/full_split/{split}.tsv")}
        for row in read_split_table(f"mtat/{split}.tsv"):
            assert full[row["id"]] == row["tags"]
            assert row["tags"], "every clip of the clean split has a tag"


@pytest.mark.parametrize("folder", sorted(TAG_COUNTS))
def test_shipped_vocabularies(folder):
    tags = read_tag_list(f"{folder}/tags.txt")
    assert len(tags) == TAG_COUNTS[folder] == len(set(tags))


def test_shipped_tags_are_all_in_the_vocabulary():
    for folder, tag_file in [
        ("mtat/full_split", "mtat/tags.txt"),
        ("msd/conventional", "msd/tags.txt"),
        ("mtg-jamendo/genre", "mtg-jamendo/genre/tags.txt"),
    ]:
        vocabulary = set(read_tag_list(tag_file))
        for split in ("valid", "test"):
            for row in read_split_table(f"{folder}/{split}.tsv"):
                assert set(filter(None, row["tags"].split("|"))) <= vocabulary


def test_shipped_files_match_their_checksums():
    listed = {}
    for line in (SPLITS_DIR / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        listed[name] = digest
    for name, digest in listed.items():
        data = read_text(SPLITS_DIR / name).encode("utf-8")
        assert hashlib.sha256(data).hexdigest() == digest, name
    shipped = {
        str(p.relative_to(SPLITS_DIR)).removesuffix(".xz")
        for p in SPLITS_DIR.rglob("*")
        if p.is_file() and p.name not in ("SHA256SUMS", "SOURCES.md")
    }
    assert shipped == set(listed)


# ---------------------------------------------------------------- benchmark builders

BUILDS = [
    ("mtat", ["--split-variant", "clean"], {"train": 15_244, "valid": 1_529, "test": 4_332}),
    ("mtat", ["--split-variant", "full"], {"train": 18_706, "valid": 1_825, "test": 5_329}),
    ("msd", [], {"valid": 11_774, "test": 28_435}),
    ("msd-cals", ["--msd-layout", "trackid"], {"valid": 34_730, "test": 34_913}),
    ("jamendo-top50", [], {"train": 32_136, "valid": 10_888, "test": 11_356}),
    ("jamendo-genre", [], {"train": 32_572, "valid": 11_043, "test": 11_479}),
    ("jamendo-instrument", [], {"train": 14_395, "valid": 5_466, "test": 5_115}),
    ("jamendo-moodtheme", [], {"train": 9_949, "valid": 3_802, "test": 4_231}),
]


@pytest.mark.parametrize("dataset,flags,counts", BUILDS, ids=[f"{b[0]}{b[1]}" for b in BUILDS])
def test_every_benchmark_builds_with_allow_missing(tmp_path, dataset, flags, counts):
    out = tmp_path / "m.parquet"
    argv = ["build", dataset, "--audio-root", str(tmp_path), "--out", str(out), "--allow-missing"]
    assert main(argv + flags) == 0
    table = read_manifest(out)
    assert dict(Counter(table.column("split").to_pylist())) == counts
    keys = table.column("key").to_pylist()
    assert all(is_safe_key(k) for k in keys)
    ids = table.column("track_id").to_pylist()
    assert len(set(ids)) == len(ids)  # one row per track: no track in two splits
    assert set(table.column("dataset").to_pylist()) == {dataset}
    vocabulary = vocabulary_of(table)
    assert vocabulary and len(vocabulary) == len(set(vocabulary))
    used = {t for tags in table.column("tags").to_pylist() for t in tags}
    assert used <= set(vocabulary)
    # Nothing exists under an empty root: every row is in the missing report.
    report = (tmp_path / "m.missing.tsv").read_text().splitlines()
    assert report[0].split("\t") == ["key", "track_id", "split", "audio_path", "reason"]
    assert len(report) - 1 == table.num_rows


def test_benchmark_rows_carry_dataset_fields(tmp_path):
    jamendo = build_benchmark(BuildOptions("jamendo-moodtheme")).table
    first = jamendo.slice(0, 1).to_pylist()[0]
    assert first["key"] == "jamendo_track_0000948"
    assert first["track_id"] == "track_0000948"
    assert first["audio_path"] == "48/948.mp3"
    assert (first["artist_id"], first["album_id"]) == ("artist_000087", "album_000149")
    assert first["duration"] == pytest.approx(212.7)
    assert first["tags"] == ["mood/theme---background"]
    msd = build_benchmark(BuildOptions("msd")).table.slice(0, 1).to_pylist()[0]
    assert msd["key"] == "msd_TRYOGXX128F42483A6" and msd["tags"] == ["catchy"]
    assert msd["audio_path"] == "2/7/2700713.clip.mp3"
    assert json.loads(msd["extra"]) == {"seven_digital_id": "2700713"}
    mtat = build_benchmark(BuildOptions("mtat")).table.slice(0, 1).to_pylist()[0]
    assert mtat["key"] == "mtat_11270" and mtat["audio_path"].startswith("0/american_bach")


def test_cals_without_a_7digital_id_is_reported_not_invented():
    result = build_benchmark(BuildOptions("msd-cals"))
    assert result.table.num_rows + len(result.unplaced) == 34_730 + 34_913
    assert len(result.unplaced) == 16_568
    assert all(not row["audio_path"] for row in result.unplaced)
    assert any("--msd-layout trackid" in note for note in result.notes)


def test_missing_audio_fails_with_one_line_and_writes_the_report(tmp_path):
    root = tmp_path / "audio"
    present = read_split_table("mtat/valid.tsv")[:3]
    for row in present:
        (root / row["path"]).parent.mkdir(parents=True, exist_ok=True)
        (root / row["path"]).write_bytes(b"x")
    out = tmp_path / "out" / "mtat.parquet"
    result = _cli("build", "mtat", "--audio-root", str(root), "--out", str(out))
    report = tmp_path / "out" / "mtat.missing.tsv"
    _assert_one_line_error(result, "21,102 of 21,105", str(report), "--allow-missing")
    assert not out.exists()
    listed = [line.split("\t")[1] for line in report.read_text().splitlines()[1:]]
    assert len(listed) == 21_102
    assert not {row["id"] for row in present} & set(listed)


def test_complete_audio_builds_without_a_report(tmp_path):
    root = tmp_path / "audio"
    rows = [r for s in ("train", "valid", "test") for r in read_split_table(f"mtat/{s}.tsv")]
    for folder in {r["path"].split("/")[0] for r in rows}:
        (root / folder).mkdir(parents=True)
    for row in rows:
        (root / row["path"]).touch()
    out = tmp_path / "mtat.parquet"
    stale = tmp_path / "mtat.missing.tsv"
    stale.write_text("left from an earlier run\n")
    assert main(["build", "mtat", "--audio-root", str(root), "--out", str(out)]) == 0
    assert read_manifest(out).num_rows == 21_105
    assert not stale.exists()
    meta = pq.read_schema(out).metadata
    assert meta[b"audio_root"].decode() == str(root.resolve())


def test_missing_audio_checks_relative_absolute_and_skips_urls(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.mp3").touch()
    (tmp_path / "a" / "sub.mp3").mkdir()  # a directory is not an audio file
    paths = ["a/x.mp3", "a/y.mp3", str(tmp_path / "a" / "x.mp3"), "a/sub.mp3", "s3://b/k.mp3"]
    assert missing_audio(paths, tmp_path) == [1, 3]
    assert missing_audio(["/x-not-there.mp3", "x.mp3"], tmp_path) == [0, 1]


# ---------------------------------------------------------------- MSD labels


def _train_ids(n: int) -> list[str]:
    return [row["id"] for row in read_split_table("msd/conventional/train_ids_approx.tsv")[:n]]


def test_msd_train_labels_from_a_tsv(tmp_path):
    ids = _train_ids(4)
    labels = tmp_path / "labels.tsv"
    labels.write_text(
        f"id\ttags\n{ids[0]}\trock|pop|not-a-top50-tag\n{ids[1]}\tMellow\n{ids[2]}\tmellow\n"
    )
    result = build_benchmark(BuildOptions("msd", train_labels=labels))
    rows = result.table.to_pylist()
    train = {r["track_id"]: r["tags"] for r in rows if r["split"] == "train"}
    # Conventional MSD matches Choi's tag spelling exactly: 'mellow' is not 'Mellow'.
    assert train == {ids[0]: ["rock", "pop"], ids[1]: ["Mellow"]}
    # Train ids the labels do not cover are left out (without --unlabeled-train).
    assert Counter(r["split"] for r in rows) == {"train": 2, "valid": 11_774, "test": 28_435}
    assert any("201,681 train tracks got no vocabulary tag" in note for note in result.notes)
    assert any("2 tag mentions" in note for note in result.notes)
    assert any("201,683 ids, 3 more than the published 201,680" in n for n in result.notes)


def _lastfm_db(path: Path, rows: list[tuple[str, str, float]]) -> Path:
    """A database with the schema of the Last.fm dataset's lastfm_tags.db."""
    con = sqlite3.connect(path)
    con.executescript(
        "CREATE TABLE tids (tid TEXT);"
        "CREATE TABLE tags (tag TEXT);"
        "CREATE TABLE tid_tag (tid INT, tag INT, val FLOAT);"
    )
    tid_ids: dict[str, int] = {}
    tag_ids: dict[str, int] = {}
    for tid, tag, value in rows:
        if tid not in tid_ids:
            tid_ids[tid] = con.execute("INSERT INTO tids VALUES (?)", (tid,)).lastrowid
        if tag not in tag_ids:
            tag_ids[tag] = con.execute("INSERT INTO tags VALUES (?)", (tag,)).lastrowid
        con.execute("INSERT INTO tid_tag VALUES (?, ?, ?)", (tid_ids[tid], tag_ids[tag], value))
    con.commit()
    con.close()
    return path


def test_msd_train_labels_from_the_lastfm_database(tmp_path):
    a, b, c = _train_ids(3)
    db = _lastfm_db(
        tmp_path / "lastfm_tags.db",
        [
            (a, "rock", 100.0),
            (a, "jazz", 50.0),  # not above the threshold
            (a, "Hip-Hop", 51.0),
            (b, "hip-hop", 90.0),  # different spelling from the vocabulary's 'Hip-Hop'
            (b, "electronic", 75.0),
            (c, "some other tag", 100.0),
        ],
    )
    out = tmp_path / "msd.parquet"
    argv = ["build", "msd", "--audio-root", str(tmp_path), "--out", str(out), "--allow-missing"]
    assert main(argv + ["--train-labels", str(db)]) == 0
    train = {
        r["track_id"]: r["tags"] for r in read_manifest(out).to_pylist() if r["split"] == "train"
    }
    assert train == {a: ["rock", "Hip-Hop"], b: ["electronic"]}  # label (tags.txt) order
    lower = load_labels(db, read_tag_list("msd/tags.txt"), min_value=40).by_id
    assert lower == {a: ["rock", "jazz", "Hip-Hop"], b: ["electronic"]}


def test_a_broken_label_database_is_one_line(tmp_path):
    con = sqlite3.connect(tmp_path / "other.db")
    con.execute("CREATE TABLE unrelated (x INT)")
    con.commit()
    con.close()
    result = _cli(
        "build", "msd", "--audio-root", str(tmp_path), "--out", str(tmp_path / "m.parquet"),
        "--allow-missing", "--train-labels", str(tmp_path / "other.db"),
    )  # fmt: skip
    _assert_one_line_error(result, "Last.fm tag database", "no such table")


def test_cals_labels_and_train_ids(tmp_path):
    valid = [r["id"] for r in read_split_table("msd/cals/valid.tsv")[:2]]
    train = ["TRAAAAA128F0000001", "TRAAAAA128F0000002"]
    np.save(tmp_path / "train_ids.npy", np.array(train))  # a <U18 array, as CALS ships
    labels = tmp_path / "cals.tsv"
    labels.write_text(f"{valid[0]}\tRock|Hip-Hop\n{valid[1]}\tmellow\n{train[0]}\tpiano\n")
    vocabulary = read_tag_list("msd/cals/tags.txt")
    assert load_labels(labels, vocabulary, casefold=True).by_id[valid[0]] == ["rock", "hip-hop"]
    out = tmp_path / "cals.parquet"
    argv = ["build", "msd-cals", "--audio-root", str(tmp_path), "--out", str(out)]
    argv += ["--allow-missing", "--msd-layout", "trackid", "--labels", str(labels)]
    assert main(argv + ["--train-ids", str(tmp_path / "train_ids.npy"), "--unlabeled-train"]) == 0
    rows = {r["track_id"]: r for r in read_manifest(out).to_pylist()}
    assert rows[valid[0]]["tags"] == ["rock", "hip-hop"]
    assert rows[valid[1]]["tags"] == ["mellow"]
    assert rows[train[0]]["split"] == "train" and rows[train[0]]["tags"] == ["piano"]
    assert rows[train[1]]["split"] == "unlabeled" and rows[train[1]]["tags"] == []
    assert rows[train[0]]["audio_path"] == "A/A/A/TRAAAAA128F0000001.mp3"


# ---------------------------------------------------------------- folder builder


def _write_audio(path: Path, seconds: float = 0.25, sr: int = 8000, freq: float = 440.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(freq, seconds, sr), sr)


def test_artist_level_split_never_shares_an_artist(tmp_path):
    root = tmp_path / "music"
    lines = ["path\ttags\tartist"]
    for artist in range(12):
        for track in range(3 + artist % 3):
            ext = "flac" if track % 2 else "wav"
            name = f"artist {artist}/track {track}.{ext}"
            _write_audio(root / name, freq=200.0 + 40 * artist + track)
            lines.append(f"{name}\t{'rock' if artist % 2 else 'jazz'}|t{track}\tartist-{artist}")
    tags = tmp_path / "tags.tsv"
    tags.write_text("\n".join(lines) + "\n")
    out = tmp_path / "m.parquet"
    argv = ["folder", "--root", str(root), "--out", str(out), "--tags", str(tags)]
    assert main(argv + ["--ratios", "0.6,0.2,0.2"]) == 0
    table = read_manifest(out, require_tags=True)
    rows = table.to_pylist()
    assert len(rows) == 48
    split_of_artist: dict[str, set[str]] = {}
    for row in rows:
        split_of_artist.setdefault(row["artist_id"], set()).add(row["split"])
    assert all(len(splits) == 1 for splits in split_of_artist.values()), split_of_artist
    assert {s for splits in split_of_artist.values() for s in splits} == {"train", "valid", "test"}
    assert all(row["duration"] == pytest.approx(0.25) for row in rows)
    # Deterministic: the same inputs give the same manifest; another seed another split.
    first = {r["key"]: r["split"] for r in rows}
    assert main(argv + ["--ratios", "0.6,0.2,0.2"]) == 0
    assert {r["key"]: r["split"] for r in read_manifest(out).to_pylist()} == first
    assert main(argv + ["--ratios", "0.6,0.2,0.2", "--seed", "7"]) == 0
    assert {r["key"]: r["split"] for r in read_manifest(out).to_pylist()} != first


def test_track_level_split_is_close_to_the_ratios():
    groups = {f"track{i}": 1 for i in range(200)}
    counts = Counter(assign_splits(groups, (0.8, 0.1, 0.1), seed=3).values())
    assert counts == {"train": 160, "valid": 20, "test": 20}
    small = Counter(assign_splits({f"t{i}": 1 for i in range(10)}, (0.8, 0.1, 0.1), 0).values())
    assert small == {"train": 8, "valid": 1, "test": 1}


AWKWARD = [
    "plain.wav",
    "plain.flac",  # same stem, another extension
    "Plain.wav",
    "-leading dash.wav",
    "--.wav",
    ".leading dot.flac",
    "..double.wav",
    "with space and 'single' \"double\" quotes.wav",
    "ünïcødé/日本語 の 曲.flac",
    "ünïcødé/日本語 の 曲.wav",
    "a.b.c.d.wav",
    "deep/er/still/x.aiff",
    "UPPER.WAV",
    "ünïcødé/🎵.wav",
]


def test_folder_keys_are_webdataset_safe_for_awkward_names(tmp_path):
    root = tmp_path / "weird root"
    for i, name in enumerate(AWKWARD):
        _write_audio(root / name, freq=300.0 + 10 * i)
    (root / "notes.txt").write_text("not audio")
    (root / "cover.jpg").write_bytes(b"\xff\xd8")
    out = tmp_path / "m.parquet"
    result = _cli("folder", "--root", str(root), "--out", str(out), "--seed", "1")
    assert result.returncode == 0, result.stderr
    table = read_manifest(out)
    rows = table.to_pylist()
    assert sorted(r["audio_path"] for r in rows) == sorted(AWKWARD)
    keys = [r["key"] for r in rows]
    assert len(set(keys)) == len(keys) == len(AWKWARD)
    assert all(is_safe_key(k) and "." not in k and "/" not in k for k in keys)
    assert all((root / r["audio_path"]).is_file() for r in rows)
    assert {r["split"] for r in rows} <= {"train", "valid", "test"}  # no tags file: labelled
    assert all(r["tags"] == [] for r in rows)
    # Keys are stable: a rebuild gives the same key for the same file.
    assert main(["folder", "--root", str(root), "--out", str(out), "--seed", "1"]) == 0
    assert {r["key"]: r["audio_path"] for r in read_manifest(out).to_pylist()} == {
        r["key"]: r["audio_path"] for r in rows
    }


def test_folder_files_without_tags_are_unlabeled_when_a_tags_file_is_given(tmp_path):
    root = tmp_path / "m"
    for name in ("a.wav", "b.wav", "c.wav"):
        _write_audio(root / name)
    tags = tmp_path / "tags.tsv"
    tags.write_text("a.wav\tpiano|calm\n./b.wav\t\nmissing.wav\trock\n")
    out = tmp_path / "out.parquet"
    assert main(["folder", "--root", str(root), "--out", str(out), "--tags", str(tags)]) == 0
    rows = {r["audio_path"]: r for r in read_manifest(out, require_tags=True).to_pylist()}
    assert rows["a.wav"]["split"] == "train"  # the only labelled file: its middle is at 0.5
    assert rows["a.wav"]["tags"] == ["piano", "calm"]
    assert rows["b.wav"]["split"] == rows["c.wav"]["split"] == "unlabeled"
    assert vocabulary_of(read_manifest(out)) == ["calm", "piano"]  # tie: alphabetical


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--ratios", "0.5,0.5"], "--ratios"),
        (["--ratios", "a,b,c"], "--ratios"),
        (["--split-by", "artist"], "artist column"),
    ],
)
def test_folder_bad_arguments_are_one_line(tmp_path, args, needle):
    _write_audio(tmp_path / "r" / "a.wav")
    result = _cli(
        "folder", "--root", str(tmp_path / "r"), "--out", str(tmp_path / "o.parquet"), *args
    )
    _assert_one_line_error(result, needle)


OTHER_CONTAINERS = {  # name: ffmpeg encoder arguments; none of these suffixes was scanned before
    "opus/a.opus": ["-c:a", "libopus"],
    "opus/b.webm": ["-c:a", "libopus"],
    "wma/c.WMA": ["-c:a", "wmav2"],
    "mp2/d.mp2": ["-c:a", "mp2"],
    "wavpack/e.wv": ["-c:a", "wavpack"],
    "aac/f.aac": ["-c:a", "aac"],
    "aac/g.m4a": ["-c:a", "aac"],
    "odd/mp3 with a .bin suffix.bin": ["-c:a", "libmp3lame", "-f", "mp3"],
    "odd/flac without suffix": ["-c:a", "flac", "-f", "flac"],
}


@pytest.mark.timeout(120)
def test_folder_scan_finds_audio_by_content_and_reports_what_it_skipped(tmp_path):
    root = tmp_path / "music"
    src = tmp_path / "src.wav"
    _write_audio(src)
    for name, codec in OTHER_CONTAINERS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), *codec, str(root / name)],
            check=True,
            timeout=60,
        )
    (root / "notes.txt").write_text("not audio")
    (root / "readme.weird").write_text("a text file with an unknown extension\n" * 20)
    (root / "._a.opus").write_bytes((root / "opus/a.opus").read_bytes())  # macOS metadata twin
    (root / "evil.m3u8").write_text(f"#EXTM3U\n#EXTINF:3,\nfile://{src}\n#EXT-X-ENDLIST\n")
    os.mkfifo(root / "pipe.wav")  # a FIFO must be skipped, not opened (it would hang)
    out = tmp_path / "m.parquet"
    result = _cli("folder", "--root", str(root), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(r["audio_path"] for r in read_manifest(out).to_pylist()) == sorted(
        OTHER_CONTAINERS
    )
    report = dict(
        line.split("\t") for line in (tmp_path / "m.skipped.tsv").read_text().splitlines()[1:]
    )
    assert report["notes.txt"] == "not audio (.txt)"
    assert report["readme.weird"].startswith("no decodable audio")
    assert report["._a.opus"].startswith("macOS resource fork")
    assert report["evil.m3u8"].startswith("playlist")
    assert report["pipe.wav"] == "not a regular file"
    assert len(report) == 5
    assert "5 files skipped" in result.stderr and "m.skipped.tsv" in result.stderr


def test_one_audio_suffix_list_for_every_command():
    from manifests.folder import AUDIO_EXTENSIONS
    from pipelines.core.formats import AUDIO_SUFFIXES

    assert set(AUDIO_EXTENSIONS) == AUDIO_SUFFIXES
    assert {".opus", ".webm", ".wma", ".mp2", ".wv", ".aac", ".m4a", ".ape"} <= AUDIO_SUFFIXES


def test_folder_without_audio_is_one_line(tmp_path):
    (tmp_path / "r").mkdir()
    result = _cli("folder", "--root", str(tmp_path / "r"), "--out", str(tmp_path / "o.parquet"))
    _assert_one_line_error(result, "no audio files")


# ---------------------------------------------------------------- vocab and info


def _toy_manifest(path: Path) -> Path:
    rows = []
    train = [["b", "a"], ["b", "c"], ["a", "b"], ["c"], ["d"], ["e", "d"]]
    for i, tags in enumerate(train):
        rows.append({"key": f"t{i}", "track_id": f"t{i}", "dataset": "toy", "split": "train",
                     "audio_path": f"t{i}.wav", "tags": tags})  # fmt: skip
    for i in range(5):  # frequent outside train: must not count
        rows.append({"key": f"v{i}", "track_id": f"v{i}", "dataset": "toy", "split": "valid",
                     "audio_path": f"v{i}.wav", "tags": ["z"]})  # fmt: skip
    write_manifest(rows, path, metadata={"builder": "toy"})
    return path


def test_vocab_orders_by_train_frequency_and_round_trips(tmp_path, capsys):
    path = _toy_manifest(tmp_path / "toy.parquet")
    before = read_manifest(path)
    # b:3, a:2, c:2, d:2, e:1 -> ties broken alphabetically; 'z' only in valid.
    assert main(["vocab", str(path), "--top", "4"]) == 0
    printed = [line.split("\t")[1] for line in capsys.readouterr().out.splitlines()]
    assert printed == ["b", "a", "c", "d"]
    assert vocabulary_of(read_manifest(path)) is None  # without --write nothing changes
    assert main(["vocab", str(path), "--top", "50", "--write"]) == 0
    after = read_manifest(path)
    assert vocabulary_of(after) == ["b", "a", "c", "d", "e"]
    assert json.loads(pq.read_schema(path).metadata[b"vocabulary"]) == ["b", "a", "c", "d", "e"]
    assert pq.read_schema(path).metadata[b"builder"] == b"toy"
    assert after.equals(before.replace_schema_metadata(after.schema.metadata))
    assert not list(tmp_path.glob("*.tmp"))


def test_info_prints_counts_tags_and_missing_audio(tmp_path):
    path = _toy_manifest(tmp_path / "toy.parquet")
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "t0.wav").touch()
    result = _cli("info", str(path), "--audio-root", str(tmp_path / "audio"))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "11 tracks" in text and "tracks per split" in text and "tag frequencies" in text
    train_line = next(line for line in text.splitlines() if "│ train" in line)
    assert [cell.strip() for cell in train_line.split("│")[1:-1]][:3] == ["train", "6", "6"]
    assert [cell.strip() for cell in train_line.split("│")[1:-1]][-1] == "5"  # missing audio
    z_line = next(line for line in text.splitlines() if "│ z" in line)
    assert [cell.strip() for cell in z_line.split("│")[1:-1]][-2:] == ["0", "5"]


# ---------------------------------------------------------------- malformed manifests


def _valid_rows() -> list[dict]:
    return [
        {
            "key": f"k{i}",
            "track_id": f"t{i}",
            "dataset": "d",
            "split": "train",
            "audio_path": f"{i}.wav",
            "tags": ["x"],
        }  # fmt: skip
        for i in range(3)
    ]


def _malformed(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.parquet"
    rows = _valid_rows()
    if kind == "missing-column":
        pq.write_table(rows_to_table(rows).drop(["split"]), path)
        return path
    if kind == "not-parquet":
        path.write_text("key,track_id\nk,t\n")
        return path
    if kind == "duplicate-key":
        rows[2]["key"] = "k0"
    elif kind == "unknown-split":
        rows[1]["split"] = "validation"
    elif kind == "unsafe-key":
        rows[0]["key"] = "a.b/c"
    elif kind == "empty-tags":
        rows[1]["tags"] = []
    elif kind == "long-key":  # schema-valid, but "{key}.harm.npy" would not fit a tar name
        rows[0]["key"] = "k" * 93
    elif kind == "path-escape":
        rows[1]["audio_path"] = "../../etc/passwd"
    elif kind == "device-path":
        rows[1]["audio_path"] = "/dev/zero"
    elif kind == "other-scheme":
        rows[1]["audio_path"] = "ftp://example.com/a.mp3"
    elif kind == "huge-duration":
        rows[2]["duration"] = 1e308
    elif kind == "nan-duration":
        rows[2]["duration"] = float("nan")
    elif kind == "negative-duration":
        rows[2]["duration"] = -3.0
    elif kind == "empty":
        rows = []
    write_manifest(rows, path, validate=False)
    return path


MALFORMED = {
    "missing-column": "missing column(s): split",
    "duplicate-key": "duplicate key 'k0'",
    "unknown-split": "unknown split 'validation'",
    "unsafe-key": "not WebDataset-safe",
    "not-parquet": "cannot read manifest",
    "long-key": "has 93 characters; at most 80 fit a tar member name",
    "path-escape": "leaves the audio root",
    "device-path": "'/dev/zero' is a device or kernel file",
    "other-scheme": "unsupported scheme 'ftp'",
    "huge-duration": "duration 1e+308 is not a number of seconds",
    "nan-duration": "duration nan is not a number of seconds",
    "negative-duration": "duration -3.0 is not a number of seconds",
    "empty": "manifest has no rows",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_manifest_is_a_one_line_error(tmp_path, kind):
    path = _malformed(tmp_path, kind)
    with pytest.raises(ManifestError, match=re.escape(MALFORMED[kind])):
        read_manifest(path)
    _assert_one_line_error(_cli("info", str(path)), MALFORMED[kind])


def test_manifest_error_is_a_user_error():
    from pipelines.core.errors import UserError

    assert issubclass(ManifestError, UserError) and issubclass(ManifestError, ValueError)


def test_absolute_paths_outside_the_audio_root(tmp_path):
    table = rows_to_table(_valid_rows())
    root = tmp_path / "audio"
    inside = table.set_column(
        table.schema.get_field_index("audio_path"),
        "audio_path",
        [[str(root / "a.mp3"), "b.mp3", "s3://bucket/c.mp3"]],
    )
    validate_table(inside, audio_root=str(root))
    outside = inside.set_column(
        inside.schema.get_field_index("audio_path"),
        "audio_path",
        [["/etc/passwd", "b.mp3", "c.mp3"]],
    )
    validate_table(outside)  # no root given: an absolute path is the manifest's choice
    with pytest.raises(ManifestError, match="is outside the audio root"):
        validate_table(outside, audio_root=str(root))
    validate_table(outside, audio_root=str(root), allow_outside_root=True)


def test_empty_tags_are_an_error_only_where_tags_are_required(tmp_path):
    path = _malformed(tmp_path, "empty-tags")
    assert read_manifest(path).num_rows == 3
    with pytest.raises(ManifestError, match="empty tag list in labelled split 'train'") as error:
        read_manifest(path, require_tags=True)
    assert "\n" not in str(error.value) and "k1" in str(error.value)
    assert set(COLUMNS) == set(pq.read_schema(path).names)


def test_build_argument_errors_are_one_line(tmp_path):
    out = str(tmp_path / "o.parquet")
    _assert_one_line_error(
        _cli(
            "build", "msd", "--audio-root", str(tmp_path), "--out", out, "--split-variant", "full"
        ),
        "--split-variant applies only to mtat",
    )
    _assert_one_line_error(
        _cli("build", "mtat", "--audio-root", str(tmp_path / "nope"), "--out", out),
        "not a directory",
    )
    _assert_one_line_error(
        _cli(
            "build",
            "msd",
            "--audio-root",
            str(tmp_path),
            "--out",
            out,
            "--allow-missing",
            "--train-labels",
            str(tmp_path / "absent.tsv"),
        ),  # fmt: skip
        "label source not found",
    )
    bad = tmp_path / "bad.tsv"
    bad.write_text("TRAAAAK128F9318786\n")
    _assert_one_line_error(
        _cli(
            "build",
            "msd",
            "--audio-root",
            str(tmp_path),
            "--out",
            out,
            "--allow-missing",
            "--train-labels",
            str(bad),
        ),  # fmt: skip
        "line 1",
    )
    result = _cli("build", "nosuchset", "--audio-root", str(tmp_path), "--out", out)
    assert result.returncode == 2 and "invalid choice" in result.stderr
    assert "Traceback" not in result.stderr
    _assert_one_line_error(_cli("vocab", str(tmp_path / "absent.parquet")), "not found")


def test_built_manifest_has_exactly_the_schema(tmp_path):
    out = tmp_path / "m.parquet"
    assert main(["build", "jamendo-moodtheme", "--audio-root", str(tmp_path), "--out", str(out),
                 "--allow-missing"]) == 0  # fmt: skip
    assert pq.read_schema(out).remove_metadata().equals(SCHEMA)


def test_a_column_of_the_wrong_type_is_named_in_one_line(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from manifests.schema import read_manifest, rows_to_table

    table = rows_to_table(
        [{"key": "a", "track_id": "a", "dataset": "d", "split": "train", "audio_path": "a.mp3",
          "tags": ["rock"]}]
    )  # fmt: skip
    flat = table.set_column(table.schema.get_field_index("tags"), "tags", pa.array(["rock"]))
    pq.write_table(flat, tmp_path / "flat.parquet")
    with pytest.raises(ManifestError, match="column 'tags' has type string"):
        read_manifest(tmp_path / "flat.parquet")
    # Large strings and integer durations are what other writers produce: accepted.
    wide = table.set_column(
        table.schema.get_field_index("audio_path"), "audio_path",
        pa.array(["a.mp3"], pa.large_string()),
    ).set_column(table.schema.get_field_index("duration"), "duration", pa.array([30]))  # fmt: skip
    pq.write_table(wide, tmp_path / "wide.parquet")
    assert read_manifest(tmp_path / "wide.parquet").num_rows == 1


def test_the_mtat_split_variant_reaches_the_prepared_card():
    """A recipe that needs one MTT split (Pons: `full`) can check the card: the builder
    records the variant in the manifest, prepare copies it into the card's manifest entry."""
    from pipelines.beam.prepare import PrepareConfig
    from pipelines.beam.prepare_finish import build_card
    from pipelines.core.card import card_split_variant, manifest_split_variant

    for variant in ("clean", "full"):
        table = build_benchmark(BuildOptions("mtat", split_variant=variant)).table
        recorded = manifest_split_variant(table.schema.metadata)
        assert recorded == variant
        cfg = PrepareConfig(manifest="m.parquet", output="out", split_variant=recorded)
        assert card_split_variant(build_card(cfg, [], [], None, {})) == variant
    jamendo = build_benchmark(BuildOptions("jamendo-top50")).table
    assert manifest_split_variant(jamendo.schema.metadata or {}) is None
    card = build_card(PrepareConfig(manifest="m.parquet", output="out"), [], [], None, {})
    assert "split_variant" not in card["manifest"] and card_split_variant(card) is None
