"""Loader worker processes that live for the whole run, not one epoch (`LoaderPool`).

Forking workers every epoch costs each of them its start-up again: importing, the object
store client and its first connections (s3fs: ~60 ms and a TLS/TCP handshake per
connection), a cold range cache index. A pool keeps one DataLoader with
`persistent_workers=True` per split; each epoch the trainer builds that epoch's
`ShardStream` in the main process as before and the pool hands its (epoch, resume
state) to the workers through a small shared-memory table (`EpochControl`), from which
each worker re-plans the same stream (`ShardStream.for_epoch`: a pure function of the
seed, the epoch and the resume state, so every batch is what a freshly forked worker
would have made).

Why this is race-free: the main process writes the table only between epochs, before
`iter(loader)`; a persistent DataLoader then sends each worker a resume signal and waits
for every worker's acknowledgement, and a worker reads the table while handling that
signal (in `EpochSource.__iter__`, which runs eagerly, not in a generator), so it never
sees a table half written. Batches a worker had prefetched for an epoch the trainer left
early are drained and dropped by the DataLoader before the next epoch starts. The table
also carries a version written last, and a worker re-reads until it is stable."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping

import torch

from tagtrain.loader.openers import prepare_for_fork
from tagtrain.loader.positions import WorkerPosition
from tagtrain.loader.reader import die_with_parent
from tagtrain.loader.stream import ShardStream

_HEADER = 3  # version, epoch, number of resume rows


class EpochControl:
    """(epoch, resume positions) in shared memory, written by the main process between
    epochs and read by the persistent workers when their next epoch starts."""

    def __init__(self, rows: int, width: int):
        self.rows, self.width = rows, width
        self.table = torch.zeros(_HEADER + rows * (width + 1), dtype=torch.int64)
        self.table.share_memory_()

    def write(self, epoch: int, resume: Mapping[int, WorkerPosition]) -> None:
        if len(resume) > self.rows:
            raise ValueError(f"{len(resume)} resume rows, room for {self.rows}")
        body = torch.full((self.rows, self.width + 1), -1, dtype=torch.int64)
        for i, (key, position) in enumerate(sorted(resume.items())):
            body[i, 0] = key
            body[i, 1:] = torch.tensor(position.to_row(self.width), dtype=torch.int64)
        version = int(self.table[0]) + 1
        self.table[0] = -version  # negative while being written
        self.table[1], self.table[2] = epoch, len(resume)
        self.table[_HEADER:] = body.reshape(-1)
        self.table[0] = version

    def read(self) -> tuple[int, dict[int, WorkerPosition]]:
        while True:
            before = int(self.table[0])
            snapshot = self.table.clone()
            if before >= 0 and int(self.table[0]) == before:
                break
        epoch, count = int(snapshot[1]), int(snapshot[2])
        body = snapshot[_HEADER:].reshape(self.rows, self.width + 1)[:count]
        return epoch, {int(row[0]): WorkerPosition.from_row(row[1:]) for row in body}


class EpochSource(torch.utils.data.IterableDataset):
    """The dataset a pool's persistent workers hold: each epoch, the template stream
    re-planned for the epoch and resume state in `control`."""

    def __init__(self, template: ShardStream):
        super().__init__()
        self.template = template
        self.control = EpochControl(template.cfg.slots + 1, template.width)
        self.control.write(template.epoch, template.resume)

    def __iter__(self):
        epoch, resume = self.control.read()  # now, while the DataLoader waits (see above)
        return iter(self.template.for_epoch(epoch, resume))


class LoaderPool:
    """One DataLoader with persistent worker processes for every epoch of one split."""

    def __init__(self, template: ShardStream, pin_memory: bool = False):
        cfg = template.cfg
        if cfg.workers < 1:
            raise ValueError("a loader pool needs worker processes (workers >= 1)")
        self.template = template
        self.source = EpochSource(template)
        if template.shards:  # the workers' S3 clients start from a loaded session
            prepare_for_fork(template.shards[0].url, cfg.storage_options)
        self.loader = torch.utils.data.DataLoader(
            self.source,
            batch_size=None,
            num_workers=cfg.workers,
            pin_memory=pin_memory,
            prefetch_factor=cfg.prefetch_factor,
            persistent_workers=True,
            worker_init_fn=functools.partial(die_with_parent, os.getpid()),
            # Starting an iterator draws a base seed (see reader.make_loader).
            generator=torch.Generator().manual_seed(cfg.seed),
        )

    def stream(self, epoch: int, resume: Mapping[int, WorkerPosition] | None) -> ShardStream:
        """The epoch's stream in the main process (its plan, its steps)."""
        return self.template.for_epoch(epoch, resume)

    def loader_for(self, stream: ShardStream) -> torch.utils.data.DataLoader:
        """The pool's DataLoader, set to iterate `stream`'s epoch next."""
        self.source.control.write(stream.epoch, stream.resume)
        return self.loader

    def close(self) -> None:
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None:
            iterator._shutdown_workers()
            self.loader._iterator = None
