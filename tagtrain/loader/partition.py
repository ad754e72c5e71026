"""Sample-level partitioning (used when the index gives each member's byte range).

The epoch has one global sample order that depends only on (seed, epoch), never on the
number of ranks or loader workers: the shards in a shuffled order, their samples in tar
order, then each consecutive block of `block` samples permuted (so a block mixes a few
shards, like a shuffle buffer, and reads stay near each other). The order is cut into
global batches of `batch_size x world` samples; rank r takes the r-th `batch_size` of
each, and its batches go to its loader workers in turn (worker w: batches w, w+W, ...),
which is the order in which the DataLoader hands them back. Every rank therefore runs the
same number of full batches, and at most one partial global batch is dropped per epoch.

Consumption is always a prefix of the global order, so the resume state is one number,
the samples consumed (`consumed`): a run resumed with another world size or worker count
partitions the rest of the same order and sees every remaining sample exactly once (the
same idea as MosaicML streaming's `sample_in_epoch`).

An epoch sample (`EpochSample`, `--epoch-samples N`): the epoch is N samples drawn
without replacement, by weight (MAEST: inverse tag frequency), as a pure function of
(seed, epoch, key): Efraimidis-Spirakis keys u ** (1 / w), u a hash of (seed, epoch, key),
the N largest drawn. The drawn samples keep the order above (shards shuffled, blocks
permuted), so the sample is one more global order: ranks, workers and resumption
partition it like a full epoch."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tagtrain.loader.index import SampleRef
from tagtrain.loader.shuffle import stable_int
from tagtrain.loader.stats import LoaderError


@dataclass(frozen=True)
class EpochSample:
    """Each epoch: `size` samples drawn without replacement with probability proportional
    to `weights[key]` (None: uniform); every sample when there are no more than `size`."""

    size: int
    weights: Mapping[str, float] | None = None

    def draw(self, refs: Sequence[SampleRef], seed: int, epoch: int) -> set[str]:
        """The keys of the epoch's sample."""
        if self.size >= len(refs):
            return {r.key for r in refs}
        scored = []
        for ref in refs:
            w = 1.0 if self.weights is None else self.weights.get(ref.key)
            if w is None or not w > 0:
                raise LoaderError(f"the epoch sample has no positive weight for {ref.key!r}")
            # u in (0, 1) from the hash; log(u) / w orders as u ** (1 / w), without underflow
            u = (stable_int("sample", seed, epoch, ref.key) + 0.5) / 2.0**64
            scored.append((math.log(u) / w, ref.key))
        scored.sort(reverse=True)
        return {key for _, key in scored[: self.size]}


def epoch_order(
    refs: Sequence[Sequence[SampleRef]],
    names: Sequence[str],
    seed: int,
    epoch: int,
    block: int,
    sample: EpochSample | None = None,
) -> list[SampleRef]:
    """The epoch's global sample order (see the module docs); with `sample`, of the
    epoch's sample only."""
    shard_order = sorted(
        range(len(refs)), key=lambda i: stable_int("shards", seed, epoch, names[i])
    )
    flat = [ref for i in shard_order for ref in refs[i]]
    if sample is not None:
        chosen = sample.draw(flat, seed, epoch)
        flat = [ref for ref in flat if ref.key in chosen]
    if block <= 1:
        return flat
    out = []
    for start in range(0, len(flat), block):
        chunk = flat[start : start + block]
        chunk.sort(key=lambda r: stable_int("order", seed, epoch, r.key))
        out.extend(chunk)
    return out


def rank_batches(
    total: int, consumed: int, batch_size: int, world: int, rank: int
) -> list[tuple[int, int]]:
    """(start, stop) in the global order of each of this rank's remaining full batches."""
    step = batch_size * world
    count = max(0, total - consumed) // step
    first = consumed + rank * batch_size
    return [(first + j * step, first + j * step + batch_size) for j in range(count)]


def steps_per_epoch(total: int, batch_size: int, world: int) -> int:
    return total // (batch_size * world)
