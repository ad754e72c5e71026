"""TEST-ONLY: write real prepared-dataset directories from generated audio, and serve them.

The dataset follows the shard contract of DESIGN.md and pipelines/card.py exactly, built
only with the shared functions (`log_mel`, `to_int16`, `tar_bytes`, `npy_bytes`,
`json_bytes`, the card format), so the trainer's tests read what the prepare job writes.
Every tag is a tone at its own frequency (plus a little noise), so labels are learnable.
Also here: a raw tar writer for adversarial shards and local HTTP/S3 servers over a
dataset directory (reused by bench/loader.py).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import logging
import os
import socket
import tarfile
import threading
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


def track_audio(tag_ids: Sequence[int], seconds: float, sample_rate: int, rng) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    pcm = 0.02 * rng.standard_normal(len(t))
    for i in tag_ids:
        pcm += 0.25 * np.sin(2 * np.pi * _TONE_HZ[i % len(_TONE_HZ)] * t + rng.uniform(0, 6.28))
    return pcm.astype(np.float32)


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
    splits, index_rows, train_mels = {}, [], []
    for split, sizes in shard_sizes.items():
        shards, number = [], 0
        for shard_no, size in enumerate(sizes):
            samples, total_seconds = [], 0.0
            for _ in range(size):
                key = f"{split}_{number:05d}"
                number += 1
                n_tags = int(rng.integers(1, 3))
                labels = sorted(rng.choice(len(vocabulary), size=n_tags, replace=False).tolist())
                duration = float(np.round(rng.uniform(*seconds), 3))
                pcm = track_audio(labels, duration, features.sample_rate, rng)
                members = {"json": b""}
                mel = log_mel(pcm, features).numpy()
                if split == "train":
                    train_mels.append(mel)
                if "mel" in stored:
                    members["mel.npy"] = npy_bytes(mel.astype(np.float16))
                if "pcm" in stored:
                    members["pcm.npy"] = npy_bytes(to_int16(pcm))
                tags = [vocabulary[i] for i in labels]
                members["json"] = json_bytes(
                    {
                        "key": key,
                        "track_id": key,
                        "dataset": "shardkit",
                        "split": split,
                        "tags": tags,
                        "labels": labels,
                        "duration": duration,
                        "sample_rate": features.sample_rate,
                        "source_path": f"{key}.wav",
                        "deformation": None,
                    }
                )
                samples.append((key, members))
                total_seconds += duration
                index_rows.append(
                    [key, split, shard_name(split, shard_no), tags, duration, sample_size(members)]
                )
            data = tar_bytes(samples)
            offsets = member_offsets(io.BytesIO(data))
            for row in index_rows[len(index_rows) - size :]:
                row.append(offsets[row[0]])
            name = shard_name(split, shard_no)
            (out / name).write_bytes(data)
            shards.append(
                {"name": name, "samples": size, "seconds": total_seconds, "bytes": len(data)}
            )
        splits[split] = {
            "samples": sum(s["samples"] for s in shards),
            "seconds": sum(s["seconds"] for s in shards),
            "shards": shards,
        }
    mel_stats = None
    if train_mels:
        frames = np.concatenate(train_mels, axis=1).astype(np.float64)
        mel_stats = {"mean": frames.mean(axis=1).tolist(), "std": frames.std(axis=1).tolist()}
    card = {
        "format": FORMAT,
        "features": {**features.to_dict(), "stored": list(stored)},
        "vocabulary": list(vocabulary),
        "splits": splits,
        "mel_stats": mel_stats,
        "decoder": {"name": "shardkit", "versions": {}},
        "manifest": {"path": None, "sha256": None},
        "code_version": "test",
        "deformation": None,
        "job": {"min_seconds": 1.0, "max_seconds": None},
    }
    (out / CARD_NAME).write_bytes(json_bytes(card))
    pq.write_table(
        pa.table(
            {
                "key": [r[0] for r in index_rows],
                "split": [r[1] for r in index_rows],
                "shard": [r[2] for r in index_rows],
                "tags": [r[3] for r in index_rows],
                "duration": [r[4] for r in index_rows],
                "bytes": [r[5] for r in index_rows],
                **({"members": [r[6] for r in index_rows]} if member_index else {}),
            }
        ),
        out / INDEX_NAME,
    )
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve_http(directory: str | Path):
    """A local HTTP server over `directory`; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@contextlib.contextmanager
def serve_s3(directory: str | Path, bucket: str = "shards", prefix: str = "data"):
    """A local S3 server (moto) holding `directory`'s files under s3://bucket/prefix.
    Yields (url, endpoint_url); sets test credentials in the environment meanwhile."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    saved = {k: os.environ.get(k) for k in [*S3_CREDENTIALS, "AWS_DEFAULT_REGION"]}
    os.environ.update(S3_CREDENTIALS, AWS_DEFAULT_REGION="us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket=bucket)
        for path in sorted(Path(directory).iterdir()):
            if path.is_file():
                client.upload_file(str(path), bucket, f"{prefix}/{path.name}")
        yield f"s3://{bucket}/{prefix}", endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def reindex(directory: str | Path) -> None:
    """Rewrite the index's `members` column from the shards as they now are (after a test
    crafted one), keeping one row per key of the card's shards."""
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
