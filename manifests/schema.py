"""The manifest schema: one Parquet row per audio track, the input of every Beam job.

Validation errors are raised as `ManifestError` with a one-line message naming what is
wrong, so command-line tools can print it without a traceback.

Limits checked up front, before a job spends hours on a manifest that cannot work:
- a key fits a tar member name: USTAR stores names of up to 100 bytes (keys have no `/`,
  so the 155-byte prefix field cannot help), and the longest member is `{key}.harm.npy`;
  keys are capped at `MAX_KEY_LENGTH` = 80 characters, leaving room for longer member
  extensions. Longer keys are refused (not silently rewritten: keys are the identity of
  samples); `key_from_path` makes keys of at most 71 characters from any path;
- a relative `audio_path` stays inside the audio root (no `..` escape); an absolute one is
  not a device or kernel file (`/dev`, `/proc`, `/sys`), and with `audio_root` given it
  must lie under it unless `allow_outside_root`; only gs://, s3://, http:// and https://
  URLs; no NUL bytes;
- durations are null or finite, non-negative and at most `MAX_DURATION_S` (7 days);
- at least one row.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.errors import UserError
from pipelines.core.source import normal_path, system_location
from pipelines.core.storage import REMOTE_SCHEMES, is_remote

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


MAX_KEY_LENGTH = 80  # + the longest member extension (".harm.npy") <= USTAR's 100 bytes
MAX_DURATION_S = 7 * 24 * 3600.0
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


class ManifestError(UserError, ValueError):
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


def validate_table(
    table: pa.Table,
    require_tags: bool = False,
    audio_root: str | None = None,
    allow_outside_root: bool = False,
) -> None:
    """Raise ManifestError naming the first problem found.

    `require_tags`: labelled splits (train/valid/test) must have at least one tag.
    The `unlabeled` split never needs tags. `audio_root`/`allow_outside_root`: see
    `check_audio_path`.
    """
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise ManifestError(f"manifest is missing column(s): {', '.join(missing)}")
    for field in SCHEMA:
        actual = table.schema.field(field.name).type
        if not _compatible(actual, field.type):
            raise ManifestError(f"column {field.name!r} has type {actual}; expected {field.type}")
    if table.num_rows == 0:
        raise ManifestError("manifest has no rows")
    keys = table.column("key").to_pylist()
    for i, key in enumerate(keys):
        if key is None or not is_safe_key(key):
            raise ManifestError(
                f"row {i}: key {_short(key)} is not WebDataset-safe (only letters, digits, _ and -)"
            )
        if len(key) > MAX_KEY_LENGTH:
            raise ManifestError(
                f"row {i}: key {_short(key)} has {len(key)} characters; at most {MAX_KEY_LENGTH} "
                "fit a tar member name"
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
    for i, path in enumerate(table.column("audio_path").to_pylist()):
        problem = check_audio_path(path, audio_root, allow_outside_root)
        if problem:
            raise ManifestError(f"row {i} ({keys[i]}): audio_path {_short(path)} {problem}")
    for i, duration in enumerate(table.column("duration").to_pylist()):
        if duration is not None and not (
            math.isfinite(duration) and 0 <= duration <= MAX_DURATION_S
        ):
            raise ManifestError(
                f"row {i} ({keys[i]}): duration {duration!r} is not a number of seconds "
                f"between 0 and {MAX_DURATION_S:.0f}"
            )
    if require_tags:
        splits = table.column("split").to_pylist()
        for i, tags in enumerate(table.column("tags").to_pylist()):
            if splits[i] != "unlabeled" and not tags:
                raise ManifestError(
                    f"row {i} ({keys[i]}): empty tag list in labelled split {splits[i]!r}"
                )


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def check_audio_path(
    path: str, audio_root: str | None = None, allow_outside_root: bool = False
) -> str | None:
    """What is wrong with one `audio_path` (None: nothing). A relative path must stay
    inside the audio root; an absolute one must not be a device or kernel file and, when
    `audio_root` is a local folder, must lie under it unless `allow_outside_root`."""
    if "\0" in path:
        return "contains a NUL byte"
    if is_remote(path):
        return None
    if _SCHEME.match(path) and "://" in path:
        scheme = path.split(":", 1)[0]
        return f"uses the unsupported scheme {scheme!r} ({', '.join(REMOTE_SCHEMES)} or a path)"
    normal = posixpath.normpath(path)
    if not path.startswith("/"):
        if normal == ".." or normal.startswith("../"):
            return "leaves the audio root (..)"
        return None
    # The core's one test (`//proc/self/environ` is /proc too: POSIX normpath keeps `//`).
    if system_location(path) is not None:
        return "is a device or kernel file"
    normal = normal_path(path)
    if audio_root and not allow_outside_root:
        root = normal_path(str(audio_root))
        if is_remote(root) or not (normal + "/").startswith(root.rstrip("/") + "/"):
            return f"is outside the audio root {root} (allow it explicitly if meant)"
    return None


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
