"""Manifests for the standard benchmarks, built from the split tables in `manifests/splits/`.

Also the pieces every manifest builder shares: reading tab-separated label files, user
label sources for MSD (a TSV or the Last.fm tag SQLite database), the fast audio-exists
check with its report, and the tag vocabulary stored in a manifest's Parquet metadata.
"""

from __future__ import annotations

import json
import lzma
import os
import sqlite3
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from manifests.schema import ManifestError, rows_to_table, safe_key

SPLITS_DIR = Path(__file__).resolve().parent / "splits"
LABELLED_SPLITS = ("train", "valid", "test")
VOCABULARY_KEY = "vocabulary"

MTAT_VARIANTS = {"clean": "mtat", "full": "mtat/full_split"}
JAMENDO_SUBSETS = {
    "jamendo-top50": "top50tags",
    "jamendo-genre": "genre",
    "jamendo-instrument": "instrument",
    "jamendo-moodtheme": "moodtheme",
}
BENCHMARKS = ("mtat", "msd", "msd-cals", *JAMENDO_SUBSETS)
MSD_LAYOUTS = ("7digital", "trackid")
# Choi's MSD_split_for_tagging: "I only count tag as valid if the ground truth > 50".
DEFAULT_MIN_TAG_VALUE = 50.0
MSD_TRAIN_APPROX_NOTE = (
    "the conventional MSD train list shipped here has 201,683 ids, 3 more than the published "
    "201,680 (the exact list is not public; see manifests/README.md)"
)


# --------------------------------------------------------------------------- tables


def read_text(path: str | Path) -> str:
    """A UTF-8 text file, transparently decompressing `NAME.xz` when `NAME` is absent."""
    path = Path(path)
    packed = path.with_name(path.name + ".xz")
    try:
        data = path.read_bytes() if path.exists() else lzma.decompress(packed.read_bytes())
    except FileNotFoundError:
        raise ManifestError(f"file not found: {path}") from None
    except lzma.LZMAError as exc:
        raise ManifestError(f"{packed} is not a valid xz file: {exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path} is not UTF-8 text (byte {exc.start})") from None


def read_split_table(relative: str) -> list[dict[str, str]]:
    """Rows of a shipped split table (`manifests/splits/<relative>`, header line first)."""
    lines = read_text(SPLITS_DIR / relative).split("\n")
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:] if line]


def read_tag_list(relative: str) -> list[str]:
    return [t for t in read_text(SPLITS_DIR / relative).split("\n") if t]


def read_tsv(path: str | Path, what: str) -> list[tuple[int, list[str]]]:
    """(line number, fields) of a user's tab-separated file; blank lines are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise ManifestError(f"{what} is a directory, not a file: {path}") from None
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{what} {path} is not UTF-8 text (byte {exc.start})") from None
    return [
        (number, line.rstrip("\r").split("\t"))
        for number, line in enumerate(text.split("\n"), start=1)
        if line.strip()
    ]


def split_tags(field_text: str) -> list[str]:
    """Tags joined with `|` (the format of every tag column here), empty items dropped."""
    return [t.strip() for t in field_text.split("|") if t.strip()]


# --------------------------------------------------------------------------- labels


@dataclass
class Labels:
    """Tags per track id from a user's label source, restricted to a vocabulary."""

    by_id: dict[str, list[str]]
    source: str
    outside_vocabulary: int = 0  # tag mentions dropped because the vocabulary lacks them


class _VocabularyMatcher:
    """Maps a source's tag spelling onto the vocabulary's (exactly, or case-insensitively)."""

    def __init__(self, vocabulary: Sequence[str], casefold: bool):
        self.casefold = casefold
        self.order = {tag: i for i, tag in enumerate(vocabulary)}
        self.lookup = {self._norm(tag): tag for tag in vocabulary}

    def _norm(self, tag: str) -> str:
        return tag.casefold() if self.casefold else tag

    def match(self, tag: str) -> str | None:
        return self.lookup.get(self._norm(tag))

    def ordered(self, tags: Iterable[str]) -> list[str]:
        return sorted(set(tags), key=self.order.__getitem__)


