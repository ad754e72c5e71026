"""Byte ranges of shard members, with retries: local files (and whole local copies of
remote ones) as views of a memory map (`mapped`; at most `_OPEN_FILES` open), remote
objects by fsspec's `cat_ranges` (concurrent range requests, one call for all the shards
of a fetch window; neighbouring ranges of a shard merged into one request
within a gap budget, `merge_ranges`), s3:// ones by obstore (`s3ranges`, the same
requests at a fraction of s3fs's CPU) unless `s3_client` is "s3fs". Only the members a
model needs are fetched.

A transient failure (a dropped connection, a timeout, a server restarting) is retried
with exponential backoff from the same ranges; a shard that still fails, is missing or is
shorter than its index says is marked failed, its remaining samples are skipped, and the
failure is reported (`RangeFailure`) so the stream counts it."""

from __future__ import annotations

import collections
import concurrent.futures
import tarfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from pipelines.core.errors import first_line
from tagtrain.loader import s3ranges
from tagtrain.loader.cache import NotTheCardsShard
from tagtrain.loader.mapped import MappedFile
from tagtrain.loader.openers import (
    LOCAL_SCHEMES,
    OpenerError,
    filesystem,
    local_path,
    open_regular_file,
    scheme_of,
)

HEADER = 512  # a USTAR member header
_REGULAR_TYPES = (b"0", b"\0", b"7")  # tarfile.REGULAR_TYPES without GNU sparse files
# Ranges this close are fetched as one request (a sample's json and mel sit side by side,
# and so do consecutive samples of a mel-only shard)...
_MAX_GAP = 16 << 10
# ...as long as the gap bytes fetched stay under this fraction of the bytes wanted (so
# bytes fetched / bytes used stays <= 1.1 with the tar headers), and a merged request
# stays under _MAX_REQUEST (several requests of a call run concurrently; on S3 a request
# of a few MB costs the client and server ~3x less CPU per byte than one of ~0.5 MB).
_GAP_FRACTION = 0.04
_MAX_REQUEST = 16 << 20
# Whole-shard copies (a cache) downloaded at once by one fetch: each holds up to
# openers.RangeReader's depth x block (32 MB) in memory while it downloads.
_DOWNLOADS = 4
# Local files kept open (mapped) per fetcher, the least recently read closed first: an
# epoch reads shards a few at a time (`partition`); a million-track split has thousands of
# shards, more than a process may open (ulimit -n is often 1024), and the pages of a
# shard's map that were read count in the worker's resident memory until it is closed
# (page cache, shared and reclaimable, but what RSS-based job accounting sees).
_OPEN_FILES = 16
_PERMANENT = (
    FileNotFoundError, PermissionError, IsADirectoryError, OpenerError, s3ranges.OutsideObject,
    NotTheCardsShard,
)  # fmt: skip


class RangeFailure(Exception):
    """A shard whose ranges could not be read (after retries, or permanently)."""


class IndexMismatch(Exception):
    """The index's byte range does not hold the member it names."""


def header_matches(header, name: str, size: int) -> bool:
    """Whether a 512-byte tar header is that of a regular member named `name` (its last
    path part) holding `size` bytes. The two fields are compared as they are written, not
    the whole header parsed (tarfile's parse and checksum were a tenth of a sample's
    reading): a range that does not start at this member's header cannot name it."""
    if len(header) != HEADER or header[156:157] not in _REGULAR_TYPES:
        return False
    field = bytes(header[:100]).split(b"\0", 1)[0]
    if field.rsplit(b"/", 1)[-1] != name.encode("utf-8", "surrogateescape"):
        return False
    try:
        return tarfile.nti(bytes(header[124:136])) == size
    except tarfile.InvalidHeaderError:
        return False


class ShortRead(Exception):
    """Fewer bytes than the index promised: the shard is truncated or was replaced."""


