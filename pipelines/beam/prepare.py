"""The prepare job: manifest -> decoded, validated, featurised tracks -> deterministic
WebDataset shards + index.parquet + rejects.parquet + dataset.json.

Runner portability (FnApiRunner, PortableRunner, DaskRunner, Dataflow, Flink): rejects
travel in the single main output as tagged tuples (DaskRunner mishandles multi-output
ParDo and `with_exception_handling`), and shards are written by a DoFn after the
GroupByKey instead of a fileio sink. Shard assignment is a stable hash of the key, and a
shard's bytes depend only on its samples, so any runner and worker count gives the same
files (the TFDS BeamWriter recipe).

The shard of a track is known from its key before its audio is read, so the job groups the
manifest rows by shard and then decodes, featurises and writes each shard in one step: only
the small rows cross the shuffle, never the ~0.5 MB samples (which cost 11-30% of the CPU
when they did; see bench/RESULTS.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics

from manifests.schema import SPLITS
from pipelines.beam import beam_io
from pipelines.beam.track import Reject, Sample, TrackConfig, process_row
from pipelines.core.card import CARD_NAME, FORMAT, INDEX_NAME, REJECTS_NAME, card_checksum
from pipelines.core.shards import num_shards_for, shard_index, shard_name, write_tar
from pipelines.core.versions import CODE_VERSION, library_versions

INDEX, REJECTS, STATS = "index", "rejects", "stats"  # what PrepareShardFn yields

INDEX_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("split", pa.string()),
        ("shard", pa.string()),
        ("tags", pa.list_(pa.string())),
        ("duration", pa.float64()),
        ("bytes", pa.int64()),
    ]
)
REJECT_SCHEMA = pa.schema(
    [(f.name, pa.string()) for f in dataclasses.fields(Reject)]  # all text columns
)


@dataclass(frozen=True)
class PrepareConfig:
    manifest: str
    output: str
    audio_root: str | None = None
    track: TrackConfig = TrackConfig()
    shard_size_mb: float = 256.0
    vocabulary: tuple[str, ...] = ()
    manifest_sha256: str = ""
    num_inputs: int = 0
    # Shards per split, fixed before the job from the manifest (see `plan_shards`), so
    # shard assignment needs no data-dependent side input.
    num_shards: tuple[tuple[str, int], ...] = ()
    progress_path: str | None = None  # local runs: workers append a byte per track
    filesystem_args: tuple[str, ...] = ()  # Beam flags the workers' FileSystems need

    def identity(self) -> dict:
        """What must match for a re-run into an existing output to be allowed."""
        return {
            "track": self.track.to_dict(),
            "shard_size_mb": self.shard_size_mb,
            "vocabulary": list(self.vocabulary),
            "manifest_sha256": self.manifest_sha256,
        }


def set_worker_threads() -> None:
    # One thread per worker process: parallelism comes from processes, and library
    # thread pools on a busy box cost several times more CPU.
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
    """Base of the per-track DoFns of every job: one thread per worker, the job's
    filesystem flags, a progress tick per track, and counters of outcomes."""

    def __init__(self, namespace: str, done: str, filesystem_args, progress_path):
        self.namespace = namespace
        self.filesystem_args = filesystem_args
        self.progress_path = progress_path
        self.done = Metrics.counter(namespace, done)
        self.audio_ms = Metrics.counter(namespace, "audio_ms")
        self.rejected = Metrics.counter(namespace, "rejected")

    def setup(self):
        set_worker_threads()
        beam_io.configure(self.filesystem_args)
        self._progress = None
        if self.progress_path:
            self._progress = os.open(self.progress_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def teardown(self):
        if getattr(self, "_progress", None) is not None:
            os.close(self._progress)

    def count(self, result: Sample | Reject) -> None:
        if self._progress is not None:
            os.write(self._progress, b".")
        if isinstance(result, Sample):
            self.done.inc()
            self.audio_ms.inc(int(result.seconds * 1000))
        else:
            self.rejected.inc()
            Metrics.counter(self.namespace, f"rejected_{result.reason}").inc()


class GroupRowsByShard(beam.PTransform):
    """Manifest rows -> ((split code, shard index), rows): the shard of every track."""

    def __init__(self, num_shards: dict[str, int]):
        super().__init__()
        self.num_shards = num_shards

    def expand(self, rows):
        counts = self.num_shards

        def assign(row):
            split = row["split"]
            return (split_code(split), shard_index(row["key"], counts[split])), row

        return rows | "AssignShard" >> beam.Map(assign) | "GroupShards" >> beam.GroupByKey()


class PrepareShardFn(TrackStageFn):
    """((split code, shard index), rows) -> the shard's tracks decoded and featurised, in
    key order, and its tar written atomically (none when every track is rejected). Yields
    tagged tuples in the one main output: (INDEX, index row), (REJECTS, reject row) and,
    for train samples, (STATS, ((split code, bucket), per-band mel sums))."""

    def __init__(self, cfg: PrepareConfig):
        super().__init__("prepare", "decoded", cfg.filesystem_args, cfg.progress_path)
        self.cfg = cfg
        self.bytes_written = Metrics.counter("prepare", "bytes_written")
        self.shards_written = Metrics.counter("prepare", "shards_written")

    def prepare_track(self, row) -> Sample | Reject:
        path = beam_io.resolve(self.cfg.audio_root, row["audio_path"])
        try:
            data = beam_io.read_bytes(path)
        except OSError as exc:
            return Reject(
                row["key"], row["track_id"], row["split"], row["audio_path"], "read",
                "unreadable", str(exc).splitlines()[0][:300],
            )  # fmt: skip
        return process_row(row, data, self.cfg.track, list(self.cfg.vocabulary))

    def process(self, element):
        (code, index), rows = element
        samples = []
        for row in sorted(rows, key=lambda r: r["key"]):
            result = self.prepare_track(row)
            self.count(result)
            if isinstance(result, Sample):
                samples.append(result)
            else:
                yield REJECTS, result.to_row()
        if not samples:
            return
        index_rows = write_shard(self.cfg.output, SPLITS[code], index, samples)
        self.shards_written.inc()
        self.bytes_written.inc(sum(r["bytes"] for r in index_rows))
        for row in index_rows:
            yield INDEX, row
        if SPLITS[code] == "train":
            for s in samples:
                bucket = shard_index(s.key, STAT_BUCKETS)
                yield STATS, ((code, bucket), (s.mel_sum, s.mel_sumsq, s.mel_frames))


def _add(a: tuple, b: tuple) -> tuple:
    return tuple(x + y for x, y in zip(a, b))


class SumPerKey(beam.PTransform):
    """((key, bucket), tuple of numbers/arrays) -> (key, elementwise sum), in two
    GroupByKey rounds (by bucket, then by key) so no group holds every element.

    A GroupByKey instead of a CombineFn: Beam's DaskRunner gets combiner results wrong
    (inflated sums) while its GroupByKey is exact, and this runs the same everywhere."""

    def expand(self, pcoll):
        def total(kv):
            key, values = kv
            values = iter(values)
            acc = next(values)
            for v in values:
                acc = _add(acc, v)
            return key, acc

        return (
            pcoll
            | "GroupBuckets" >> beam.GroupByKey()
            | "SumBuckets" >> beam.Map(lambda kv: total(kv))
            | "DropBucket" >> beam.Map(lambda kv: (kv[0][0], kv[1]))
            | "GroupKeys" >> beam.GroupByKey()
            | "SumKeys" >> beam.Map(total)
        )


STAT_BUCKETS = 64


def split_code(split: str) -> int:
    """GroupByKey keys are built from ints: Dask bags partition groups by Python's
    hash(), which for strings differs between worker processes (PYTHONHASHSEED), so a
    string key could be grouped twice on a Dask cluster."""
    return SPLITS.index(split)


def mel_stats_from_sums(sums: tuple) -> dict:
    """Per-mel-band mean/std over every frame, from (sum, sum of squares, frames)."""
    total, total_sq, n = sums
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))
    return {
        "mean": [round(float(x), 6) for x in mean],
        "std": [round(float(x), 6) for x in std],
    }


class MelStats(beam.PTransform):
    """((split code, bucket), per-band sums) of the train samples -> one dict of per-band
    mean/std (no element if there are none)."""

    def expand(self, band_sums):
        return (
            band_sums
            | "Sum" >> SumPerKey()
            | "Stats" >> beam.Map(lambda kv: mel_stats_from_sums(kv[1]))
        )


def write_shard(output: str, split: str, index: int, samples) -> list[dict]:
    """One shard of `split` written atomically under `output`; returns its index rows."""
    samples = sorted(samples, key=lambda s: s.key)
    name = shard_name(split, index)
    beam_io.write_atomic_with(
        beam_io.join(output, name), lambda f: write_tar(f, [(s.key, s.members) for s in samples])
    )
    return [
        {
            "key": s.key,
            "split": split,
            "shard": name,
            "tags": s.tags,
            "duration": round(s.seconds, 6),
            "bytes": s.nbytes,
        }
        for s in samples
    ]


def bytes_per_second(track: TrackConfig) -> float:
    f = track.features
    frames = f.sample_rate / f.hop
    per_feature = {
        "mel": 2 * f.n_mels * frames,
        "harm": 2 * f.harmonics * f.harmonic_bands * frames,
        "pcm": 2 * f.sample_rate,
    }
    return sum(per_feature[name] for name in track.stored)


def plan_shards(table: pa.Table, track: TrackConfig, shard_size_mb: float) -> dict[str, int]:
    """Shards per split from the manifest alone: rows x expected seconds (the manifest's
    durations where known, else 30 s, capped by --max-seconds) x feature bytes/second.
    Decided up front so the layout depends only on the manifest and the config."""
    per_second = bytes_per_second(track)
    expected: dict[str, float] = {}
    rows: dict[str, int] = {}
    for split, duration in zip(
        table.column("split").to_pylist(), table.column("duration").to_pylist()
    ):
        seconds = duration if duration and duration > 0 else 30.0
        if track.max_seconds:
            seconds = min(seconds, track.max_seconds)
        expected[split] = expected.get(split, 0.0) + seconds * per_second + 4096
        rows[split] = rows.get(split, 0) + 1
    target = shard_size_mb * 1024 * 1024
    return {split: num_shards_for(int(expected[split]), int(target), rows[split]) for split in rows}


def summarize_splits(index_rows) -> dict:
    """The card's `splits`: per split and shard, samples, seconds and bytes."""
    splits: dict[str, dict] = {}
    for row in index_rows:
        split = splits.setdefault(row["split"], {"samples": 0, "seconds": 0.0, "shards": {}})
        shard = split["shards"].setdefault(
            row["shard"], {"name": row["shard"], "samples": 0, "seconds": 0.0, "bytes": 0}
        )
        for d in (split, shard):
            d["samples"] += 1
            d["seconds"] += row["duration"]
        shard["bytes"] += row["bytes"]
    for split in splits.values():
        split["seconds"] = round(split["seconds"], 3)
        split["shards"] = [
            {**s, "seconds": round(s["seconds"], 3)} for _, s in sorted(split["shards"].items())
        ]
    return dict(sorted(splits.items()))


