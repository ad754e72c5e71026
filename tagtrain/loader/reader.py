"""The trainer's side of the loader: a DataLoader over a `ShardStream`, and `EpochReader`,
which turns its items into `Batch`es, keeps each role's position after the last batch the
trainer consumed (`commit`), and sums the workers' counts."""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from tagtrain.loader.positions import WorkerPosition, encode_positions
from tagtrain.loader.stats import LoaderError, LoaderStats
from tagtrain.loader.stream import ShardStream

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# The bad-sample fraction is judged once this many samples were seen (or at the end).
_MIN_SEEN_FOR_BAD_FRACTION = 64


def die_with_parent(parent: int, _worker_id: int) -> None:
    """A loader worker's `worker_init_fn`: the worker is killed when the trainer dies, even
    by SIGKILL (Linux). Batches cross by value through the worker's pipe (`WorkerItem`), so
    a worker whose trainer died mid-epoch would block at exit flushing a full pipe that a
    sibling worker still holds open: an orphan process, forever."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the trainer died before the prctl
        os._exit(1)


def make_loader(stream: ShardStream, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    cfg = stream.cfg
    return torch.utils.data.DataLoader(
        stream,
        batch_size=None,  # batches are made in the workers (they carry positions)
        num_workers=cfg.workers,
        pin_memory=pin_memory,
        prefetch_factor=cfg.prefetch_factor if cfg.workers else None,
        persistent_workers=False,
        worker_init_fn=functools.partial(die_with_parent, os.getpid()),
        # Starting an iterator draws a base seed; from the global generator it would shift
        # the trainer's dropout stream on --resume. The workers' randomness is all hashed.
        generator=torch.Generator().manual_seed(cfg.seed),
    )


@dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor
    keys: list[str]
    worker: int
    position: WorkerPosition  # the worker's position right after this batch
    clean: torch.Tensor | None = None  # un-augmented crops (streams with keep_clean)


class EpochReader:
    """Iterates a rank's loader for one epoch. `commit(batch)` records that a batch was
    used (trained on): `positions` then holds, per worker, the position after the last
    committed batch, which is what a checkpoint stores."""

    def __init__(self, stream: ShardStream, pin_memory: bool = False, pool=None):
        self.stream = stream
        # pool: a persist.LoaderPool whose worker processes outlive this epoch, or None
        # (workers forked for this epoch, stopped by `close`).
        self.pool = pool
        self.loader = None if pool is not None else make_loader(stream, pin_memory)
        self.positions: dict[int, WorkerPosition] = {
            w: stream.resume.get(w, WorkerPosition()) for w in range(stream.cfg.slots)
        }
        self.worker_stats: dict[int, LoaderStats] = {}
        self._iterator = None
        # Turns count consumed batches across the epoch (continued on resume): the role
        # with the latest turn tells a resumed stream which role goes first.
        self.turn = max((p.last_commit for p in self.positions.values()), default=0)

    def __iter__(self) -> Iterator[Batch]:
        loader = self.loader if self.pool is None else self.pool.loader_for(self.stream)
        self._iterator = iter(loader)
        for item in self._iterator:
            w = item.worker
            self.worker_stats[w] = item.stats
            self.check_bad_fraction(final=False)
            if item.final or item.x is None:
                continue  # an empty batch (every sample bad) still counts as a turn
            position = WorkerPosition.from_row(item.position)
            item = item.tensors()  # (pinned tensors already, with pin_memory)
            yield Batch(item.x, item.y, item.keys, w, position, item.clean)
        self.check_bad_fraction(final=True)

    def check_bad_fraction(self, final: bool) -> None:
        """LoaderError (one line) when more samples were bad than the config allows."""
        limit = self.stream.cfg.max_bad_fraction
        if limit >= 1.0:
            return
        stats = self.stats
        seen = stats.samples + stats.bad_samples
        if stats.bad_fraction <= limit or (seen < _MIN_SEEN_FOR_BAD_FRACTION and not final):
            return
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(stats.bad_by_reason.items()))
        first = f"; first: {stats.errors[0]}" if stats.errors else ""
        raise LoaderError(
            f"{stats.bad_samples} of {seen} samples were bad ({reasons}), more than "
            f"--max-bad-fraction {limit:g}{first}"
        )

    def commit(self, batch: Batch) -> None:
        self.turn += 1
        batch.position.last_commit = self.turn
        self.positions[batch.worker] = batch.position

    def close(self) -> None:
        """Stop the worker processes (an epoch may end before the loader is exhausted);
        a pool's persistent workers stay, and drop what they prefetched when the pool's
        next epoch starts."""
        iterator, self._iterator = self._iterator, None
        if self.pool is None and iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()

    @property
    def stats(self) -> LoaderStats:
        total = LoaderStats()
        for s in self.worker_stats.values():
            total = total.add(s)
        return total

    def encoded_positions(self) -> torch.Tensor:
        return encode_positions(self.positions, self.stream.cfg.slots, self.stream.width)
