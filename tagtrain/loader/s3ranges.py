"""Ranged GETs on S3 through obstore (Rust `object_store`), for the loader's member reads.

Why: a first epoch from S3 is bounded by per-request CPU, and a 0.47 MB ranged GET costs
the loader 1.2-1.8 ms of client CPU through s3fs/aiobotocore/aiohttp and about half that
here (0.3-0.65 ms measured apart; bench/RESULTS.md, "S3 client").
Only the loader's ranged reads come here; listing, whole-object streams, gs://, http(s)://
and run directories stay on fsspec.

Exactly the requests asked for are sent, one GetRange each (never obstore's `get_ranges`,
which coalesces ranges up to 1 MiB apart and would fetch the PCM between two samples
behind the loader's `bytes_read` / `range_requests`): `ranged.merge_ranges` stays the one
place that decides the requests. `cat_ranges` answers like fsspec's `cat_ranges(...,
on_error="return")`: per range its bytes or the exception that stopped it, not-found and
refusals as the builtin errors the loader treats as permanent, the rest (network,
timeouts, 5xx) as they come, which the loader retries.

`cat_ranges` returns None where this path cannot stand in for s3fs (storage options or an
environment it cannot express, or a process forked after obstore ran): the caller then
uses s3fs, so an unusual setting changes the cost, never the result.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import functools
import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlparse

from tagtrain.loader.openers import storage_options_for

log = logging.getLogger(__name__)

# Ranges in flight at once per process: a fetch window's requests run side by side (the
# measured cost per GET was the same from 11 threads as from one asyncio loop; a new loop
# per call cost 20x more). Enough that a store's round trip is hidden: a worker's fetch
# window is ~64 merged GETs (~1 MB each), all sent at once, so a window costs about one
# round trip, not four as with 16 (bench/loader_latency.py). It costs no memory: the
# caller's window bounds the bytes of one call; threads start only as requests need them.
_CONCURRENCY = 64
# s3fs options this path honours; any other s3fs option (or client/config keyword) makes
# the loader use s3fs for that store.
_S3FS_KEYS = {
    "key", "secret", "token", "anon", "endpoint_url", "client_kwargs", "config_kwargs",
    "skip_instance_cache", "use_listings_cache", "listings_expiry_time",
}  # fmt: skip
_CLIENT_KEYS = {"endpoint_url", "region_name"}
_CONFIG_KEYS = {"connect_timeout", "read_timeout"}
# A quick retry or two inside obstore (a dropped keep-alive connection, as botocore
# does); longer outages reach the loader's own retries (counted, with backoff).
_RETRY = {"max_retries": 2, "retry_timeout": datetime.timedelta(seconds=30)}


class OutsideObject(Exception):
    """A range that starts at or past the end of the object (HTTP 416): the object is
    shorter than the index says, which no retry mends."""


class Unsupported(Exception):
    """Options this path cannot express: s3fs serves them."""


def cat_ranges(
    urls: Sequence[str], starts: Sequence[int], ends: Sequence[int], options: Mapping | None
) -> list | None:
    """[bytes, or the exception of that range] for each s3:// `urls[i]` [starts[i],
    ends[i]); None when s3fs must serve them (see the module docs)."""
    if _runtime_from_parent():
        return None
    _note_runtime()  # before the stores: making one may already use the runtime
    try:  # one store per bucket (a window's ranges are mostly of one bucket)
        stores = {bucket: _store_for(url, options) for bucket, url in _buckets(urls).items()}
    except Unsupported as why:
        log.debug("s3 ranged reads through s3fs: %s", why)
        return None
    pool = _pool(os.getpid())
    futures = [
        pool.submit(_get_range, stores[urlparse(url).netloc], url, start, end)
        for url, start, end in zip(urls, starts, ends)
    ]
    return [future.result() for future in futures]


def _buckets(urls: Sequence[str]) -> dict[str, str]:
    """{bucket: one of its URLs}."""
    return {urlparse(url).netloc: url for url in reversed(urls)}


def _get_range(store, url: str, start: int, end: int):
    import obstore

    try:
        return bytes(obstore.get_range(store, _key_of(url), start=start, end=end))
    except Exception as exc:  # noqa: BLE001  (returned per range, classified by the loader)
        return _classified(exc, url, start)


def _classified(exc: Exception, url: str, start: int) -> Exception:
    """The loader's permanent errors for what no retry mends; the rest unchanged."""
    from obstore import exceptions as errors

    if isinstance(exc, (FileNotFoundError, errors.NotFoundError)):
        error = FileNotFoundError(f"{url}: no such object on the S3 server")
    elif isinstance(exc, (PermissionError, errors.PermissionDeniedError)):
        error = PermissionError(f"{url}: the S3 server refused access")
    elif isinstance(exc, errors.UnauthenticatedError):
        error = PermissionError(f"{url}: the S3 server refused the credentials")
    elif isinstance(exc, errors.GenericError) and "status code: 416" in str(exc):
        error = OutsideObject(f"{url}: no bytes at offset {start} (object shorter)")
    else:
        return exc
    error.__cause__ = exc
    return error


