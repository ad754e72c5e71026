"""The one inference path: a model's outputs for loader batches or for windows of a track.

Every forward goes through here. `batch_probabilities` is the forward of one device batch
(eval mode, no autograd, the run's autocast): teacher forwards call it. Chunk-level models
see `chunks` evenly spaced crops of each track ([B, chunks, ...] from the loader,
flattened to [B * chunks, ...] on the device) and their outputs are averaged per track;
song-level models see one crop (`chunk_outputs`, `predict_split`: validation
(tagtrain.training.loop), evaluate, robustness, embed with the model's `embed` or a hooked
layer instead of the probabilities). A decoded track is cut into consecutive windows
(`TrackWindows`) and `WindowPredictor` gives its per-window outputs and their average:
`tag --run`, `tag --pretrained` (tagtrain.pretrained.tagger, whose windows are the
official front end's log-mel windows), `explain` (the same windows, its own per-window
computation) and `export` (the traced path is `pcm_input` + the model + sigmoid).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipelines.core.audio import (
    EMPTY,
    SILENCE_PEAK,
    SILENT,
    AudioRejected,
    iter_audio_blocks,
    to_int16,
)
from tagtrain.loader import DeviceInput, EpochReader, LoaderStats, ShardStream


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Eval mode, restoring the model's mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def evaluating(model: torch.nn.Module):
    """Eval mode and inference mode, restoring the model's mode afterwards (around a loop
    of forwards whose outputs no autograd graph will see)."""
    with eval_mode(model), torch.inference_mode():
        yield


def probabilities(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """`x -> sigmoid(model(x))` in float32, for a caller that has set the mode and autocast
    (`chunk_outputs`, `WindowPredictor`); a single batch: `batch_probabilities`."""
    return lambda x: torch.sigmoid(model(x).float())


def batch_probabilities(
    model: torch.nn.Module, x: torch.Tensor, autocast_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """The probabilities [B, tags] (float32, on x's device) of `model` for one batch `x`
    already on the device (the model's input: e.g. a `DeviceInput` output, computed outside
    autocast as in training and evaluation). Eval mode (the model's mode is restored),
    autocast on x's device with `autocast_dtype` (None: off), no autograd: `torch.no_grad`,
    not inference mode, so the result may serve as a training target (BCE saves it for
    backward). The one forward for teachers (tagtrain.training: a student's pseudo-labels,
    MAEST's teacher targets); this name stays."""
    with eval_mode(model), torch.no_grad(), autocast(x.device, autocast_dtype):
        return probabilities(model)(x)


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
    labels: np.ndarray  # [N, C] float32, gathered over ranks
    probs: np.ndarray  # [N, C] float32, averaged over chunks
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
    p = _concatenated(probs) if probs else torch.zeros(0, n_classes)
    y = _concatenated(labels) if labels else torch.zeros(0, n_classes)
    # float32, as the model gives them: float64 copies of a million tracks x 50 tags held
    # 800 MB more, for no figure (metrics rank the same values, bce widens its own).
    p, y = dist.gather_rows(p.float()), dist.gather_rows(y.float())
    return SplitPredictions(keys, y.numpy(), p.numpy(), reader.stats)


def _concatenated(parts: list[torch.Tensor]) -> torch.Tensor:
    """torch.cat of CPU tensors, through numpy: numpy asks for huge pages for a large
    array, torch does not, and page-faulting a million tracks' [N, C] in 4 KiB pages cost
    4x the copy (0.08 s against 0.02 s per 200 MB)."""
    return torch.from_numpy(np.concatenate([part.numpy() for part in parts]))


# --- windows of a decoded track -------------------------------------------------------


def window_offsets(total: int, length: int) -> list[int]:
    """Starts of consecutive windows covering [0, total); the last ends at `total`."""
    if total <= length:
        return [0]
    offsets = list(range(0, total - length + 1, length))
    if offsets[-1] + length < total:
        offsets.append(total - length)
    return offsets


@dataclass
class TrackWindows:
    """Consecutive windows of one track's int16 PCM (`window_offsets`: the last one aligned
    with the end of the track, so the whole track is covered); a track shorter than one
    window is zero-padded to one window. `windows[a:b]` is the int16 batch [b - a, length]."""

    pcm: torch.Tensor  # int16 [samples], zero-padded to at least one window
    length: int
    offsets: list[int]
    padded: bool  # the track is shorter than one window

    @classmethod
    def of(cls, pcm: torch.Tensor, length: int) -> TrackWindows:
        padded = len(pcm) < length
        if padded:
            pcm = torch.nn.functional.pad(pcm, (0, length - len(pcm)))
        return cls(pcm, length, window_offsets(len(pcm), length), padded)

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, part: slice) -> torch.Tensor:
        return torch.stack([self.pcm[o : o + self.length] for o in self.offsets[part]])

    def new_samples(self, i: int) -> int:
        """Samples of window i that window i - 1 does not cover (all of the first)."""
        if i == 0:
            return self.length
        return self.offsets[i] - self.offsets[i - 1]


def decode_windows(path: Path, sample_rate: int, length: int) -> tuple[TrackWindows, float]:
    """The windows of an audio file (decoded, downmixed and resampled to `sample_rate` as the
    pipeline's `load_audio` does, rounded to int16 like the shards' PCM), and its seconds.
    Decoded block by block and kept as int16 only: an hours-long file costs 2 bytes per
    output sample, never its float or multichannel native-rate signal."""
    blocks, peak = [], 0.0
    for block in iter_audio_blocks(path, sample_rate, block_seconds=60.0):
        peak = max(peak, float(np.abs(block).max(initial=0.0)))
        blocks.append(to_int16(block))
    pcm = np.concatenate(blocks) if blocks else np.zeros(0, np.int16)
    del blocks
    if not pcm.size:
        raise AudioRejected("decode", EMPTY, "decoded to no audio samples")
    if peak < SILENCE_PEAK:  # load_audio's rule, as the published model's path applies it
        raise AudioRejected("validate", SILENT, f"all-silent (peak {peak:.2e})")
    return TrackWindows.of(torch.from_numpy(pcm), length), pcm.size / sample_rate


def pcm_input(run) -> DeviceInput:
    """A trained run's model input from int16 PCM windows: its features and normalisation
    (`run`: a tagtrain.inference.trained_run.TrainedRun)."""
    kind = run.plan.kind
    plan = dataclasses.replace(
        run.plan,
        member="pcm.npy",
        length=run.spec.samples,
        device_feature=None if kind == "pcm" else kind,
    )
    return DeviceInput(plan, run.device, run.mean, run.std)


@dataclass
class WindowedPrediction:
    probabilities: np.ndarray  # [tags], float64 mean of the windows' probabilities
    taggram: np.ndarray  # [windows, tags], float32: each window's probabilities

    @property
    def windows(self) -> int:
        return len(self.taggram)


def average(taggram: np.ndarray) -> np.ndarray:
    """The aggregation of per-window outputs: their mean over windows, in float64."""
    return taggram.astype(np.float64).mean(axis=0)


class WindowPredictor:
    """The one predictor of windowed tracks: windows (any sequence whose slices are
    batches: `TrackWindows`, a numpy array of model inputs) -> the model input of each
    batch of `batch_size` windows (`to_input`: e.g. `pcm_input(run)`, or a plain
    numpy-to-device) -> the model's per-window outputs (eval and inference mode, autocast
    with `autocast_dtype`) -> their aggregation (`average`)."""

    def __init__(
        self,
        model: torch.nn.Module,
        to_input: Callable[[object], torch.Tensor],
        autocast_dtype: torch.dtype | None = None,
        batch_size: int = 16,
    ):
        self.model = model
        self.to_input = to_input
        self.autocast_dtype = autocast_dtype
        self.batch_size = batch_size

    @classmethod
    def for_run(cls, run, batch_size: int = 16) -> WindowPredictor:
        """A trained run's predictor of int16 PCM windows (`TrackWindows`)."""
        return cls(run.model, pcm_input(run), run.autocast_dtype, batch_size)

    def batches(self, windows, fn: Callable[[torch.Tensor], object] | None = None) -> Iterator:
        """`fn` (default: the probabilities) of each batch's model input, in order."""
        fn = fn or probabilities(self.model)
        for start in range(0, len(windows), self.batch_size):
            # Entered per batch: the caller's code between batches runs in its own modes.
            with evaluating(self.model):
                x = self.to_input(windows[start : start + self.batch_size])
                with autocast(x.device, self.autocast_dtype):
                    out = fn(x)
            yield out

    def taggram(self, windows) -> np.ndarray:
        """The probabilities [windows, tags] (float32) of every window."""
        parts = [p.float().cpu().numpy() for p in self.batches(windows)]
        return np.concatenate(parts)

    def predict(self, windows) -> WindowedPrediction:
        taggram = self.taggram(windows)
        return WindowedPrediction(average(taggram), taggram)
