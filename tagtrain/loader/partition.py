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
same idea as MosaicML streaming's `sample_in_epoch`)."""

from __future__ import annotations

from collections.abc import Sequence

from tagtrain.loader.index import SampleRef
from tagtrain.loader.shuffle import stable_int


def epoch_order(
    refs: Sequence[Sequence[SampleRef]],
    names: Sequence[str],
    seed: int,
    epoch: int,
    block: int,
) -> list[SampleRef]:
    """The epoch's global sample order (see the module docs)."""
    shard_order = sorted(
        range(len(refs)), key=lambda i: stable_int("shards", seed, epoch, names[i])
    )
    flat = [ref for i in shard_order for ref in refs[i]]
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
