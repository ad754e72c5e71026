"""Where a worker's deterministic stream stands within an epoch, as checkpoint rows.

A row is [next_shard, next_index, emitted, last_commit, n, shard_0, index_0, ...]:
`last_commit` is the 1-based turn at which the trainer last consumed a batch of this
worker's stream (0: never this epoch). The DataLoader hands out batches from its workers
in turn, so on resume the stream after the most recent turn must come first (see
`first_role`), or batches would be consumed in another order than without the kill.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

_HEADER = 5


@dataclass
class WorkerPosition:
    """Where one worker's deterministic stream stands within an epoch."""

    next_shard: int = 0  # ordinal of the next shard to read, in the worker's shard list
    next_index: int = 0  # index of the next sample to read inside that shard
    emitted: int = 0  # samples the shuffle buffer has emitted so far
    buffer: list[tuple[int, int]] = field(default_factory=list)  # (shard, index) per slot
    last_commit: int = 0  # the trainer's turn that last consumed a batch of this stream

    def to_row(self, width: int) -> list[int]:
        row = self._values(width)
        return row + [-1] * (width - len(row))

    def to_array(self, width: int) -> np.ndarray:
        """`to_row` as an int64 array, its padding filled, not converted: a row is 5 + 2 x
        the shuffle buffer wide, and converting such a list cost ~35 us a batch."""
        values = self._values(width)
        row = np.full(width, -1, dtype=np.int64)
        row[: len(values)] = values
        return row

    def _values(self, width: int) -> list[int]:
        row = [self.next_shard, self.next_index, self.emitted, self.last_commit, len(self.buffer)]
        row += [v for pos in self.buffer for v in pos]
        if len(row) > width:
            raise ValueError("position does not fit the encoding width")
        return row

    @classmethod
    def from_row(cls, row) -> WorkerPosition:
        row = row.tolist() if hasattr(row, "tolist") else [int(v) for v in row]
        n = row[4]
        flat = row[_HEADER : _HEADER + 2 * n]
        buffer = [(flat[i], flat[i + 1]) for i in range(0, 2 * n, 2)]
        return cls(row[0], row[1], row[2], buffer, row[3])


def position_width(shuffle_buffer: int) -> int:
    return _HEADER + 2 * max(0, shuffle_buffer)


def encode_positions(positions: Mapping[int, WorkerPosition], workers: int, width: int):
    """[workers, width] int64 tensor (checkpoint-safe) of a rank's worker positions."""
    rows = [positions.get(w, WorkerPosition()).to_row(width) for w in range(workers)]
    return torch.tensor(rows, dtype=torch.int64).reshape(workers, width)


def decode_positions(table: torch.Tensor) -> dict[int, WorkerPosition]:
    return {w: WorkerPosition.from_row(row.tolist()) for w, row in enumerate(table)}


def first_role(positions: Mapping[int, WorkerPosition], workers: int) -> int:
    """The worker stream whose turn comes first on resume: the one after the stream
    whose batch was consumed last (0 when nothing was consumed)."""
    turns = {w: positions[w].last_commit for w in positions if w < workers}
    if not turns or max(turns.values()) <= 0:
        return 0
    last = max(turns, key=lambda w: turns[w])
    return (last + 1) % workers
