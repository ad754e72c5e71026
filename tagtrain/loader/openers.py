"""Open shard and card URLs: local paths, file://, http(s)://, s3:// and gs://.

Remote files go through fsspec (s3fs, gcsfs, its HTTP filesystem), read ahead of the
consumer by threads, never through shell pipes. `register_with_webdataset` installs the
same opener in WebDataset's `gopen` dispatch table, so WebDataset's own `url_opener` (used
by the loader) and any `webdataset.WebDataset(url)` open remote shards this way.

Storage options are plain dicts per protocol (`{"s3": {"endpoint_url": ...}}`); an S3
endpoint may also come from the AWS_ENDPOINT_URL environment variable (S3-compatible
stores such as MinIO, Ceph or moto).
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import io
import json
import os
import queue
import re
import stat
import threading
from collections.abc import Mapping
from urllib.parse import urlparse

from pipelines.core.errors import UserError
from pipelines.core.storage import (
    LOADER_REMOTE_SCHEMES,
    LOCAL_SCHEMES,
    scheme_of,
    unsupported_scheme,
)

REMOTE_SCHEMES = LOADER_REMOTE_SCHEMES
# fsspec protocol for each URL scheme.
_PROTOCOL = {"http": "http", "https": "http", "s3": "s3", "gs": "gcs", "gcs": "gcs"}
BLOCK_SIZE = 8 << 20  # bytes per remote read (one range request on object stores)
# A shard or card name inside a dataset: a plain file name, never a path or a URL.
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
# Object-store requests that hang (a stopped server, a dead connection) fail after these
# seconds instead of blocking a loader worker forever; a storage option overrides them.
S3_TIMEOUTS = {"connect_timeout": 10, "read_timeout": 60}


class OpenerError(UserError, ValueError):
    """An unsupported URL or an unusable name; the message is one line."""


def check_supported(url: str) -> str:
    """`url`'s scheme ("" for a local path), or OpenerError naming the ones supported."""
    if (problem := unsupported_scheme(url)) is not None:
        raise OpenerError(problem)
    return scheme_of(url)


def join_url(prefix: str, name: str) -> str:
    """`prefix/name` for a dataset directory or URL prefix and a plain file name."""
    if not _PLAIN_NAME.match(name) or name.startswith("."):
        raise OpenerError(f"refusing file name {name!r}: not a plain file name")
    if check_supported(prefix) in LOCAL_SCHEMES:
        return os.path.join(local_path(prefix), name)
    return prefix.rstrip("/") + "/" + name


def local_path(url: str) -> str:
    if scheme_of(url) == "file":
        return urlparse(url).path
    return url


