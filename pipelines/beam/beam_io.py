"""File access for Beam jobs through Beam's FileSystems (local, gs://, s3://), plus
https:// reads through fsspec (Beam has no HTTP filesystem).

Writes are atomic. Locally: a temporary name, then a rename, and the temporary file is
removed if the write fails (a full disk included). On gs:// and s3:// an object only
appears when its upload completes, and a rename is a full copy that adds nothing, so the
final name is written directly; the dataset card, written last, is the commit.
"""

from __future__ import annotations

import io
import uuid

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

_RAW = CompressionTypes.UNCOMPRESSED
_configured: tuple[str, ...] | None = None


def configure(filesystem_args: tuple[str, ...]) -> None:
    """Apply the job's filesystem flags (--s3_endpoint_url, credentials, ...) in this
    process. Beam's worker processes do not inherit what the driver set, so every DoFn
    that touches files calls this first."""
    global _configured
    if filesystem_args != _configured:
        from apache_beam.options.pipeline_options import PipelineOptions

        FileSystems.set_options(PipelineOptions(list(filesystem_args)))
        _configured = filesystem_args


URL_SCHEMES = ("gs://", "s3://", "http://", "https://")


def is_url(path: str) -> bool:
    return path.startswith(URL_SCHEMES)


def is_absolute(path: str) -> bool:
    return path.startswith("/") or is_url(path)


def resolve(root: str | None, path: str) -> str:
    """Absolute paths and URLs stand as they are; others are relative to `root`."""
    if path.startswith("/") or is_url(path) or not root:
        return path
    return FileSystems.join(root, path)


def read_bytes(path: str) -> bytes | None:
    """The file's bytes, or None when it does not exist."""
    if path.startswith(("http://", "https://")):
        import fsspec

        try:
            with fsspec.open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
    try:
        with FileSystems.open(path, compression_type=_RAW) as f:
            return f.read()
    except Exception as exc:  # Beam wraps "not found" differently per filesystem
        if not FileSystems.exists(path):
            return None
        raise OSError(f"cannot read {path}: {exc}") from exc


def exists(path: str) -> bool:
    return FileSystems.exists(path)


def join(root: str, *parts: str) -> str:
    return FileSystems.join(root, *parts)


OBJECT_STORES = ("gs://", "s3://")
TMP_MARK = ".tmp-"  # temporary names: {final name}.tmp-{random}


def write_atomic(path: str, data: bytes) -> None:
    write_atomic_with(path, lambda f: f.write(data))


def write_atomic_with(path: str, write):
    """`write(fileobj)` streams the file's content; returns what `write` returns."""
    if path.startswith(OBJECT_STORES):
        with FileSystems.create(path, compression_type=_RAW) as f:
            return write(f)
    tmp = f"{path}{TMP_MARK}{uuid.uuid4().hex[:12]}"
    try:
        with FileSystems.create(tmp, compression_type=_RAW) as f:
            result = write(f)
        FileSystems.rename([tmp], [path])
    except BaseException:
        _remove_quietly(tmp)
        raise
    return result


def _remove_quietly(path: str) -> None:
    try:
        if FileSystems.exists(path):
            FileSystems.delete([path])
    except Exception:  # the original error matters more
        pass


def remove_orphans(directory: str) -> int:
    """Delete temporary files (`*.tmp-*`) that killed writers left in `directory` (not
    recursive); returns how many. Call only when no other job writes there."""
    found = FileSystems.match([join(directory, f"*{TMP_MARK}*")])[0].metadata_list
    paths = [m.path for m in found]
    if paths:
        FileSystems.delete(paths)
    return len(paths)


def list_names(directory: str, pattern: str) -> list[str]:
    """Base names of the files in `directory` matching the glob `pattern`."""
    found = FileSystems.match([join(directory, pattern)])[0].metadata_list
    return sorted(m.path.rstrip("/").rsplit("/", 1)[-1] for m in found)


def write_parquet(path: str, table) -> None:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    write_atomic(path, buf.getvalue())


def read_parquet(path: str):
    import pyarrow.parquet as pq

    data = read_bytes(path)
    if data is None:
        raise FileNotFoundError(path)
    # Single-threaded: arrow's thread pool racing other libraries at exit can abort.
    return pq.read_table(io.BytesIO(data), use_threads=False)


def delete(paths: list[str]) -> None:
    present = [p for p in paths if FileSystems.exists(p)]
    if present:
        FileSystems.delete(present)
