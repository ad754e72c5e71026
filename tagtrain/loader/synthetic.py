"""Synthetic prepared datasets: real shard directories from generated audio, for tests,
benchmarks and trying the trainer without a corpus.

The dataset follows the shard contract exactly, built only with the shared functions
(`log_mel`, `to_int16`, `tar_bytes`, `npy_bytes`, `json_bytes`, `member_offsets`, the card
format), so it reads like what the prepare job writes. Every tag is a tone at its own
frequency (plus a little noise), so labels are learnable. Also here: a raw tar writer and
reader for shards that break the contract on purpose, and an index rewriter for them.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.audio import to_int16
from pipelines.core.card import CARD_NAME, FORMAT, INDEX_NAME
from pipelines.core.features import FeatureConfig, log_mel
from pipelines.core.shards import (
    json_bytes,
    member_offsets,
    npy_bytes,
    sample_size,
    shard_name,
    tar_bytes,
)

VOCABULARY = ("tone_a", "tone_b", "tone_c", "tone_d", "tone_e")
_TONE_HZ = (220.0, 440.0, 880.0, 1760.0, 3520.0)
_INDEX_COLUMNS = ("key", "split", "shard", "tags", "duration", "bytes", "members")


def track_audio(tag_ids: Sequence[int], seconds: float, sample_rate: int, rng) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    pcm = 0.02 * rng.standard_normal(len(t))
    for i in tag_ids:
        pcm += 0.25 * np.sin(2 * np.pi * _TONE_HZ[i % len(_TONE_HZ)] * t + rng.uniform(0, 6.28))
    return pcm.astype(np.float32)


class _Writer:
    """Writes one dataset: shards split by split, then the card and the index."""

    def __init__(self, out: Path, features, stored, vocabulary, seconds, rng):
        self.out, self.features, self.stored = out, features, stored
        self.vocabulary, self.seconds, self.rng = vocabulary, seconds, rng
        self.index_rows: list[list] = []
        self.train_mels: list[np.ndarray] = []

    def sample(self, key: str, split: str) -> tuple[dict, list[str], float]:
        rng, features = self.rng, self.features
        n_tags = int(rng.integers(1, 3))
        labels = sorted(rng.choice(len(self.vocabulary), size=n_tags, replace=False).tolist())
        duration = float(np.round(rng.uniform(*self.seconds), 3))
        pcm = track_audio(labels, duration, features.sample_rate, rng)
        members = {"json": b""}
        mel = log_mel(pcm, features).numpy()
        if split == "train":
            self.train_mels.append(mel)
        if "mel" in self.stored:
            members["mel.npy"] = npy_bytes(mel.astype(np.float16))
        if "pcm" in self.stored:
            members["pcm.npy"] = npy_bytes(to_int16(pcm))
        tags = [self.vocabulary[i] for i in labels]
        members["json"] = json_bytes(
            {
                "key": key, "track_id": key, "dataset": "shardkit", "split": split,
                "tags": tags, "labels": labels, "duration": duration,
                "sample_rate": features.sample_rate, "source_path": f"{key}.wav",
                "deformation": None,
            }
        )  # fmt: skip
        return members, tags, duration

    def split(self, split: str, sizes: Sequence[int]) -> dict:
        shards, number = [], 0
        for shard_no, size in enumerate(sizes):
            samples, rows, total_seconds = [], [], 0.0
            for key in (f"{split}_{n:05d}" for n in range(number, number + size)):
                members, tags, duration = self.sample(key, split)
                samples.append((key, members))
                total_seconds += duration
                name = shard_name(split, shard_no)
                rows.append([key, split, name, tags, duration, sample_size(members)])
            number += size
            data = tar_bytes(samples)
            offsets = member_offsets(io.BytesIO(data))
            self.index_rows += [row + [offsets[row[0]]] for row in rows]
            name = shard_name(split, shard_no)
            (self.out / name).write_bytes(data)
            sha256 = hashlib.sha256(data).hexdigest()
            shards.append(
                {
                    "name": name, "samples": size, "seconds": total_seconds,
                    "bytes": len(data), "sha256": sha256,
                }
            )  # fmt: skip
        return {
            "samples": sum(s["samples"] for s in shards),
            "seconds": sum(s["seconds"] for s in shards),
            "shards": shards,
        }

    def card(self, splits: dict) -> dict:
        mel_stats = None
        if self.train_mels:
            frames = np.concatenate(self.train_mels, axis=1).astype(np.float64)
            mel_stats = {"mean": frames.mean(axis=1).tolist(), "std": frames.std(axis=1).tolist()}
        return {
            "format": FORMAT,
            "features": {**self.features.to_dict(), "stored": list(self.stored)},
            "vocabulary": list(self.vocabulary),
            "splits": splits,
            "mel_stats": mel_stats,
            "decoder": {"name": "shardkit", "versions": {}},
            "manifest": {"path": None, "sha256": None},
            "code_version": "test",
            "deformation": None,
            "job": {"min_seconds": 1.0, "max_seconds": None},
        }

    def write_index(self, member_index: bool) -> None:
        columns = _INDEX_COLUMNS if member_index else _INDEX_COLUMNS[:-1]
        table = {c: [row[i] for row in self.index_rows] for i, c in enumerate(columns)}
        pq.write_table(pa.table(table), self.out / INDEX_NAME)


def make_dataset(
    out: str | Path,
    shard_sizes: Mapping[str, Sequence[int]] | None = None,
    seconds: tuple[float, float] = (4.0, 6.0),
    stored: Sequence[str] = ("mel", "pcm"),
    features: FeatureConfig | None = None,
    vocabulary: Sequence[str] = VOCABULARY,
    seed: int = 0,
    member_index: bool = True,
) -> dict:
    """Write `out/{dataset.json, index.parquet, {split}-{NNNNNN}.tar}`; returns the card.

    `shard_sizes` gives the number of samples of each shard per split (uneven on purpose
    where a test needs it). `member_index`: write the index's `members` column (byte
    offset and size of each tar member), which lets the loader read single samples."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    features = features or FeatureConfig()
    shard_sizes = shard_sizes or {"train": [8, 8, 8, 8], "valid": [6, 6]}
    rng = np.random.default_rng(seed)
    writer = _Writer(out, features, stored, vocabulary, seconds, rng)
    splits = {split: writer.split(split, sizes) for split, sizes in shard_sizes.items()}
    card = writer.card(splits)
    (out / CARD_NAME).write_bytes(json_bytes(card))
    writer.write_index(member_index)
    return card


