"""Byte ranges of shard members, with retries: local files by `os.pread` on a regular
file, remote objects by fsspec's `cat_ranges` (concurrent range requests, one call per
shard per batch). Only the members a model needs are fetched.

A transient failure (a dropped connection, a timeout, a server restarting) is retried
with exponential backoff from the same ranges; a shard that still fails, is missing or is
shorter than its index says is marked failed, its remaining samples are skipped, and the
failure is reported (`RangeFailure`) so the stream counts it."""

from __future__ import annotations

import os
import tarfile
import time
from collections.abc import Callable, Mapping, Sequence

from pipelines.core.errors import first_line
from tagtrain.loader.openers import (
    LOCAL_SCHEMES,
    OpenerError,
    filesystem,
    local_path,
    open_regular_file,
    scheme_of,
)

HEADER = 512  # a USTAR member header
# Ranges this close are fetched as one request (a sample's json and mel sit side by side).
_MAX_GAP = 16 << 10
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, OpenerError)


class RangeFailure(Exception):
    """A shard whose ranges could not be read (after retries, or permanently)."""


class IndexMismatch(Exception):
    """The index's byte range does not hold the member it names."""


def header_matches(header: bytes, name: str, size: int) -> bool:
    try:
        info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
    except tarfile.TarError:
        return False
    return info.isreg() and info.name.rsplit("/", 1)[-1] == name and info.size == size


class ShortRead(Exception):
    """Fewer bytes than the index promised: the shard is truncated or was replaced."""


class RangeFetcher:
    """Fetches member byte ranges of a split's shards (one per loader worker)."""

    def __init__(
        self,
        urls: Sequence[str],
        options: Mapping,
        retries: int,
        backoff: float,
        locate: Callable[[str], str] = lambda url: url,
    ):
        self.urls = list(urls)
        self.locate = locate  # e.g. to a local cached copy
        self.options = dict(options or {})
        self.retries = retries
        self.backoff = backoff
        self.files: dict[int, object] = {}
        self.failed: dict[int, str] = {}  # shard -> why it was given up
        self.retried = 0  # transient failures retried

    def fetch_members(self, shard: int, members: Sequence[tuple[str, int, int]]) -> list[bytes]:
        """The data of each (member name, data offset, size), read with its 512-byte tar
        header, which must name that member with that size: an index that no longer fits
        its shard (rewritten since) fails the shard instead of yielding other bytes."""
        ranges = [(offset - HEADER, size + HEADER) for _, offset, size in members]
        parts = self.fetch(shard, ranges)
        for (name, offset, size), part in zip(members, parts):
            if not header_matches(part[:HEADER], name, size):
                self._give_up(shard, IndexMismatch(f"no member {name[:80]!r} at offset {offset}"))
        return [part[HEADER:] for part in parts]

    def fetch(self, shard: int, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """The bytes of each (offset, size) range; RangeFailure when the shard is lost."""
        if shard in self.failed:
            raise RangeFailure(self.failed[shard])
        attempt = 0
        while True:
            try:
                return self._read(shard, ranges)
            except (*_PERMANENT, ShortRead) as exc:
                self._give_up(shard, exc)
            except Exception as exc:  # noqa: BLE001  (network/storage: transient, retried)
                if attempt >= self.retries:
                    self._give_up(shard, exc)
                self.retried += 1
                self._close(shard)
                time.sleep(self.backoff * 2**attempt)
                attempt += 1

    def _give_up(self, shard: int, exc: BaseException):
        why = f"{type(exc).__name__}: {first_line(exc, 200)}"
        self.failed[shard] = why
        self._close(shard)
        raise RangeFailure(why) from None

    def _read(self, shard: int, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        url = self.urls[shard]
        if shard not in self.files:
            url = self.locate(url)
        if shard in self.files or scheme_of(url) in LOCAL_SCHEMES:
            handle = self.files.get(shard)
            if handle is None:
                handle = self.files[shard] = open_regular_file(local_path(url))
            parts = [os.pread(handle.fileno(), size, offset) for offset, size in ranges]
        else:
            parts = self._remote_ranges(url, ranges)
        out = []
        for part, (offset, size) in zip(parts, ranges):
            if isinstance(part, BaseException):
                raise part
            if len(part) != size:
                raise ShortRead(f"{len(part)} of {size} bytes at offset {offset}")
            out.append(part)
        return out

    def _remote_ranges(self, url: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """One concurrent `cat_ranges` call; ranges closer than `_MAX_GAP` are merged into
        one request (fsspec's `merge_offset_ranges`) and cut apart again here."""
        from fsspec.utils import merge_offset_ranges

        fs = filesystem(url, self.options)
        starts = [offset for offset, _ in ranges]
        ends = [offset + size for offset, size in ranges]
        _, merged_starts, merged_ends = merge_offset_ranges(
            [url] * len(ranges), starts, ends, max_gap=_MAX_GAP, sort=True
        )
        blobs = fs.cat_ranges(
            [url] * len(merged_starts), merged_starts, merged_ends, on_error="raise"
        )
        parts = []
        for start, end in zip(starts, ends):
            i = max(j for j, s in enumerate(merged_starts) if s <= start)
            blob = blobs[i]
            if isinstance(blob, BaseException):
                raise blob
            if len(blob) > merged_ends[i] - merged_starts[i]:  # a server ignoring Range
                blob = blob[merged_starts[i] : merged_ends[i]]
            parts.append(blob[start - merged_starts[i] : end - merged_starts[i]])
        return parts

    def _close(self, shard: int) -> None:
        handle = self.files.pop(shard, None)
        if handle is not None:
            handle.close()

    def close(self) -> None:
        for shard in list(self.files):
            self._close(shard)
