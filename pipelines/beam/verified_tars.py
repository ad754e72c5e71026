"""Which local tars already had their sha256 checked: a stat cache, so that planning a
resumed or updated job does not read an unchanged dataset again.

Planning checks every reused local tar against the sha256 of its completion record; for a
dataset of 2.3 GB that read took ~1.2 CPU-s of a 2% append's ~6, and it grows with the
dataset (a 250 GB MSD dataset: minutes). As git's index does for a work tree, the driver
keeps, per tar, the `stat` it had when its sha256 was known to match: size, mtime, ctime,
inode and device. A tar whose `stat` is unchanged is not read again. Any write to a file
moves its ctime, which no user call can set back (`touch -d` and `os.utime` set mtime
only), so an in-place change is caught even when it keeps the size and the mtime. A tar
changed less than `RACY_NS` before its entry would be made is not entered: a write
within the filesystem's timestamp granularity could leave the times as they were (git's
"racy clean" case). Silent corruption of the medium itself does not move a `stat`:
`train --verify` hashes every shard against the card.

The cache lives outside the dataset, in the user's cache directory (one small JSON file
per output directory, keyed by its real path), so the dataset's own files stay the same
bytes on every machine; a copied dataset (another path, other inodes) is hashed again.
Entries for the tars built by a job come from their workers, which hash what they write.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time

RACY_NS = 1_000_000_000
_FIELDS = ("st_size", "st_mtime_ns", "st_ctime_ns", "st_ino", "st_dev")


def cache_root() -> str:
    """$TAGKIT_CACHE_DIR, else $XDG_CACHE_HOME/tagkit, else ~/.cache/tagkit."""
    explicit = os.environ.get("TAGKIT_CACHE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tagkit")


def output_key(output: str) -> str:
    """A file name stem for one output directory in the tagkit cache: its real path's hash."""
    return hashlib.sha256(os.path.realpath(output).encode()).hexdigest()[:20]


def cache_path(output: str) -> str:
    """The cache file of one output directory."""
    return os.path.join(cache_root(), "verified-tars", output_key(output) + ".json")


def saved(output: str) -> VerifiedTars:
    """The cache as last saved, read once per process while its file is unchanged: an
    update's workers look up the old tar of each shard they rebuild, and only the
    driver writes the file (when the job ends)."""
    try:
        stamp = os.stat(cache_path(output)).st_mtime_ns
    except OSError:
        stamp = None
    return _loaded(output, stamp)


@functools.lru_cache(maxsize=4)
def _loaded(output: str, stamp: int | None) -> VerifiedTars:
    return VerifiedTars(output)


def _stamp(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [getattr(st, name) for name in _FIELDS]


class VerifiedTars:
    """{tar name: its stat and the sha256 it was verified to have} of one local output
    directory. Lookups and additions may come from several threads (the plan's)."""

    def __init__(self, output: str):
        self.output = output
        real = os.path.realpath(output)
        self.path = cache_path(output)
        self.entries: dict[str, list] = {}
        try:
            with open(self.path, encoding="utf-8") as f:
                loaded = json.load(f)
            if isinstance(loaded, dict) and loaded.get("output") == real:
                self.entries = dict(loaded.get("tars") or {})
        except (OSError, ValueError):
            pass  # no cache yet, or an unreadable one: every tar is hashed

    def known(self, name: str, sha256: str) -> bool:
        """The tar is as it was when it was verified to have `sha256`."""
        stamp = _stamp(os.path.join(self.output, name))
        return stamp is not None and self.entries.get(name) == [*stamp, sha256]

    def add(self, name: str, sha256: str, size: int) -> None:
        """Enter a tar whose content is known to have `sha256` (and `size` bytes)."""
        stamp = _stamp(os.path.join(self.output, name))
        if stamp is None or stamp[0] != size:
            return
        if time.time_ns() - max(stamp[1], stamp[2]) < RACY_NS:
            return
        self.entries[name] = [*stamp, sha256]

    def save(self, names: set[str]) -> None:
        """Keep the entries of `names` (the dataset's tars now), written atomically. A
        cache that cannot be written costs the next plan a re-read, nothing else."""
        tars = {name: entry for name, entry in sorted(self.entries.items()) if name in names}
        text = json.dumps({"output": os.path.realpath(self.output), "tars": tars})
        tmp = f"{self.path}.tmp-{os.getpid()}"
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, self.path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