def summarize_counts(num_inputs: int, index_rows, reject_rows) -> dict:
    """The card's `counts`: inputs = samples + rejects, and rejects by reason."""
    reasons: dict[str, int] = {}
    for r in reject_rows:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    return {
        "inputs": num_inputs,
        "samples": len(index_rows),
        "rejects": len(reject_rows),
        "rejects_by_reason": dict(sorted(reasons.items())),
    }


def build_card(cfg: PrepareConfig, index_rows, reject_rows, mel_stats) -> dict:
    return {
        "format": FORMAT,
        "features": {**cfg.track.features.to_dict(), "stored": list(cfg.track.stored)},
        "vocabulary": list(cfg.vocabulary),
        "splits": summarize_splits(index_rows),
        "mel_stats": mel_stats,
        "decoder": {
            "requested": cfg.track.decoder,
            "versions": library_versions("apache_beam", "essentia"),
        },
        "manifest": {"path": cfg.manifest, "sha256": cfg.manifest_sha256},
        "counts": summarize_counts(cfg.num_inputs, index_rows, reject_rows),
        "job": {
            "min_seconds": cfg.track.min_seconds,
            "max_seconds": cfg.track.max_seconds,
            "shard_size_mb": cfg.shard_size_mb,
            "planned_shards": dict(cfg.num_shards),
        },
        "identity": cfg.identity(),
        "code_version": CODE_VERSION,
        "deformation": None,
    }