# --- one store per (process, bucket, settings) ------------------------------------------

_RUNTIME_PID: int | None = None  # the process in which obstore's runtime started
_RUNTIME_LOCK = threading.Lock()


def _runtime_from_parent() -> bool:
    """Whether obstore ran in a parent of this forked process. Its tokio runtime's
    threads do not survive a fork, and a request on it then hangs (tried: obstore 0.8.2),
    so such a process reads through s3fs. A store made but never used is harmless."""
    return _RUNTIME_PID is not None and _RUNTIME_PID != os.getpid()


def _note_runtime() -> None:
    global _RUNTIME_PID
    with _RUNTIME_LOCK:
        if _RUNTIME_PID is None:
            _RUNTIME_PID = os.getpid()


@functools.lru_cache(maxsize=8)
def _pool(pid: int) -> concurrent.futures.ThreadPoolExecutor:
    # Keyed by process id: a forked child has the parent's pool object but no threads.
    return concurrent.futures.ThreadPoolExecutor(_CONCURRENCY, thread_name_prefix="s3get")


def _store_for(url: str, options: Mapping | None):
    bucket = urlparse(url).netloc
    kwargs = storage_options_for(url, options)
    settings = store_settings(bucket, kwargs, dict(os.environ))
    return _store(json.dumps(settings, sort_keys=True, default=str), os.getpid())


@functools.lru_cache(maxsize=8)
def _store(settings_json: str, pid: int):
    try:
        from obstore.store import S3Store
    except ImportError as exc:  # an install without it reads through s3fs
        raise Unsupported("obstore is not installed") from exc
    settings = json.loads(settings_json)
    client = settings.pop("client_options")
    try:
        return S3Store(**settings, client_options=client, retry_config=_RETRY)
    except Exception as exc:  # noqa: BLE001  (an option obstore refuses: s3fs serves it)
        raise Unsupported(f"obstore refused the settings: {exc}") from exc


def _key_of(url: str) -> str:
    return urlparse(url).path.lstrip("/")


def store_settings(bucket: str, kwargs: Mapping, env: Mapping) -> dict:
    """S3Store keyword arguments equivalent to the s3fs keyword arguments `kwargs` (as
    `openers.storage_options_for` makes them) in the environment `env`; Unsupported
    when there is none."""
    client_kwargs = dict(kwargs.get("client_kwargs") or {})
    config_kwargs = dict(kwargs.get("config_kwargs") or {})
    unknown = (
        (set(kwargs) - _S3FS_KEYS)
        | (set(client_kwargs) - _CLIENT_KEYS)
        | (set(config_kwargs) - _CONFIG_KEYS)
    )
    if unknown:
        raise Unsupported(f"s3fs option(s) {', '.join(sorted(unknown))}")
    endpoint = _endpoint(kwargs, client_kwargs, env)
    settings = {
        "bucket": bucket,
        "region": _region(client_kwargs, env, endpoint),
        **_credentials(kwargs, env),
        "client_options": _client_options(config_kwargs, endpoint),
    }
    if endpoint:
        # S3-compatible servers: path-style addressing, as s3fs with an endpoint does.
        settings.update(endpoint=endpoint, virtual_hosted_style_request=False)
    else:
        # AWS: botocore addresses DNS-compatible buckets virtual-hosted.
        settings["virtual_hosted_style_request"] = "." not in bucket
    return settings


