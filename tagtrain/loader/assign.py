"""Which shards each rank and each of its loader workers reads in an epoch, and how many
batches every rank runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from tagtrain.loader.card_reader import ShardInfo
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
    # "auto": sample-level partitioning for training when the index gives member byte
    # ranges, else shard-level; "samples" requires the index; "shards" never uses it.
    partition: str = "auto"
    read_retries: int = 6  # retries of a transient read failure, with doubling backoff
    retry_backoff: float = 0.5  # seconds before the first retry
    cache_dir: str | None = None  # keep local copies of remote shards here (see cache)
    cache_limit: int = 0  # bytes the cache may hold; 0: no limit
    s3_client: str = "obstore"  # who sends s3:// range requests: obstore or s3fs (s3ranges)
    # Training epochs of a drawn sample (partition.EpochSample; sample-level reading only)
    epoch_sample: object = None

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
    """LoaderError unless every rank's worker gets a shard; sample-level partitioning
    (an index with member byte ranges) needs no more shards than one."""
    from tagtrain.loader.index import load_sample_refs

    if cfg.train and cfg.partition != "shards":
        if load_sample_refs(shards, cfg.storage_options) is not None:
            return
    needed = cfg.world * cfg.slots
    if len(shards) < needed:
        raise LoaderError(
            f"split {split!r} has {len(shards)} shard(s), fewer than ranks x loader workers = "
            f"{cfg.world} x {cfg.slots} = {needed}: lower --workers or write more shards"
        )


def planned_steps(assignment, batch_size: int) -> int:
    """Batches every rank runs in a training epoch: the smallest rank's count of full
    per-worker batches (or the sample-level plan's own count)."""
    if hasattr(assignment, "planned_steps"):
        return assignment.planned_steps()
    return min(
        sum(sum(s.samples for s in slot) // batch_size for slot in slots) for slots in assignment
    )


@dataclass(frozen=True)
class SampleAssignment:
    """The sample-level plan of an epoch: `total` samples in the global order, of which
    `consumed` were consumed before this stream started (resume)."""

    total: int
    consumed: int
    batch_size: int
    world: int

    def planned_steps(self) -> int:
        step = self.batch_size * self.world
        return self.consumed // step + max(0, self.total - self.consumed) // step

    def remaining_steps(self) -> int:
        return max(0, self.total - self.consumed) // (self.batch_size * self.world)
