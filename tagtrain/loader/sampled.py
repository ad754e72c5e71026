"""The batches of one loader worker under sample-level partitioning (see `partition`):
its share of the rank's batches, each sample's needed members fetched by byte range
(`ranged`), one batch read ahead in a thread while the current one is decoded."""

from __future__ import annotations

import concurrent.futures
import functools
from collections import deque

import torch

from tagtrain.loader.cache import locate
from tagtrain.loader.index import SampleRef
from tagtrain.loader.positions import WorkerPosition
from tagtrain.loader.ranged import RangeFailure, RangeFetcher
from tagtrain.loader.stats import LoaderStats

SAMPLE_MODE = -2  # WorkerPosition.next_shard of a sample-level state; next_index = consumed
READ_AHEAD = 4  # batches fetched ahead of the one being decoded


def sample_state(consumed: int) -> WorkerPosition:
    return WorkerPosition(SAMPLE_MODE, consumed)


def consumed_samples(resume) -> int | None:
    """Samples of the epoch's global order consumed, from a resume table's rows; None
    when the rows are per-worker shard positions (or there are none)."""
    counts = [p.next_index for p in (resume or {}).values() if p.next_shard == SAMPLE_MODE]
    return max(counts) if counts else None


class SampleRoleStream:
    """Worker `worker`'s batches: rank batches worker, worker + W, ... of the epoch."""

    def __init__(self, stream, worker: int):
        self.stream, self.worker, self.cfg = stream, worker, stream.cfg
        self.specs = list(enumerate(stream.sample_batches))[worker :: self.cfg.slots]
        self.stats = LoaderStats()
        self.needed = ("json", stream.plan.member)
        self.touched: set[int] = set()
        self.fetched_bytes = 0
        urls = [s.url for s in stream.shards]
        cfg = self.cfg
        self.fetcher = RangeFetcher(
            urls,
            cfg.storage_options,
            cfg.read_retries,
            cfg.retry_backoff,
            functools.partial(locate, cfg=cfg),
        )

    def fetch(self, refs: list[SampleRef]) -> list:
        """[(ref, raw sample or RangeFailure)] for a batch's samples, shard by shard."""
        by_shard: dict[int, list[SampleRef]] = {}
        self.touched.update(ref.shard for ref in refs)
        for ref in refs:
            by_shard.setdefault(ref.shard, []).append(ref)
        out = {}
        for shard, group in by_shard.items():
            wanted = [(ref, ext, ref.member(ext)) for ref in group for ext in self.needed]
            members = [(f"{ref.key}.{ext}", *r) for ref, ext, r in wanted if r is not None]
            try:
                parts = iter(self.fetcher.fetch_members(shard, members))
            except RangeFailure as exc:
                out.update({ref.key: (shard, exc) for ref in group})
                continue
            for ref, ext, r in wanted:
                raw = out.setdefault(ref.key, {"__key__": ref.key})
                if r is not None:
                    raw[ext] = next(parts)
            # Counted per worker here, read by the main loop after the future is done.
            self.fetched_bytes += sum(size + 512 for _, _, size in members)
        return [(ref, out[ref.key]) for ref in refs]

    def batches(self):
        order = self.stream.order
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fetch")
        pending: deque = deque()
        specs = iter(self.specs)
        try:
            while True:
                while len(pending) < READ_AHEAD and (spec := next(specs, None)) is not None:
                    j, (start, stop) = spec
                    pending.append((j, pool.submit(self.fetch, order[start:stop])))
                if not pending:
                    break
                j, future = pending.popleft()
                yield self.make_batch(j, future.result())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            self.fetcher.close()
        yield self.final()

    def make_batch(self, j: int, fetched: list) -> dict:
        entries = []
        for ref, raw in fetched:
            if isinstance(raw, tuple):  # (shard, RangeFailure)
                self.stats.shard_failed(self.stream.shards[raw[0]].name, str(raw[1]))
                self.stats.reject(ref.key, "read_error", str(raw[1]), note=False)
                continue
            item = self.stream.decode(raw, self.stats)
            if item is not None:
                entries.append((None, item, ref.key))
        self.stats.shards_opened = len(self.touched)
        self.stats.bytes_read = self.fetched_bytes
        self.stats.bytes_used += sum(
            len(v)
            for _, raw in fetched
            if isinstance(raw, dict)
            for v in raw.values()
            if isinstance(v, bytes)
        )
        consumed = self.stream.consumed + (j + 1) * self.cfg.batch_size * self.cfg.world
        out = self.header(sample_state(consumed))
        # Bad samples leave a smaller batch; one sample cannot train a BatchNorm model, so a
        # training batch of 2+ left with one is dropped too (its position still advances).
        if not entries or (self.cfg.train and len(entries) == 1 < self.cfg.batch_size):
            return {**out, "empty": True}
        return {**out, **self.stream.tensors(entries)}

    def header(self, position: WorkerPosition) -> dict:
        row = position.to_row(self.stream.width)
        return {
            "worker": self.worker,
            "position": torch.tensor(row, dtype=torch.int64),
            "stats": self.stats.as_dict(),
        }

    def final(self) -> dict:
        return {**self.header(sample_state(self.stream.consumed)), "final": True}


def is_sample_state(table: torch.Tensor) -> bool:
    """Whether a checkpointed position table ([world, workers, width] or [workers, width])
    holds a sample-level state: one global count, valid for any world size and worker
    count (the trainer may then resume with other --workers or ranks)."""
    rows = table.reshape(-1, table.shape[-1])
    return bool(rows.numel()) and bool((rows[:, 0] == SAMPLE_MODE).any())


def resume_rows(table: torch.Tensor, rank: int) -> torch.Tensor:
    """The rows a rank resumes from: its own for shard-level states; for a sample-level
    state any rank's (they all hold the same global count), so world sizes may differ."""
    if is_sample_state(table):
        rows = table.reshape(-1, table.shape[-1])
        rows = rows[rows[:, 0] == SAMPLE_MODE]
        return rows[rows[:, 1].argmax()][None]  # the latest consumed count
    return table[rank]