class RangeFetcher:
    """Fetches member byte ranges of a split's shards (one per loader worker). The ranges
    of several shards (a batch, or a read-ahead window of batches) go out in one
    concurrent `cat_ranges` call, so a batch costs about one request's latency, not one
    per shard."""

    def __init__(
        self,
        urls: Sequence[str],
        options: Mapping,
        retries: int,
        backoff: float,
        open_cached: Callable[[str], object | None] = lambda url: None,
        range_cache=None,
        s3_client: str = "obstore",
    ):
        self.urls = list(urls)
        self.s3_client = s3_client  # "obstore" or "s3fs": who sends s3:// range requests
        self.open_cached = open_cached  # an open local copy of a URL (a cache), or None
        self.range_cache = range_cache  # a rangecache.RangeCache for remote ranges, or None
        self.from_cache: set[int] = set()  # shards whose last ranges came from range_cache
        self.no_copy: set[int] = set()  # shards open_cached has no local copy for
        self.options = dict(options or {})
        self.retries = retries
        self.backoff = backoff
        self.files: collections.OrderedDict[int, MappedFile] = collections.OrderedDict()
        # The files the last `fetch_members_many` read from (closed or not since): whose
        # `holds` guards the views it returned.
        self.mapped: dict[int, MappedFile] = {}
        self.failed: dict[int, str] = {}  # shard -> why it was given up
        self.mismatched: dict[int, set[str]] = {}  # shard -> keys whose index row missed
        self.retried = 0  # transient failures retried
        self.requests = 0  # remote range requests sent (after merging)
        self.obstore_requests = 0  # of which obstore sent (the rest: fsspec)
        self.bytes_read = 0  # bytes read locally or downloaded, merged gaps included
        self.lock = threading.Lock()

    def fetch_members(self, shard: int, members: Sequence[tuple[str, int, int]]) -> list[bytes]:
        """The data of each (member name, data offset, size) of one shard; RangeFailure
        when the shard is lost (see `fetch_members_many`)."""
        result = self.fetch_members_many({shard: members})[shard]
        if isinstance(result, RangeFailure):
            raise result
        return result

    def fetch_members_many(self, jobs: Mapping[int, Sequence[tuple[str, int, int]]]) -> dict:
        """{shard: [member data] or RangeFailure} for {shard: [(member name, data offset,
        size)]}. Each range is read with its 512-byte tar header, which must name that
        member with that size: an index that no longer fits its shard (rewritten since)
        fails the shard instead of yielding other bytes."""
        ranges = {
            shard: [(offset - HEADER, size + HEADER) for _, offset, size in members]
            for shard, members in jobs.items()
        }
        self.mapped = {}
        out = {}
        for shard, parts in self.fetch_many(ranges).items():
            bad = _mismatches(jobs[shard], parts)
            if bad and shard in self.from_cache:  # a damaged cached copy: fetch again
                self.range_cache.forget(self.urls[shard])
                parts = self.fetch_many({shard: ranges[shard]}, use_cache=False)[shard]
                bad = _mismatches(jobs[shard], parts)
            # One sample's entry that misses its member (a bad index row) costs that
            # sample; mismatches of two samples or more (in this epoch) mean the shard was
            # rewritten since it was indexed: the whole shard is given up.
            keys = self.mismatched.setdefault(shard, set())
            keys.update(_sample_key(jobs[shard][i][0]) for i in bad)
            if bad and len(keys) > 1:
                parts = self.give_up(shard, bad[min(bad)])
            elif not isinstance(parts, RangeFailure):
                # Views, not copies (a slice of bytes would copy the member).
                parts = [bad.get(i) or memoryview(part)[HEADER:] for i, part in enumerate(parts)]
            out[shard] = parts
        return out

    def fetch(self, shard: int, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """The bytes of each (offset, size) range; RangeFailure when the shard is lost."""
        result = self.fetch_many({shard: ranges})[shard]
        if isinstance(result, RangeFailure):
            raise result
        return result

    def fetch_many(self, jobs: Mapping[int, Sequence[tuple[int, int]]], use_cache=True) -> dict:
        """{shard: [bytes of each (offset, size)] or RangeFailure}. A transient failure is
        retried (with backoff, only the shards that failed) from the same ranges."""
        out = {s: RangeFailure(self.failed[s]) for s in jobs if s in self.failed}
        pending = {s: r for s, r in jobs.items() if s not in out}
        attempt = 0
        while pending:
            transient = {}
            for shard, result in self._read_many(pending, use_cache).items():
                if not isinstance(result, BaseException):
                    out[shard] = result
                elif isinstance(result, (*_PERMANENT, ShortRead)) or attempt >= self.retries:
                    out[shard] = self.give_up(shard, result)
                else:
                    transient[shard] = pending[shard]
                    self._close(shard)
            if transient:
                self.retried += len(transient)
                time.sleep(self.backoff * 2**attempt)
                attempt += 1
            pending = transient
        return out

    def give_up(self, shard: int, exc: BaseException) -> RangeFailure:
        """Mark `shard` failed (its later reads fail at once) for the reason `exc`."""
        why = f"{type(exc).__name__}: {first_line(exc, 200)}"
        self.failed[shard] = why
        self._close(shard)
        return RangeFailure(why)

    def _read_many(self, jobs: Mapping[int, Sequence[tuple[int, int]]], use_cache=True) -> dict:
        """{shard: [bytes or views] or the exception that stopped it}: local files and
        the range cache's copies mapped, the rest together in one `cat_ranges` call."""
        out, remote = {}, {}
        cache = self.range_cache if use_cache else None
        copies = self._open_copies(jobs)
        for shard, ranges in jobs.items():
            try:
                url = self.urls[shard]
                if isinstance(copy := copies.get(shard), BaseException):
                    raise copy
                if (mapped := self._mapped(shard, url, copy)) is not None:
                    self.mapped[shard] = mapped
                    end = max((offset + size for offset, size in ranges), default=0)
                    if not mapped.holds(end):  # truncated since it was mapped
                        raise ShortRead(f"the file ends before byte {end}")
                    out[shard] = self._checked(mapped.ranges(ranges), ranges)
                    self._count(sum(size for _, size in ranges))
                elif cache is not None and (cached := cache.mapped(url, ranges)) is not None:
                    self.mapped[shard] = cached
                    out[shard] = self._checked(cached.ranges(ranges), ranges)
                    self._count(sum(size for _, size in ranges))
                    self.from_cache.add(shard)
                else:
                    remote[shard] = (url, ranges)
            except Exception as exc:  # noqa: BLE001  (classified by the caller)
                out[shard] = exc
        if remote:
            for shard, parts in self._remote_ranges(remote).items():
                self.from_cache.discard(shard)
                try:
                    out[shard] = self._checked(parts, remote[shard][1])
                except Exception as exc:  # noqa: BLE001
                    out[shard] = exc
                else:
                    if self.range_cache is not None:
                        self.range_cache.write(remote[shard][0], remote[shard][1], out[shard])
        return out

    def _open_copies(self, jobs: Mapping) -> dict:
        """{shard: an open local copy, None, or the exception of its download} for the
        remote shards of `jobs` not open yet, up to _DOWNLOADS downloading at once: a
        copy's download costs round trips before its bytes flow (the size, the first
        range), which shards downloaded one after the other would add up."""
        todo = [
            s
            for s in jobs
            if s not in self.files
            and s not in self.no_copy
            and scheme_of(self.urls[s]) not in LOCAL_SCHEMES
        ]

        def open_copy(shard: int):
            try:
                copy = self.open_cached(self.urls[shard])
            except Exception as exc:  # noqa: BLE001  (classified by the caller)
                return exc
            if copy is None:
                self.no_copy.add(shard)
            return copy

        if len(todo) < 2:
            return {shard: open_copy(shard) for shard in todo}
        with concurrent.futures.ThreadPoolExecutor(min(_DOWNLOADS, len(todo))) as pool:
            return dict(zip(todo, pool.map(open_copy, todo)))

    def _mapped(self, shard: int, url: str, copy) -> MappedFile | None:
        """`shard`'s open local file: `copy` (a whole local copy just opened), the one kept
        open, or a local shard opened now; None for a remote shard read by range."""
        if copy is not None:
            return self._keep_open(shard, copy)
        with self.lock:  # batches may be fetched from two threads
            if (mapped := self.files.get(shard)) is not None:
                self.files.move_to_end(shard)
                return mapped
        if scheme_of(url) in LOCAL_SCHEMES:
            return self._keep_open(shard, open_regular_file(local_path(url)))
        return None

    def _keep_open(self, shard: int, handle) -> MappedFile:
        """`handle` mapped and kept as `shard`'s file (closed when `shard` has one)."""
        with self.lock:
            if shard in self.files:
                handle.close()
                return self.files[shard]
            mapped = self.files[shard] = MappedFile(handle)
            while len(self.files) > _OPEN_FILES:
                self.files.popitem(last=False)[1].close()
            return mapped

    def holds(self, shard: int, end: int) -> bool:
        """Whether the local file `shard`'s last ranges were read from (if any) still
        reaches byte `end`: asked right before a member's view is used (`mapped`)."""
        mapped = self.mapped.get(shard)
        return mapped is None or mapped.holds(end)

    @staticmethod
    def _checked(parts, ranges) -> list[bytes]:
        if isinstance(parts, BaseException):
            raise parts
        for part, (offset, size) in zip(parts, ranges):
            if isinstance(part, BaseException):
                raise part
            if len(part) != size:
                raise ShortRead(f"{len(part)} of {size} bytes at offset {offset}")
        return list(parts)

    def _count(self, nbytes: int) -> None:
        with self.lock:  # batches may be fetched from two threads
            self.bytes_read += nbytes

    def _remote_ranges(self, jobs: Mapping[int, tuple[str, Sequence[tuple[int, int]]]]) -> dict:
        """{shard: [bytes] or an exception}, from one concurrent `cat_ranges` call over
        every shard's ranges; a shard's nearby ranges are merged into one request
        (`merge_ranges`) and cut apart again here."""
        plans, paths, starts, ends = {}, [], [], []
        for shard, (url, ranges) in jobs.items():
            merged_starts, merged_ends = merge_ranges(ranges)
            plans[shard] = (len(paths), merged_starts, merged_ends)
            paths += [url] * len(merged_starts)
            starts += merged_starts
            ends += merged_ends
        # Made before the try, as before obstore: a setting s3fs refuses fails loudly.
        fs = filesystem(paths[0], self.options)
        self.requests += len(paths)
        self._count(sum(e - s for s, e in zip(starts, ends)))
        try:
            blobs = self._cat_ranges(fs, paths, starts, ends)
        except Exception as exc:  # noqa: BLE001  (the whole call failed: every shard did)
            return {shard: exc for shard in jobs}
        return {
            shard: _cut(blobs[first : first + len(m_starts)], m_starts, m_ends, jobs[shard][1])
            for shard, (first, m_starts, m_ends) in plans.items()
        }

    def _cat_ranges(self, fs, paths, starts, ends) -> list:
        """[bytes or the exception] per range, as `cat_ranges(on_error="return")`: from
        obstore for s3:// when chosen and usable here, else from the fsspec filesystem."""
        if self.s3_client == "obstore" and scheme_of(paths[0]) == "s3":
            blobs = s3ranges.cat_ranges(paths, starts, ends, self.options)
            if blobs is not None:
                self.obstore_requests += len(paths)
                return blobs
        return fs.cat_ranges(paths, starts, ends, on_error="return")

    def _close(self, shard: int) -> None:
        handle = self.files.pop(shard, None)
        if handle is not None:
            handle.close()

    def close(self) -> None:
        for shard in list(self.files):
            self._close(shard)


def merge_ranges(
    ranges: Sequence[tuple[int, int]],
    max_gap: int = _MAX_GAP,
    gap_fraction: float = _GAP_FRACTION,
    max_request: int = _MAX_REQUEST,
) -> tuple[list[int], list[int]]:
    """(starts, ends) of the requests that cover the (offset, size) ranges: sorted, and
    each range joined to the request before it when the gap between them is at most
    `max_gap`, the gaps joined so far stay within `gap_fraction` of the wanted bytes and
    the request stays within `max_request` bytes (overlapping ranges always join)."""
    starts: list[int] = []
    ends: list[int] = []
    budget = gap_fraction * sum(size for _, size in ranges)
    for offset, size in sorted(ranges):
        end = offset + size
        if starts:
            gap = offset - ends[-1]
            if gap <= 0 or (gap <= min(max_gap, budget) and end - starts[-1] <= max_request):
                budget -= max(0, gap)
                ends[-1] = max(ends[-1], end)
                continue
        starts.append(offset)
        ends.append(end)
    return starts, ends


def _mismatches(members, parts) -> dict[int, IndexMismatch]:
    """{position: IndexMismatch} of the members whose range does not start with their own
    tar header."""
    if isinstance(parts, RangeFailure):
        return {}
    return {
        i: IndexMismatch(f"no member {name[:80]!r} at offset {offset}")
        for i, ((name, offset, size), part) in enumerate(zip(members, parts))
        if not header_matches(part[:HEADER], name, size)
    }


def _sample_key(member: str) -> str:
    return member.split(".", 1)[0]  # keys hold no dot (manifests' key rule)


def _cut(blobs, merged_starts, merged_ends, ranges):
    """Each (offset, size) range out of the merged requests' bodies; the first failed
    request's exception instead when one failed."""
    import bisect

    for blob in blobs:
        if isinstance(blob, BaseException):
            return blob
    parts = []
    for offset, size in ranges:
        i = bisect.bisect_right(merged_starts, offset) - 1
        blob = memoryview(blobs[i])  # slices of it are views, not copies
        if len(blob) > merged_ends[i] - merged_starts[i]:  # a server ignoring Range
            blob = blob[merged_starts[i] : merged_ends[i]]
        parts.append(blob[offset - merged_starts[i] : offset + size - merged_starts[i]])
    return parts
