"""`webdataset` and `wids` reading our shards as they are (docs/FORMATS.md): a sample is the
members sharing a key.

- "wds": what its README shows, `WebDataset(urls).shuffle(256).decode()` and a random crop:
  every member is read and decoded (the PCM too, when stored).
- "wds-select": the same with `select_files` keeping only the JSON and mel members, so the
  others are skipped in the tar stream (still read from the file or the network).
- "wids": its indexed dataset, `ShardListDataset` over a shard list made from our card
  (url, nsamples), sampled by its `ChunkedSampler` through a torch `DataLoader`.

webdataset has no s3:// opener (its docs pipe through `aws s3 cp`, which is not installed
here); both get one through fsspec, in webdataset's `gopen_schemes` and wids' download
handlers, the extension points they document.
"""

from __future__ import annotations

import atexit
import io
import json
import shutil
import tempfile

import fsspec
import numpy as np
import torch
import webdataset as wds
import wids
from wids import wids_dl

from .base import (
    OurShardsPeer,
    Workload,
    batched,
    card,
    crop_rng,
    multi_hot,
    random_crop,
    register,
    s3_options,
    shard_urls,
)


def _install_s3(storage_options: dict) -> None:
    options = s3_options(storage_options)

    def gopen_s3(url, mode="rb", bufsize=8192, **_):
        return fsspec.open(url, mode, **options).open()

    def download_s3(remote, local):
        fsspec.filesystem("s3", **options).get_file(remote, local)

    wds.gopen_schemes["s3"] = gopen_s3
    wids_dl.default_cmds["s3"] = download_s3


def _worker() -> int:
    info = torch.utils.data.get_worker_info()
    return 0 if info is None else info.id


class _Cropper:
    """(x, y) of a decoded sample; the crop generator is made in the worker that uses it."""

    def __init__(self, work: Workload, epoch: int, n_tags: int):
        self.work, self.epoch, self.n_tags, self.rng = work, epoch, n_tags, None

    def __call__(self, mel: np.ndarray, meta: dict):
        if self.rng is None:
            self.rng = crop_rng(self.work, self.epoch, _worker())
        return random_crop(mel, self.work.frames, self.rng), multi_hot(meta["labels"], self.n_tags)


def _collate(pairs):
    return next(batched(pairs, len(pairs)))


class WebDatasetPeer(OurShardsPeer):
    resume = "no"  # no iterator state; its docs resample (resampled=True) instead

    def __init__(self, name: str, select: bool):
        self.name, self.select = name, select

    def batches(self, location, storage_options, work: Workload, epoch: int, workers: int):
        _install_s3(storage_options)
        crop = _Cropper(work, epoch, len(card(work)["vocabulary"]))
        urls = shard_urls(location, work)
        keep = (lambda name: name.endswith((".json", ".mel.npy"))) if self.select else None
        dataset = (
            wds.WebDataset(
                urls,
                shardshuffle=len(urls),
                seed=work.seed + epoch,
                select_files=keep,
                empty_check=False,
            )  # fmt: skip
            .shuffle(256)
            .decode()
            .map(lambda s: crop(s["mel.npy"], s["json"]))
            .batched(work.batch_size, collation_fn=_collate, partial=True)
        )
        loader = (
            wds.WebLoader(dataset, batch_size=None, num_workers=workers) if workers else dataset
        )
        yield from loader


def _wids_decode(sample: dict) -> tuple[np.ndarray, dict]:
    mel = np.load(io.BytesIO(sample[".mel.npy"].read()), allow_pickle=False)
    return mel, json.loads(sample[".json"].read())


_CACHE: list[str] = []


def _cache_dir() -> str:
    if not _CACHE:
        _CACHE.append(tempfile.mkdtemp(prefix="wids-"))
        atexit.register(shutil.rmtree, _CACHE[0], True)
    return _CACHE[0]


class WidsPeer(OurShardsPeer):
    name = "wids"
    # Its sampler's order is a function of (seed, epoch) drawn in the main process: skipping
    # the indices already used resumes exactly, whatever the worker count (no state API).
    resume = "exact, any workers"

    def batches(self, location, storage_options, work: Workload, epoch: int, workers: int):
        _install_s3(storage_options)
        shards = [
            {"url": url, "nsamples": s["samples"]}
            for url, s in zip(
                shard_urls(location, work), card(work)["splits"][work.split]["shards"]
            )
        ]
        crop = _Cropper(work, epoch, len(card(work)["vocabulary"]))
        remote = "://" in location
        dataset = wids.ShardListDataset(
            shards,
            transformations=[lambda s: crop(*_wids_decode(s))],
            # Local shards are read where they are (no copy); remote ones downloaded once
            # per process (its disk cache, kept across epochs as in training).
            **({"cache_dir": _cache_dir()} if remote else {"localname": lambda url: url}),
        )
        sampler = wids.ChunkedSampler(dataset, chunksize=256, seed=work.seed, shuffle=True)
        sampler.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=work.batch_size, sampler=sampler, num_workers=workers,
            collate_fn=_collate,
        )  # fmt: skip
        yield from loader
        dataset.close()


register(WebDatasetPeer("wds", select=False))
register(WebDatasetPeer("wds-select", select=True))
register(WidsPeer())
