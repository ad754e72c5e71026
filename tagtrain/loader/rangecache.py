"""A local cache of the member byte ranges read from remote shards (sample-level reading),
in the same `cache_dir` as the whole-shard cache (`cache`) and under the same limit.

When a model needs only part of each shard (a mel-only model on a mel+pcm dataset), the
first epoch fetches only those members' ranges and keeps them here; later epochs read
them from local disk, and nothing beyond the used bytes is ever downloaded. A shard of
which the model needs most bytes is cached whole instead (`cache.ShardCache`).

Per shard, two files next to the whole-shard copies:
  NAME.part    a sparse file of the shard's size; each fetched range is written at its
               own offset (concurrent writers write identical bytes)
  NAME.ranges  an append-only log of "offset size" lines, appended after the range's
               bytes are written; a range is read locally only when a line covers it
Every range the loader reads starts with its member's tar header, which is checked
against the index, so a damaged cached range (a crash between the two writes, a
truncated file) reads as a miss (`forget`) and is fetched again, never used. Eviction
(least recently used shard first, over the limit) deletes a shard's log before its data.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from tagtrain.loader.cache import ShardCache
from tagtrain.loader.mapped import MappedFile
from tagtrain.loader.openers import open_regular_file


class RangeCache:
    def __init__(self, cache: ShardCache, sha256s: Mapping[str, str | None] | None = None):
        self.cache = cache
        self.sha256s = dict(sha256s or {})  # url -> the shard's sha256 in the card
        self.known: dict[str, set[tuple[int, int]]] = {}  # log path -> ranges seen

    def _paths(self, url: str) -> tuple[Path, Path]:
        base = self.cache.path_for(url, self.sha256s.get(url))
        return base.with_name(base.name + ".part"), base.with_name(base.name + ".ranges")

    def _covered(self, log: Path, ranges: Sequence[tuple[int, int]]) -> bool:
        # Cached ranges are whole member ranges, asked for again as the same pairs.
        have = self.known.get(str(log), set())
        if not all(r in have for r in ranges):
            have = self.known[str(log)] = _read_log(log)
        return all(r in have for r in ranges)

    def mapped(self, url: str, ranges: Sequence[tuple[int, int]]) -> MappedFile | None:
        """The local copy, mapped (`mapped`: its ranges are views, and the reader checks
        it still holds them right before use), when it holds all of the ranges; else None
        (then fetched again)."""
        part, log = self._paths(url)
        if not self._covered(log, ranges):
            return None
        try:
            copy = MappedFile(open_regular_file(str(part)))
        except FileNotFoundError:
            return None
        if len(copy.view) < max((offset + size for offset, size in ranges), default=0):
            return None  # truncated under us
        os.utime(log)  # recently used: evicted last
        return copy

    def write(self, url: str, ranges: Sequence[tuple[int, int]], parts: Sequence[bytes]) -> None:
        """Keep fetched ranges (then evict over the limit). A failure to write (a full
        disk) only means the ranges are fetched again next time."""
        part, log = self._paths(url)
        try:
            part.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(part, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                for (offset, _), data in zip(ranges, parts):
                    os.pwrite(fd, data, offset)
            finally:
                os.close(fd)
            lines = "".join(f"{offset} {size}\n" for offset, size in ranges)
            with open(log, "a") as out:  # one small O_APPEND write: lines never interleave
                out.write(lines)
        except OSError:
            return
        self.known.setdefault(str(log), set()).update(ranges)
        self.cache.evict(keep=part)

    def forget(self, url: str) -> None:
        """Drop a shard's cached ranges (one failed its header check)."""
        part, log = self._paths(url)
        log.unlink(missing_ok=True)
        part.unlink(missing_ok=True)
        self.known.pop(str(log), None)


def _read_log(log: Path) -> set[tuple[int, int]]:
    try:
        text = log.read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return set()
    ranges = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
            ranges.add((int(fields[0]), int(fields[1])))  # a torn last line is ignored
    return ranges
