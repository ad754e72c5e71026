"""Which per-file problems are permanent (a reject) and which are transient (retry, then fail).

The rule of the product: only a problem that another attempt cannot fix becomes a row of
rejects.parquet. A missing file, a decoder that says "invalid data", a too-short, silent,
non-finite or absurdly out-of-range signal, a file over the size cap or one that decodes
to more audio than the decode cap, a special file or a file that changed while it was
read are permanent: `AudioRejected(stage, reason, message)`. A network error, a timeout,
throttling, a full disk or an out-of-memory condition says nothing about the file:
`TransientError`, retried with backoff by the caller and then raised, so the runner
retries the bundle or the job fails loudly. `MemoryError` is never caught here at all;
the one place it is a reject (`oversized`) is a decode that ran out of memory although
the file passed the decode caps (`pipelines/beam/track.py`): that file is the cause.

`classify_read_error` sorts the exceptions of the storage clients (local OS errors,
urllib, Beam's S3/GCS wrappers) by what they carry (errno, HTTP status, class name),
because none of them share a base class; what it cannot place is transient, since
turning an unknown failure into a reject would make the dataset depend on luck.
"""

from __future__ import annotations

import errno
import re

# Reject reasons (stable strings: they are counted, tested and documented).
UNREADABLE = "unreadable"  # the decoder (or the storage) says the data is unusable
EMPTY = "empty"
TRUNCATED = "truncated"
TOO_SHORT = "too_short"
SILENT = "silent"
NON_FINITE = "non_finite"
MISSING = "missing"
TOO_LARGE = "too_large"  # over the per-file size cap
TOO_LONG = "too_long"  # decodes to more audio than the decode cap (header or stream says)
OVERSIZED = "oversized"  # its decode ran out of memory even within the caps
OUT_OF_RANGE = "out_of_range"  # sample values far past full scale (e.g. 1e30): not audio
UNSUPPORTED = "unsupported"  # a container outside the allow-list (playlists, concat, ...)
NOT_REGULAR = "not_regular_file"  # FIFO, device, socket, directory
CHANGED = "changed"  # size or mtime differ between planning/opening and the end of the read
OUTSIDE_ROOT = "outside_root"  # a relative path that leaves --audio-root

# HTTP statuses that say "try again later"; 404/410 say "not there".
TRANSIENT_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})
GONE_HTTP = frozenset({404, 410})
TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EAGAIN", "EINTR", "EIO", "ENOSPC", "ENOMEM", "ENFILE", "EMFILE", "ETIMEDOUT",
        "ECONNRESET", "ECONNREFUSED", "ECONNABORTED", "EHOSTUNREACH", "EHOSTDOWN",
        "ENETUNREACH", "ENETDOWN", "ENETRESET", "EPIPE", "ESTALE", "EBUSY", "EDQUOT",
    )
    if hasattr(errno, name)
)  # fmt: skip
MISSING_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR})
# Class names of client exceptions that mean a flaky network or an overloaded service.
_TRANSIENT_NAMES = re.compile(
    r"Timeout|Throttl|SlowDown|ServiceUnavailable|TooManyRequests|InternalServerError|"
    r"Connect|Disconnect|IncompleteRead|ProtocolError|RetryError|DeadlineExceeded|"
    r"BrokenPipe|ChunkedEncoding|PayloadError",
)
_NOT_FOUND_NAMES = re.compile(r"NotFound|NoSuchKey|NoSuchBucket")


class AudioRejected(Exception):
    """A permanent problem with one file: it becomes a reject row (stage, reason, message)."""

    def __init__(self, stage: str, reason: str, message: str):
        super().__init__(f"{stage}/{reason}: {message}")
        self.stage = stage
        self.reason = reason
        self.message = message


class TransientError(Exception):
    """A failure another attempt may not have: retried, then raised to fail the bundle."""

    def __init__(self, stage: str, message: str):
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.message = message


_OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


def reason_text(exc: BaseException, limit: int = 300) -> str:
    """First line of an error, without object addresses (rejects must be reproducible)."""
    lines = str(exc).strip().splitlines()
    return _OBJECT_REPR.sub("<input>", lines[0])[:limit] if lines else type(exc).__name__


def _chain(exc: BaseException):
    """The exception, its causes/contexts and the per-path errors Beam wraps in
    `BeamIOError.exception_details`, each once."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]
        details = getattr(e, "exception_details", None)
        if isinstance(details, dict):
            todo += [v for v in details.values() if isinstance(v, BaseException)]


def http_status(exc: BaseException) -> int | None:
    """The HTTP status an exception carries (urllib `code`, aiohttp `status`, Beam's
    S3ClientError `code`, google's `code`, botocore's parsed response), if any."""
    for attr in ("status", "status_code", "code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and 100 <= value <= 599:
            return value
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore's ClientError: its parsed response
        value = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    else:
        value = getattr(response, "status_code", None) or getattr(response, "status", None)
    return value if isinstance(value, int) and 100 <= value <= 599 else None


def classify_read_error(exc: BaseException, stage: str = "read") -> Exception:
    """The AudioRejected or TransientError that `exc`, raised while reading one file,
    amounts to. MemoryError is re-raised as it is (never a reject)."""
    chain = list(_chain(exc))
    if any(isinstance(e, MemoryError) for e in chain):
        raise exc
    message = reason_text(exc)
    for e in chain:
        status = http_status(e)
        if status in TRANSIENT_HTTP:
            return TransientError(stage, f"HTTP {status}: {message}")
        if isinstance(e, (TimeoutError, ConnectionError)) or _TRANSIENT_NAMES.search(
            type(e).__name__
        ):
            return TransientError(stage, message)
        if isinstance(e, OSError) and e.errno in TRANSIENT_ERRNOS:
            return TransientError(stage, message)
    for e in chain:
        status = http_status(e)
        if status in GONE_HTTP or _NOT_FOUND_NAMES.search(type(e).__name__):
            return AudioRejected(stage, MISSING, message)
        if isinstance(e, OSError) and e.errno in MISSING_ERRNOS:
            return AudioRejected(stage, MISSING, message)
        if isinstance(e, (PermissionError, IsADirectoryError)):
            return AudioRejected(stage, UNREADABLE, message)
        if status is not None and 400 <= status < 500:
            return AudioRejected(stage, UNREADABLE, f"HTTP {status}: {message}")
    return TransientError(stage, f"{type(exc).__name__}: {message}")
