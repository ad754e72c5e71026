"""Reading one local audio file safely: only regular files, at most a size cap, and a
check that the file did not change while it was read.

- Special files are refused before a byte is read: `/dev/zero` would be read until memory
  runs out, a FIFO would block forever (it is opened non-blocking, so even opening it
  cannot hang), a directory is no audio. Kernel and device folders (/proc, /sys, /dev)
  are refused by where the path leads, normalised (`//proc/self/environ`) and with its
  links resolved, not by how it is spelled: /proc files claim to be regular.
- A path in an audio root must stay in it once its symlinks are resolved
  (`check_inside_root`): a link inside the root to a file outside it is refused.
- The size cap bounds the memory one track can take before decoding starts.
- Size and mtime are taken when the file is opened and compared after the read (on the
  open descriptor and on the path, which catches a replace-by-rename too); a file written
  while we read it would otherwise give a mix of old and new bytes without notice. When
  the caller recorded a signature earlier (at planning), it must match as well.
"""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass

from pipelines.core.failures import (
    CHANGED,
    NOT_REGULAR,
    OUTSIDE_ROOT,
    TOO_LARGE,
    AudioRejected,
    classify_read_error,
)

DEFAULT_MAX_FILE_MB = 1024.0  # ~100 min of CD-quality WAV, several hours of MP3/FLAC
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Signature:
    """What identifies one version of a source: size plus mtime (local, ns) or the
    object store's/HTTP server's version tag (etag, generation, Last-Modified)."""

    size: int
    version: str


@dataclass
class SourceBytes:
    data: bytes
    signature: Signature


def max_bytes(max_file_mb: float | None) -> int | None:
    return None if max_file_mb is None else int(max_file_mb * 1024 * 1024)


def too_large(size: int, limit: int | None) -> AudioRejected | None:
    if limit is not None and size > limit:
        return AudioRejected(
            "read", TOO_LARGE, f"{size / 2**20:.1f} MiB is over the {limit / 2**20:.0f} MiB cap"
        )
    return None


SYSTEM_DIRS = ("/dev", "/proc", "/sys")
_ALLOWED_SYSTEM = ("/dev/shm",)  # a RAM disk of ordinary files


def normal_path(path: str) -> str:
    """`path` with `.`, `..` and repeated slashes collapsed; POSIX `normpath` keeps a
    leading `//` (implementation-defined there, the root on Linux), this does not."""
    normal = posixpath.normpath(path)
    return "/" + normal.lstrip("/") if normal.startswith("//") else normal


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def system_location(path: str) -> str | None:
    """The kernel or device folder (/dev, /proc, /sys) `path` lies in, as written
    (normalised) or once its symlinks are resolved; None when it lies in none."""
    for candidate in (normal_path(path), os.path.realpath(path)):
        if any(_under(candidate, d) for d in _ALLOWED_SYSTEM):
            continue
        for folder in SYSTEM_DIRS:
            if _under(candidate, folder):
                return folder
    return None


def check_inside_root(path: str, root: str) -> None:
    """Raise AudioRejected (outside_root) when local `path`, written inside the local
    folder `root`, leads out of it once symlinks are resolved (a link to /etc/passwd, or
    to another user's files). Paths written outside the root, and URLs, are not this
    check's business (the manifest's validation decides whether those are allowed)."""
    if "://" in path or "://" in root:
        return
    if not _under(normal_path(os.path.abspath(path)), normal_path(os.path.abspath(root))):
        return
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    if not _under(real, real_root):
        raise AudioRejected(
            "read", OUTSIDE_ROOT, "a symlink in the audio root leads out of it (not followed)"
        )


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _signature(st: os.stat_result) -> Signature:
    return Signature(st.st_size, f"mtime_ns={st.st_mtime_ns}")


def changed(message: str) -> AudioRejected:
    return AudioRejected("read", CHANGED, message)


def _read_all(fd: int, size: int, limit: int | None) -> bytes:
    # One byte past the expected size tells whether the file grew while we read.
    want = size + 1 if limit is None else min(size, limit) + 1
    parts, got = [], 0
    while got < want:
        chunk = os.read(fd, min(_CHUNK, want - got))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def read_local(
    path: str, max_file_bytes: int | None = None, planned: Signature | None = None
) -> SourceBytes:
    """The bytes of a regular local file, or AudioRejected (missing, not a regular file,
    too large, changed) or TransientError (I/O trouble) as `classify_read_error` says."""
    folder = system_location(path)
    if folder is not None:
        raise AudioRejected("read", NOT_REGULAR, f"a file in {folder}, not an audio file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise classify_read_error(exc) from None
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise AudioRejected("read", NOT_REGULAR, f"{_kind(before.st_mode)}, not a regular file")
        rejected = too_large(before.st_size, max_file_bytes)
        if rejected is not None:
            raise rejected
        signature = _signature(before)
        if planned is not None and planned != signature:
            raise changed(f"file changed since it was planned ({planned} -> {signature})")
        try:
            data = _read_all(fd, before.st_size, max_file_bytes)
            after, now = os.fstat(fd), os.stat(path)
        except OSError as exc:
            raise classify_read_error(exc) from None
    finally:
        os.close(fd)
    same_file = (now.st_dev, now.st_ino) == (before.st_dev, before.st_ino)
    if (
        len(data) != before.st_size
        or not same_file
        or {_signature(after), _signature(now)} != {signature}
    ):
        raise changed("file was modified or replaced while it was read")
    return SourceBytes(data, signature)
