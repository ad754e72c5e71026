"""File access for Beam jobs through Beam's FileSystems (local, gs://, s3://), plus
https:// reads through fsspec (Beam has no HTTP filesystem).

Writes are atomic. Locally: a temporary name, then a rename, and the temporary file is
removed if the write fails (a full disk included). On gs:// and s3:// an object only
appears when its upload completes, and a rename is a full copy that adds nothing, so the
final name is written directly; the dataset card, written last, is the commit.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import time
import uuid

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipelines.core.errors import UserError
from pipelines.core.failures import AudioRejected, TransientError
from pipelines.core.storage import is_absolute, is_http, is_object_store, is_remote

_RAW = CompressionTypes.UNCOMPRESSED
_configured: tuple[str, ...] | None = None
_options = None  # the PipelineOptions FileSystems was set with (their S3 settings)
# S3 settings' key -> the boto3 client shared by this process's S3 reads and writes.
_S3_CLIENTS: dict[str, object] = {}


def configure(filesystem_args: tuple[str, ...]) -> None:
    """Apply the job's filesystem flags (--s3_endpoint_url, credentials, ...) in this
    process. Beam's worker processes do not inherit what the driver set, so every DoFn
    that touches files calls this first."""
    global _configured, _options
    if filesystem_args != _configured:
        from apache_beam.options.pipeline_options import PipelineOptions

        _options = PipelineOptions(list(filesystem_args))
        FileSystems.set_options(_options)
        _configured = filesystem_args
    _share_s3_clients()


def _share_s3_clients() -> None:
    """Make Beam's S3 filesystem reuse one boto3 client per process and settings.

    Beam's S3FileSystem builds a new S3IO, hence a new boto3 client, for every call
    (match, exists, open, ...), and a boto3 client parses botocore's JSON service models
    when it is made: ~0.2 CPU-s, three times per audio file read, ten times the cost of
    decoding it (bench/RESULTS.md). The boto3 client is thread-safe and shared, also by
    the fetch threads; Beam's wrapper around it (`boto3_client.Client`) is not: it holds
    the download stream of the object being read. Shared, two threads reading two objects
    swapped streams under each other (errors retried with seconds of backoff, and bytes of
    one object could be returned for another), so each S3IO gets its own wrapper."""
    try:
        from apache_beam.io.aws import s3io
        from apache_beam.io.aws.clients.s3 import boto3_client
    except ImportError:  # Beam without its AWS extra: no s3:// at all
        return
    if getattr(s3io.S3IO, "shares_clients", False):
        return
    original = s3io.S3IO

    class OwnStreamClient(boto3_client.Client):
        """Beam's client with its own download state around a shared boto3 client."""

        def __init__(self, shared):
            self.client = shared
            self._download_request = None
            self._download_stream = None
            self._download_pos = 0

    class SharedClientS3IO(original):
        shares_clients = True

        def __init__(self, client=None, options=None):
            if client is None and options is not None:
                client = OwnStreamClient(_shared_s3_client(options))
            super().__init__(client=client, options=options)

    s3io.S3IO = SharedClientS3IO


def _shared_s3_client(options):
    from apache_beam.io.aws.clients.s3 import boto3_client

    key = _s3_key(options)
    if key not in _S3_CLIENTS:
        _S3_CLIENTS[key] = boto3_client.Client(options=options).client
    return _S3_CLIENTS[key]


