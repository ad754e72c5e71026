"""The batches of one loader worker under sample-level partitioning (see `partition`):
its share of the rank's batches, each sample's needed members fetched by byte range
(`ranged`), the next batches (remote: the next window of batches) read ahead in a thread
while the current ones are decoded."""

from __future__ import annotations

import concurrent.futures
import itertools
from collections import deque

import numpy as np
import torch

from tagtrain.loader.cache import ShardCache, open_cached
from tagtrain.loader.index import SampleRef, SplitIndex
from tagtrain.loader.openers import LOCAL_SCHEMES, scheme_of
from tagtrain.loader.positions import WorkerPosition
from tagtrain.loader.rangecache import RangeCache
from tagtrain.loader.ranged import IndexMismatch, RangeFailure, RangeFetcher, ShortRead
from tagtrain.loader.stats import LoaderStats
from tagtrain.loader.worker_item import WorkerItem

SAMPLE_MODE = -2  # WorkerPosition.next_shard of a sample-level state; next_index = consumed
# Batches fetched ahead of the one being decoded: from local files READ_AHEAD, one at a
# time. From remote ones, a *window* of consecutive batches of this worker (as many as fit
# WINDOW_BYTES, within one block of the epoch order) goes out as one request set, so
# neighbouring samples of a shard (a mel-only shard read in order) become one request
# (`ranged.merge_ranges`); the next window is fetched while this one is decoded (at
# most two windows held: 2 x WINDOW_BYTES per worker).
READ_AHEAD = 4
# In a raw sample: why its index row does not fit its shard (the sample is skipped).
BAD_ENTRY = "__bad_entry__"
WINDOW_BYTES = 64 << 20
# With a cache, a shard of which the model reads at least this fraction of the member
# bytes is downloaded whole; below it only the member ranges read are kept.
WHOLE_SHARD_FRACTION = 0.8


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
        self.fetcher = self._fetcher()

    def _fetcher(self) -> RangeFetcher:
        """With a cache: shards of which the model needs most bytes are cached whole
        (`cache`), the others by the member ranges read (`rangecache`)."""
        cfg, shards = self.cfg, self.stream.shards
        urls = [s.url for s in shards]
        sha256s = {s.url: s.sha256 for s in shards}
        whole, range_cache = set(), None
        if cfg.cache_dir:
            cache = ShardCache(cfg.cache_dir, cfg.cache_limit, cfg.read_retries, cfg.retry_backoff)
            range_cache = RangeCache(cache, sha256s)
            fractions = needed_fractions(self.stream.refs, self.needed)
            whole = {url for url, f in zip(urls, fractions) if f >= WHOLE_SHARD_FRACTION}

        self.whole = whole  # URLs read from whole local copies (once downloaded)

        def cached(url: str):
            return open_cached(url, cfg, sha256s[url]) if url in whole else None

        return RangeFetcher(
            urls, cfg.storage_options, cfg.read_retries, cfg.retry_backoff, cached, range_cache,
            cfg.s3_client,
        )  # fmt: skip

    def windows(self) -> tuple[list[list[tuple[int, tuple[int, int]]]], int]:
        """(this worker's batch specs grouped into fetch windows, windows in flight)."""
        # Shards cached whole are read from local copies (the first touch downloads one):
        # no range requests to group, so they are read ahead batch by batch, as local ones.
        if all(
            scheme_of(s.url) in LOCAL_SCHEMES or s.url in self.whole for s in self.stream.shards
        ):
            return [[spec] for spec in self.specs], READ_AHEAD
        index = self.stream.refs
        per_sample = int(index.read_bytes(self.needed).sum()) / max(1, len(index))
        per_window = max(1, int(WINDOW_BYTES // max(1.0, per_sample * self.cfg.batch_size)))
        # Windows keep within one permuted block of the order (`partition.epoch_order`),
        # where this worker's samples are most often neighbours in their shard.
        block = self.cfg.shuffle_buffer if self.cfg.shuffle_buffer > 1 else len(self.stream.order)
        block = max(1, block)
        windows: list[list] = []
        for spec in self.specs:
            j, (start, _) = spec
            current = windows[-1] if windows else None
            if (
                current is None
                or len(current) >= per_window
                or start // block != current[0][1][0] // block
            ):
                windows.append([spec])
            else:
                current.append(spec)
        return windows, 1

    def fetch(self, refs: list[SampleRef]) -> tuple[list, int]:
        """([(ref, outcome)], member bytes used) for a batch's (or window's) samples: every
        shard's members in one concurrent request set (`RangeFetcher.fetch_members_many`),
        then decoded here, in the fetching thread, right after each local file is checked
        to still hold the sample (`mapped`: its members are views of the file). An
        outcome is ("item", (x, y)), ("rejected", reason, detail) or ("failed", shard,
        why); the caller counts them in order."""
        by_shard: dict[int, list[SampleRef]] = {}
        self.touched.update(ref.shard for ref in refs)
        for ref in refs:
            by_shard.setdefault(ref.shard, []).append(ref)
        wanted = {
            shard: [(ref, ext, ref.member(ext)) for ref in group for ext in self.needed]
            for shard, group in by_shard.items()
        }
        jobs = {
            shard: [(f"{ref.key}.{ext}", *r) for ref, ext, r in items if r is not None]
            for shard, items in wanted.items()
        }
        fetched = self.fetcher.fetch_members_many(jobs)
        raws, failures = {}, {}
        for shard, items in wanted.items():
            parts = fetched[shard]
            if isinstance(parts, RangeFailure):
                failures.update(dict.fromkeys((ref.key for ref in by_shard[shard]), parts))
                continue
            parts = iter(parts)
            for ref, ext, r in items:
                raw = raws.setdefault(ref.key, {"__key__": ref.key})
                if r is not None:
                    part = next(parts)
                    if isinstance(part, IndexMismatch):  # this sample's index row only
                        raw[BAD_ENTRY] = f"IndexMismatch: {part}"
                    else:
                        raw[ext] = part
        outcomes, used = [], 0
        for ref in refs:
            failure = failures.get(ref.key) or self.lost(ref)
            raw = raws.get(ref.key, {})
            if failure is not None:
                outcomes.append((ref, ("failed", ref.shard, str(failure))))
            elif BAD_ENTRY in raw:
                outcomes.append((ref, ("rejected", "read_error", raw[BAD_ENTRY])))
            else:
                used += sum(len(v) for k, v in raw.items() if k != "__key__")
                outcomes.append((ref, self.stream.try_decode(raw)))
        return outcomes, used

    def lost(self, ref: SampleRef) -> RangeFailure | None:
        """A RangeFailure when `ref`'s shard was cut short since its members were read
        (the shard is then given up), else None."""
        end = max((offset + size for ext, offset, size in ref.members if ext in self.needed),
                  default=0)  # fmt: skip
        if self.fetcher.holds(ref.shard, end):
            return None
        return self.fetcher.give_up(ref.shard, ShortRead(f"the file now ends before byte {end}"))

    def batches(self):
        order = self.stream.order
        windows, ahead = self.windows()
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fetch")
        pending: deque = deque()
        upcoming = iter(windows)

        def submit() -> None:
            while len(pending) < ahead and (window := next(upcoming, None)) is not None:
                index = self.stream.refs
                refs = [index.ref(r) for _, (a, b) in window for r in order[a:b].tolist()]
                pending.append((window, pool.submit(self.fetch, refs)))

        try:
            submit()
            while pending:
                window, future = pending.popleft()
                submit()  # the next window downloads while this one is decoded
                outcomes, used = future.result()
                self.stats.bytes_used += used
                outcomes = iter(outcomes)
                for j, (start, stop) in window:
                    yield self.make_batch(j, list(itertools.islice(outcomes, stop - start)))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            self.fetcher.close()
        yield self.final()

    def make_batch(self, j: int, outcomes: list) -> WorkerItem:
        entries = []
        for ref, outcome in outcomes:
            if outcome[0] == "item":
                self.stats.samples += 1
                entries.append((None, outcome[1], ref.key))
            elif outcome[0] == "failed":
                self.stats.shard_failed(self.stream.shards[outcome[1]].name, outcome[2])
                self.stats.reject(ref.key, "read_error", outcome[2], note=False)
            else:
                self.stats.reject(ref.key, outcome[1], outcome[2])
        self.stats.shards_opened = len(self.touched)
        self.stats.bytes_read = self.fetcher.bytes_read
        self.stats.range_requests = self.fetcher.requests
        self.stats.obstore_requests = self.fetcher.obstore_requests
        consumed = self.stream.consumed + (j + 1) * self.cfg.batch_size * self.cfg.world
        # Bad samples leave a smaller batch; one sample cannot train a BatchNorm model, so a
        # training batch of 2+ left with one is dropped too (its position still advances).
        if not entries or (self.cfg.train and len(entries) == 1 < self.cfg.batch_size):
            return self.item(sample_state(consumed))  # no batch
        return self.item(sample_state(consumed), **self.stream.arrays(entries))

    def item(self, position: WorkerPosition, **batch) -> WorkerItem:
        row = position.to_array(self.stream.width)
        return WorkerItem(self.worker, row, self.stats.snapshot(), **batch)

    def final(self) -> WorkerItem:
        return self.item(sample_state(self.stream.consumed), final=True)


def needed_fractions(index: SplitIndex, needed: tuple[str, ...]):
    """Per shard, the fraction of its member bytes (headers included) that `needed` reads."""
    used = np.bincount(index.shard, weights=index.read_bytes(needed), minlength=index.shards)
    total = index.shard_bytes
    return np.where(total > 0, used / np.maximum(total, 1), 1.0)


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
