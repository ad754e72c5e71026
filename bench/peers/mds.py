"""MosaicML `streaming` as a peer: the tracks written by its `MDSWriter`, read by its
`StreamingDataset` + `StreamingDataLoader` (the pairing its docs recommend, since only
that loader can checkpoint the epoch).

What MDS stores per track: the key (`str`), the whole mel as `ndarray:float16` (a few
bytes of shape header, then the float16 values, the same as our `.mel.npy` less its 128-byte
npy header) and the label indices (`ndarray:int16`); nothing is pickled (`pkl` is the one
unsafe encoding, and `allow_unsafe_types` stays off). Shards are uncompressed and cut at
our shards' mean size (`size_limit`); on disk that is within ~1% of our tars (no 512-byte
tar headers, a 4-byte offset per sample instead). From S3 the loader downloads whole shards
into its local cache before a sample is read, so bytes fetched per byte used is the shard
bytes over the crops' bytes, as for any whole-track format.

Resume: `StreamingDataLoader.state_dict()` records the samples yielded in the epoch, and
the shuffle is "elastically deterministic" (fixed by the seed and `num_canonical_nodes`,
not by the worker count), so a resumed epoch yields exactly the remaining samples, also on
another worker count: `self_check.py --resume` checks both against an uninterrupted epoch.
"""

from __future__ import annotations

import gc
import hashlib
import tempfile
from pathlib import Path

import numpy as np

try:
    import streaming
    from streaming.base.util import clean_stale_shared_memory
except RuntimeError as error:
    # streaming imports torchvision, and PyPI's torchvision is built against CUDA torch:
    # with CPU torch its import fails ("operator torchvision::nms does not exist"). The
    # package is there but unusable; the harness reports a missing one as not installed.
    raise ModuleNotFoundError(f"streaming cannot be imported: {error}", name="streaming") from error

from .base import (
    OwnWriterPeer,
    WorkerCrop,
    Workload,
    card,
    register,
    s3_environment,
    tracks,
    vocabulary,
)

COLUMNS = {"key": "str", "mel": "ndarray:float16", "labels": "ndarray:int16"}


def source_tag(work: Workload) -> str:
    """Names a peer's output after its source (the card's bytes and the split), so that a
    cached copy of another dataset is never reused."""
    card = (Path(work.dataset) / "dataset.json").read_bytes()
    return hashlib.sha256(card + work.split.encode()).hexdigest()[:10]


def shard_bytes(work: Workload) -> int:
    """Our shards' mean size: the peer's shards are cut at it, so that both formats have the
    same granularity (what a worker or the shuffle gets, what one fetch costs)."""
    shards = card(work)["splits"][work.split]["shards"]
    return max(1, sum(s["bytes"] for s in shards) // max(1, len(shards)))


class _Crops(streaming.StreamingDataset):
    """The stored mel cropped in `__getitem__`, the per-sample hook streaming's docs give
    for transforms (it runs in the loader workers)."""

    def __init__(self, work: Workload, n_tags: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.crop = WorkerCrop(work, n_tags)

    def __getitem__(self, index: int) -> dict:
        sample = super().__getitem__(index)
        return self.crop.item(sample["key"], sample["mel"], sample["labels"])


class MdsPeer(OwnWriterPeer):
    name = "mds"
    resume = "exact, any workers"

    def __init__(self) -> None:
        # One dataset per location for the process: streaming keeps a dataset's state in
        # shared memory named after its local directory and refuses a second live dataset
        # on the same one; it also counts epochs itself across iterations.
        self._datasets: dict[str, _Crops] = {}
        # S3 location -> its shard cache: kept across epochs and datasets (epoch 2 and a
        # resumed run read it), removed when the process ends.
        self._caches: dict[str, tempfile.TemporaryDirectory] = {}

    def prepare(self, work: Workload, out: Path) -> Path:
        target = Path(out) / f"mds-{source_tag(work)}"
        if (target / "index.json").exists():  # written last, by the writer's finish()
            return target
        partial = target.with_name(target.name + ".partial")
        with streaming.MDSWriter(
            out=str(partial), columns=COLUMNS, compression=None, size_limit=shard_bytes(work)
        ) as w:
            for track in tracks(work):
                labels = np.asarray(track.labels, np.int16)
                w.write({"key": track.key, "mel": track.mel, "labels": labels})
        partial.rename(target)
        return target

    def dataset(self, location: str, storage_options: dict, work: Workload) -> _Crops:
        if location not in self._datasets:
            clean_stale_shared_memory()
            if location.startswith("s3://"):
                s3_environment(storage_options)
                if location not in self._caches:
                    self._caches[location] = tempfile.TemporaryDirectory(prefix="mds-cache-")
                where = {"remote": location, "local": self._caches[location].name}
            else:
                where = {"local": location}
            self._datasets[location] = _Crops(
                work, len(vocabulary(work)), **where, shuffle=True,
                shuffle_seed=work.seed, batch_size=work.batch_size, num_canonical_nodes=1,
            )  # fmt: skip
        return self._datasets[location]

    def loader(self, dataset: _Crops, work: Workload, epoch: int, workers: int, state=None):
        dataset.crop.epoch = epoch
        loader = streaming.StreamingDataLoader(
            dataset, batch_size=work.batch_size, num_workers=workers
        )
        if state is not None:
            loader.load_state_dict(state)
        elif dataset.next_epoch < epoch:
            # An epoch ahead of streaming's count: start it through the resume state (the
            # public way to set streaming's epoch), at its first sample.
            loader.load_state_dict(self.epoch_start(dataset, epoch))
        return loader

    @staticmethod
    def epoch_start(dataset: _Crops, epoch: int) -> dict:
        return {
            "epoch": epoch, "sample_in_epoch": 0, "num_canonical_nodes": 1,
            "shuffle_seed": dataset.shuffle_seed, "initial_physical_nodes": None,
        }  # fmt: skip

    def keyed_batches(self, location, storage_options, work, epoch, workers, state=None):
        """(loader, keys, x, y) per batch: the self-check needs the keys and the loader."""
        dataset = self.dataset(location, storage_options, work)
        if dataset.next_epoch > epoch:
            # streaming ignores a resume state older than its epoch count, so an earlier
            # epoch again (the self-check's resume test) needs a fresh dataset.
            self.forget(location)
            dataset = self.dataset(location, storage_options, work)
        loader = self.loader(dataset, work, epoch, workers, state)
        for batch in loader:
            yield loader, list(batch["key"]), batch["x"], batch["y"]

    def forget(self, location: str) -> None:
        """Drop the location's dataset (and its shared memory), so that a new one, e.g. a
        resumed run, can open the same local directory."""
        self._datasets.pop(location, None)
        gc.collect()


register(MdsPeer())
