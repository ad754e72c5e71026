"""An exclusive, non-blocking lock held by one process: an flock on a small file that
names its holder. Used to keep two jobs off one output (prepare, perturb) or one run
directory (the trainer). The lock ends when its file is closed or its process dies."""

from __future__ import annotations

import fcntl
import os


class Held(Exception):
    """Another process holds the lock; `holder` is what it wrote ("PID WHAT"), or ""."""

    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder

    def describe(self) -> str:
        """The holder as ' (pid N, what)' when it is known, else an empty string."""
        fields = self.holder.split()
        if not fields or not fields[0].isdigit():
            return ""
        return f" (pid {', '.join(fields)})"


def hold(path: str, what: str):
    """Take the lock at `path` (made if missing) for this process; returns the open lock
    file, which keeps it until closed. Held when another process has it."""
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        raise Held(holder) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()} {what}\n")
    handle.flush()
    return handle
