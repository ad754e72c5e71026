"""Callbacks: optional behaviour the loop calls at fixed points, each a small class.

    transform(x, y, weights) -> (x, y, weights)   on the device input of a training batch
    on_epoch_end(ctx, epoch, partial)             after an epoch's training steps
    validation_weights(ctx)                       context in which validation runs
    state_dict() / load_state_dict(state)         saved in last.pt under `name`

TeacherTargets, SpecMask, Mixup and TagBalancing change what a step trains on; SWA
averages weights and validates the average. (Early stopping is the `early_stop` schedule's patience.)
`ctx` is the run's `TrainingContext` (tagtrain.training.context), never the trainer.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
from torch.optim.swa_utils import AveragedModel

from tagtrain.inference.predict import batch_probabilities


class Callback:
    name = ""

    def transform(self, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None):
        return x, y, weights

    def on_epoch_end(self, ctx, epoch: int, partial: bool) -> None:
        pass

    def validation_weights(self, ctx) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def state_dict(self) -> dict | None:
        return None

    def load_state_dict(self, state: dict) -> None:
        pass


def _bands(batch: int, size: int, max_width: int, count: int, device) -> torch.Tensor:
    """[batch, size] bool: the union of `count` spans per row, each of width uniform in
    [0, max_width) at a uniform start (so up to `count` masks of up to max_width - 1)."""
    width = (torch.rand(batch, count, device=device) * min(max_width, size)).long()
    start = (torch.rand(batch, count, device=device) * (size - width + 1)).long()
    index = torch.arange(size, device=device)[None, None, :]
    inside = (index >= start[..., None]) & (index < (start + width)[..., None])
    return inside.any(dim=1)


def spec_mask(
    x: torch.Tensor,
    freq_width: int,
    time_width: int,
    freq_count: int = 1,
    time_count: int = 1,
    p: float = 1.0,
) -> torch.Tensor:
    """[B, F, T] with `freq_count` frequency bands and `time_count` time spans per sample
    set to 0 (SpecAugment's several masks; MAEST: up to 20 of 8 frames, 5 of 8 bands),
    each sample masked with probability `p` (else left whole)."""
    if not (freq_width and freq_count) and not (time_width and time_count):
        return x
    b, f, t = x.shape
    masked = torch.zeros_like(x, dtype=torch.bool)
    if freq_width and freq_count:
        masked |= _bands(b, f, freq_width, freq_count, x.device)[:, :, None]
    if time_width and time_count:
        masked |= _bands(b, t, time_width, time_count, x.device)[:, None, :]
    if p < 1.0:
        masked &= (torch.rand(b, device=x.device) < p)[:, None, None]
    return x.masked_fill(masked, 0.0)


def mixup(x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None, alpha: float):
    """PaSST's mixup: (x, y, weights) mixed with a shuffled copy of the batch, lambda ~
    Beta(alpha, alpha) folded to [0.5, 1] so each sample stays the dominant part of its mix."""
    b = x.shape[0]
    lam = torch.distributions.Beta(alpha, alpha).sample((b,))
    lam = torch.maximum(lam, 1.0 - lam).to(x.device)
    order = torch.randperm(b).to(x.device)

    def mix(t: torch.Tensor) -> torch.Tensor:
        shape = (b,) + (1,) * (t.dim() - 1)
        return t * lam.reshape(shape) + t[order] * (1.0 - lam.reshape(shape))

    return mix(x), mix(y), None if weights is None else mix(weights)


def hard_teacher_targets(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """MAEST's teacher targets: 1 where sigmoid(teacher logit) > threshold, else 0; a row
    with none above it gets a 1 at its most probable tag."""
    return hard_targets(torch.sigmoid(logits.float()), threshold)


def hard_targets(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """`hard_teacher_targets` of the teacher's probabilities."""
    hard = (probs > threshold).float()
    empty = hard.sum(dim=1) == 0
    if empty.any():
        top = torch.nn.functional.one_hot(probs.argmax(dim=1), probs.shape[1]).float()
        hard[empty] = top[empty]
    return hard


class TeacherTargets(Callback):
    """MAEST's teacher-student step: a frozen teacher tags the clean batch (before masks and
    mixup, so it must come first) and its hard targets are appended to the labels,
    y -> [y, teacher targets] ([B, 2 · tags]). Mixup then mixes both with the same lambda
    and partner, as MAEST does, and the mean BCE over the 2 · tags columns of a separated
    model's [CLS logits, distillation logits] is (BCE(CLS, y) + BCE(dist, teacher)) / 2,
    MAEST's loss."""

    def __init__(self, teacher: torch.nn.Module, threshold: float, autocast_dtype=None):
        self.teacher, self.threshold, self.autocast_dtype = teacher, threshold, autocast_dtype

    def transform(self, x, y, weights):
        probs = batch_probabilities(self.teacher, x, self.autocast_dtype)  # the one teacher forward
        return x, torch.cat([y, hard_targets(probs, self.threshold)], dim=1), weights


class SpecMask(Callback):
    """SpecAugment-style masks (`spec_mask`): per sample, `freq_count` bands of width in
    [0, freq) bins and `time_count` spans of width in [0, time) frames, set to 0 (the mean
    after normalisation), with probability `p`."""

    def __init__(self, freq: int, time: int, freq_count: int = 1, time_count: int = 1, p=1.0):
        self.freq, self.time = freq, time
        self.freq_count, self.time_count, self.p = freq_count, time_count, p

    def transform(self, x, y, weights):
        masked = spec_mask(x, self.freq, self.time, self.freq_count, self.time_count, self.p)
        return masked, y, weights


class Mixup(Callback):
    def __init__(self, alpha: float):
        self.alpha = alpha

    def transform(self, x, y, weights):
        return mixup(x, y, weights, self.alpha)


@dataclass(frozen=True)
class TagBalance:
    """Per-track loss weights by inverse tag frequency: a track's weight is the sum over
    its tags of 1 / (train tracks with that tag) (no tags: the smallest such term), scaled
    to mean 1 over the training split. In expectation the gradient equals that of PaSST's
    balanced sampler, which a streaming loader cannot draw."""

    tag_weights: tuple[float, ...]  # 1 / train tracks with the tag (0 for absent tags)
    untagged: float  # the weight of a track without tags, before scaling
    scale: float  # 1 / the mean unscaled weight over the training split

    @classmethod
    def from_tags(cls, tag_lists, vocabulary) -> TagBalance:
        from tagtrain.loader import LoaderError

        index = {t: i for i, t in enumerate(vocabulary)}
        counts = [0] * len(vocabulary)
        untagged_tracks = 0
        for tags in tag_lists:
            known = {index[t] for t in tags if t in index}
            untagged_tracks += not known
            for i in known:
                counts[i] += 1
        n = len(tag_lists)
        if n == 0:
            raise LoaderError("balancing by tags needs training tracks; the index has none")
        weights = tuple(1.0 / c if c else 0.0 for c in counts)
        present = [w for w in weights if w > 0]
        untagged = min(present) if present else 1.0
        # Each present tag's tracks sum to 1, so the mean unscaled weight is closed-form.
        mean = (len(present) + untagged_tracks * untagged) / n
        return cls(weights, untagged, 1.0 / mean)

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        """[B] weights for multi-hot labels [B, C]."""
        a = torch.tensor(self.tag_weights, dtype=y.dtype, device=y.device)
        raw = y @ a
        raw = torch.where(y.sum(dim=1) > 0, raw, torch.full_like(raw, self.untagged))
        return raw * self.scale


class TagBalancing(Callback):
    def __init__(self, balance: TagBalance):
        self.balance = balance

    def transform(self, x, y, weights):
        w = self.balance(y)
        return x, y, w if weights is None else weights * w


class SWA(Callback):
    """Weight averaging (torch.optim.swa_utils.AveragedModel): after epoch `start` (from 1;
    0 = off) and every `every` epochs after it the weights join the average. Once it has
    begun, validation, selection and best.pt use the average; last.pt keeps the live
    weights and the average, so --resume continues exactly."""

    name = "swa"

    def __init__(self, model: torch.nn.Module, start: int, every: int):
        self.model, self.start, self.every = model, start, every
        self.average: AveragedModel | None = None

    def due(self, epoch: int) -> bool:
        done = epoch + 1
        return self.start > 0 and done >= self.start and (done - self.start) % self.every == 0

    def on_epoch_end(self, ctx, epoch: int, partial: bool) -> None:
        if partial or not self.due(epoch):
            return
        if self.average is None:
            self.average = AveragedModel(self.model)
        self.average.update_parameters(self.model)

    @contextlib.contextmanager
    def validation_weights(self, ctx):
        if self.average is None:
            yield
            return
        n = int(self.average.n_averaged)
        ctx.say(f"validating the average of {n} epoch(s) of weights (SWA)")
        live = copy.deepcopy(self.model.state_dict())
        self.model.load_state_dict(self.average.module.state_dict())
        try:
            yield
        finally:
            self.model.load_state_dict(live)

    def state_dict(self) -> dict | None:
        return None if self.average is None else self.average.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.average = AveragedModel(self.model)
        self.average.load_state_dict(state)
