"""One rank's stream of batches for one epoch: each loader worker plays one *role* (a
fixed list of shards, its own shuffle buffer) and yields batches that carry the role's
position after them (see `tagtrain.loader` for determinism and resumption).

On resume, DataLoader worker j plays role (j + first) % workers, where `first` is the
role after the one whose batch the trainer consumed last: the DataLoader takes batches
from its workers in turn starting at worker 0, so the resumed epoch continues the same
turn order as an uninterrupted one."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from pipelines.core.errors import first_line
from tagtrain.loader.assign import LoaderConfig, SampleAssignment, assign_shards
from tagtrain.loader.card_reader import ShardInfo
from tagtrain.loader.index import load_sample_refs
from tagtrain.loader.input_plan import InputPlan
from tagtrain.loader.partition import epoch_rows, rank_batches
from tagtrain.loader.positions import WorkerPosition, first_role, position_width
from tagtrain.loader.sampled import SampleRoleStream, consumed_samples
from tagtrain.loader.samples import SampleDecoder, SampleRejected
from tagtrain.loader.shuffle import ShuffleBuffer, stable_int
from tagtrain.loader.stats import LoaderError, LoaderStats
from tagtrain.loader.tar import read_shard
from tagtrain.loader.worker_item import WorkerItem


class ShardStream(torch.utils.data.IterableDataset):
    """One rank's stream of batches for one epoch of one split.

    Yields a `WorkerItem` per batch (x, y, keys, the role, its position as a row, its
    stats); each role ends with a final one (no batch).

    augment: None, or a callable (PCM crop, seed) -> crop (e.g. tagtrain.training.augment_chain's
    TrainingAugmentChain) applied to training crops in the worker as batches are made; the seed
    is a hash of (seed, epoch, key), so it is reproducible and survives resumption. The
    shuffle buffer holds clean crops. keep_clean: batches also carry the un-augmented crops
    as "clean" (what a noisy-student teacher sees).
    """

    def __init__(
        self,
        shards: Sequence[ShardInfo],
        plan: InputPlan,
        vocabulary: Sequence[str],
        cfg: LoaderConfig,
        epoch: int = 0,
        resume: Mapping[int, WorkerPosition] | None = None,
        augment: Callable[[np.ndarray, int], np.ndarray] | None = None,
        keep_clean: bool = False,
    ):
        super().__init__()
        if (augment is not None or keep_clean) and plan.member != "pcm.npy":
            raise LoaderError(
                f"waveform augmentation needs PCM input, the plan reads {plan.member}"
            )
        self.augment = augment if cfg.train else None
        self.keep_clean = keep_clean
        self.plan = plan
        self.vocabulary = list(vocabulary)
        self.cfg = cfg
        self.shards = list(shards)
        self.width = position_width(cfg.shuffle_buffer if cfg.train else 0)
        self.resume = dict(resume or {})
        self.refs = self._sample_refs()
        self._plan_epoch(epoch, self.resume)

    def for_epoch(self, epoch: int, resume: Mapping[int, WorkerPosition] | None = None):
        """The same split, plan and settings for another epoch (or resume state), with the
        index's byte ranges already loaded (persistent loader workers re-plan this way)."""
        other = copy.copy(self)
        other.resume = dict(resume or {})
        if other.refs is None and consumed_samples(other.resume) is not None:
            raise LoaderError("a sample-level resume state needs sample-level partitioning")
        if (epoch, other.resume) == (self.epoch, self.resume):
            # The plan this stream already has (a pool's first epoch, planned before its
            # workers forked): ordering a million samples again costs each worker ~1 s.
            return other
        other._plan_epoch(epoch, other.resume)
        return other

    def _plan_epoch(self, epoch: int, resume: Mapping[int, WorkerPosition]) -> None:
        cfg = self.cfg
        self.epoch = epoch
        self.decoder = SampleDecoder(self.plan, self.vocabulary, cfg, epoch)
        if self.refs is not None:
            self._plan_samples()
        else:
            self.first_role = first_role(resume, cfg.slots)
            self.assignment = assign_shards(
                self.shards, cfg.world, cfg.slots, cfg.seed, epoch, shuffle=cfg.train
            )

    def _sample_refs(self):
        """Per-shard sample byte ranges when sample-level partitioning applies."""
        cfg = self.cfg
        if not cfg.train or cfg.partition == "shards":
            if consumed_samples(self.resume) is not None:
                raise LoaderError("a sample-level resume state needs sample-level partitioning")
            return None
        refs = load_sample_refs(self.shards, cfg.storage_options)
        if refs is None and cfg.partition == "samples":
            raise LoaderError("partition 'samples' needs an index with member byte ranges")
        if refs is None and consumed_samples(self.resume) is not None:
            raise LoaderError("the checkpoint was taken with the index's byte ranges, now gone")
        return refs

    def _plan_samples(self) -> None:
        cfg = self.cfg
        names = [s.name for s in self.shards]
        # Rows of the split's index (`SplitIndex`), not one object per sample.
        self.order = epoch_rows(
            self.refs, names, cfg.seed, self.epoch, cfg.shuffle_buffer, cfg.epoch_sample
        )
        self.consumed = consumed_samples(self.resume) or 0
        self.sample_batches = rank_batches(
            len(self.order), self.consumed, cfg.batch_size, cfg.world, cfg.rank
        )
        self.assignment = SampleAssignment(
            len(self.order), self.consumed, cfg.batch_size, cfg.world
        )

    @property
    def sample_level(self) -> bool:
        return self.refs is not None

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        if (info.num_workers if info is not None else 1) != self.cfg.slots:
            raise LoaderError("the DataLoader's worker count differs from the loader config")
        if info is not None:
            torch.set_num_threads(1)  # workers parse and crop; torch threads would contend
        if self.sample_level:
            yield from SampleRoleStream(self, worker).batches()
            return
        role = (worker + self.first_role) % self.cfg.slots
        yield from RoleStream(self, role).batches()

    def arrays(self, entries) -> dict:
        """x, y, keys (and clean) of a batch of (position, (crop, labels), key) entries."""
        crops = [e[1][0] for e in entries]
        xs = crops
        if self.augment is not None:
            xs = [self.augmented(crop, e[2]) for crop, e in zip(crops, entries)]
        out = {
            "x": np.stack(xs),
            "y": np.stack([e[1][1] for e in entries]),
            "keys": [e[2] for e in entries],
        }
        if self.keep_clean:
            out["clean"] = np.stack(crops)
        return out

    def decode(self, raw: Mapping, stats: LoaderStats):
        """(x, y) for a raw sample, or None (counted by reason) when it cannot be used."""
        outcome = self.try_decode(raw)
        if outcome[0] == "item":
            stats.samples += 1
            return outcome[1]
        stats.reject(raw.get("__key__", "?"), outcome[1], outcome[2])
        return None

    def try_decode(self, raw: Mapping) -> tuple:
        """("item", (x, y)) for a raw sample, or ("rejected", reason, detail)."""
        try:
            return "item", self.decoder(raw)
        except SampleRejected as exc:
            return "rejected", exc.reason, exc.detail
        except Exception as exc:  # noqa: BLE001  (any other decode failure: counted, skipped)
            return "rejected", "decode", f"{type(exc).__name__}: {first_line(exc, 200)}"

    def augmented(self, crop: np.ndarray, key: str) -> np.ndarray:
        return self.augment(crop, stable_int("augment", self.cfg.seed, self.epoch, key))


