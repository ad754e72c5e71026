"""Which shards each rank and each of its loader workers reads in an epoch, and how many
batches every rank runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from tagtrain.loader.card import ShardInfo
from tagtrain.loader.shuffle import stable_int
from tagtrain.loader.stats import LoaderError


@dataclass(frozen=True)
class LoaderConfig:
    batch_size: int
    workers: int = 0  # DataLoader worker processes; 0 reads in the main process
    shuffle_buffer: int = 256
    seed: int = 0
    rank: int = 0
    world: int = 1
    train: bool = True  # shuffle, random crops, drop partial batches; else fixed crops
    eval_chunks: int = 1  # evenly spaced chunks per track when not training
    storage_options: dict = field(default_factory=dict)
    prefetch_factor: int = 4
    # Fail the epoch (LoaderError) when more than this fraction of samples is bad; 1.0
    # never fails (bad samples are always skipped and counted).
    max_bad_fraction: float = 1.0

    @property
    def slots(self) -> int:
        return max(1, self.workers)


def assign_shards(
    shards: Sequence[ShardInfo], world: int, workers: int, seed: int, epoch: int, shuffle: bool
) -> list[list[list[ShardInfo]]]:
    """[rank][worker] -> shards, in reading order. Shards are shuffled per epoch, then
    each goes to the rank (then the worker) with the fewest samples so far."""
    order = list(range(len(shards)))
    if shuffle:
        order.sort(key=lambda i: stable_int("shards", seed, epoch, shards[i].name))
    per_rank: list[list[ShardInfo]] = [[] for _ in range(world)]
    rank_load = [0] * world
    for i in order:
        r = min(range(world), key=lambda k: (rank_load[k], k))
        per_rank[r].append(shards[i])
        rank_load[r] += shards[i].samples
    out = []
    for rank_shards in per_rank:
        slots: list[list[ShardInfo]] = [[] for _ in range(workers)]
        load = [0] * workers
        for shard in rank_shards:
            w = min(range(workers), key=lambda k: (load[k], k))
            slots[w].append(shard)
            load[w] += shard.samples
        out.append(slots)
    return out


def check_enough_shards(shards: Sequence[ShardInfo], cfg: LoaderConfig, split: str) -> None:
    needed = cfg.world * cfg.slots
    if len(shards) < needed:
        raise LoaderError(
            f"split {split!r} has {len(shards)} shard(s), fewer than ranks x loader workers = "
            f"{cfg.world} x {cfg.slots} = {needed}: lower --workers or write more shards"
        )


def planned_steps(assignment, batch_size: int) -> int:
    """Batches every rank runs in a training epoch: the smallest rank's count of full
    per-worker batches."""
    return min(
        sum(sum(s.samples for s in slot) // batch_size for slot in slots) for slots in assignment
    )
