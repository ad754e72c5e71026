"""LitData as a peer: the tracks written into chunks by `litdata.optimize`, read by its
`StreamingDataset` (crop as its `transform=`) and `StreamingDataLoader`, the pairing its docs
recommend (only that loader checkpoints the epoch).

What a chunk stores per track: the key (`str` serializer), the whole mel (float16, the
`numpy` serializer: dtype, shape, then the raw values) and the label indices (int16,
`no_header_numpy`); nothing is pickled (`self_check.py` fails if the chunks' index names
the pickle serializer). Chunks are uncompressed and cut at our shards' mean size
(`chunk_bytes`); on disk that is within ~1% of our tars (a small per-item header instead of
tar's 512-byte ones). From S3 the loader downloads whole chunks into its cache (`cache_dir`,
kept across epochs), so bytes fetched per byte used is the chunk bytes over the crops'
bytes, as for any whole-track format.

Resume: `StreamingDataLoader.state_dict()` / `load_state_dict()`; `self_check.py --resume`
compares a resumed epoch with an uninterrupted one on the same and on another worker count.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import tempfile
from collections.abc import Iterator
from pathlib import Path

import litdata
import numpy as np

from .base import OwnWriterPeer, WorkerCrop, Workload, card, register, tracks, vocabulary


def source_tag(work: Workload) -> str:
    """Names the output after its source (card and split): never reuse another dataset's."""
    card = (Path(work.dataset) / "dataset.json").read_bytes()
    return hashlib.sha256(card + work.split.encode()).hexdigest()[:10]


def _samples(work: Workload) -> Iterator[dict]:
    """`optimize`'s function, a generator: one input (the whole split) yields every track,
    so the chunks hold the tracks in our shard order."""
    for track in tracks(work):
        yield {"key": track.key, "mel": track.mel, "labels": np.asarray(track.labels, np.int16)}


def chunk_bytes(work: Workload) -> int:
    """Our shards' mean size: the chunks are cut at it, so that both formats have the same
    granularity (what a worker or the shuffle gets, what one fetch costs)."""
    shards = card(work)["splits"][work.split]["shards"]
    return max(1, sum(s["bytes"] for s in shards) // max(1, len(shards)))


def s3_options(storage_options: dict) -> dict:
    """fsspec's S3 options (what the harness gives) as litdata's: the keyword arguments of
    its boto3 client."""
    s3 = storage_options.get("s3", {})
    out = {"region_name": "us-east-1"}
    if "key" in s3:
        out |= {"aws_access_key_id": s3["key"], "aws_secret_access_key": s3["secret"]}
    endpoint = s3.get("client_kwargs", {}).get("endpoint_url")
    if endpoint and endpoint.startswith("http://"):
        # litdata 0.2.76 downloads chunks through an obstore store built from its boto3
        # client's endpoint, with client options of its own (a timeout) and so without
        # `allow_http`, which is one of those options: every GET from a plain-HTTP endpoint
        # fails ("builder error", as in developmentseed/obstore#159), and AWS_ALLOW_HTTP
        # in the environment does not help (tried): say so before the loader starts.
        raise PeerUnsupported(
            "litdata 0.2.76 cannot read from a plain-HTTP S3 endpoint (its obstore store "
            "is built without allow_http)"
        )
    return out | ({"endpoint_url": endpoint} if endpoint else {})


class PeerUnsupported(RuntimeError):
    """The peer cannot read from this source at all (not a slow or failed run)."""


class _Crop(WorkerCrop):
    """The dataset's `transform`: runs in the loader workers, on each decoded item."""

    def __call__(self, item: dict) -> dict:
        return self.item(item["key"], item["mel"], item["labels"])


class LitdataPeer(OwnWriterPeer):  # forget: the S3 cache is kept, a resume may reuse it
    name = "litdata"
    resume = "exact, any workers"

    def __init__(self) -> None:
        # S3 location -> its chunk cache: kept across epochs (epoch 2 reads it), removed
        # when the process ends.
        self._caches: dict[str, tempfile.TemporaryDirectory] = {}

    def prepare(self, work: Workload, out: Path) -> Path:
        target = Path(out) / f"litdata-{source_tag(work)}"
        if (target / "index.json").exists():  # merged last, once every chunk is written
            return target
        partial = target.with_name(target.name + ".partial")
        # optimize() sets the process's multiprocessing start method (force=True) for its
        # own workers; put it back, or every later DataLoader of the process (any peer's,
        # ours) would spawn its workers instead of forking them.
        start_method = multiprocessing.get_start_method(allow_none=True)
        litdata.optimize(
            fn=_samples, inputs=[work], output_dir=str(partial), chunk_bytes=chunk_bytes(work),
            num_workers=1, mode="overwrite", verbose=False,
        )  # fmt: skip
        multiprocessing.set_start_method(start_method, force=True)
        partial.rename(target)
        return target

    def dataset(self, location, storage_options, work, epoch):
        crop = _Crop(work, len(vocabulary(work)))
        crop.epoch = epoch
        where: dict = {}
        if location.startswith("s3://"):
            options = s3_options(storage_options)
            if location not in self._caches:
                self._caches[location] = tempfile.TemporaryDirectory(prefix="litdata-cache-")
            where = {"cache_dir": self._caches[location].name, "storage_options": options}
        return litdata.StreamingDataset(
            location, shuffle=True, seed=work.seed, transform=crop, **where
        )

    def loader(self, location, storage_options, work, epoch, workers, state=None):
        dataset = self.dataset(location, storage_options, work, epoch)
        loader = litdata.StreamingDataLoader(
            dataset, batch_size=work.batch_size, num_workers=workers
        )
        if state is not None:
            loader.load_state_dict(state)
        else:
            # The loader counts epochs from 1 and reshuffles per epoch by that count: a
            # fresh loader per call, set to the harness's epoch.
            loader.current_epoch = epoch
        return loader

    def keyed_batches(self, location, storage_options, work, epoch, workers, state=None):
        """(loader, keys, x, y) per batch; the self-check needs the keys and the loader."""
        loader = self.loader(location, storage_options, work, epoch, workers, state)
        for batch in loader:
            yield loader, list(batch["key"]), batch["x"], batch["y"]


register(LitdataPeer())