def _endpoint(kwargs: Mapping, client_kwargs: Mapping, env: Mapping) -> str | None:
    top, client = kwargs.get("endpoint_url"), client_kwargs.get("endpoint_url")
    if top and client and top != client:
        raise Unsupported("two different endpoint_url options")
    endpoint = top or client or env.get("AWS_ENDPOINT_URL_S3")
    if not endpoint and env.get("AWS_ENDPOINT"):
        # object_store reads AWS_ENDPOINT, botocore does not: they would differ.
        raise Unsupported("AWS_ENDPOINT is set without an endpoint option")
    return endpoint or None


def _region(client_kwargs: Mapping, env: Mapping, endpoint: str | None) -> str:
    region = client_kwargs.get("region_name") or env.get("AWS_DEFAULT_REGION")
    if region:
        return region
    if endpoint:
        return "us-east-1"  # what botocore signs with for an endpoint without a region
    # On AWS botocore finds a bucket's region by following the redirect; object_store
    # does not, so an unknown region stays with s3fs.
    raise Unsupported("no region for AWS S3 (client_kwargs region_name or AWS_DEFAULT_REGION)")


def _credentials(kwargs: Mapping, env: Mapping) -> dict:
    """Explicit keys, anonymous access, or the environment's chain. object_store's chain
    (AWS_* variables, web identity, container credentials, instance metadata) is
    botocore's without the shared files and profiles, so those stay with s3fs."""
    if kwargs.get("anon"):
        return {"skip_signature": True}
    if kwargs.get("key") or kwargs.get("secret"):
        if not kwargs.get("token") and (env.get("AWS_SESSION_TOKEN") or env.get("AWS_TOKEN")):
            # object_store would add the environment's session token to these keys.
            raise Unsupported("explicit keys with a session token in the environment")
        explicit = {"access_key_id": kwargs.get("key"), "secret_access_key": kwargs.get("secret")}
        if kwargs.get("token"):
            explicit["token"] = kwargs["token"]
        return explicit
    if kwargs.get("token"):
        raise Unsupported("a session token without keys")
    if env.get("AWS_ACCESS_KEY_ID"):
        return {}  # object_store reads the same variables as botocore
    if env.get("AWS_PROFILE") or _shared_aws_files(env):
        raise Unsupported("credentials from AWS profiles or shared files")
    return {}


def _shared_aws_files(env: Mapping) -> bool:
    home = Path(env.get("HOME", "~")).expanduser()
    paths = [
        env.get("AWS_SHARED_CREDENTIALS_FILE") or home / ".aws" / "credentials",
        env.get("AWS_CONFIG_FILE") or home / ".aws" / "config",
    ]
    return any(Path(p).is_file() for p in paths)


def _client_options(config_kwargs: Mapping, endpoint: str | None) -> dict:
    """allow_http only for an http:// endpoint; botocore's timeouts as object_store's:
    connect as connect, and read_timeout (seconds without a byte) as the whole request's
    limit, the nearest object_store has (60 s bounds a 16 MB merged request at >= 0.27
    MB/s)."""
    options = {"allow_http": bool(endpoint) and endpoint.lower().startswith("http://")}
    for ours, theirs in (("connect_timeout", "connect_timeout"), ("read_timeout", "timeout")):
        if ours in config_kwargs:
            options[theirs] = f"{round(1000 * float(config_kwargs[ours]))}ms"
    return options
