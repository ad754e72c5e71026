"""What a loader worker hands the trainer for each batch: a `WorkerItem`.

An object of numpy arrays, not a dict of tensors, for what it costs to cross from a
worker process (bench/RESULTS.md, 1 MB mel batches): torch sends every tensor through a
new shared-memory file and a socket connection that passes its descriptor, about 2 ms of
CPU a batch between the two processes; numpy arrays are pickled by value into the
worker's pipe, about a third of that. And the DataLoader walks a dict (default_convert)
where it passes an object whole. With pin_memory, the DataLoader's pinning thread calls
`pin_memory()`, so batches are still pinned off the training thread."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from tagtrain.loader.stats import LoaderStats

_ARRAYS = ("x", "y", "clean")


@dataclass
class WorkerItem:
    worker: int  # the role (worker slot) that made it
    position: np.ndarray  # int64: the role's WorkerPosition after this batch, as a row
    stats: LoaderStats  # the role's counts so far (a snapshot)
    x: np.ndarray | torch.Tensor | None = None  # None: no batch (every sample bad)
    y: np.ndarray | torch.Tensor | None = None
    keys: list[str] = field(default_factory=list)
    clean: np.ndarray | torch.Tensor | None = None  # un-augmented crops (keep_clean)
    final: bool = False  # the role's last item: its position and stats, no batch

    def pin_memory(self, device=None) -> WorkerItem:
        """The arrays as tensors in pinned memory (the DataLoader's pin_memory=True)."""
        return dataclasses.replace(
            self, **{name: tensor(getattr(self, name)).pin_memory() for name in self._present()}
        )

    def tensors(self) -> WorkerItem:
        """The arrays as tensors (sharing their memory)."""
        return dataclasses.replace(
            self, **{name: tensor(getattr(self, name)) for name in self._present()}
        )

    def _present(self) -> list[str]:
        return [name for name in _ARRAYS if getattr(self, name) is not None]


def tensor(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(array) if isinstance(array, np.ndarray) else array