def write_dataset_files(element, cfg: PrepareConfig):
    """Runs once, after every shard is written: index, rejects, then the card last."""
    beam_io.configure(cfg.filesystem_args)
    _, tagged = element
    index_rows = sorted((v for t, v in tagged if t == INDEX), key=lambda r: (r["split"], r["key"]))
    reject_rows = sorted((v for t, v in tagged if t == REJECTS), key=lambda r: r["key"])
    mel_stats = next((v for t, v in tagged if t == STATS), None)
    card = build_card(cfg, index_rows, reject_rows, mel_stats)
    yield write_dataset_dir(cfg.output, index_rows, reject_rows, card)


def write_dataset_dir(output: str, index_rows, reject_rows, card: dict) -> str:
    """index.parquet, rejects.parquet, then dataset.json last; returns the card checksum."""
    beam_io.write_parquet(
        beam_io.join(output, INDEX_NAME), pa.Table.from_pylist(index_rows, INDEX_SCHEMA)
    )
    beam_io.write_parquet(
        beam_io.join(output, REJECTS_NAME), pa.Table.from_pylist(reject_rows, REJECT_SCHEMA)
    )
    text = json.dumps(card, indent=2, sort_keys=True) + "\n"
    beam_io.write_atomic(beam_io.join(output, CARD_NAME), text.encode())
    return card_checksum(card)


