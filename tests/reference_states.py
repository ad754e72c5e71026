"""Seeded reference checkpoints: the same tensors for the golden script (which builds
them from the reference classes) and for the tests (which build them from the key list
the golden fixture recorded), so a test can import a checkpoint it never stored.

Values are scaled so that every tensor matters to the output: positions and special
tokens ~N(0, 1), matrices ~N(0, 1/fan_in), norm scales ~1, biases ~0.1, running
variances in [0.5, 1.5]."""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence

import torch


def seeded_tensor(key: str, shape: Sequence[int], seed: int) -> torch.Tensor:
    """One tensor, a function of its name, shape and the seed only."""
    shape = tuple(int(s) for s in shape)
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
    noise = torch.randn(shape, generator=gen)
    name = key.rsplit(".", 1)[-1]
    if name == "running_var":
        return 0.5 + torch.rand(shape, generator=gen)
    if "pos" in key or "token" in key:
        return noise
    if len(shape) >= 2:
        return noise / math.sqrt(math.prod(shape[1:]))
    if name == "weight":
        return 1.0 + 0.1 * noise
    return 0.1 * noise


def seeded_state(shapes: Mapping[str, Sequence[int]], seed: int) -> dict[str, torch.Tensor]:
    return {key: seeded_tensor(key, shape, seed) for key, shape in shapes.items()}


def seeded_input(shape: Sequence[int], seed: int) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed))
