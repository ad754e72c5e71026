"""One track from manifest row to shard sample (or reject): plain functions, no Beam.

`prepare` and `perturb` both end in `make_sample`, so a deformed copy of a track is
featurised exactly like the original.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from pipelines.core.audio import AudioRejected, Decoded, from_int16, load_audio, to_int16
from pipelines.core.features import FeatureConfig, harmonic_tensor, log_mel
from pipelines.core.shards import json_bytes, npy_bytes, sample_size


@dataclass(frozen=True)
class TrackConfig:
    """Per-track settings of a prepare job (everything that changes a sample's bytes)."""

    features: FeatureConfig = FeatureConfig()
    stored: tuple[str, ...] = ("mel", "pcm")
    decoder: str = "auto"
    min_seconds: float = 1.0
    max_seconds: float | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["stored"] = list(self.stored)
        return d


@dataclass
class Sample:
    """A finished sample: tar members plus what the index, card and stats need."""

    key: str
    split: str
    tags: list[str]
    seconds: float
    members: dict[str, bytes]
    mel_sum: np.ndarray | None = None  # per-band sums over frames, for the card's stats
    mel_sumsq: np.ndarray | None = None
    mel_frames: int = 0

    @property
    def nbytes(self) -> int:
        return sample_size(self.members)


@dataclass
class Reject:
    key: str
    track_id: str
    split: str
    path: str
    stage: str
    reason: str
    message: str

    def to_row(self) -> dict:
        return dataclasses.asdict(self)


def label_indices(tags: list[str], vocabulary: list[str]) -> list[int]:
    index = {t: i for i, t in enumerate(vocabulary)}
    return sorted(index[t] for t in tags if t in index)


def make_sample(
    row: dict,
    pcm: np.ndarray,
    cfg: TrackConfig,
    vocabulary: list[str],
    info: dict,
    deformation: dict | None = None,
) -> Sample:
    """Features + JSON for mono float32 `pcm` at cfg.features.sample_rate."""
    fc = cfg.features
    members: dict[str, bytes] = {}
    pcm16 = to_int16(pcm)
    # Features are computed from the int16-rounded waveform, so a trainer computing
    # them on the device from the stored PCM gets the same numbers.
    wave = torch.from_numpy(from_int16(pcm16))
    mel = log_mel(wave, fc).numpy()
    if "mel" in cfg.stored:
        members["mel.npy"] = npy_bytes(mel.astype(np.float16))
    if "harm" in cfg.stored:
        members["harm.npy"] = npy_bytes(harmonic_tensor(wave, fc).numpy().astype(np.float16))
    if "pcm" in cfg.stored:
        members["pcm.npy"] = npy_bytes(pcm16)
    seconds = len(pcm16) / fc.sample_rate
    tags = list(row.get("tags") or [])
    meta = {
        "key": row["key"],
        "track_id": row["track_id"],
        "dataset": row["dataset"],
        "split": row["split"],
        "tags": tags,
        "labels": label_indices(tags, vocabulary),
        "duration": round(seconds, 6),
        "sample_rate": fc.sample_rate,
        "frames": int(mel.shape[-1]),
        "source_path": row["audio_path"],
        "artist_id": row.get("artist_id"),
        "album_id": row.get("album_id"),
        **info,
        "deformation": deformation,
    }
    members["json"] = json_bytes(meta)
    mel64 = mel.astype(np.float64)
    return Sample(
        key=row["key"],
        split=row["split"],
        tags=tags,
        seconds=seconds,
        members=members,
        mel_sum=mel64.sum(axis=1),
        mel_sumsq=np.square(mel64).sum(axis=1),
        mel_frames=mel.shape[1],
    )


def decode_row(row: dict, data: bytes, cfg: TrackConfig) -> Decoded:
    suffix = "." + row["audio_path"].rsplit(".", 1)[-1] if "." in row["audio_path"] else ""
    return load_audio(
        data,
        cfg.features.sample_rate,
        decoder=cfg.decoder,
        suffix=suffix,
        min_seconds=cfg.min_seconds,
        max_seconds=cfg.max_seconds,
        expected_seconds=row.get("duration"),
    )


def process_row(row: dict, data: bytes | None, cfg: TrackConfig, vocabulary: list[str]):
    """Manifest row + the file's bytes (None: missing) -> Sample or Reject."""

    def reject(stage, reason, message):
        return Reject(
            row["key"], row["track_id"], row["split"], row["audio_path"], stage, reason, message
        )

    if data is None:
        return reject("read", "missing", "audio file not found")
    try:
        decoded = decode_row(row, data, cfg)
    except AudioRejected as exc:
        return reject(exc.stage, exc.reason, exc.message)
    info = {
        "decoder": decoded.decoder,
        "source_sample_rate": decoded.source_sample_rate,
        "source_channels": decoded.source_channels,
        "source_seconds": round(decoded.source_seconds, 6),
        "cropped": decoded.cropped,
    }
    try:
        return make_sample(row, decoded.pcm, cfg, vocabulary, info)
    except Exception as exc:  # a feature failure must not kill the job either
        return reject("features", "feature_error", f"{type(exc).__name__}: {exc}"[:300])
