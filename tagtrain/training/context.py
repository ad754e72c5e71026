"""What an objective and its callbacks may touch of a run: `TrainingContext`.

The loop (tagtrain.training.loop) owns the `Trainer` (optimiser, scaler, schedule, progress,
log, checkpoints); objectives (tagtrain.training.objectives, student, patchout) and callbacks
(tagtrain.training.callbacks) get this narrow view of it instead:

    ctx.cfg        the run's settings (read only)
    ctx.model      the bare model (its weights, `set_patchout`, parameter counts)
    ctx.net        what a training forward calls (the model, DDP-wrapped on several ranks)
    ctx.rt         device, autocast() and autocast_dtype, is_main
    ctx.data       the training input: card, vocabulary, plan, train shards and their loader
                   settings, device_input (PCM/features -> the model's normalised input),
                   reader(shards, epoch, resume, **stream) (an epoch's batches)
    ctx.files      the run directory's files an objective writes or reads (student.json, ...)
    ctx.callbacks  the objective's callbacks, in the order a batch goes through them
    ctx.say(line)  print one line on the main rank
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tagtrain.loader import DeviceInput, EpochReader, InputPlan, LoaderConfig, ShardInfo
from tagtrain.run.config import RunConfig
from tagtrain.run.directory import RunDir
from tagtrain.run.runtime import Runtime
from tagtrain.training.data import TrainingData


@dataclass(frozen=True)
class RunDevice:
    """Where a step runs: the device, the run's autocast (as a context and as its dtype,
    None: off) and whether this rank prints."""

    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager]
    autocast_dtype: torch.dtype | None
    is_main: bool

    @classmethod
    def of(cls, rt: Runtime) -> RunDevice:
        return cls(rt.device, rt.autocast, rt.autocast_dtype, rt.dist.is_main)


@dataclass(frozen=True)
class TrainingInputs:
    """The training data an objective reads (validation and normalisation stay the loop's)."""

    source: str  # the dataset's location (--data)
    card: dict
    vocabulary: list[str]
    plan: InputPlan
    train_shards: list[ShardInfo]
    train_loader: LoaderConfig
    device_input: DeviceInput
    reader: Callable[..., EpochReader]  # (shards, epoch, resume, **stream) -> EpochReader

    @classmethod
    def of(cls, data: TrainingData, source: str) -> TrainingInputs:
        return cls(
            source, data.card, data.vocabulary, data.plan, data.train_shards, data.train_loader,
            data.device_input, data.reader,
        )  # fmt: skip


@dataclass(frozen=True)
class RunFiles:
    """The run directory's files an objective keeps (its settings file, say): written by
    the main rank only."""

    run_dir: RunDir
    is_main: bool

    def __str__(self) -> str:
        return str(self.run_dir)

    def has_run(self) -> bool:
        return self.run_dir.has_run()

    def read(self, name: str) -> str:
        return self.run_dir.read_text(name)

    def write(self, name: str, text: str) -> None:
        if self.is_main:
            self.run_dir.create()
            self.run_dir.write_text(name, text)


@dataclass
class TrainingContext:
    cfg: RunConfig
    model: torch.nn.Module
    net: torch.nn.Module
    rt: RunDevice
    data: TrainingInputs
    files: RunFiles
    say: Callable[[str], None]
    callbacks: list = field(default_factory=list)

    @property
    def vocabulary(self) -> list[str]:
        return self.data.vocabulary
