"""Where data lives: the URL schemes the toolkit reads and writes, whether a path is local
or remote, and the one chunked sha256 of a file.

A remote path is `scheme://...` with one of `REMOTE_SCHEMES`: object stores (gs://, s3://)
and HTTP(S). The Beam jobs read and write them (`pipelines/beam/beam_io.py`, `fetch.py`),
manifests accept them as audio paths, and the trainer's loader reads them through fsspec,
which also spells gs:// `gcs://` (`LOADER_REMOTE_SCHEMES`). Anything else is a local path;
the loader also takes `file://` URLs (`LOCAL_SCHEMES`, by `scheme_of`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

OBJECT_STORE_SCHEMES = ("gs", "s3")
HTTP_SCHEMES = ("http", "https")
REMOTE_SCHEMES = OBJECT_STORE_SCHEMES + HTTP_SCHEMES
# fsspec's name for Google Cloud Storage: the loader reads gcs:// as gs:// (Beam does not).
LOADER_REMOTE_SCHEMES = REMOTE_SCHEMES + ("gcs",)
# `scheme_of` of a local path: none, or a file:// URL.
LOCAL_SCHEMES = ("", "file")

OBJECT_STORE_PREFIXES = tuple(f"{s}://" for s in OBJECT_STORE_SCHEMES)
HTTP_PREFIXES = tuple(f"{s}://" for s in HTTP_SCHEMES)
REMOTE_PREFIXES = OBJECT_STORE_PREFIXES + HTTP_PREFIXES

# Bytes per read when hashing: a large shard or checkpoint is never held whole.
HASH_CHUNK_BYTES = 8 << 20


def is_remote(path: str) -> bool:
    """gs://, s3://, http:// or https:// (as written: a scheme in capitals is not one)."""
    return path.startswith(REMOTE_PREFIXES)


def is_object_store(path: str) -> bool:
    return path.startswith(OBJECT_STORE_PREFIXES)


def is_http(path: str) -> bool:
    return path.startswith(HTTP_PREFIXES)


def is_absolute(path: str) -> bool:
    """A remote URL or an absolute local path: nothing to resolve against a root."""
    return path.startswith("/") or is_remote(path)


def scheme_of(url: str) -> str:
    """The URL's scheme in lower case; "" for a local path (a Windows drive letter or a
    bare path has no, or a one-letter, scheme)."""
    scheme = urlparse(url).scheme
    return "" if len(scheme) <= 1 else scheme.lower()


def unsupported_scheme(url: str, remote: tuple[str, ...] = LOADER_REMOTE_SCHEMES) -> str | None:
    """One line saying what is wrong with `url`'s scheme, or None when it is local or one
    of `remote`."""
    scheme = scheme_of(url)
    if scheme in LOCAL_SCHEMES + remote:
        return None
    supported = ", ".join(f"{s}://" for s in remote + ("file",))
    return f"unsupported URL scheme {scheme!r} in {url!r}; use a path or {supported}"


def stream_sha256(stream: BinaryIO) -> tuple[str, int]:
    """(sha256 hex, bytes) of everything `stream.read` returns from where it stands, read
    `HASH_CHUNK_BYTES` at a time."""
    digest, size = hashlib.sha256(), 0
    while chunk := stream.read(HASH_CHUNK_BYTES):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def file_sha256(path: str | Path, size: int | None = None) -> str | None:
    """The sha256 of a local file, read in chunks; None when there is no such file (or it
    is a directory) or, given `size`, the file has another size (then it is not read).
    Other OS errors (no permission) are raised."""
    try:
        if size is not None and os.path.getsize(path) != size:
            return None
        with open(path, "rb") as f:
            return stream_sha256(f)[0]
    except (FileNotFoundError, IsADirectoryError):
        return None
