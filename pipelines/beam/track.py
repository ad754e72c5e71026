"""One track from manifest row to shard sample (or reject): plain functions, no Beam.

`prepare_track(row, audio_root, cfg, vocabulary)` is the whole per-track step: fetch the
audio (`fetch.py`: contained paths, size cap, special files refused, changed sources
caught), decode and validate it (`core/audio.py`: never silently short), featurise it.
Permanent per-file problems become a `Reject` with a reason; transient ones (network,
timeouts, throttling, a full disk) are retried with backoff and then raised, so the
runner retries the bundle or the job fails: never a reject that depends on luck.
MemoryError is caught in one place: the decode, which the caps of `core/audio.py` keep
near its output's size (a too-long file is refused from its header); a file whose decode
still runs out of memory is one `oversized` reject, never a failed job. Anywhere else
(featurising, writing) it is not the file's doing and is raised.

A relative path is read only when it stays in `--audio-root` once symlinks are resolved
(`core/source.py`): a link inside the root to a file outside it is an `outside_root`
reject unless the config's `follow_symlinks` allows it.

`prepare` and `perturb` both end in `make_sample`, so a deformed copy of a track is
featurised exactly like the original.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from pipelines.beam import fetch
from pipelines.core.audio import Decoded, from_int16, load_audio, to_int16
from pipelines.core.failures import MISSING, OVERSIZED, AudioRejected
from pipelines.core.features import FeatureConfig, harmonic_tensor, log_mel
from pipelines.core.shards import json_bytes, npy_bytes, sample_size
from pipelines.core.source import DEFAULT_MAX_FILE_MB, Signature, check_inside_root, max_bytes

DECODE_ATTEMPTS = 2  # a decode timeout or a killed ffmpeg is tried once more, then raised


@dataclass(frozen=True)
class TrackConfig:
    """Per-track settings of a prepare job (everything that changes a sample's bytes)."""

    features: FeatureConfig = FeatureConfig()
    stored: tuple[str, ...] = ("mel", "pcm")
    decoder: str = "auto"
    min_seconds: float = 1.0
    max_seconds: float | None = None
    max_file_mb: float | None = DEFAULT_MAX_FILE_MB  # per-file size cap (None: no cap)
    follow_symlinks: bool = False  # read links in the audio root that lead out of it

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["stored"] = list(self.stored)
        if not self.follow_symlinks:  # the default leaves the identity of a job as it was
            del d["follow_symlinks"]
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
    import torch  # here, not at the top: see pipelines/core/features.py

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
        # JSON text, "null" when clean: one column type for columnar readers (FORMATS.md).
        "deformation": json_bytes(deformation).decode(),
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
    return fetch.with_retries(
        lambda: load_audio(
            data,
            cfg.features.sample_rate,
            decoder=cfg.decoder,
            suffix=suffix,
            min_seconds=cfg.min_seconds,
            max_seconds=cfg.max_seconds,
            expected_seconds=row.get("duration"),
        ),
        attempts=DECODE_ATTEMPTS,
    )


def _reject(row: dict, stage: str, reason: str, message: str) -> Reject:
    return Reject(
        row["key"], row["track_id"], row["split"], row["audio_path"], stage, reason, message
    )


def read_track(
    row: dict, audio_root: str | None, cfg: TrackConfig, planned: Signature | None = None
) -> fetch.SourceBytes:
    """The row's audio bytes and their signature (size + mtime/etag). Raises
    AudioRejected (permanent) or, after retries, TransientError."""
    path = fetch.resolve(audio_root, row["audio_path"])
    if audio_root and not cfg.follow_symlinks:
        check_inside_root(path, audio_root)
    limit = max_bytes(cfg.max_file_mb)
    return fetch.with_retries(lambda: fetch.read_source(path, limit, planned))


def prepare_track(
    row: dict,
    audio_root: str | None,
    cfg: TrackConfig,
    vocabulary: list[str],
    planned: Signature | None = None,
) -> Sample | Reject:
    """Manifest row -> Sample or Reject; transient failures raise (see the module doc)."""
    try:
        source = read_track(row, audio_root, cfg, planned)
    except AudioRejected as exc:
        return _reject(row, exc.stage, exc.reason, exc.message)
    return process_row(row, source.data, cfg, vocabulary)


def process_row(row: dict, data: bytes | None, cfg: TrackConfig, vocabulary: list[str]):
    """Manifest row + the file's bytes (None: missing) -> Sample or Reject."""
    if data is None:
        return _reject(row, "read", MISSING, "audio file not found")
    try:
        decoded = decode_row(row, data, cfg)
    except AudioRejected as exc:
        return _reject(row, exc.stage, exc.reason, exc.message)
    except MemoryError:
        # Within the decode caps, this file's decode is what ran out of memory: a reject
        # the first time (a retry would fail the same way and then fail the job).
        return _reject(row, "decode", OVERSIZED, "decoding ran out of memory")
    info = {
        "decoder": decoded.decoder,
        "source_sample_rate": decoded.source_sample_rate,
        "source_channels": decoded.source_channels,
        "source_seconds": round(decoded.source_seconds, 6),
        "cropped": decoded.cropped,
    }
    if decoded.warnings:  # a recovered or partial decode is never stored as if complete
        info["decode_warnings"] = list(decoded.warnings)
    try:
        return make_sample(row, decoded.pcm, cfg, vocabulary, info)
    except (ValueError, ArithmeticError, IndexError) as exc:
        # A signal the features cannot handle is this file's problem; anything else
        # (MemoryError, a torch allocation failure) is not, and fails the bundle.
        return _reject(row, "features", "feature_error", f"{type(exc).__name__}: {exc}"[:300])
