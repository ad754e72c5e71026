"""The manifest schema: one Parquet row per audio track, the input of every Beam job.

Validation errors are raised as `ManifestError` with a one-line message naming what is
wrong, so command-line tools can print it without a traceback.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SPLITS = ("train", "valid", "test", "unlabeled")

SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("track_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("audio_path", pa.string(), nullable=False),
        pa.field("tags", pa.list_(pa.string()), nullable=False),
        pa.field("artist_id", pa.string()),
        pa.field("album_id", pa.string()),
        pa.field("duration", pa.float64()),
        pa.field("extra", pa.string()),
    ]
)
COLUMNS = tuple(SCHEMA.names)

# WebDataset splits a member name at its first dot into key and extension, and a
# slash would make a directory inside the tar: neither may appear in a key.
_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


class ManifestError(ValueError):
    """A manifest that does not satisfy the schema; the message is one line."""


def safe_key(text: str) -> str:
    """A WebDataset-safe key made from any text (a path, an id). Not injective on its own:
    callers that may collide add a hash (see `key_from_path`)."""
    key = _UNSAFE.sub("_", text).strip("_-")
    return key or "track"


def key_from_path(relative_path: str) -> str:
    """A stable key for a file: readable stem plus a short hash of the exact relative
    path, so names differing only in punctuation or unicode never collide."""
    import hashlib

    digest = hashlib.sha1(relative_path.encode("utf-8")).hexdigest()[:10]
    stem = safe_key(str(Path(relative_path).with_suffix("")))[-60:].strip("_-")
    return f"{stem}_{digest}" if stem else digest


def is_safe_key(key: str) -> bool:
    return bool(_KEY_RE.match(key))


def rows_to_table(rows: Iterable[Mapping], metadata: Mapping[str, str] | None = None) -> pa.Table:
    """Build a schema-conformant table from dict rows (missing optional fields are null)."""
    columns: dict[str, list] = {name: [] for name in COLUMNS}
    for row in rows:
        for name in COLUMNS:
            value = row.get(name)
            if name == "tags":
                value = list(value or [])
            elif name == "extra" and value is not None and not isinstance(value, str):
                value = json.dumps(value, sort_keys=True)
            columns[name].append(value)
    table = pa.table(columns, schema=SCHEMA)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    return table


def write_manifest(
    rows_or_table: Iterable[Mapping] | pa.Table,
    path: str | Path,
    metadata: Mapping[str, str] | None = None,
    validate: bool = True,
) -> pa.Table:
    table = (
        rows_or_table
        if isinstance(rows_or_table, pa.Table)
        else rows_to_table(rows_or_table, metadata)
    )
    if validate:
        validate_table(table)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return table


def validate_table(table: pa.Table, require_tags: bool = False) -> None:
    """Raise ManifestError naming the first problem found.

    `require_tags`: labelled splits (train/valid/test) must have at least one tag.
    The `unlabeled` split never needs tags.
    """
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise ManifestError(f"manifest is missing column(s): {', '.join(missing)}")
    for field in SCHEMA:
        actual = table.schema.field(field.name).type
        if not _compatible(actual, field.type):
            raise ManifestError(f"column {field.name!r} has type {actual}; expected {field.type}")
    keys = table.column("key").to_pylist()
    for i, key in enumerate(keys):
        if key is None or not is_safe_key(key):
            raise ManifestError(
                f"row {i}: key {key!r} is not WebDataset-safe (only letters, digits, _ and -)"
            )
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            raise ManifestError(f"duplicate key {key!r}")
        seen.add(key)
    for i, split in enumerate(table.column("split").to_pylist()):
        if split not in SPLITS:
            raise ManifestError(
                f"row {i} ({keys[i]}): unknown split {split!r}; expected one of {', '.join(SPLITS)}"
            )
    for name in ("track_id", "dataset", "audio_path"):
        for i, value in enumerate(table.column(name).to_pylist()):
            if not value:
                raise ManifestError(f"row {i} ({keys[i]}): empty {name}")
    if require_tags:
        splits = table.column("split").to_pylist()
        for i, tags in enumerate(table.column("tags").to_pylist()):
            if splits[i] != "unlabeled" and not tags:
                raise ManifestError(
                    f"row {i} ({keys[i]}): empty tag list in labelled split {splits[i]!r}"
                )


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    """Types a reader can use as the schema's: either string width, list or large list
    of text, any number for floats, and all-null columns."""
    if pa.types.is_null(actual):
        return True
    if pa.types.is_string(expected):
        return _is_text(actual)
    if pa.types.is_list(expected):
        return (pa.types.is_list(actual) or pa.types.is_large_list(actual)) and _is_text(
            actual.value_type
        )
    if pa.types.is_floating(expected):
        return pa.types.is_floating(actual) or pa.types.is_integer(actual)
    return actual == expected


def read_manifest(path: str | Path, require_tags: bool = False) -> pa.Table:
    """Read and validate a manifest; any problem is a one-line ManifestError."""
    try:
        table = pq.read_table(str(path))
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {path}") from None
    except (OSError, pa.ArrowInvalid) as exc:
        raise ManifestError(f"cannot read manifest {path}: {str(exc).splitlines()[0]}") from None
    validate_table(table, require_tags=require_tags)
    return table


def manifest_metadata(table: pa.Table) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