class RoleStream:
    """The batches of one role: its shards in order through its shuffle buffer, resumed
    from the role's saved position (buffer refilled first, the rest skipped unread)."""

    def __init__(self, stream: ShardStream, role: int):
        cfg = stream.cfg
        self.stream, self.role, self.cfg = stream, role, cfg
        self.shards = stream.assignment[cfg.rank][role]
        self.stats = LoaderStats()
        start = stream.resume.get(role, WorkerPosition())
        frontier = (start.next_shard, start.next_index)
        if frontier[0] < len(self.shards) and frontier[1] >= self.shards[frontier[0]].samples:
            frontier = (frontier[0] + 1, 0)
        self.frontier = frontier
        self.size = cfg.shuffle_buffer if cfg.train else 0
        stream_id = f"{cfg.seed}/{stream.epoch}/{cfg.rank}/{role}"
        self.shuffle = ShuffleBuffer(self.size, stream_id, start.emitted)
        # Slots of the saved buffer, refilled from their shards before anything new is read.
        self.wanted = {pos: slot for slot, pos in enumerate(start.buffer)}
        self.restored: list = [None] * len(start.buffer)
        self.buffer_ready = not self.wanted
        self.position = WorkerPosition(*frontier, start.emitted, [])
        self.pending: list = []

    def make_batch(self, entries, final: bool = False) -> WorkerItem:
        position = self.position
        position.emitted = self.shuffle.emitted
        position.buffer = [e[0] for e in self.shuffle.entries]
        row = position.to_array(self.stream.width)
        if final:
            return WorkerItem(self.role, row, self.stats.snapshot(), final=True)
        return WorkerItem(self.role, row, self.stats.snapshot(), **self.stream.arrays(entries))

    def take(self, entry):
        """Add an entry to the batch being made; the batch once it is full, else None."""
        if entry is None:
            return None
        self.pending.append(entry)
        if len(self.pending) < self.cfg.batch_size:
            return None
        batch = self.make_batch(self.pending)
        self.pending = []
        return batch

    def fill_buffer(self) -> None:
        if not self.buffer_ready:
            self.shuffle.entries = [e for e in self.restored if e is not None]
            self.buffer_ready = True

    def batches(self):
        wanted_shards = {pos[0] for pos in self.wanted}
        for ordinal, shard in enumerate(self.shards):
            if ordinal < self.frontier[0] and ordinal not in wanted_shards:
                continue  # finished before the checkpoint, nothing of it buffered
            yield from self.shard_batches(ordinal, shard)
            if ordinal >= self.frontier[0]:
                self.position.next_shard, self.position.next_index = ordinal + 1, 0
        self.fill_buffer()
        for entry in self.shuffle.drain():
            batch = self.take(entry)
            if batch is not None:
                yield batch
        if self.pending and not self.cfg.train:
            yield self.make_batch(self.pending)
        yield self.make_batch([], final=True)

    def shard_batches(self, ordinal: int, shard: ShardInfo):
        last_wanted = max((i for o, i in self.wanted if o == ordinal), default=-1)
        cfg = self.cfg
        raws = read_shard(
            shard,
            self.stream.plan.member,
            self.stats,
            cfg.storage_options,
            cfg.read_retries,
            cfg.retry_backoff,
            cfg,
        )
        for index, raw in enumerate(raws):
            pos = (ordinal, index)
            if ordinal < self.frontier[0] and index > last_wanted:
                break  # re-read only for its buffered samples: they are all back
            if pos < self.frontier:
                self.restore(pos, raw)
                continue
            self.fill_buffer()
            batch = self.read_one(pos, raw, shard)
            if batch is not None:
                yield batch

    def restore(self, pos, raw) -> None:
        slot = self.wanted.get(pos)
        if slot is not None:
            item = self.stream.decode(raw, self.stats)
            if item is not None:
                self.restored[slot] = (pos, item, raw["__key__"])

    def read_one(self, pos, raw, shard: ShardInfo):
        ordinal, index = pos
        item = self.stream.decode(raw, self.stats)
        self.position.next_shard, self.position.next_index = ordinal, index + 1
        if self.position.next_index >= shard.samples:
            self.position.next_shard, self.position.next_index = ordinal + 1, 0
        if item is None:
            return None
        entry = (pos, item, raw["__key__"])
        return self.take(self.shuffle.add(entry) if self.size else entry)