class WriteDatasetFiles(beam.PTransform):
    """(tagged index and reject rows, mel stats) -> index.parquet, rejects.parquet,
    dataset.json.

    One GroupByKey over the tagged union instead of side inputs: Beam's DaskRunner
    recomputes the whole upstream graph for every side input (and duplicated its output
    when it did), while a GroupByKey is one pass on every runner."""

    def __init__(self, cfg: PrepareConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, inputs):
        rows, mel_stats = inputs  # rows: (INDEX, index row) and (REJECTS, reject row)
        return (
            (rows, mel_stats | "TagStats" >> beam.Map(lambda m: (STATS, m)))
            | "Union" >> beam.Flatten()
            | "OneGroup" >> beam.Map(lambda tv: (0, tv))
            | "Gather" >> beam.GroupByKey()
            | "WriteCard" >> beam.FlatMap(write_dataset_files, cfg=self.cfg)
        )


class Prepare(beam.PTransform):
    """The whole job as one composite transform."""

    def __init__(self, cfg: PrepareConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, pbegin):
        cfg = self.cfg
        tagged = (
            pbegin
            | "ReadManifest" >> ReadManifest(cfg.manifest, cfg.filesystem_args)
            | "GroupRowsByShard" >> GroupRowsByShard(dict(cfg.num_shards))
            | "PrepareShards" >> beam.ParDo(PrepareShardFn(cfg))
        )
        rows = tagged | "IndexAndRejects" >> beam.Filter(lambda tv: tv[0] != STATS)
        band_sums = (
            tagged
            | "OnlyStats" >> beam.Filter(lambda tv: tv[0] == STATS)
            | "UntagStats" >> beam.Map(lambda tv: tv[1])
        )
        mel_stats = band_sums | "MelStats" >> MelStats()
        return (rows, mel_stats) | "WriteDatasetFiles" >> WriteDatasetFiles(cfg)


def file_sha256(path: str) -> str:
    data = beam_io.read_bytes(path)
    if data is None:
        raise FileNotFoundError(path)
    return hashlib.sha256(data).hexdigest()


def manifest_vocabulary(table: pa.Table) -> list[str]:
    """The manifest's own vocabulary (metadata written by `manifests vocab`), else every
    tag of the train split by frequency (ties alphabetical), then tags seen only in
    other splits."""
    meta = table.schema.metadata or {}
    if b"vocabulary" in meta:
        return list(json.loads(meta[b"vocabulary"]))
    counts: dict[str, int] = {}
    other: set[str] = set()
    for split, tags in zip(table.column("split").to_pylist(), table.column("tags").to_pylist()):
        for t in tags or []:
            if split == "train":
                counts[t] = counts.get(t, 0) + 1
            else:
                other.add(t)
    vocab = sorted(counts, key=lambda t: (-counts[t], t))
    return vocab + sorted(other - set(counts))


def read_manifest_table(path: str) -> pa.Table:
    from manifests.schema import validate_table

    data = beam_io.read_bytes(path)
    if data is None:
        raise FileNotFoundError(f"manifest not found: {path}")
    table = pq.read_table(io.BytesIO(data), use_threads=False)
    validate_table(table)
    return table
