"""The peer interface of `bench/loader.py --peers`: a peer writes the benchmark's tracks
with its own writer (or reads our shards as they are) and hands out the same training
input as our loader: `x` [B, n_mels, frames] float32, a random crop of each track's stored
mel, `y` [B, n_tags] float32 multi-hot over the card's vocabulary.

A peer module registers its peers on import (`register(Peer())`) and imports its package
at module level, so that the harness can report a peer whose package is missing as "not
installed" (`MODULES` names every module and the peers it registers, installed or not).

The helpers below are what every peer needs and must do alike for the figures to compare:
reading the source tracks (`tracks`), the crop (`random_crop`), the labels (`multi_hot`)
and batching (`batched`).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

# module (under bench/peers/) -> the peer names it registers; the harness imports each and
# reports the names of a module whose import fails as "not installed".
MODULES: dict[str, tuple[str, ...]] = {
    "ours": ("ours", "ours+cache"),
    "webdataset_peers": ("wds", "wds-select", "wids"),
    "hf": ("hf-datasets",),
    "mds": ("mds",),
    "litdata_peer": ("litdata",),
    "lhotse_shar": ("lhotse-shar",),
}

RESUME_KINDS = ("exact", "exact, any workers", "approximate", "no")


@dataclass(frozen=True)
class Workload:
    """The same training input for every peer."""

    dataset: Path  # our prepared dataset (card, index.parquet, shards): the source tracks
    frames: int  # crop length (the model's input spec, e.g. short_chunk_resnet's)
    n_mels: int
    batch_size: int = 16
    seed: int = 0
    split: str = "train"
    model: str = "short_chunk_resnet"  # whose input spec `frames`/`n_mels` come from


@runtime_checkable
class Peer(Protocol):
    name: str
    # What the peer's docs/API offer for resuming mid-epoch: one of RESUME_KINDS, verified
    # where cheap (the harness prints it as given).
    resume: str

    def prepare(self, work: Workload, out: Path) -> Path:
        """Write the workload's tracks with the peer's own writer under `out` (or return
        `work.dataset` for a peer reading our shards); a second call reuses what is there."""
        ...

    def batches(
        self, location: str, storage_options: dict, work: Workload, epoch: int, workers: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of (x, y) batches; `location` is what `prepare` returned, a local path
        or an s3:// URL of the same files (`storage_options["s3"]`: key, secret,
        client_kwargs.endpoint_url, as fsspec takes them; the harness also sets
        AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL and S3_ENDPOINT_URL for
        clients that read the environment)."""
        ...


PEERS: dict[str, Peer] = {}


def register(peer: Peer) -> Peer:
    if peer.resume not in RESUME_KINDS:
        raise ValueError(f"{peer.name}: resume {peer.resume!r} is not one of {RESUME_KINDS}")
    PEERS[peer.name] = peer
    return peer


def card(work: Workload) -> dict:
    return json.loads((Path(work.dataset) / "dataset.json").read_text())


def s3_options(storage_options: dict) -> dict:
    """fsspec's s3 keyword arguments (key, secret, client_kwargs) of `storage_options`."""
    return dict(storage_options.get("s3", {}))


def join(location: str, name: str) -> str:
    return f"{location.rstrip('/')}/{name}"


def shard_urls(location: str, work: Workload) -> list[str]:
    """The split's shards (our layout) under `location`, in the card's order. The card is
    the workload's local one: the same files are what `location` holds."""
    return [join(location, s["name"]) for s in card(work)["splits"][work.split]["shards"]]


def vocabulary(work: Workload) -> list[str]:
    return card(work)["vocabulary"]


@dataclass(frozen=True)
class Track:
    key: str
    mel: np.ndarray  # float16 [n_mels, frames], as stored
    labels: list[int]  # indices into the card's vocabulary
    meta: dict  # the sample's JSON


