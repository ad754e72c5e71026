"""Reading the tab-separated files manifests are built from: the split tables shipped in
`manifests/splits/` (header line first, `NAME.xz` when compressed) and a user's TSVs
(label files, id lists, path maps), with `|`-joined tag columns."""

from __future__ import annotations

import lzma
from pathlib import Path

from manifests.schema import ManifestError

SPLITS_DIR = Path(__file__).resolve().parent / "splits"
LABELLED_SPLITS = ("train", "valid", "test")


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
