"""Fetching one track's audio: where it is (paths contained in the audio root), reading it
from disk, HTTP or an object store with a size cap and a version check, and retrying
transient failures with backoff before giving up.

Every failure is sorted by `pipelines.core.failures`: a permanent one is an
`AudioRejected` (the caller's reject), a transient one a `TransientError`, retried here a
few times and then raised so the runner retries the bundle (or the job fails loudly). An
HTTP server that answers 429/5xx is transient, not "missing" (only 404/410 are); one that
does not answer at all, within a bounded time, is a reject of its own (`unreachable`).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import random
import time
import urllib.error
import urllib.parse
import urllib.request

from pipelines.core.failures import (
    OUTSIDE_ROOT,
    AudioRejected,
    TransientError,
    classify_read_error,
)
from pipelines.core.source import Signature, SourceBytes, changed, read_local, too_large
from pipelines.core.storage import is_absolute, is_http, is_remote

HTTP_TIMEOUT_S = 60.0
# How long one track may wait for an HTTP server that does not answer at all before it is
# rejected as UNREACHABLE (at most RETRY_ATTEMPTS connection tries).
UNREACHABLE_DEADLINE_S = 30.0
UNREACHABLE = "unreachable"
RETRY_ATTEMPTS = 4
RETRY_BASE_DELAY_S = 0.5


def resolve(audio_root: str | None, audio_path: str) -> str:
    """The full path or URL of a manifest's `audio_path`. Absolute paths and URLs stand
    as they are (manifest validation decides whether they are allowed); a relative path
    must stay inside `audio_root` (no `..` escape)."""
    if is_absolute(audio_path):
        return audio_path
    normal = posixpath.normpath(audio_path)
    if normal == ".." or normal.startswith("../"):
        raise AudioRejected("read", OUTSIDE_ROOT, f"{audio_path!r} leaves the audio root")
    if not audio_root:
        return normal
    if is_remote(audio_root):
        return audio_root.rstrip("/") + "/" + normal
    return os.path.join(audio_root, normal)


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    # urllib follows redirects to ftp:// too; a track URL may only lead to another HTTP one.
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not is_http(newurl.lower()):
            raise AudioRejected("read", "unreadable", f"redirect to a non-HTTP URL: {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _http_opener() -> urllib.request.OpenerDirector:
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        _HttpOnlyRedirects(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


def read_http(url: str, limit: int | None) -> SourceBytes:
    """One read of `url`. A server that does not answer at all (connection refused, no
    route, unknown host, no connection within the timeout) is tried again here, a few
    times within UNREACHABLE_DEADLINE_S, and then the track is rejected as `unreachable`
    (one line): raised as transient it would make Beam retry the bundle and fail the whole
    job minutes later with a traceback. A server that answers 429/5xx stays transient."""
    deadline = time.monotonic() + UNREACHABLE_DEADLINE_S
    for number in range(RETRY_ATTEMPTS):
        timeout = max(1.0, min(HTTP_TIMEOUT_S, deadline - time.monotonic()))
        try:
            return _read_http_once(url, limit, timeout)
        except _NoAnswer as exc:
            reason = exc.reason
        delay = RETRY_BASE_DELAY_S * 2**number
        if number == RETRY_ATTEMPTS - 1 or time.monotonic() + delay >= deadline:
            break
        time.sleep(delay)
    raise AudioRejected(
        "read", UNREACHABLE, f"no answer from {_host(url)} after {number + 1} tries: {reason}"
    )


class _NoAnswer(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc or url


def _no_answer(exc: BaseException) -> bool:
    # urllib raises URLError (not its HTTPError subclass) when no HTTP response came back.
    return (
        isinstance(exc, urllib.error.URLError)
        and not isinstance(exc, urllib.error.HTTPError)
        and isinstance(exc.reason, OSError)
    )


def _read_http_once(url: str, limit: int | None, timeout: float) -> SourceBytes:
    request = urllib.request.Request(url, headers={"Accept-Encoding": "identity"})
    try:
        with _http_opener().open(request, timeout=timeout) as response:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit():
                rejected = too_large(int(declared), limit)
                if rejected is not None:
                    raise rejected
            data = response.read() if limit is None else response.read(limit + 1)
            version = response.headers.get("ETag") or response.headers.get("Last-Modified") or ""
    except (AudioRejected, TransientError):
        raise
    except Exception as exc:  # urllib, http.client and socket errors share no base class
        if _no_answer(exc):
            raise _NoAnswer(" ".join(str(getattr(exc, "reason", exc)).split())) from None
        raise classify_read_error(exc) from None
    rejected = too_large(len(data), limit)
    if rejected is not None:
        raise rejected
    return SourceBytes(data, Signature(len(data), version))


def read_s3(path: str, limit: int | None) -> SourceBytes:
    """s3:// in one GET (Beam's FileSystems would list, HEAD, then GET: three requests of
    which the server's and the client's per-request cost dominate a 0.5 MB file): the
    response's headers give the size (capped before the body is read) and the version,
    and the body must be as many bytes as they said."""
    from pipelines.beam import beam_io

    bucket, _, key = path[len("s3://") :].partition("/")

    def get():
        try:
            return beam_io.s3_client().get_object(Bucket=bucket, Key=key)
        except Exception as exc:  # botocore's errors; NoSuchKey is a missing file
            raise classify_read_error(exc) from None

    # A server away for seconds (a restart, a network blip) is ridden out with backoff,
    # as Beam's S3IO retried its requests; a missing or refused file is not retried.
    response = beam_io.with_retries(get)
    with contextlib.closing(response["Body"]) as body:
        size = response["ContentLength"]
        rejected = too_large(size, limit)
        if rejected is not None:
            raise rejected
        try:
            data = body.read()
        except Exception as exc:  # a connection lost mid-body: transient
            raise classify_read_error(exc) from None
    if len(data) != size:
        raise changed(f"object has {len(data)} bytes; its headers said {size}")
    return SourceBytes(data, Signature(size, f"updated={response['LastModified'].timestamp()}"))


def read_object(path: str, limit: int | None) -> SourceBytes:
    """gs:// through Beam's FileSystems: metadata first (size cap, version), then the
    bytes, which must be as many as the metadata said."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    try:
        matches = FileSystems.match([path])[0].metadata_list
    except Exception as exc:  # BeamIOError wraps the client's error
        raise classify_read_error(exc) from None
    meta = next((m for m in matches if m.path == path), None)
    if meta is None:
        raise AudioRejected("read", "missing", f"no such object: {path}")
    rejected = too_large(meta.size_in_bytes, limit)
    if rejected is not None:
        raise rejected
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            data = f.read(meta.size_in_bytes + 1)
    except Exception as exc:
        raise classify_read_error(exc) from None
    if len(data) != meta.size_in_bytes:
        raise changed(f"object has {len(data)} bytes; its metadata said {meta.size_in_bytes}")
    return SourceBytes(
        data, Signature(meta.size_in_bytes, f"updated={meta.last_updated_in_seconds}")
    )


def read_source(path: str, limit: int | None, planned: Signature | None = None) -> SourceBytes:
    """One attempt at reading `path` (local path or URL)."""
    if is_http(path):
        source = read_http(path, limit)
    elif path.startswith("s3://"):
        source = read_s3(path, limit)
    elif path.startswith("gs://"):
        source = read_object(path, limit)
    else:
        return read_local(path, limit, planned)
    if planned is not None and planned != source.signature:
        raise changed(f"source changed since it was planned ({planned} -> {source.signature})")
    return source


def with_retries(
    attempt,
    attempts: int = RETRY_ATTEMPTS,
    base_delay: float = RETRY_BASE_DELAY_S,
    sleep=time.sleep,
):
    """`attempt()`, retried on TransientError with exponential backoff and jitter; the
    last TransientError is raised. AudioRejected and anything else pass straight through."""
    for number in range(attempts):
        try:
            return attempt()
        except TransientError:
            if number == attempts - 1:
                raise
            sleep(base_delay * 2**number * (1 + random.random()))
    raise AssertionError("unreachable")