def storage_options_for(url: str, options: Mapping | None = None) -> dict:
    """fsspec keyword arguments for `url`'s protocol, with the S3 endpoint filled in from
    AWS_ENDPOINT_URL when no option gives one."""
    protocol = _PROTOCOL.get(scheme_of(url), "")
    kwargs = dict((options or {}).get(protocol, {}))
    if protocol == "s3" and "endpoint_url" not in kwargs and os.environ.get("AWS_ENDPOINT_URL"):
        kwargs["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
    if protocol == "s3":
        kwargs["config_kwargs"] = {**S3_TIMEOUTS, **kwargs.get("config_kwargs", {})}
    return kwargs


@functools.lru_cache(maxsize=8)
def _filesystem(protocol: str, kwargs_json: str, pid: int):
    # Keyed by process id: a filesystem (its event loop, its connections) made before a
    # DataLoader worker forked is not usable in the worker (fsspec: not fork-safe).
    import fsspec

    kwargs = json.loads(kwargs_json)
    warm = _WARM_SESSIONS.get(kwargs_json)
    if protocol == "s3" and warm is not None and warm[0] != pid:
        kwargs["session"] = warm[1]  # made before the fork, never used by the parent
    return fsspec.filesystem(protocol, **kwargs)


# S3 storage options (JSON) -> (pid of the process that made it, an aiobotocore session
# with the S3 service model and endpoint rules loaded). See `prepare_for_fork`.
_WARM_SESSIONS: dict[str, tuple[int, object]] = {}


def prepare_for_fork(url: str, options: Mapping | None = None) -> None:
    """Before forking loader workers: an S3 session with what every new client loads
    (service model, endpoint rules: ~50 ms of CPU) loaded once, in this process, for the
    workers' own clients. Only the botocore-level session crosses the fork: no event
    loop, no aiohttp session, no connection, no credentials (this process never makes a
    request with it); each worker still makes its own filesystem and connections."""
    if _PROTOCOL.get(scheme_of(url)) != "s3":
        return
    key = json.dumps(storage_options_for(url, options), sort_keys=True)
    if key in _WARM_SESSIONS:
        return
    try:
        import asyncio

        from aiobotocore.session import AioSession

        session = AioSession()
        asyncio.run(_warm_up(session))
    except Exception:  # noqa: BLE001  (an optimisation only: workers load it themselves)
        return
    _WARM_SESSIONS[key] = (os.getpid(), session)


async def _warm_up(session) -> None:
    await session.get_service_model("s3")
    # A client is made and closed without a request: its endpoint rules stay loaded.
    dummy = {"aws_access_key_id": "warm-up", "aws_secret_access_key": "warm-up"}
    async with session.create_client(
        "s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1", **dummy
    ):
        pass


def filesystem(url: str, options: Mapping | None = None):
    """The (cached, per process) fsspec filesystem serving a remote URL."""
    protocol = _PROTOCOL[check_supported(url)]
    kwargs = storage_options_for(url, options)
    return _filesystem(protocol, json.dumps(kwargs, sort_keys=True), os.getpid())


def open_url_at(url: str, options: Mapping | None, offset: int):
    """A read-ahead stream over `url` from byte `offset` on (to resume a failed read)."""
    scheme = check_supported(url)
    if scheme in LOCAL_SCHEMES:
        stream = open_regular_file(local_path(url))
        stream.seek(offset)
        return stream
    fs = filesystem(url, options)
    if scheme in ("http", "https"):
        stream = ReadAhead(fs.open(url, "rb", block_size=0))
        stream.seek(offset)  # forward: reads and drops (servers need not honour ranges)
        return stream
    return RangeReader(fs, url, fs.size(url), start=offset)


def open_url(url: str, options: Mapping | None = None, readahead: bool = True):
    """A binary read stream for a local path or a supported URL. With `readahead`, remote
    bytes arrive ahead of the reader, so downloading overlaps decoding: HTTP responses
    are streamed by a thread (`ReadAhead`), object-store objects are fetched as
    consecutive ranges over several connections at once (`RangeReader`)."""
    scheme = check_supported(url)
    if scheme in LOCAL_SCHEMES:
        return open_regular_file(local_path(url))
    fs = filesystem(url, options)
    if scheme in ("http", "https"):
        # A streaming response read in order: not every HTTP server honours ranges.
        source = fs.open(url, "rb", block_size=0)
        return ReadAhead(source) if readahead else source
    if not readahead:
        return fs.open(url, "rb", block_size=BLOCK_SIZE, cache_type="readahead")
    # Object stores: one connection gives far less than a loader worker decodes, so
    # consecutive ranges are fetched over several connections at once.
    return RangeReader(fs, url, fs.size(url))


def open_regular_file(path: str):
    """A buffered binary stream over a local regular file. A FIFO, device or socket is
    refused (reading one would block forever or never end): the file is opened without
    blocking and checked before anything is read."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OpenerError(f"{path} is not a regular file (a FIFO, device or socket?)")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=1 << 20)
    except BaseException:
        os.close(fd)
        raise


class _BlockStream(io.RawIOBase):
    """A read-only stream over a sequence of blocks; `_fetch()` returns the next one (b""
    at the end). Seeks may only go forward (what a tar walk needs: skipping a member's
    data), so tarfile can read it in its cheap random-access mode."""

    def __init__(self):
        super().__init__()
        self._current = memoryview(b"")
        self._eof = False
        self._position = 0

    def _fetch(self) -> bytes:
        raise NotImplementedError

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._position
        elif whence != io.SEEK_SET:
            raise OSError("a remote stream cannot seek from its end")
        if offset < self._position:
            raise OSError("a remote stream cannot seek backwards")
        self._consume(offset - self._position, keep=False)
        return self._position

    def read(self, size: int = -1) -> bytes:
        return b"".join(self._consume(size, keep=True))

    def _consume(self, size: int, keep: bool) -> list:
        parts = []
        while size != 0:
            if not len(self._current):
                if self._eof:
                    break
                block = self._fetch()
                if not block:
                    self._eof = True
                    break
                self._current = memoryview(block)
            take = len(self._current) if size < 0 else min(size, len(self._current))
            if keep:
                parts.append(self._current[:take])
            self._current = self._current[take:]
            self._position += take
            if size > 0:
                size -= take
        return parts

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class RangeReader(_BlockStream):
    """An object read as consecutive `block_size` ranges, `depth` of them in flight."""

    def __init__(
        self,
        fs,
        path: str,
        size: int,
        block_size: int = BLOCK_SIZE,
        depth: int = 4,
        start: int = 0,
    ):
        super().__init__()
        self._fs, self._path, self._size, self._block_size = fs, path, size, block_size
        self._pool = concurrent.futures.ThreadPoolExecutor(depth, thread_name_prefix="range")
        self._depth = depth
        self._pending: collections.deque = collections.deque()
        self._next_start = start
        self._position = start
        self._submit()

    def _submit(self) -> None:
        while len(self._pending) < self._depth and self._next_start < self._size:
            start, end = self._next_start, min(self._size, self._next_start + self._block_size)
            self._pending.append(
                self._pool.submit(self._fs.cat_file, self._path, start=start, end=end)
            )
            self._next_start = end

    def _fetch(self) -> bytes:
        if not self._pending:
            return b""
        block = self._pending.popleft().result()
        self._submit()
        return block

    def close(self) -> None:
        if not self.closed:
            for future in self._pending:
                future.cancel()
            self._pool.shutdown(wait=False, cancel_futures=True)
        super().close()


class ReadAhead(_BlockStream):
    """A stream over `source` read by a thread, up to `depth` blocks ahead."""

    def __init__(self, source, block_size: int = BLOCK_SIZE, depth: int = 3):
        super().__init__()
        self._source = source
        self._block_size = block_size
        self._blocks: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            while not self._stop.is_set():
                block = self._source.read(self._block_size)
                self._put(block)
                if not block:
                    return
        except BaseException as exc:  # noqa: BLE001  (handed to the reader, raised there)
            self._put(exc)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._blocks.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _fetch(self) -> bytes:
        item = self._blocks.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        if not self.closed:
            self._stop.set()
            self._thread.join(timeout=5)
            self._source.close()
        super().close()


def read_bytes(url: str, options: Mapping | None = None, limit: int | None = None) -> bytes:
    """The whole object at `url`; with `limit`, refused (OpenerError) when larger."""
    with open_url(url, options, readahead=False) as f:
        data = f.read() if limit is None else f.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise OpenerError(f"{url} is larger than {limit} bytes")
    return data


def _gopen_handler(url, mode="rb", bufsize=8192, options=None, **_):
    if mode != "rb":
        raise OpenerError(f"{url}: only reading is supported")
    return open_url(url, options)


def register_with_webdataset(options: Mapping | None = None) -> None:
    """Route WebDataset's remote schemes through `open_url` (replacing its curl/gsutil
    pipes) and take `pipe:` away, so no shard URL can start a shell command."""
    from webdataset import gopen_schemes  # the dispatch dict that gopen() reads

    handler = functools.partial(_gopen_handler, options=dict(options or {}))
    for scheme in REMOTE_SCHEMES:
        gopen_schemes[scheme] = handler
    gopen_schemes.pop("pipe", None)
