"""The one inference path: a model's outputs for loader batches or for audio windows.

Chunk-level models see `chunks` evenly spaced crops of each track ([B, chunks, ...] from
the loader, flattened to [B * chunks, ...] on the device) and their outputs are averaged
per track; song-level models see one crop. Every forward runs in inference mode under the
run's autocast. Used by validation (tagtrain.training.loop), evaluate, robustness, embed (with the
model's `embed` or a hooked layer instead of the logits) and tag (windows of a file).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from tagtrain.loader import DeviceInput, EpochReader, LoaderStats, ShardStream


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@contextlib.contextmanager
def evaluating(model: torch.nn.Module):
    """Eval mode and inference mode, restoring the model's mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def probabilities(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: torch.sigmoid(model(x).float())


@dataclass
class BatchOutput:
    keys: list[str]
    labels: torch.Tensor  # [B, C]
    values: torch.Tensor  # [B, D], averaged over the track's chunks (float32, CPU)


def chunk_outputs(
    fn: Callable[[torch.Tensor], torch.Tensor],
    reader: EpochReader,
    device_input: DeviceInput,
    dtype: torch.dtype | None,
) -> Iterator[BatchOutput]:
    """`fn` of every chunk of every track the reader yields, averaged per track."""
    device = device_input.device
    for batch in reader:
        b, k = batch.x.shape[:2]
        x = device_input(batch.x, chunked=True)
        with autocast(device, dtype):
            out = fn(x)
        values = out.float().reshape(b, k, -1).mean(dim=1).cpu()
        yield BatchOutput(list(batch.keys), batch.y, values)


@dataclass
class SplitPredictions:
    keys: list[str]  # this rank's tracks (all of them outside DDP)
    labels: np.ndarray  # [N, C], gathered over ranks
    probs: np.ndarray  # [N, C], averaged over chunks
    stats: LoaderStats


def predict_split(
    model, shards, plan, vocabulary, loader_cfg, device_input, dist, autocast_dtype, reader=None
) -> SplitPredictions:
    """Chunk-averaged probabilities for every track of a split, gathered over ranks.
    reader: an EpochReader over that split to use instead of a new one (validation reads
    through the trainer's persistent loader workers)."""
    if reader is None:
        stream = ShardStream(shards, plan, vocabulary, loader_cfg)
        reader = EpochReader(stream, pin_memory=device_input.device.type == "cuda")
    keys, probs, labels = [], [], []
    with evaluating(model):
        for out in chunk_outputs(probabilities(model), reader, device_input, autocast_dtype):
            keys += out.keys
            probs.append(out.values)
            labels.append(out.labels)
    reader.close()
    n_classes = len(vocabulary)
    p = torch.cat(probs) if probs else torch.zeros(0, n_classes)
    y = torch.cat(labels) if labels else torch.zeros(0, n_classes)
    p, y = dist.gather_rows(p.double()), dist.gather_rows(y.double())
    return SplitPredictions(keys, y.numpy(), p.numpy(), reader.stats)


def window_offsets(total: int, length: int) -> list[int]:
    """Starts of consecutive windows covering [0, total); the last ends at `total`."""
    if total <= length:
        return [0]
    offsets = list(range(0, total - length + 1, length))
    if offsets[-1] + length < total:
        offsets.append(total - length)
    return offsets


def predict_windows(
    model, pcm: torch.Tensor, length: int, device_input: DeviceInput, dtype, batch_size: int
) -> tuple[np.ndarray, int]:
    """Probabilities averaged over consecutive windows of one track's int16 PCM (zero-padded
    to one window when shorter); (probabilities [C], windows)."""
    if len(pcm) < length:
        pcm = torch.nn.functional.pad(pcm, (0, length - len(pcm)))
    offsets = window_offsets(len(pcm), length)
    total = None
    with evaluating(model):
        for start in range(0, len(offsets), batch_size):
            windows = torch.stack(
                [pcm[o : o + length] for o in offsets[start : start + batch_size]]
            )
            with autocast(device_input.device, dtype):
                p = torch.sigmoid(model(device_input(windows)).float())
            part = p.sum(dim=0).double().cpu()
            total = part if total is None else total + part
    return (total / len(offsets)).numpy(), len(offsets)
