"""What the benchmarks share: the repository root, wall and CPU time of a block (this
process and the child processes it waited for), and the best of repeated runs."""

from __future__ import annotations

import resource
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its finished children (a Beam
    job's processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Timer:
    """Wall and CPU seconds of a block (`wall`, `cpu`); set them by hand for a figure
    measured elsewhere (another process's own report)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = cpu_seconds() - self.cpu


def best_of(runs: list[Timer]) -> Timer:
    """The least wall and the least CPU time of repeated runs: on a shared box noise only
    ever adds time."""
    best = Timer()
    best.wall, best.cpu = min(t.wall for t in runs), min(t.cpu for t in runs)
    return best