def split_keys(card: Mapping, split: str) -> list[str]:
    """Every key of a split, as make_dataset numbers them."""
    return [f"{split}_{i:05d}" for i in range(card["splits"][split]["samples"])]


def write_raw_tar(path: str | Path, members: Iterable[tuple[str, bytes]]) -> None:
    """A tar with arbitrary members, for shards that break the contract on purpose."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    Path(path).write_bytes(buf.getvalue())


def read_members(path: str | Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]


def reindex(directory: str | Path) -> None:
    """Rewrite the index's `members` column from the shards as they now are (after a
    crafted one replaced a shard), keeping one row per key."""
    directory = Path(directory)
    table = pq.read_table(directory / INDEX_NAME)
    offsets: dict[tuple[str, str], list] = {}
    for shard in set(table.column("shard").to_pylist()):
        path = directory / shard
        if path.is_file():
            with open(path, "rb") as f:
                for key, members in member_offsets(f).items():
                    offsets[(shard, key)] = members
    rows = zip(table.column("shard").to_pylist(), table.column("key").to_pylist())
    members = [offsets.get((shard, key), []) for shard, key in rows]
    table = table.drop_columns(["members"]) if "members" in table.column_names else table
    pq.write_table(table.append_column("members", pa.array(members)), directory / INDEX_NAME)
