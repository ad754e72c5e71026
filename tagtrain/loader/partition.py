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

import numpy as np

from tagtrain.loader.index import SampleRef, SplitIndex
from tagtrain.loader.shuffle import stable_ints, stable_ints_of_chunks
from tagtrain.loader.stats import LoaderError


@dataclass(frozen=True)
class EpochSample:
    """Each epoch: `size` samples drawn without replacement with probability proportional
    to `weights[key]` (None: uniform); every sample when there are no more than `size`."""

    size: int
    weights: Mapping[str, float] | None = None

    def draw(self, keys: Sequence[str], seed: int, epoch: int) -> set[str]:
        """The keys of the epoch's sample, drawn from `keys`."""
        if self.size >= len(keys):
            return set(keys)
        if self.weights is None:
            w = np.ones(len(keys))
        else:
            found = [self.weights.get(key) for key in keys]
            for key, value in zip(keys, found):
                if value is None or not value > 0:
                    raise LoaderError(f"the epoch sample has no positive weight for {key!r}")
            w = np.asarray(found, dtype=np.float64)
        # u in (0, 1) from the hash; log(u) / w orders as u ** (1 / w), without underflow.
        # math.log, not np.log: the same last bit as the draws of earlier versions.
        u = (stable_ints(("sample", seed, epoch), keys).astype(np.float64) + 0.5) / 2.0**64
        score = np.fromiter(map(math.log, u.tolist()), np.float64, len(u)) / w
        # The `size` largest (score, key): all above the size-th score, ties by key.
        cut = np.partition(score, len(score) - self.size)[len(score) - self.size]
        chosen = {keys[i] for i in np.flatnonzero(score > cut)}
        tied = sorted((keys[i] for i in np.flatnonzero(score == cut)), reverse=True)
        return chosen | set(tied[: self.size - len(chosen)])


def epoch_rows(
    index: SplitIndex,
    names: Sequence[str],
    seed: int,
    epoch: int,
    block: int,
    sample: EpochSample | None = None,
) -> np.ndarray:
    """The epoch's global sample order (see the module docs) as rows of `index`; with
    `sample`, of the epoch's sample only."""
    shard_order = np.argsort(stable_ints(("shards", seed, epoch), names), kind="stable")
    counts = np.diff(index.starts)[shard_order]
    # Each shard's rows, the shards in their shuffled order.
    shift = np.repeat(index.starts[shard_order] - (np.cumsum(counts) - counts), counts)
    flat = np.arange(int(counts.sum()), dtype=np.int64) + shift
    if sample is not None:
        keys = index.key_list()
        in_order = [keys[i] for i in flat.tolist()]
        chosen = sample.draw(in_order, seed, epoch)
        flat = flat[np.fromiter((k in chosen for k in in_order), bool, len(flat))]
    if block <= 1:
        return flat
    hashes = stable_ints_of_chunks(("order", seed, epoch), index.key_chunks())[flat]
    # Each block sorted on its own (a row of a [blocks, block] matrix): n log(block), not
    # the n log n of one sort on (block, hash). Stable: equal hashes keep their order.
    full = len(flat) // block * block
    rows = np.argsort(hashes[:full].reshape(-1, block), axis=1, kind="stable")
    rows += np.arange(0, full, block)[:, None]
    rest = full + np.argsort(hashes[full:], kind="stable")
    return flat[np.concatenate([rows.reshape(-1), rest])]


def epoch_order(
    refs: SplitIndex | Sequence[Sequence[SampleRef]],
    names: Sequence[str],
    seed: int,
    epoch: int,
    block: int,
    sample: EpochSample | None = None,
) -> list[SampleRef]:
    """`epoch_rows` as SampleRefs (for a few samples: tests and tools)."""
    index = refs if isinstance(refs, SplitIndex) else SplitIndex.from_refs(refs)
    return [index.ref(row) for row in epoch_rows(index, names, seed, epoch, block, sample)]


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
