"""Tags per track id from a user's label source, kept to a vocabulary: a TSV
(`id<TAB>tag|tag|...`, optional header) or the Last.fm tag database (`lastfm_tags.db`),
as the MSD builders take them (`--train-labels`), and id lists (`--train-ids`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from manifests.schema import ManifestError
from manifests.tables import read_tsv, split_tags

# Choi's MSD_split_for_tagging: "I only count tag as valid if the ground truth > 50".
DEFAULT_MIN_TAG_VALUE = 50.0


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