def is_sqlite_file(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def load_labels(
    path: str | Path,
    vocabulary: Sequence[str],
    casefold: bool = False,
    min_value: float = DEFAULT_MIN_TAG_VALUE,
) -> Labels:
    """Labels from a TSV (`id<TAB>tag|tag|...`, optional header) or the Last.fm tag
    database (`lastfm_tags.db`); only tags of `vocabulary` are kept, in its order."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"label source not found: {path}")
    matcher = _VocabularyMatcher(vocabulary, casefold)
    if is_sqlite_file(path):
        return _labels_from_lastfm_db(path, matcher, min_value)
    return _labels_from_tsv(path, matcher)


def _labels_from_tsv(path: Path, matcher: _VocabularyMatcher) -> Labels:
    rows = read_tsv(path, "label file")
    id_col, tags_col = 0, 1
    if rows and rows[0][1][0].strip().lower() in ("id", "track_id", "tid"):
        header = [h.strip().lower() for h in rows[0][1]]
        if "tags" not in header:
            raise ManifestError(f"label file {path}: header has no 'tags' column")
        tags_col = header.index("tags")
        rows = rows[1:]
    found: dict[str, set[str]] = {}
    outside = 0
    for number, fields in rows:
        if len(fields) <= max(id_col, tags_col):
            raise ManifestError(
                f"label file {path} line {number}: expected id<TAB>tags, got {len(fields)} field(s)"
            )
        tags = found.setdefault(fields[id_col].strip(), set())
        for tag in split_tags(fields[tags_col]):
            matched = matcher.match(tag)
            if matched is None:
                outside += 1
            else:
                tags.add(matched)
    by_id = {track: matcher.ordered(tags) for track, tags in found.items()}
    return Labels(by_id, f"TSV {path}", outside)


def _labels_from_lastfm_db(path: Path, matcher: _VocabularyMatcher, min_value: float) -> Labels:
    # The Last.fm dataset's lastfm_tags.db: tid_tag.tid / tid_tag.tag are ROWIDs of
    # tids(tid) and tags(tag); val is the tag's strength, 0..100.
    found: dict[str, set[str]] = {}
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tag_ids = {
                rowid: matched
                for rowid, tag in con.execute("SELECT ROWID, tag FROM tags")
                if tag is not None and (matched := matcher.match(tag)) is not None
            }
            if tag_ids:
                marks = ",".join("?" * len(tag_ids))
                query = (
                    "SELECT tids.tid, tid_tag.tag FROM tid_tag "
                    "JOIN tids ON tids.ROWID = tid_tag.tid "
                    f"WHERE tid_tag.val > ? AND tid_tag.tag IN ({marks})"
                )
                for tid, tag_id in con.execute(query, (min_value, *tag_ids)):
                    found.setdefault(tid, set()).add(tag_ids[tag_id])
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise ManifestError(
            f"cannot read {path} as the Last.fm tag database (tables tids, tags, tid_tag): {exc}"
        ) from None
    by_id = {track: matcher.ordered(tags) for track, tags in found.items()}
    return Labels(by_id, f"Last.fm tag database {path} (val > {min_value:g})")


def load_id_list(path: str | Path) -> list[str]:
    """Track ids, one per line, or a `.npy` string array (e.g. CALS `train_ids.npy`)."""
    path = Path(path)
    if path.suffix == ".npy":
        try:
            ids = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise ManifestError(f"id list not found: {path}") from None
        except ValueError as exc:
            raise ManifestError(f"{path} is not a plain .npy string array: {exc}") from None
        if ids.dtype.kind != "U":
            raise ManifestError(f"{path} holds {ids.dtype}, not strings")
        return [str(i) for i in ids.ravel()]
    return [fields[0].strip() for _, fields in read_tsv(path, "id list")]


def load_path_map(path: str | Path) -> dict[str, str]:
    """`id<TAB>audio path` lines (optional header `id<TAB>path`)."""
    rows = read_tsv(path, "path map")
    if rows and rows[0][1][0].strip().lower() in ("id", "track_id"):
        rows = rows[1:]
    mapping = {}
    for number, fields in rows:
        if len(fields) < 2 or not fields[1].strip():
            raise ManifestError(f"path map {path} line {number}: expected id<TAB>path")
        mapping[fields[0].strip()] = fields[1].strip()
    return mapping


# --------------------------------------------------------------------------- builders


@dataclass
class BuildOptions:
    dataset: str
    split_variant: str = "clean"  # mtat only
    train_labels: Path | None = None  # msd / msd-cals
    min_tag_value: float = DEFAULT_MIN_TAG_VALUE
    unlabeled_train: bool = False  # msd / msd-cals
    train_ids: Path | None = None  # msd-cals only
    msd_layout: str = "7digital"
    path_map: Path | None = None


@dataclass
class Build:
    """A benchmark manifest before writing. `unplaced` rows have no known audio path and
    are left out of `table`; they belong in the missing-audio report."""

    table: pa.Table
    unplaced: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def build_benchmark(options: BuildOptions) -> Build:
    _check_options(options)
    if options.dataset == "mtat":
        rows, vocabulary, source, notes = _mtat(options.split_variant)
    elif options.dataset in JAMENDO_SUBSETS:
        rows, vocabulary, source, notes = _jamendo(options.dataset)
    else:
        rows, vocabulary, source, notes = _msd(options)
    if options.path_map is not None:
        mapping = load_path_map(options.path_map)
        for row in rows:
            row["audio_path"] = mapping.get(row["track_id"], row["audio_path"])
    placed = [row for row in rows if row["audio_path"]]
    unplaced = [row for row in rows if not row["audio_path"]]
    if unplaced:
        notes.append(
            f"{len(unplaced):,} tracks have no known audio path under --msd-layout "
            f"{options.msd_layout} (no 7digital id is public for them); they are left out "
            "and listed in the missing-audio report. Use --msd-layout trackid or --path-map."
        )
    metadata = {
        VOCABULARY_KEY: json.dumps(vocabulary),
        "builder": options.dataset,
        "split_source": f"manifests/splits/{source}",
    }
    if options.dataset == "mtat":
        metadata["split_variant"] = options.split_variant
    return Build(rows_to_table(placed, metadata), unplaced, notes)


def _check_options(options: BuildOptions) -> None:
    name = options.dataset
    if name not in BENCHMARKS:
        raise ManifestError(f"unknown dataset {name!r}; expected one of {', '.join(BENCHMARKS)}")
    if options.split_variant not in MTAT_VARIANTS:
        raise ManifestError(f"unknown split variant {options.split_variant!r} (clean or full)")
    if name != "mtat" and options.split_variant != "clean":
        raise ManifestError("--split-variant applies only to mtat")
    msd_only = {
        "--train-labels": options.train_labels is not None,
        "--unlabeled-train": options.unlabeled_train,
        "--msd-layout trackid": options.msd_layout != "7digital",
    }
    if not name.startswith("msd"):
        used = [flag for flag, given in msd_only.items() if given]
        if used:
            raise ManifestError(f"{', '.join(used)} applies only to msd and msd-cals")
    if options.train_ids is not None and name != "msd-cals":
        raise ManifestError("--train-ids applies only to msd-cals")
    if options.msd_layout not in MSD_LAYOUTS:
        raise ManifestError(f"unknown MSD layout {options.msd_layout!r} (7digital or trackid)")


def _row(prefix: str, dataset: str, split: str, track_id: str, path: str, tags, **more) -> dict:
    return {
        "key": safe_key(f"{prefix}_{track_id}"),
        "track_id": track_id,
        "dataset": dataset,
        "split": split,
        "audio_path": path,
        "tags": tags,
        **more,
    }


def _mtat(variant: str):
    folder = MTAT_VARIANTS[variant]
    rows = [
        _row("mtat", "mtat", split, rec["id"], rec["path"], split_tags(rec["tags"]))
        for split in LABELLED_SPLITS
        for rec in read_split_table(f"{folder}/{split}.tsv")
    ]
    notes = []
    if variant == "full":
        untagged = sum(1 for row in rows if not row["tags"])
        notes.append(
            f"the full MTAT split keeps {untagged:,} clips with no top-50 tag (empty tags), "
            "as musicnn and MAEST do"
        )
    return rows, read_tag_list("mtat/tags.txt"), folder, notes


def _jamendo(name: str):
    folder = f"mtg-jamendo/{JAMENDO_SUBSETS[name]}"
    rows = [
        _row(
            "jamendo",
            name,
            split,
            rec["id"],
            rec["path"],
            split_tags(rec["tags"]),
            artist_id=rec["artist_id"] or None,
            album_id=rec["album_id"] or None,
            duration=float(rec["duration"]) if rec["duration"] else None,
        )
        for split in LABELLED_SPLITS
        for rec in read_split_table(f"{folder}/{split}.tsv")
    ]
    return rows, read_tag_list(f"{folder}/tags.txt"), folder, []


def msd_audio_path(track_id: str, seven_digital_id: str, layout: str) -> str:
    """Where an MSD track's audio lives under the root; '' when unknown.

    7digital: the preview-clip layout `d/d/ddddddd.clip.mp3` of the tagging papers.
    trackid: the MSD's own layout, `A/B/C/TRABC....mp3` (3rd-5th letters of the id).
    """
    if layout == "trackid":
        return f"{track_id[2]}/{track_id[3]}/{track_id[4]}/{track_id}.mp3"
    if not seven_digital_id:
        return ""
    return f"{seven_digital_id[0]}/{seven_digital_id[1]}/{seven_digital_id}.clip.mp3"


def _msd(options: BuildOptions):
    cals = options.dataset == "msd-cals"
    folder = "msd/cals" if cals else "msd/conventional"
    vocabulary = read_tag_list(f"{folder}/tags.txt" if cals else "msd/tags.txt")
    labels = None
    if options.train_labels is not None:
        labels = load_labels(options.train_labels, vocabulary, cals, options.min_tag_value)
    notes: list[str] = []

    def row(split: str, rec: Mapping[str, str], tags: list[str]) -> dict:
        seven = rec.get("seven_digital_id", "")
        return _row(
            "msd",
            options.dataset,
            split,
            rec["id"],
            msd_audio_path(rec["id"], seven, options.msd_layout),
            tags,
            # the JSON that rows_to_table would write, without a json.dumps per row
            extra=f'{{"seven_digital_id": "{seven}"}}' if seven.isdigit() else None,
        )

    rows = []
    for split in ("valid", "test"):
        for rec in read_split_table(f"{folder}/{split}.tsv"):
            if cals:
                tags = labels.by_id.get(rec["id"], []) if labels else []
            else:
                tags = split_tags(rec["tags"])
            rows.append(row(split, rec, tags))
    if cals:
        if labels is None:
            notes.append(
                "CALS tags are not shipped (the CALS label matrices are not public here): "
                "valid/test rows have empty tags; supply them with --train-labels/--labels "
                "(TSV id<TAB>tags, or lastfm_tags.db)"
            )
        else:
            untagged = sum(1 for r in rows if not r["tags"])
            if untagged:
                notes.append(f"{untagged:,} CALS valid/test tracks got no tag from {labels.source}")
        if options.train_ids is None:
            notes.append(
                "CALS train ids (163,504) are not shipped; pass --train-ids FILE "
                "(one id per line, or CALS train_ids.npy) to include them"
            )
            train_records = []
        else:
            train_records = [{"id": i} for i in load_id_list(options.train_ids)]
    else:
        train_records = read_split_table(f"{folder}/train_ids_approx.tsv")
    train_rows = _msd_train_rows(train_records, labels, options, row, notes)
    if train_rows and not cals:
        notes.append(MSD_TRAIN_APPROX_NOTE)
    rows.extend(train_rows)
    if labels is not None and labels.outside_vocabulary:
        notes.append(
            f"{labels.outside_vocabulary:,} tag mentions in {labels.source} are not in the "
            f"{len(vocabulary)}-tag vocabulary and were ignored"
        )
    return rows, vocabulary, folder, notes


def _msd_train_rows(records, labels: Labels | None, options: BuildOptions, row, notes) -> list:
    if not records:
        return []
    if labels is None and not options.unlabeled_train:
        notes.append(
            f"MSD train labels are not shipped: the {len(records):,} train tracks were left "
            "out. Supply --train-labels (TSV id<TAB>tag|tag, or the Last.fm lastfm_tags.db), "
            "or --unlabeled-train to put them in the unlabeled split"
        )
        return []
    out, untagged = [], 0
    for rec in records:
        tags = labels.by_id.get(rec["id"], []) if labels else []
        if tags:
            out.append(row("train", rec, tags))
        elif options.unlabeled_train:
            out.append(row("unlabeled", rec, []))
        else:
            untagged += 1
    if labels is None:
        notes.append(f"{len(out):,} MSD train tracks were put in the unlabeled split")
    elif untagged:
        notes.append(
            f"{untagged:,} train tracks got no vocabulary tag from {labels.source} and were "
            "left out (--unlabeled-train keeps them as unlabeled)"
        )
    return out


# --------------------------------------------------------------------------- audio check


def is_remote(path: str) -> bool:
    return "://" in path


def _file_names(directory: str) -> set[str]:
    try:
        with os.scandir(directory) as entries:
            return {entry.name for entry in entries if entry.is_file()}
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return set()


def missing_audio(paths: Sequence[str], root: str | Path | None) -> list[int]:
    """Indices of local `paths` (relative to `root`, or absolute) with no file behind them.

    One directory listing per distinct parent directory instead of one stat per file, so
    checking 200k tracks spread over a hundred folders is a hundred syscalls. Remote
    paths (scheme://) are not checked.
    """
    by_directory: dict[str, list[tuple[int, str]]] = {}
    for index, path in enumerate(paths):
        if is_remote(path):
            continue
        directory, slash, name = path.replace(os.sep, "/").rpartition("/")
        directory = directory or slash  # "/x.mp3" lives in "/"
        by_directory.setdefault(directory, []).append((index, name))
    missing = []
    for directory, items in by_directory.items():
        absolute = os.path.isabs(directory or ".") or root is None
        names = _file_names(directory if absolute else os.path.join(root, directory))
        missing.extend(index for index, name in items if name not in names)
    return sorted(missing)


MISSING_REPORT_COLUMNS = ("key", "track_id", "split", "audio_path", "reason")


def missing_report_path(manifest_path: str | Path) -> Path:
    path = Path(manifest_path)
    stem = path.name[: -len(".parquet")] if path.name.endswith(".parquet") else path.name
    return path.with_name(f"{stem}.missing.tsv")


def write_missing_report(path: str | Path, rows: Iterable[Mapping]) -> int:
    """A TSV of rows whose audio is missing (columns MISSING_REPORT_COLUMNS)."""
    lines = ["\t".join(MISSING_REPORT_COLUMNS)]
    for row in rows:
        lines.append(
            "\t".join(str(row.get(c) or "").translate(_TSV_SAFE) for c in MISSING_REPORT_COLUMNS)
        )
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines) - 1


# A tab or newline inside a value (a user's file name) would break the report's columns.
_TSV_SAFE = str.maketrans({"\t": " ", "\n": " ", "\r": " "})


def missing_rows(table: pa.Table, root: str | Path | None) -> list[dict]:
    """Rows (as dicts with a `reason`) whose local audio file does not exist."""
    paths = table.column("audio_path").to_pylist()
    indices = missing_audio(paths, root)
    columns = {c: table.column(c).to_pylist() for c in ("key", "track_id", "split")}
    return [
        {**{c: columns[c][i] for c in columns}, "audio_path": paths[i], "reason": "not found"}
        for i in indices
    ]


# --------------------------------------------------------------------------- vocabulary


def tag_counts(table: pa.Table, split: str = "train") -> Counter:
    counts: Counter = Counter()
    splits = table.column("split").to_pylist()
    for row_split, tags in zip(splits, table.column("tags").to_pylist()):
        if row_split == split:
            counts.update(set(tags or ()))
    return counts


def top_tags(table: pa.Table, top: int | None = None) -> list[tuple[str, int]]:
    """(tag, train count), most frequent first, ties broken alphabetically."""
    ranked = sorted(tag_counts(table, "train").items(), key=lambda item: (-item[1], item[0]))
    return ranked if top is None else ranked[:top]


def vocabulary_of(table: pa.Table) -> list[str] | None:
    raw = (table.schema.metadata or {}).get(VOCABULARY_KEY.encode())
    if raw is None:
        return None
    try:
        vocabulary = json.loads(raw)
    except ValueError:
        raise ManifestError("manifest metadata 'vocabulary' is not valid JSON") from None
    if not isinstance(vocabulary, list) or not all(isinstance(t, str) for t in vocabulary):
        raise ManifestError("manifest metadata 'vocabulary' is not a JSON list of strings")
    return vocabulary


def with_vocabulary(table: pa.Table, vocabulary: Sequence[str]) -> pa.Table:
    metadata = dict(table.schema.metadata or {})
    metadata[VOCABULARY_KEY.encode()] = json.dumps(list(vocabulary)).encode()
    return table.replace_schema_metadata(metadata)
