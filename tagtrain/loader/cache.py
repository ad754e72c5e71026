"""A local cache of remote shards (`LoaderConfig.cache_dir`, `cache_limit` bytes), so a
second epoch reads local disk. Safe with several loader workers and ranks on one machine:
one process downloads a shard while the others wait on its file lock, the copy appears
under its final name only when complete (written to a temporary name, then renamed), and
eviction (least recently used first, over the limit) runs under a cache-wide lock. A
reader holding an evicted file keeps reading it (POSIX unlink semantics).

The cache holds whole shards: with it, the first epoch downloads every byte of each shard
(not only the members the model reads), the price of reading later epochs locally."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from tagtrain.loader.openers import LOCAL_SCHEMES, open_url_at, scheme_of
from tagtrain.loader.retry import RetryingStream

_CHUNK = 8 << 20


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class ShardCache:
    def __init__(self, directory: str, limit: int = 0, retries: int = 6, backoff: float = 0.5):
        self.directory = Path(directory)
        self.limit = limit  # bytes; 0: no limit
        self.retries, self.backoff = retries, backoff

    def path_for(self, url: str) -> Path:
        digest = hashlib.sha256(url.encode()).hexdigest()[:16]
        return self.directory / f"{digest}-{url.rsplit('/', 1)[-1]}"

    def local_copy(self, url: str, options: Mapping) -> str:
        """A local path holding the shard at `url`, downloaded once."""
        path = self.path_for(url)
        if path.is_file():
            os.utime(path)  # recently used: evicted last
            return str(path)
        self.directory.mkdir(parents=True, exist_ok=True)
        with _locked(path.with_name(path.name + ".lock")):
            if not path.is_file():
                self._download(url, options, path)
        self.evict(keep=path)
        return str(path)

    def _download(self, url: str, options: Mapping, path: Path) -> None:
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        source = RetryingStream(
            lambda offset: open_url_at(url, options, offset), self.retries, self.backoff
        )
        try:
            with source, open(temporary, "wb") as out:
                while chunk := source.read(_CHUNK):
                    out.write(chunk)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)

    def evict(self, keep: Path) -> None:
        if not self.limit:
            return
        with _locked(self.directory / ".evict.lock"):
            files = [
                (p.stat().st_mtime, p.stat().st_size, p)
                for p in self.directory.iterdir()
                if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".lock")
            ]
            total = sum(size for _, size, _ in files)
            for _, size, path in sorted(files, key=lambda f: f[0]):
                if total <= self.limit:
                    break
                if path != keep:
                    path.unlink(missing_ok=True)
                    path.with_name(path.name + ".lock").unlink(missing_ok=True)
                    total -= size


def locate(url: str, cfg) -> str:
    """Where to read `url` from: its local copy when the config has a cache and the URL
    is remote, else the URL itself."""
    if not getattr(cfg, "cache_dir", None) or scheme_of(url) in LOCAL_SCHEMES:
        return url
    cache = ShardCache(cfg.cache_dir, cfg.cache_limit, cfg.read_retries, cfg.retry_backoff)
    return cache.local_copy(url, cfg.storage_options)
