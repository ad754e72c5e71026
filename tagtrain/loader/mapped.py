"""A local shard file read through a memory map: a member is a view of the page cache,
not a copy. A 30 s float16 mel member is 465 kB of which a model's crop reads an eighth of
each row; `os.pread` copied it whole (~65 us of a ~200 us sample here), a view costs the
pages the crop touches (~9 us).

A mapped page past the file's end faults (SIGBUS, which ends the process, where a short
read was a counted failure), so a shard truncated in place must not be touched: the
reader calls `holds(end)` right before a member's bytes are used (an fstat, ~0.5 us) and
gives up a shard found shorter, as it gives up a short read. A shard replaced by rename
(prepare, the shard cache, rsync and the cloud CLIs write that way) is no risk: the open
file keeps its old bytes. What stays unguarded is a truncation in place during the
microseconds between that check and the copy of a crop."""

from __future__ import annotations

import mmap
import os


class MappedFile:
    """A read-only map of an open regular file (`openers.open_regular_file`), which it
    closes: the map keeps a descriptor of its own."""

    def __init__(self, handle):
        try:
            size = os.fstat(handle.fileno()).st_size
            # An empty file cannot be mapped; every read of it comes back short.
            self.map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        finally:
            handle.close()
        self.view = memoryview(self.map if self.map is not None else b"")

    def ranges(self, ranges) -> list[memoryview]:
        """Views of each (offset, size) range; shorter where it passes the mapped end."""
        return [self.view[offset : offset + size] for offset, size in ranges]

    def holds(self, end: int) -> bool:
        """Whether the file still reaches `end` (`mmap.size` asks the map's own file
        descriptor, valid after `close`)."""
        try:
            return self.map is None or self.map.size() >= end
        except (OSError, ValueError):
            return False

    def close(self) -> None:
        # Not map.close(): a member still being decoded holds a view of it (BufferError);
        # the map (and its descriptor) goes with the last view.
        self.view = memoryview(b"")
