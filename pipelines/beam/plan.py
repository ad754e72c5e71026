"""Planning a prepare job in the driver, from the manifest alone: its rows, vocabulary,
checksum and the number of shards per split."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.beam import beam_io
from pipelines.beam.track import TrackConfig
from pipelines.core.shards import num_shards_for


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


def manifest_sha256(path: str) -> str:
    digest = beam_io.read_sha256(path)
    if digest is None:
        raise FileNotFoundError(path)
    return digest


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
