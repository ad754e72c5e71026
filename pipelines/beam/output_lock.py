"""One job at a time per local output directory. A second prepare or perturb started on an
output that a running job writes would delete that job's temporary files as orphans and
mix shards of two configurations under one card; it gets one line instead.

The lock is an flock on `.tagkit.lock` in the output directory itself (made if missing):
two jobs see the same lock whatever their environment. A lock kept in the tagkit cache
let two prepares with different TAGKIT_CACHE_DIR (or HOME) write one output at once. The
file is removed when the job ends (a killed job leaves it, unlocked: the next job takes
it); it is not part of the dataset and nothing reads it. The lock ends with its
process. Object stores have no locks: outputs there are not guarded."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

from pipelines.core import storage
from pipelines.core.errors import UserError
from pipelines.core.locks import Held, hold

LOCK_NAME = ".tagkit.lock"


class OutputInUse(UserError):
    """Another job is writing the output."""


def lock_path(output: str) -> str:
    return os.path.join(output, LOCK_NAME)


@contextlib.contextmanager
def outputs_held(outputs: Sequence[str], job: str) -> Iterator[None]:
    """Hold every local output of `outputs` for this job; OutputInUse (naming the other
    job's pid) when another process holds one."""
    with contextlib.ExitStack() as held:
        for output in outputs:
            if not storage.is_remote(output):
                held.enter_context(_held(output, job))
        yield


@contextlib.contextmanager
def _held(output: str, job: str) -> Iterator[None]:
    made = not os.path.isdir(output)
    try:
        os.makedirs(output, exist_ok=True)
        handle = _take(lock_path(output), job)
    except Held as other:
        raise OutputInUse(
            f"{output} is being written by another job{other.describe()}: wait for it to "
            "end, or choose another --out"
        ) from None
    except OSError as exc:
        raise OutputInUse(f"cannot lock --out {output}: {exc.strerror or exc}") from None
    with handle:
        try:
            yield
        finally:
            # Removed while still held, so a finished output holds no file of ours; a job
            # that opened the old file meanwhile sees it is gone (`_take`) and starts over.
            with contextlib.suppress(OSError):
                os.unlink(lock_path(output))
            if made:
                with contextlib.suppress(OSError):
                    os.rmdir(output)  # only when the job left it empty


def _take(path: str, job: str):
    """`hold(path)`, on the file that `path` names once held: a holder removes the file
    when it ends, so a lock taken on the file it removed guards nothing."""
    for _ in range(10):
        handle = hold(path, job)
        try:
            if os.path.samestat(os.fstat(handle.fileno()), os.stat(path)):
                return handle
        except FileNotFoundError:
            pass
        handle.close()
    raise OSError(f"{path} keeps being replaced")
