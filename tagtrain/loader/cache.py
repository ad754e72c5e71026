"""A local cache of remote shards (`LoaderConfig.cache_dir`, `cache_limit` bytes), so a
second epoch reads local disk. Safe with several loader workers and ranks on one machine:
one process downloads a shard while the others wait on its file lock, the copy appears
under its final name only when complete (written to a temporary name, then renamed), and
eviction (least recently used first, over the limit) runs under a cache-wide lock. A copy
is handed out open, never by name: a reader holding an evicted file keeps reading it
(POSIX unlink semantics), so a limit smaller than the shards in use costs downloads, never
samples (until their readers close them, evicted copies still take disk space).

Whole-shard reading caches whole shards. Sample-level reading caches a shard whole when the
model reads most of its bytes, else only the member ranges it reads (`rangecache`, in the
same directory and under the same limit), so a mel-only model on a mel+pcm dataset never
downloads the PCM."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from tagtrain.loader.openers import LOCAL_SCHEMES, open_regular_file, open_url_at, scheme_of
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


class NotTheCardsShard(OSError):
    """A downloaded shard whose bytes differ from the card's sha256 for it (permanent: the
    same object would download the same bytes again)."""


class ShardCache:
    def __init__(self, directory: str, limit: int = 0, retries: int = 6, backoff: float = 0.5):
        self.directory = Path(directory)
        self.limit = limit  # bytes; 0: no limit
        self.retries, self.backoff = retries, backoff

    def path_for(self, url: str, sha256: str | None = None) -> Path:
        """Where the copy of `url` is kept. Keyed by the shard's sha256 in the card too,
        when the card has one: a dataset prepared again at the same URL (other labels,
        features or audio) must never be read from the copy of the old one."""
        digest = hashlib.sha256(f"{url}\0{sha256 or ''}".encode()).hexdigest()[:16]
        return self.directory / f"{digest}-{url.rsplit('/', 1)[-1]}"

    def open_copy(self, url: str, options: Mapping, sha256: str | None = None):
        """An open handle on the complete local copy of the shard at `url` (with that
        sha256 in the card, when known), downloaded once. The copy is opened here, never
        handed out by name: another process may evict it at any moment, and an open file
        stays readable whole after its unlink, where a name could be gone before the
        caller opened it."""
        path = self.path_for(url, sha256)
        try:
            handle = open_regular_file(str(path))
        except FileNotFoundError:
            self.directory.mkdir(parents=True, exist_ok=True)
            with _locked(path.with_name(path.name + ".lock")):
                try:  # downloaded by another process while this one waited?
                    handle = open_regular_file(str(path))
                except FileNotFoundError:
                    handle = self._download(url, options, path, sha256)
            self.evict(keep=path)
        else:
            os.utime(handle.fileno())  # recently used: evicted last
        return handle

    def _download(self, url: str, options: Mapping, path: Path, sha256: str | None = None):
        """The shard written to `path` (under a temporary name until complete), returned
        open for reading. Hashed as it is written: a copy that differs from the card's
        sha256 is never kept (the object is not the card's shard, e.g. replaced since), since
        every later epoch would read it."""
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        source = RetryingStream(
            lambda offset: open_url_at(url, options, offset), self.retries, self.backoff
        )
        digest = hashlib.sha256()
        try:
            with source, open(temporary, "wb") as out:
                while chunk := source.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            if sha256 and digest.hexdigest() != sha256:
                raise NotTheCardsShard(
                    f"{url} downloaded with sha256 {digest.hexdigest()[:12]}..., the card "
                    f"lists {sha256[:12]}...: the object has changed since the card was written"
                )
            handle = open_regular_file(str(temporary))
            os.replace(temporary, path)
            return handle
        finally:
            temporary.unlink(missing_ok=True)

    def evict(self, keep: Path) -> None:
        """Delete least recently used entries until the cache fits its limit. An entry is
        a whole shard, or a shard's cached ranges (NAME.part + NAME.ranges, see
        `rangecache`), counted by the disk blocks it holds (a .part file is sparse)."""
        if not self.limit:
            return
        with _locked(self.directory / ".evict.lock"):
            entries: dict[Path, list] = {}
            for p in self.directory.iterdir():
                if p.name.startswith(".") or p.name.endswith(".lock") or not p.is_file():
                    continue
                base = p.with_suffix("") if p.suffix in (".part", ".ranges") else p
                st = p.stat()
                entry = entries.setdefault(base, [0.0, 0, []])
                entry[0] = max(entry[0], st.st_mtime)
                entry[1] += st.st_blocks * 512
                entry[2].append(p)
                # The log goes before the data: no reader trusts ranges that are gone.
                entry[2].sort(key=lambda f: f.suffix != ".ranges")
            total = sum(e[1] for e in entries.values())
            kept = keep.with_suffix("") if keep.suffix == ".part" else keep
            for base, (_, size, files) in sorted(entries.items(), key=lambda e: e[1][0]):
                if total <= self.limit:
                    break
                if base != kept:
                    for path in files:
                        path.unlink(missing_ok=True)
                    base.with_name(base.name + ".lock").unlink(missing_ok=True)
                    total -= size


def open_cached(url: str, cfg, sha256: str | None = None):
    """An open handle on the local copy of `url` when the config has a cache and the URL
    is remote (`ShardCache.open_copy`), else None."""
    if not getattr(cfg, "cache_dir", None) or scheme_of(url) in LOCAL_SCHEMES:
        return None
    cache = ShardCache(cfg.cache_dir, cfg.cache_limit, cfg.read_retries, cfg.retry_backoff)
    return cache.open_copy(url, cfg.storage_options, sha256)
