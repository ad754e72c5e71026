"""A manifest for any folder of audio files: recursive scan, optional tags, seeded splits.

Splits are drawn per group: an artist when the tags file names one (no artist ever lands
in two of train/valid/test), otherwise the single track. Groups are ordered by a seeded
SHA-256 of their name and cut at the cumulative ratios, so the same folder, tags and seed
always give the same split, and small folders still get close to the asked ratios.
Adding files can move groups near a cut into the neighbouring split: to freeze a split,
keep the manifest.

Tags: without a tags file every file goes to train/valid/test with an empty tag list (a
manifest for inference or later labelling). With a tags file, a file that the file does
not list, or lists with no tags, goes to the `unlabeled` split.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import soundfile as sf

from manifests.schema import ManifestError, key_from_path, rows_to_table, safe_key
from manifests.tables import read_tsv, split_tags
from manifests.vocabulary import top_tags, with_vocabulary
from pipelines.core.formats import AUDIO_SUFFIXES, audio_by_content, has_audio_suffix, skip_by_name

AUDIO_EXTENSIONS = tuple(sorted(AUDIO_SUFFIXES))  # the fast path; other files are probed
SPLIT_MODES = ("auto", "artist", "track")
SPLIT_NAMES = ("train", "valid", "test")
# Formats whose length libsndfile reads from the header; m4a needs a full decode.
_DURATION_EXTENSIONS = (".flac", ".wav", ".ogg", ".aiff", ".aif", ".mp3")


@dataclass
class FolderOptions:
    root: Path
    tags: Path | None = None
    split_by: str = "auto"  # auto: artist when the tags file names artists, else track
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    dataset: str | None = None  # default: the root folder's name
    durations: bool = True


@dataclass
class FolderLabel:
    tags: list[str]
    artist: str | None = None
    album: str | None = None


@dataclass
class FolderBuild:
    table: pa.Table
    notes: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)


def parse_ratios(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ManifestError(f"--ratios {text!r}: expected three numbers like 0.8,0.1,0.1") from None
    if len(values) != 3 or any(v < 0 for v in values) or not 0.999 <= sum(values) <= 1.001:
        raise ManifestError(
            f"--ratios {text!r}: expected three non-negative numbers summing to 1 (train,valid,test)"
        )
    return values


def scan_audio(root: Path, probe: bool = True) -> tuple[list[str], list[tuple[str, str]]]:
    """Relative POSIX paths of the audio files under `root` (sorted), and what was skipped,
    each as (path, why): macOS `._*` files, names known not to be audio, files neither
    libsndfile nor ffmpeg decodes (probed by content when the suffix is not a known audio
    one; `probe=False` skips them unopened), special files, names that are not valid
    UTF-8 (Parquet cannot store them), unreadable folders, symlinks that lead out of
    `root` (linked folders are not entered)."""
    found, skipped = [], []
    errors: list[OSError] = []
    real_root = os.path.realpath(root)
    for directory, subdirs, files in os.walk(root, onerror=errors.append):
        subdirs.sort()
        for name in sorted(files):
            full = os.path.join(directory, name)
            relative = os.path.relpath(full, root).replace(os.sep, "/")
            why = _link_out_of(full, real_root) or _skip_reason(name, full, probe)
            if why is None:
                try:
                    relative.encode("utf-8")
                except UnicodeEncodeError:
                    why = "name is not valid UTF-8"
            if why is not None:
                shown = relative.encode("utf-8", "backslashreplace").decode()
                skipped.append((shown, why))
                continue
            found.append(relative)
    if errors and not found:
        raise ManifestError(f"cannot read {errors[0].filename}: {errors[0].strerror}")
    skipped.extend((str(e.filename), e.strerror or "unreadable") for e in errors)
    return sorted(found), skipped


def _link_out_of(full: str, real_root: str) -> str | None:
    """Why a symlink that leads out of the scanned folder is skipped: prepare refuses it
    (unless told to follow links), and a manifest must not reach past its folder."""
    if not os.path.islink(full):
        return None
    real = os.path.realpath(full)
    if real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep):
        return None
    return "a symlink to outside the folder (not followed)"


def _skip_reason(name: str, full: str, probe: bool) -> str | None:
    why = skip_by_name(name)
    if why is not None:
        return why
    if has_audio_suffix(name):
        return None if os.path.isfile(full) else "not a regular file"
    if not probe:
        return "unknown extension (not probed)"
    ok, why = audio_by_content(full)
    return None if ok else why


def skipped_summary(skipped: list[tuple[str, str]]) -> str:
    """One line: how many were skipped, by reason (details in parentheses folded), with
    the first of each."""
    by_reason: dict[str, list[str]] = {}
    for path, why in skipped:
        by_reason.setdefault(why.split(" (")[0], []).append(f"{path} ({why})")
    parts = [
        f"{len(paths)} {reason} (first: {paths[0]})" for reason, paths in sorted(by_reason.items())
    ]
    return f"{len(skipped)} files skipped: " + "; ".join(parts)


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def read_folder_tags(path: Path) -> dict[str, FolderLabel]:
    """`path<TAB>tag|tag[<TAB>artist[<TAB>album]]`, or any column order under a header
    line naming `path`, `tags` and optionally `artist`/`artist_id`, `album`/`album_id`."""
    rows = read_tsv(path, "tags file")
    columns = {"path": 0, "tags": 1, "artist": 2, "album": 3}
    if rows and rows[0][1][0].strip().lower() == "path":
        header = [h.strip().lower() for h in rows[0][1]]
        if "tags" not in header:
            raise ManifestError(f"tags file {path}: header has no 'tags' column")
        columns = {
            name: next((header.index(a) for a in (name, f"{name}_id") if a in header), None)
            for name in ("path", "tags", "artist", "album")
        }
        rows = rows[1:]
    labels: dict[str, FolderLabel] = {}
    for number, fields in rows:
        if len(fields) < 2:
            raise ManifestError(f"tags file {path} line {number}: expected path<TAB>tags")
        values = {name: _field(fields, index) for name, index in columns.items()}
        relative = _nfc(posixpath.normpath(values["path"] or ""))
        if relative in labels:
            raise ManifestError(f"tags file {path} line {number}: {relative!r} is listed twice")
        labels[relative] = FolderLabel(
            split_tags(values["tags"] or ""), values["artist"], values["album"]
        )
    return labels


def _field(fields: list[str], index: int | None) -> str | None:
    value = fields[index].strip() if index is not None and index < len(fields) else ""
    return value or None


def _order(seed: int, group: str) -> str:
    return hashlib.sha256(f"{seed}\0{group}".encode()).hexdigest()


def assign_splits(
    group_sizes: dict[str, int], ratios: tuple[float, float, float], seed: int
) -> dict[str, str]:
    """Split of each group: groups in seeded-hash order, each placed by where its middle
    falls on the cumulative track count."""
    total = sum(group_sizes.values())
    bounds, running = [], 0.0
    for ratio in ratios:
        running += ratio / sum(ratios)
        bounds.append(running)
    assigned, done = {}, 0
    for group in sorted(group_sizes, key=lambda g: _order(seed, g)):
        middle = (done + group_sizes[group] / 2) / total
        index = next((i for i, bound in enumerate(bounds) if middle < bound), len(bounds) - 1)
        assigned[group] = SPLIT_NAMES[index]
        done += group_sizes[group]
    return assigned


def _duration(path: str) -> float | None:
    if not path.lower().endswith(_DURATION_EXTENSIONS):
        return None
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError):  # unknown, not an error
        return None
    return float(info.duration) if info.duration > 0 else None


def build_folder(options: FolderOptions) -> FolderBuild:
    root = Path(options.root)
    if not root.is_dir():
        raise ManifestError(f"--root {root} is not a directory")
    if options.split_by not in SPLIT_MODES:
        raise ManifestError(f"--split-by {options.split_by!r}: expected artist or track")
    files, skipped = scan_audio(root)
    if not files:
        detail = f"; {skipped_summary(skipped)}" if skipped else ""
        raise ManifestError(
            f"no audio files (decodable by libsndfile or ffmpeg) under {root}{detail}"
        )
    notes = []
    if skipped:
        notes.append(skipped_summary(skipped))
    labels = read_folder_tags(options.tags) if options.tags is not None else None
    by_nfc = {_nfc(f): f for f in files}
    if labels is not None:
        unknown = [p for p in labels if p not in by_nfc]
        if unknown:
            notes.append(
                f"{len(unknown)} paths in {options.tags} are not audio files under {root} "
                f"(first: {unknown[0]!r})"
            )
    label_of = {by_nfc[p]: label for p, label in (labels or {}).items() if p in by_nfc}

    have_artists = any(label.artist for label in label_of.values())
    split_by = options.split_by
    if split_by == "auto":
        split_by = "artist" if have_artists else "track"
    elif split_by == "artist" and not have_artists:
        raise ManifestError("--split-by artist needs an artist column in --tags; none was found")

    def group_of(relative: str) -> str | None:
        label = label_of.get(relative)
        if labels is not None and (label is None or not label.tags):
            return None  # unlabeled
        if split_by == "artist" and label is not None and label.artist:
            return f"artist\0{label.artist}"
        return f"track\0{relative}"

    groups = {f: group_of(f) for f in files}
    sizes: dict[str, int] = {}
    for group in groups.values():
        if group is not None:
            sizes[group] = sizes.get(group, 0) + 1
    split_of_group = assign_splits(sizes, options.ratios, options.seed) if sizes else {}

    dataset = options.dataset or safe_key(root.resolve().name)
    rows = []
    for relative in files:
        label = label_of.get(relative) or FolderLabel([])
        group = groups[relative]
        rows.append(
            {
                "key": key_from_path(relative),
                "track_id": relative,
                "dataset": dataset,
                "split": "unlabeled" if group is None else split_of_group[group],
                "audio_path": relative,
                "tags": label.tags,
                "artist_id": label.artist,
                "album_id": label.album,
                "duration": _duration(str(root / relative)) if options.durations else None,
            }
        )
    unlabeled = sum(1 for group in groups.values() if group is None)
    if unlabeled:
        notes.append(f"{unlabeled} files have no tags in {options.tags}: split 'unlabeled'")
    metadata = {
        "builder": "folder",
        "split_by": split_by,
        "ratios": ",".join(f"{r:g}" for r in options.ratios),
        "seed": str(options.seed),
    }
    table = rows_to_table(rows, metadata)
    # The vocabulary: every train tag, most frequent first (`vocab --top N` can trim it).
    vocabulary = [tag for tag, _ in top_tags(table)]
    return FolderBuild(with_vocabulary(table, vocabulary), notes, skipped)


def write_skipped_report(path: Path, skipped: list[tuple[str, str]]) -> None:
    """path<TAB>why per skipped file, so a user can see every one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["path\treason"] + [f"{p}\t{why}".replace("\n", " ") for p, why in skipped]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
