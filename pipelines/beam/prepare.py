"""The prepare job's pipeline: manifest -> decoded, validated, featurised tracks ->
deterministic WebDataset shards, each with its completion record (progress.py). The driver
plans which shards to build (prepare_plan.py) and writes index.parquet, rejects.parquet
and dataset.json from the records afterwards (prepare_finish.py).

Runner portability (FnApiRunner, PortableRunner, DaskRunner, Dataflow, Flink): the shard
DoFn has one output and a shard's rejects travel in its record (DaskRunner mishandles
multi-output ParDo and `with_exception_handling`), and shards are written by a DoFn after
the GroupByKey instead of a fileio sink. Shard assignment is a stable hash of the key, and a
shard's bytes depend only on its samples, so any runner and worker count gives the same
files (the TFDS BeamWriter recipe).

The shard of a track is known from its key before its audio is read, so the job groups the
manifest rows by shard and then decodes, featurises and writes each shard in one step: only
the small rows cross the shuffle, never the ~0.5 MB samples (which cost 11-30% of the CPU
when they did; see bench/RESULTS.md).
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.metrics import Metrics

from manifests.schema import SPLITS
from pipelines.beam import beam_io, progress, track
from pipelines.beam.track import Reject, Sample, TrackConfig, process_row
from pipelines.core import storage
from pipelines.core.failures import AudioRejected
from pipelines.core.shards import (
    member_layout,
    shard_index,
    shard_name,
    write_tar_hashed,
)
from pipelines.core.versions import CODE_VERSION, library_versions

# Remote audio files fetched ahead of the decoder per worker (17.7): enough to hide an
# object store's latency behind a ~0.1 s decode, few enough to bound memory.
FETCH_AHEAD = 4


@dataclass(frozen=True)
class PrepareConfig:
    manifest: str
    output: str
    audio_root: str | None = None
    track: TrackConfig = TrackConfig()
    shard_size_mb: float = 256.0
    vocabulary: tuple[str, ...] = ()
    manifest_sha256: str = ""
    split_variant: str = ""  # the manifest's (MTT: clean or full), recorded in the card
    num_inputs: int = 0
    # Shards per split, fixed before the job from the manifest (see `plan_shards`), so
    # shard assignment needs no data-dependent side input.
    num_shards: tuple[tuple[str, int], ...] = ()
    progress_path: str | None = None  # local runs: workers append a byte per track
    filesystem_args: tuple[str, ...] = ()  # Beam flags the workers' FileSystems need
    # Code and library versions of the driver, (name, version) pairs: part of the identity.
    versions: tuple[tuple[str, str], ...] = ()

    def identity(self) -> dict:
        """What must match for a re-run into an existing output to be allowed."""
        return {**self.shard_identity(), "manifest_sha256": self.manifest_sha256}

    def shard_identity(self) -> dict:
        """What every shard's bytes depend on besides its own manifest rows."""
        return {
            "track": self.track.to_dict(),
            "shard_size_mb": self.shard_size_mb,
            "vocabulary": list(self.vocabulary),
            "code_version": CODE_VERSION,
            "versions": dict(self.versions),
        }

    @property
    def identity_sha(self) -> str:
        text = json.dumps(self.shard_identity(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def job_versions() -> tuple[tuple[str, str], ...]:
    return tuple(sorted(library_versions("apache_beam", "essentia").items()))


def set_worker_threads() -> None:
    # One thread per worker (a process, or a thread of a small job): parallelism comes
    # from the workers, and library thread pools on a busy box cost several times more
    # CPU. Called before a shard is built, not in setup: a worker that only reuses
    # finished shards never imports torch.
    import torch

    torch.set_num_threads(1)


def read_manifest_rows(path: str, filesystem_args: tuple[str, ...] = ()):
    beam_io.configure(filesystem_args)
    table = beam_io.read_parquet(path)
    yield from table.to_pylist()


class ReadManifest(beam.PTransform):
    """Manifest Parquet -> rows (dicts)."""

    def __init__(self, path: str, filesystem_args: tuple[str, ...] = ()):
        super().__init__()
        self.path = path
        self.filesystem_args = filesystem_args

    def expand(self, pbegin):
        return (
            pbegin
            | "ManifestPath" >> beam.Create([self.path])
            | "ReadRows" >> beam.FlatMap(read_manifest_rows, self.filesystem_args)
        )


class TrackStageFn(beam.DoFn):
    """Base of the per-shard DoFns of every job: the job's filesystem flags, a progress
    tick per track, and counters of outcomes."""

    def __init__(self, namespace: str, done: str, filesystem_args, progress_path):
        self.namespace = namespace
        self.filesystem_args = filesystem_args
        self.progress_path = progress_path
        self.done = Metrics.counter(namespace, done)
        self.audio_ms = Metrics.counter(namespace, "audio_ms")
        self.rejected = Metrics.counter(namespace, "rejected")

    def setup(self):
        beam_io.configure(self.filesystem_args)
        self._progress = None
        if self.progress_path:
            self._progress = os.open(self.progress_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def teardown(self):
        if getattr(self, "_progress", None) is not None:
            os.close(self._progress)

    def tick(self, n: int = 1) -> None:
        if self._progress is not None:
            os.write(self._progress, b"." * n)

    def count(self, result: Sample | Reject) -> None:
        self.tick()
        if isinstance(result, Sample):
            self.done.inc()
            self.audio_ms.inc(int(result.seconds * 1000))
        else:
            self.rejected.inc()
            Metrics.counter(self.namespace, f"rejected_{result.reason}").inc()


class GroupRowsByShard(beam.PTransform):
    """Manifest rows -> ((split code, shard index), rows): the shard of every track; only
    the shards in `build` ((split, index) pairs) when given."""

    def __init__(self, num_shards: dict[str, int], build=None):
        super().__init__()
        self.num_shards = num_shards
        self.build = None if build is None else frozenset(build)

    def expand(self, rows):
        counts, build = self.num_shards, self.build

        def assign(row):
            split = row["split"]
            return (split_code(split), shard_index(row["key"], counts[split])), row

        def wanted(shard_row):
            (code, index), _ = shard_row
            return build is None or (SPLITS[code], index) in build

        return (
            rows
            | "AssignShard" >> beam.Map(assign)
            | "OnlyShardsToBuild" >> beam.Filter(wanted)
            | "GroupShards" >> beam.GroupByKey()
        )


class PrepareShardFn(TrackStageFn):
    """((split code, shard index), rows) -> the shard's tracks decoded and featurised, in
    key order, its tar written (none when every track is rejected), then its completion
    record, which is all it leaves: the driver writes the card from the records
    (prepare_finish.py). The driver gives it only shards without a matching record; it
    checks again, so a bundle the runner retries after its shard finished is not redone.
    Yields the shard's key once it is done."""

    def __init__(self, cfg: PrepareConfig):
        super().__init__("prepare", "decoded", cfg.filesystem_args, cfg.progress_path)
        self.cfg = cfg
        self.bytes_written = Metrics.counter("prepare", "bytes_written")
        self.shards_written = Metrics.counter("prepare", "shards_written")
        self.shards_reused = Metrics.counter("prepare", "shards_reused")
        self.tracks_reused = Metrics.counter("prepare", "tracks_reused")

    def read_track(self, row) -> bytes | Reject:
        """The file's bytes, or a Reject for a permanent problem (missing, not a regular
        file, too large, outside the audio root, changed: pipelines.core.failures). A
        transient failure is retried (for minutes on remote files, whose server may be
        restarting) and then raised: never a reject."""

        def attempt():
            return track.read_track(row, self.cfg.audio_root, self.cfg.track).data

        try:
            if storage.is_remote(beam_io.resolve(self.cfg.audio_root, row["audio_path"])):
                return beam_io.with_retries(attempt)
            return attempt()
        except AudioRejected as exc:
            return Reject(
                row["key"], row["track_id"], row["split"], row["audio_path"], exc.stage,
                exc.reason, exc.message,
            )  # fmt: skip

    def fetched(self, rows):
        """(row, what read_track returned), in order. Remote files are fetched up to
        FETCH_AHEAD tracks ahead on threads while the current one decodes (bounded
        memory: at most FETCH_AHEAD + 1 files are held)."""
        remote = [
            storage.is_remote(beam_io.resolve(self.cfg.audio_root, r["audio_path"])) for r in rows
        ]
        if not any(remote):
            for row in rows:
                yield row, self.read_track(row)
            return
        with ThreadPoolExecutor(FETCH_AHEAD) as pool:
            pending = collections.deque()
            upcoming = iter(rows)
            for row in itertools.islice(upcoming, FETCH_AHEAD):
                pending.append((row, pool.submit(self.read_track, row)))
            while pending:
                row, future = pending.popleft()
                following = next(upcoming, None)
                if following is not None:
                    pending.append((following, pool.submit(self.read_track, following)))
                yield row, future.result()

    def process(self, element):
        (code, index), rows = element
        split = SPLITS[code]
        rows = sorted(rows, key=lambda r: r["key"])
        num_shards = dict(self.cfg.num_shards)[split]
        fingerprint = progress.shard_fingerprint(self.cfg.identity_sha, split, num_shards, rows)
        record = progress.valid_record(self.cfg.output, split, index, fingerprint)
        if record is None:
            self.build_shard(split, index, rows, fingerprint)
        else:
            self.shards_reused.inc()
            self.tracks_reused.inc(len(rows))
            self.tick(len(rows))
        yield split, index

    def build_shard(self, split: str, index: int, rows, fingerprint: str) -> dict:
        """Decode the shard's tracks (keeping those an earlier record of this shard holds
        unchanged: an update), write its tar, then its completion record."""
        set_worker_threads()
        reusable = progress.ReusableTracks(self.cfg.output, split, index, self.cfg.identity_sha)
        if reusable.unreadable_sums:
            Metrics.counter("prepare", "sums_unreadable").inc(reusable.unreadable_sums)
        results = {}
        for row in rows:
            kept = reusable.take(row)
            if kept is not None:
                results[row["key"]] = kept
                self.tracks_reused.inc()
                self.tick()
        todo = [row for row in rows if row["key"] not in results]
        for row, data in self.fetched(todo):
            result = data
            if not isinstance(data, Reject):
                result = process_row(row, data, self.cfg.track, list(self.cfg.vocabulary))
            self.count(result)
            results[row["key"]] = result
        samples = [results[r["key"]] for r in rows if isinstance(results[r["key"]], Sample)]
        rejects = [results[r["key"]] for r in rows if isinstance(results[r["key"]], Reject)]
        shard, index_rows = None, []
        if samples:
            index_rows, shard = write_shard(self.cfg.output, split, index, samples)
            self.shards_written.inc()
            self.bytes_written.inc(shard["bytes"])
        train = split == "train"
        # Per-track mel sums, for a later update: a sidecar the record describes (written
        # first: the record commits the shard).
        sums_file = progress.write_sums(self.cfg.output, split, index, samples) if train else None
        record = {
            "fingerprint": fingerprint,
            "identity": self.cfg.identity_sha,
            "shard": shard,
            "index": index_rows,
            "rejects": [r.to_row() for r in rejects],
            "mel_sums": shard_mel_sums(samples) if train else None,
            # Per track, for a later update: its manifest row's hash.
            "rows": {r["key"]: progress.row_sha(r) for r in rows},
            "sums_file": sums_file,
        }
        progress.write_record(self.cfg.output, split, index, record)
        _kill_after_records(self.cfg.output)
        return record


# Test hook: SIGKILL the job's process group (driver and workers) once this many
# completion records exist (a simulated crash halfway, at a known point rather than when
# a poller next looks).
KILL_AFTER_RECORDS_ENV = "PREPARE_KILL_AFTER_RECORDS"


def _kill_after_records(output: str) -> None:
    wanted = int(os.environ.get(KILL_AFTER_RECORDS_ENV, 0) or 0)
    if (
        wanted
        and len(beam_io.list_names(beam_io.join(output, progress.PROGRESS_DIR), "*.json")) >= wanted
    ):
        import signal

        os.killpg(os.getpgrp(), signal.SIGKILL)


def shard_mel_sums(samples: list[Sample]) -> list | None:
    """(per-band sum, per-band sum of squares, frames) of a shard's samples in key order,
    as plain lists (exact in JSON), or None without samples."""
    if not samples:
        return None
    total = sum(s.mel_sum for s in samples)
    total_sq = sum(s.mel_sumsq for s in samples)
    return [total.tolist(), total_sq.tolist(), int(sum(s.mel_frames for s in samples))]


def split_code(split: str) -> int:
    """GroupByKey keys are built from ints: Dask bags partition groups by Python's
    hash(), which for strings differs between worker processes (PYTHONHASHSEED), so a
    string key could be grouped twice on a Dask cluster."""
    return SPLITS.index(split)


def write_shard(output: str, split: str, index: int, samples) -> tuple[list[dict], dict]:
    """One shard of `split` written under `output`; returns its index rows (with each
    member's byte offset) and {"name", "sha256", "bytes"} of the tar."""
    samples = sorted(samples, key=lambda s: s.key)
    name = shard_name(split, index)
    pairs = [(s.key, s.members) for s in samples]
    written = beam_io.write_atomic_with(
        beam_io.join(output, name), lambda f: write_tar_hashed(f, pairs)
    )
    layout = member_layout(pairs)
    rows = [
        {
            "key": s.key,
            "split": split,
            "shard": name,
            "tags": s.tags,
            "duration": round(s.seconds, 6),
            "bytes": s.nbytes,
            "members": layout[s.key],
        }
        for s in samples
    ]
    return rows, {"name": name, "sha256": written[0], "bytes": written[1]}


class Prepare(beam.PTransform):
    """The job's pipeline: the manifest rows of the shards to build (`build`, planned by
    the driver: prepare_plan.py; None: every shard), grouped by shard, each shard built
    and recorded. The card is the driver's, after the pipeline (prepare_finish.py)."""

    def __init__(self, cfg: PrepareConfig, build: frozenset[tuple[str, int]] | None = None):
        super().__init__()
        self.cfg = cfg
        self.build = build

    def expand(self, pbegin):
        cfg = self.cfg
        return (
            pbegin
            | "ReadManifest" >> ReadManifest(cfg.manifest, cfg.filesystem_args)
            | "GroupRowsByShard" >> GroupRowsByShard(dict(cfg.num_shards), self.build)
            | "PrepareShards" >> beam.ParDo(PrepareShardFn(cfg))
        )
