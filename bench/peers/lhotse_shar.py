"""Lhotse Shar as a peer: one cut per track with its mel as the cut's `features`, written by
Lhotse's `SharWriter` (`fields={"features": "numpy"}`), read back with `CutSet.from_shar`,
a `DynamicCutSampler` of 16 cuts and a map-style dataset over the sampled `CutSet`, run
inside the loader workers by `IterableDatasetWrapper` (Lhotse's recommended setup for Shar:
each worker samples its own shards, `split_for_dataloading=True`).

What Shar stores per track: in `cuts.NNNNNN.jsonl.gz`, the cut's manifest (id, duration,
the features' shape and frame shift, our key and label indices in `custom`), and in
`features.NNNNNN.tar`, the whole mel as a `.npy` member (float16, [frames, n_mels], Lhotse's
time-major layout; `np.save(allow_pickle=False)`, read back with numpy's default
`allow_pickle=False`) plus a small JSON copy of its manifest. On disk: the mel bytes plus
two 512-byte tar headers and ~300 bytes of JSON per track, about ours; nothing pickled. The
shards hold our shards' track count each. From S3 the tars are streamed whole (smart_open),
so bytes fetched per byte used is the shard bytes over the crops' bytes.

Resume: a sampler's `state_dict()` restores by fast-forwarding (re-reading the epoch's
consumed cuts), which is exact only where the sampler runs in the training process. With
Shar's recommended multi-worker loading the samplers live inside the workers, where no
state can be taken, so Lhotse offers no mid-epoch resume there ("no");
`self_check.py --resume` checks the in-process case exactly.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import fsspec
import lhotse
import numpy as np
import torch
from lhotse.dataset import DynamicCutSampler, IterableDatasetWrapper
from lhotse.dataset.dataloading import make_worker_init_fn
from lhotse.shar import SharWriter

from .base import (
    OwnWriterPeer,
    Workload,
    card,
    crop_rng,
    multi_hot,
    random_crop,
    register,
    s3_environment,
    tracks,
    vocabulary,
)


def source_tag(work: Workload) -> str:
    """Names the output after its source (card and split): never reuse another dataset's."""
    data = (Path(work.dataset) / "dataset.json").read_bytes()
    return hashlib.sha256(data + work.split.encode()).hexdigest()[:10]


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _cut(index: int, track, frame_shift: float, sample_rate: int) -> lhotse.MonoCut:
    """A cut holding the track's mel in memory (`memory_npy`, read by Lhotse's own reader),
    from which the Shar writer takes the array. Ids are unique even where a key repeats (the
    generated benchmark dataset copies shards)."""
    mel = np.ascontiguousarray(track.mel.T)  # Lhotse's features are [frames, features]
    frames, n_mels = mel.shape
    duration = frames * frame_shift
    features = lhotse.Features(
        type="log-mel", num_frames=frames, num_features=n_mels, frame_shift=frame_shift,
        sampling_rate=sample_rate, start=0.0, duration=duration,
        storage_type="memory_npy", storage_path="", storage_key=_npy(mel),
    )  # fmt: skip
    return lhotse.MonoCut(
        id=f"{index:08d}-{track.key}", start=0.0, duration=duration, channel=0,
        features=features, custom={"key": track.key, "labels": list(track.labels)},
    )  # fmt: skip


def shard_names(location: str, storage_options: dict) -> list[str]:
    """The manifests' names, listed where the shards are (a local directory or S3)."""
    fs, root = fsspec.core.url_to_fs(location, **storage_options.get("s3", {}))
    return sorted(Path(p).name for p in fs.glob(f"{root.rstrip('/')}/cuts.*.jsonl.gz"))


class _Crops(torch.utils.data.Dataset):
    """Lhotse's map-style dataset shape: `__getitem__` takes the sampled `CutSet`."""

    def __init__(self, work: Workload, n_tags: int, epoch: int) -> None:
        self.work, self.n_tags, self.epoch = work, n_tags, epoch
        self._rng_for: tuple[int, int] | None = None

    def __getitem__(self, cuts: lhotse.CutSet) -> dict:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info else 0
        if self._rng_for != (self.epoch, worker):
            self._rng_for = (self.epoch, worker)
            self._rng = crop_rng(self.work, self.epoch, worker)
        xs, ys, keys = [], [], []
        for cut in cuts:
            mel = cut.load_features().T  # back to [n_mels, frames]
            xs.append(random_crop(mel, self.work.frames, self._rng))
            ys.append(multi_hot(cut.custom["labels"], self.n_tags))
            keys.append(cut.custom["key"])
        return {
            "key": keys,
            "x": torch.from_numpy(np.stack(xs)),
            "y": torch.from_numpy(np.stack(ys)),
        }


class LhotseSharPeer(OwnWriterPeer):
    name = "lhotse-shar"
    resume = "no"

    def prepare(self, work: Workload, out: Path) -> Path:
        target = Path(out) / f"lhotse-shar-{source_tag(work)}"
        if target.is_dir():  # renamed from .partial only once the writer closed
            return target
        info = card(work)
        split = info["splits"][work.split]
        per_shard = max(1, round(split["samples"] / max(1, len(split["shards"]))))
        features = info["features"]
        frame_shift = features["hop"] / features["sample_rate"]
        partial = target.with_name(target.name + ".partial")
        partial.mkdir(parents=True, exist_ok=True)
        with SharWriter(str(partial), fields={"features": "numpy"}, shard_size=per_shard) as w:
            for i, track in enumerate(tracks(work)):
                w.write(_cut(i, track, frame_shift, features["sample_rate"]))
        partial.rename(target)
        return target

    @staticmethod
    def fields(location: str, storage_options: dict) -> dict:
        """`from_shar`'s fields: explicit shard lists, which (unlike `in_dir`) may be URLs."""
        cuts = shard_names(location, storage_options)
        root = location.rstrip("/")
        return {
            "cuts": [f"{root}/{name}" for name in cuts],
            "features": [f"{root}/features.{name.split('.')[1]}.tar" for name in cuts],
        }

    def loader(self, location, storage_options, work, epoch, workers):
        if location.startswith("s3://"):
            s3_environment(storage_options)
        dataset = _Crops(work, len(vocabulary(work)), epoch)
        cuts = lhotse.CutSet.from_shar(
            fields=self.fields(location, storage_options), shuffle_shards=True,
            stateful_shuffle=False, seed=work.seed + epoch, split_for_dataloading=workers > 0,
        )  # fmt: skip
        # The shuffle buffer every streaming peer and ours get (256 tracks): Lhotse's
        # default, 20,000 cuts, would hold 20,000 whole mels (Shar attaches each cut's
        # array as it reads) before the first batch.
        sampler = DynamicCutSampler(
            cuts, max_cuts=work.batch_size, shuffle=True, shuffle_buffer_size=256, seed=work.seed
        )
        sampler.set_epoch(epoch)
        if not workers:
            return sampler, torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=None)
        wrapped = IterableDatasetWrapper(dataset=dataset, sampler=sampler)
        return sampler, torch.utils.data.DataLoader(
            wrapped, batch_size=None, num_workers=workers,
            worker_init_fn=make_worker_init_fn(seed=work.seed + epoch),
        )  # fmt: skip

    def keyed_batches(self, location, storage_options, work, epoch, workers, state=None):
        """(sampler, keys, x, y) per batch; the self-check needs the keys and the sampler."""
        sampler, loader = self.loader(location, storage_options, work, epoch, workers)
        if state is not None:
            sampler.load_state_dict(dict(state))
        for batch in loader:
            yield sampler, batch["key"], batch["x"], batch["y"]


register(LhotseSharPeer())