def tracks(work: Workload) -> Iterator[Track]:
    """The workload's tracks, in shard order, read from our shards with the standard
    library (what a peer's writer is fed)."""
    root = Path(work.dataset)
    for shard in card(work)["splits"][work.split]["shards"]:
        with tarfile.open(root / shard["name"]) as tar:
            pending: dict[str, dict[str, bytes]] = {}
            for member in tar:
                key, _, ext = member.name.partition(".")
                pending.setdefault(key, {})[ext] = tar.extractfile(member).read()
                if "json" in pending[key] and "mel.npy" in pending[key]:
                    parts = pending.pop(key)
                    meta = json.loads(parts["json"])
                    mel = np.load(io.BytesIO(parts["mel.npy"]), allow_pickle=False)
                    yield Track(key, mel, list(meta["labels"]), meta)


def random_crop(mel: np.ndarray, frames: int, rng: np.random.Generator) -> np.ndarray:
    """A `frames`-long slice of `mel` [n_mels, T] at a uniform start, as float32; a track
    shorter than `frames` is padded at the end with its minimum (our loader's rule: the
    silence of a log mel)."""
    total = mel.shape[-1]
    if total <= frames:
        out = np.full((*mel.shape[:-1], frames), mel.min() if mel.size else 0, np.float32)
        out[..., :total] = mel
        return out
    start = int(rng.integers(0, total - frames + 1))
    return np.asarray(mel[..., start : start + frames], dtype=np.float32)


def multi_hot(labels: Iterable[int], n_tags: int) -> np.ndarray:
    y = np.zeros(n_tags, np.float32)
    y[list(labels)] = 1.0
    return y


def batched(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]], batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) pairs into batches; the last batch may be short (every track is read)."""
    xs, ys = [], []
    for x, y in pairs:
        xs.append(x)
        ys.append(y)
        if len(xs) == batch_size:
            yield torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
            xs, ys = [], []
    if xs:
        yield torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def s3_environment(storage_options: dict) -> None:
    """The S3 settings as environment variables, for clients that take no options: boto3
    (Lhotse's smart_open) and MosaicML streaming (`S3_ENDPOINT_URL`); set in this process,
    so that forked loader workers inherit them."""
    s3 = storage_options.get("s3", {})
    if "key" in s3:
        os.environ["AWS_ACCESS_KEY_ID"] = s3["key"]
        os.environ["AWS_SECRET_ACCESS_KEY"] = s3["secret"]
    endpoint = s3.get("client_kwargs", {}).get("endpoint_url")
    if endpoint:
        os.environ["AWS_ENDPOINT_URL"] = os.environ["S3_ENDPOINT_URL"] = endpoint
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")  # boto3 signs with one


class OurShardsPeer:
    """A peer that reads our shards as they are: nothing to write."""

    def prepare(self, work: Workload, out: Path) -> Path:
        return Path(work.dataset)


class OwnWriterPeer:
    """A peer with its own writer and a resumable loader: `keyed_batches` gives (loader or
    sampler state holder, keys, x, y) per batch for the self-check (bench/peers/
    self_check.py); `batches` is what the harness reads."""

    def keyed_batches(self, location, storage_options, work, epoch, workers, state=None):
        raise NotImplementedError

    def batches(
        self, location: str, storage_options: dict, work: Workload, epoch: int, workers: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _, _, x, y in self.keyed_batches(location, storage_options, work, epoch, workers):
            yield x, y

    def forget(self, location: str) -> None:
        """Drop what is held for `location` between calls (nothing by default)."""


def crop_rng(work: Workload, epoch: int, worker: int = 0) -> np.random.Generator:
    """The crop generator of one epoch (and loader worker): different per epoch, the same
    for a re-run."""
    return np.random.default_rng((work.seed, epoch, worker))


class WorkerCrop:
    """A stored track as a training item inside a peer's DataLoader worker: the crop drawn
    from the generator of (`epoch`, this worker), made again when either changes."""

    def __init__(self, work: Workload, n_tags: int) -> None:
        self.work, self.n_tags, self.epoch = work, n_tags, 0
        self._rng_for: tuple[int, int] | None = None

    def item(self, key: str, mel: np.ndarray, labels: Iterable[int]) -> dict:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info else 0
        if self._rng_for != (self.epoch, worker):
            self._rng_for = (self.epoch, worker)
            self._rng = crop_rng(self.work, self.epoch, worker)
        return {
            "key": key,
            "x": random_crop(mel, self.work.frames, self._rng),
            "y": multi_hot(labels, self.n_tags),
        }
