"""One job at a time per local output directory. A second prepare or perturb started on an
output that a running job writes would delete that job's temporary files as orphans and
mix shards of two configurations under one card; it gets one line instead.

The lock is an flock on a file in the tagkit cache ($TAGKIT_CACHE_DIR/locks, keyed by
the output's real path), not in the output, so the dataset's files stay the job's own. It
ends with its process. Object stores have no locks: outputs there are not guarded."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

from pipelines.beam.verified_tars import cache_root, output_key
from pipelines.core import storage
from pipelines.core.errors import UserError
from pipelines.core.locks import Held, hold


class OutputInUse(UserError):
    """Another job is writing the output."""


def lock_path(output: str) -> str:
    return os.path.join(cache_root(), "locks", output_key(output) + ".lock")


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
    path = lock_path(output)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        handle = hold(path, job)
    except Held as other:
        raise OutputInUse(
            f"{output} is being written by another job{other.describe()}: wait for it to "
            "end, or choose another --out"
        ) from None
    with handle:
        yield