def s3_client():
    """The boto3 S3 client of the configured filesystem flags (endpoint, credentials,
    region), shared in this process (thread-safe), for reads that need one request where
    Beam's S3IO makes three (a listing, a HEAD, then the GET)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    return _shared_s3_client(_options if _options is not None else PipelineOptions([]))


# PipelineOptions object -> its S3 settings' key. get_all_options() rebuilds an argparse
# parser of every Beam option (~5 ms), and an S3 read makes three S3IOs: it was half of
# the CPU of reading an audio file from S3. The options object is kept with its key so
# its id is not reused; FileSystems holds one per configuration.
_keys_by_options: dict[int, tuple[object, str]] = {}


def _s3_key(options) -> str:
    from apache_beam.options.pipeline_options import PipelineOptions

    if not isinstance(options, PipelineOptions):
        return repr(sorted(_s3_settings(options).items()))
    known = _keys_by_options.get(id(options))
    if known is None or known[0] is not options:
        known = (options, repr(sorted(_s3_settings(options).items())))
        _keys_by_options[id(options)] = known
    return known[1]


def _s3_settings(options) -> dict:
    from apache_beam.options.pipeline_options import PipelineOptions

    if isinstance(options, PipelineOptions):
        options = options.get_all_options()
    return {k: v for k, v in dict(options).items() if k.startswith("s3_")}


def resolve(root: str | None, path: str) -> str:
    """Absolute paths and URLs stand as they are; others are relative to `root`."""
    if is_absolute(path) or not root:
        return path
    return FileSystems.join(root, path)


class TransientIOError(TransientError):
    """A remote read failed for a reason other than "not found" after the filesystem's own
    retries (Beam's S3 and GCS clients back off for minutes): a network or server
    problem, not a property of the file. Deliberately not an OSError, so that no job
    turns it into a reject: it fails the bundle (the runner retries it, or the job
    stops and a re-run resumes from the finished shards)."""

    def __init__(self, message: str):
        super().__init__("io", message)


def read_bytes(path: str, limit: int | None = None) -> bytes | None:
    """The file's bytes, or None when it does not exist. A local file that exists but
    cannot be read raises OSError (a permanent problem); a remote one TransientIOError.
    With `limit`, a larger file is refused (UserError) after reading `limit` + 1 bytes."""
    data = _read_bytes(path, limit)
    if limit is not None and data is not None and len(data) > limit:
        raise UserError(f"{path} is larger than {limit} bytes: not what this job writes")
    return data


def _read_bytes(path: str, limit: int | None) -> bytes | None:
    if is_http(path):
        import fsspec

        try:
            with fsspec.open(path, "rb") as f:
                return f.read(limit + 1) if limit is not None else f.read()
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise TransientIOError(f"cannot read {path}: {_first_line(exc)}") from exc
    try:
        if is_remote(path):
            return with_retries(lambda: _read(path, limit))
        _check_regular(path)
        return _read(path, limit)
    except FileNotFoundError:
        return None
    except UserError:
        raise
    except Exception as exc:  # Beam wraps "not found" differently per filesystem
        if is_remote(path):
            raise TransientIOError(f"cannot read {path}: {_first_line(exc)}") from exc
        if not FileSystems.exists(path):
            return None
        raise OSError(f"cannot read {path}: {_first_line(exc)}") from exc


def read_sha256(path: str) -> str | None:
    """The sha256 of a file's bytes (`read_bytes`: local or remote), or None when it does
    not exist."""
    data = read_bytes(path)
    return None if data is None else hashlib.sha256(data).hexdigest()


def _check_regular(path: str) -> None:
    """A FIFO or device named like one of our files would block or never end a read."""
    if not stat.S_ISREG(os.stat(path.removeprefix("file://")).st_mode):
        raise UserError(f"{path} is not a regular file")


def _read(path: str, limit: int | None = None) -> bytes:
    with FileSystems.open(path, compression_type=_RAW) as f:
        return f.read() if limit is None else f.read(limit + 1)


class RangeReader:
    """Byte ranges of files (local, gs://, s3://, https://), each file opened once and
    kept open until `close`: a reader of a few members of many tars. A remote read that
    fails transiently is retried on a fresh handle, then raised as TransientIOError."""

    def __init__(self):
        self._files: dict = {}

    def read(self, path: str, offset: int, size: int) -> bytes:
        def attempt():
            f = self._files.get(path)
            if f is None:
                f = self._files[path] = _open_for_ranges(path)
            try:
                f.seek(offset)
                data = f.read(size)
            except BaseException:
                self._files.pop(path).close()
                raise
            if len(data) != size:  # the file is shorter than whoever gave the range said
                raise ValueError(f"{path}: {size} bytes at {offset} asked, {len(data)} there")
            return data

        if not is_remote(path):
            return attempt()
        try:
            return with_retries(attempt)
        except (FileNotFoundError, ValueError):
            raise
        except Exception as exc:
            raise TransientIOError(f"cannot read {path}: {_first_line(exc)}") from exc

    def close(self) -> None:
        while self._files:
            self._files.popitem()[1].close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _open_for_ranges(path: str):
    if is_http(path):
        import fsspec

        return fsspec.open(path, "rb").open()
    return FileSystems.open(path, compression_type=_RAW)


# How long an object-store operation is retried beyond the client's own retries: long
# enough to ride out a server restart or a throttling burst, short enough that a real
# outage fails the job (which a re-run then resumes).
RETRY_SECONDS = 180.0


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (TransientError, AudioRejected)):  # sorted already (core.failures)
        return isinstance(exc, TransientError)
    code = getattr(exc, "code", None)
    if isinstance(code, int):  # an HTTP status from the S3/GCS client
        return code >= 500 or code in (408, 429)
    return not isinstance(exc, (FileNotFoundError, PermissionError, ValueError, TypeError))


def with_retries(operation, seconds: float | None = None):
    """`operation()`, retried with exponential backoff while it fails transiently."""
    deadline = time.monotonic() + (RETRY_SECONDS if seconds is None else seconds)
    delay = 0.5
    while True:
        try:
            return operation()
        except Exception as exc:
            if not _is_transient(exc) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(2 * delay, 15.0)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def exists(path: str) -> bool:
    return FileSystems.exists(path)


def join(root: str, *parts: str) -> str:
    return FileSystems.join(root, *parts)


TMP_MARK = ".tmp-"  # temporary names: {final name}.tmp-{random}


def write_atomic(path: str, data: bytes) -> None:
    write_atomic_with(path, lambda f: f.write(data))


def write_atomic_with(path: str, write):
    """`write(fileobj)` streams the file's content; returns what `write` returns."""
    if is_object_store(path):
        return with_retries(lambda: _create(path, write))
    tmp = f"{path}{TMP_MARK}{uuid.uuid4().hex[:12]}"
    try:
        with FileSystems.create(tmp, compression_type=_RAW) as f:
            result = write(f)
        FileSystems.rename([tmp], [path])
    except BaseException:
        _remove_quietly(tmp)
        raise
    return result


def _create(path: str, write):
    with FileSystems.create(path, compression_type=_RAW) as f:
        return write(f)


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
